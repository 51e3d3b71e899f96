//! The jobs of files. All are idempotent, as the queue runs a job again after a crash:
//!
//! * [`Thumbnails`] (`files.thumbnails`, one per file): makes the thumbnails of an image and
//!   marks it `ready`, or `failed` when it cannot be decoded or its decode would need more
//!   than the whole decode budget. Decodes wait for room in that budget
//!   (`storage::images::DecodeBudget`), so the memory of concurrent decodes stays bounded.
//! * [`DeleteObjects`] (`files.delete_objects`): removes a deleted file's objects.
//! * [`SweepOrphans`] (`files.sweep_orphans`, scheduled by [`schedule_sweeps`]) enqueues a
//!   [`SweepTenant`] (`files.sweep_tenant`) per tenant, which removes the tenant's objects
//!   that no live file record owns (an upload that crashed between storing and recording)
//!   and aborts its stale multipart uploads.
//! * [`PurgeTenantObjects`] (`files.purge_tenant_objects`): removes a purged tenant's
//!   objects; [`PurgeObjects`] enqueues it in the transaction that purges the tenant.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use jobs::{JobContext, JobHandler, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use storage::{
    ObjectKey, ObjectStore, ThumbnailFormat,
    images::{self, DecodeBudget, ImageLimits},
};
use tenancy::{BoxFuture, ControlDb, PurgeHook, TenancyError, TenantId, TenantStatus};
use uuid::Uuid;

use super::store::{self, FileStatus};

/// Job kind: thumbnails of one file.
pub const THUMBNAILS: &str = "files.thumbnails";
/// Job kind: remove a deleted file's objects.
pub const DELETE_OBJECTS: &str = "files.delete_objects";
/// Job kind: the orphan sweep (of every tenant).
pub const SWEEP_ORPHANS: &str = "files.sweep_orphans";
/// Job kind: the orphan sweep of one tenant.
pub const SWEEP_TENANT: &str = "files.sweep_tenant";
/// Job kind: remove a purged tenant's objects.
pub const PURGE_TENANT_OBJECTS: &str = "files.purge_tenant_objects";

/// Images larger than this are not thumbnailed (the file is `failed`, and downloadable).
pub const MAX_THUMBNAIL_SOURCE: i64 = 128 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct FileJob {
    file_id: Uuid,
}

/// The thumbnail job of `file` (enqueue it in the tenant transaction recording the file).
pub fn thumbnails_job(file: Uuid) -> NewJob {
    NewJob::new(THUMBNAILS, json!(FileJob { file_id: file }))
        .unique(format!("{THUMBNAILS}:{file}"))
        .max_attempts(5)
}

/// The job removing deleted `file`'s objects (enqueue it in the deleting transaction).
pub fn delete_objects_job(file: Uuid) -> NewJob {
    NewJob::new(DELETE_OBJECTS, json!(FileJob { file_id: file }))
        .unique(format!("{DELETE_OBJECTS}:{file}"))
        .max_attempts(20)
}

fn tenant_of(ctx: &JobContext) -> anyhow::Result<TenantId> {
    ctx.tenant
        .as_ref()
        .map(|t| t.id)
        .ok_or_else(|| anyhow::anyhow!("a files job needs a tenant"))
}

/// Makes thumbnails; see the module docs.
pub struct Thumbnails {
    storage: ObjectStore,
    sizes: Vec<u32>,
    limits: ImageLimits,
    budget: DecodeBudget,
}

impl Thumbnails {
    /// Thumbnails of `sizes` pixels on the longest edge, decoded within `budget` (share
    /// one budget between every handler of a process).
    pub fn new(storage: ObjectStore, sizes: Vec<u32>, budget: DecodeBudget) -> Self {
        Self {
            storage,
            sizes,
            limits: ImageLimits::default(),
            budget,
        }
    }

    async fn process(&self, ctx: &mut JobContext, file_id: Uuid) -> anyhow::Result<()> {
        let tenant = tenant_of(ctx)?;
        let tx = ctx.tenant_tx()?;
        // Locked: a deletion waits for the thumbnails, then removes them with the rest.
        let Some(file) = store::get_for_update(tx, file_id).await? else {
            return Ok(());
        };
        if file.status != FileStatus::Processing {
            return Ok(());
        }
        if file.size > MAX_THUMBNAIL_SOURCE {
            let reason = format!(
                "images larger than {} MiB are stored but not thumbnailed",
                MAX_THUMBNAIL_SOURCE >> 20
            );
            store::finish_processing(tx, file_id, Err(&reason)).await?;
            return Ok(());
        }
        let original = self
            .storage
            .get(&ObjectKey::original(tenant, file_id))
            .await
            .context("reading the original")?;
        let made =
            images::thumbnails_within(&self.budget, original, self.sizes.clone(), self.limits)
                .await;
        let (stored, thumbs) = match made {
            Ok(made) => made,
            Err(refused) => {
                store::finish_processing(tx, file_id, Err(&refused.to_string())).await?;
                return Ok(());
            }
        };
        for thumb in &thumbs {
            let key = ObjectKey::thumbnail(tenant, file_id, thumb.size, ThumbnailFormat::Jpeg);
            self.storage
                .put(&key, thumb.jpeg.clone().into(), "image/jpeg")
                .await
                .context("storing a thumbnail")?;
        }
        // Thumbnails are upright (EXIF orientation applied): so are the reported dimensions.
        let (mut width, mut height) = (stored.width, stored.height);
        if let Some(largest) = thumbs.last()
            && width != height
            && (width > height) != (largest.width > largest.height)
        {
            std::mem::swap(&mut width, &mut height);
        }
        let sizes: Vec<u32> = thumbs.iter().map(|t| t.size).collect();
        store::finish_processing(tx, file_id, Ok((width, height, &sizes))).await?;
        Ok(())
    }
}

impl JobHandler for Thumbnails {
    fn kind(&self) -> &'static str {
        THUMBNAILS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let job: FileJob = serde_json::from_value(payload)?;
            self.process(ctx, job.file_id).await
        })
    }
}

/// Removes a deleted file's objects; see the module docs.
pub struct DeleteObjects {
    storage: ObjectStore,
}

impl DeleteObjects {
    /// Over `storage`.
    pub fn new(storage: ObjectStore) -> Self {
        Self { storage }
    }
}

impl JobHandler for DeleteObjects {
    fn kind(&self) -> &'static str {
        DELETE_OBJECTS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let job: FileJob = serde_json::from_value(payload)?;
            let tenant = tenant_of(ctx)?;
            if store::get(ctx.tenant_tx()?, job.file_id).await?.is_some() {
                // Never remove the objects of a live file.
                return Ok(());
            }
            let removed = self
                .storage
                .delete_prefix(&ObjectKey::file_prefix(tenant, job.file_id))
                .await?;
            tracing::info!(file_id = %job.file_id, removed, "removed a deleted file's objects");
            Ok(())
        })
    }
}

/// Sweeps every tenant: enqueues one [`SweepTenant`] job per active tenant.
pub struct SweepOrphans;

impl JobHandler for SweepOrphans {
    fn kind(&self) -> &'static str {
        SWEEP_ORPHANS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        _payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut after: Option<String> = None;
            let mut enqueued = 0;
            loop {
                let tenants = ctx
                    .control
                    .list_tenants(Some(TenantStatus::Active), after.as_deref(), 500)
                    .await?;
                let Some(last) = tenants.last() else { break };
                after = Some(last.slug.to_string());
                let mut conn = ctx.control.pool().acquire().await?;
                for tenant in &tenants {
                    jobs::enqueue(&mut conn, sweep_tenant_job(tenant.id)).await?;
                    enqueued += 1;
                }
            }
            tracing::info!(tenants = enqueued, "orphan sweep scheduled");
            Ok(())
        })
    }
}

fn sweep_tenant_job(tenant: TenantId) -> NewJob {
    NewJob::new(SWEEP_TENANT, json!({}))
        .for_tenant(tenant)
        .unique(format!("{SWEEP_TENANT}:{}", tenant.0))
        .max_attempts(3)
}

/// The orphan sweep of one tenant, inside its transaction: removes the objects under its
/// prefix that no live file owns, and aborts its multipart uploads, once they are older
/// than the grace period (younger ones may be uploads in flight).
pub struct SweepTenant {
    storage: ObjectStore,
    grace: Duration,
}

impl SweepTenant {
    /// Leaves objects and uploads younger than `grace` alone.
    pub fn new(storage: ObjectStore, grace: Duration) -> Self {
        Self { storage, grace }
    }

    /// Sweeps `tenant`, whose transaction `conn` is in; returns (objects removed, uploads
    /// aborted).
    pub async fn sweep(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
    ) -> anyhow::Result<(usize, usize)> {
        let cutoff = SystemTime::now()
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let old_enough = |at: Option<SystemTime>| at.is_some_and(|at| at <= cutoff);
        let prefix = ObjectKey::tenant_prefix(tenant);

        let mut by_file: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
        for object in self.storage.list_objects(&prefix).await? {
            if !old_enough(object.last_modified) {
                continue;
            }
            match ObjectKey::parse_file_key(&object.key) {
                Some((owner, file)) if owner == tenant => {
                    by_file.entry(file).or_default().push(object.key);
                }
                _ => tracing::warn!(key = object.key, "an object outside the key scheme"),
            }
        }
        let ids: Vec<Uuid> = by_file.keys().copied().collect();
        let live = store::existing(conn, &ids).await?;
        let mut removed = 0;
        for (file, keys) in by_file {
            if live.contains(&file) {
                continue;
            }
            for key in keys {
                self.storage.delete(&ObjectKey::from_stored(key)).await?;
                removed += 1;
            }
        }
        let mut aborted = 0;
        for upload in self.storage.pending_uploads(&prefix).await? {
            if old_enough(upload.initiated) {
                self.storage
                    .abort_upload(&upload.key, &upload.upload_id)
                    .await?;
                aborted += 1;
            }
        }
        Ok((removed, aborted))
    }
}

impl JobHandler for SweepTenant {
    fn kind(&self) -> &'static str {
        SWEEP_TENANT
    }

    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        _payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let tenant = tenant_of(ctx)?;
            let (removed, aborted) = self.sweep(ctx.tenant_tx()?, tenant).await?;
            if removed + aborted > 0 {
                tracing::info!(removed, aborted, "removed orphaned objects and uploads");
            }
            Ok(())
        })
    }
}

/// Removes every object of a purged tenant (enqueued by [`PurgeObjects`] in the purging
/// transaction).
pub struct PurgeTenantObjects {
    storage: ObjectStore,
}

impl PurgeTenantObjects {
    /// Over `storage`.
    pub fn new(storage: ObjectStore) -> Self {
        Self { storage }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PurgeJob {
    tenant_id: Uuid,
}

impl JobHandler for PurgeTenantObjects {
    fn kind(&self) -> &'static str {
        PURGE_TENANT_OBJECTS
    }

    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let job: PurgeJob = serde_json::from_value(payload)?;
            let tenant = TenantId(job.tenant_id);
            if ctx.control.tenant_by_id(tenant).await?.is_some() {
                anyhow::bail!("tenant {} still exists; its objects stay", tenant.0);
            }
            let prefix = ObjectKey::tenant_prefix(tenant);
            for upload in self.storage.pending_uploads(&prefix).await? {
                self.storage
                    .abort_upload(&upload.key, &upload.upload_id)
                    .await?;
            }
            let removed = self.storage.delete_prefix(&prefix).await?;
            tracing::info!(tenant_id = %tenant.0, removed, "removed a purged tenant's objects");
            Ok(())
        })
    }
}

/// The [`PurgeHook`] that enqueues [`PurgeTenantObjects`] with every tenant purge.
pub struct PurgeObjects;

impl PurgeHook for PurgeObjects {
    fn on_purge<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: TenantId,
    ) -> BoxFuture<'a, Result<(), TenancyError>> {
        Box::pin(async move {
            let job = NewJob::new(
                PURGE_TENANT_OBJECTS,
                json!(PurgeJob {
                    tenant_id: tenant.0
                }),
            )
            .max_attempts(20);
            jobs::enqueue(conn, job).await.map_err(|e| match e {
                jobs::JobError::Database(e) => TenancyError::Database(e),
                jobs::JobError::Tenancy(e) => e,
                other => TenancyError::Database(sqlx::Error::Protocol(other.to_string())),
            })?;
            Ok(())
        })
    }
}

/// Enqueues an orphan sweep every `interval`, the first one `interval` after start-up (at
/// most one is pending at a time, however many instances run this).
pub async fn schedule_sweeps(
    control: ControlDb,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let job = NewJob::new(SWEEP_ORPHANS, json!({}))
        .unique(SWEEP_ORPHANS)
        .max_attempts(3);
    jobs::enqueue_every(control, interval, job, stop).await;
}
