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
use jobs::{Job, JobContext, JobError, JobKind, NewJob};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use storage::{
    ObjectKey, ObjectStore, ThumbnailFormat,
    images::{self, DecodeBudget, ImageLimits},
};
use tenancy::{BoxFuture, ControlDb, PurgeHook, TenancyError, TenantId};
use uuid::Uuid;

use crate::store::{self, FileStatus};

/// Images larger than this are not thumbnailed (the file is `failed`, and downloadable).
pub const MAX_THUMBNAIL_SOURCE: i64 = 128 * 1024 * 1024;

fn tenant_of(ctx: &JobContext) -> anyhow::Result<TenantId> {
    ctx.tenant
        .as_ref()
        .map(|t| t.id)
        .ok_or_else(|| anyhow::anyhow!("a files job needs a tenant"))
}

/// Makes the thumbnails of one file; see the module docs. Payload `{"file_id": …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thumbnails {
    /// The file.
    pub file_id: Uuid,
}

jobs::declare_job!(Thumbnails = "files.thumbnails");

impl Thumbnails {
    /// The thumbnail job of `file`, one pending per file (enqueue it in the tenant
    /// transaction recording the file).
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self
            .to_job()?
            .unique(format!("{}:{}", Self::KIND, self.file_id)))
    }
}

/// What [`Thumbnails`] jobs need: the bucket, the sizes to make, and the decode budget.
pub struct ThumbnailMaker {
    storage: ObjectStore,
    sizes: Vec<u32>,
    limits: ImageLimits,
    budget: DecodeBudget,
}

impl ThumbnailMaker {
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

impl Job for Thumbnails {
    type Deps = ThumbnailMaker;

    async fn run(self, ctx: &mut JobContext, maker: &ThumbnailMaker) -> anyhow::Result<()> {
        maker.process(ctx, self.file_id).await
    }
}

/// Removes a deleted file's objects; see the module docs. Payload `{"file_id": …}`; its
/// dependency is the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteObjects {
    /// The deleted file.
    pub file_id: Uuid,
}

jobs::declare_job!(DeleteObjects = "files.delete_objects");

impl DeleteObjects {
    /// The job removing deleted `file`'s objects, one pending per file (enqueue it in the
    /// deleting transaction).
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self
            .to_job()?
            .unique(format!("{}:{}", Self::KIND, self.file_id)))
    }
}

impl Job for DeleteObjects {
    const MAX_ATTEMPTS: i32 = 20;
    type Deps = ObjectStore;

    async fn run(self, ctx: &mut JobContext, storage: &ObjectStore) -> anyhow::Result<()> {
        let tenant = tenant_of(ctx)?;
        if store::get(ctx.tenant_tx()?, self.file_id).await?.is_some() {
            // Never remove the objects of a live file.
            return Ok(());
        }
        let removed = storage
            .delete_prefix(&ObjectKey::file_prefix(tenant, self.file_id))
            .await?;
        tracing::info!(file_id = %self.file_id, removed, "removed a deleted file's objects");
        Ok(())
    }
}

/// Sweeps every tenant: enqueues one [`SweepTenant`] job per active tenant. Payload `{}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepOrphans {}

jobs::declare_job!(SweepOrphans = "files.sweep_orphans");

impl SweepOrphans {
    /// The sweep, at most one pending.
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self.to_job()?.unique(Self::KIND))
    }
}

impl Job for SweepOrphans {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = ();

    async fn run(self, ctx: &mut JobContext, _: &()) -> anyhow::Result<()> {
        let enqueued =
            jobs::enqueue_per_active_tenant(&ctx.control, |tenant| SweepTenant {}.new_job(tenant))
                .await?;
        tracing::info!(tenants = enqueued, "orphan sweep scheduled");
        Ok(())
    }
}

/// The orphan sweep of one tenant, inside its transaction (see [`Sweeper`]). Payload `{}`;
/// the tenant is the job's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepTenant {}

jobs::declare_job!(SweepTenant = "files.sweep_tenant");

impl SweepTenant {
    /// The sweep of `tenant`, at most one pending per tenant.
    pub fn new_job(&self, tenant: TenantId) -> Result<NewJob, JobError> {
        Ok(self
            .to_job()?
            .for_tenant(tenant)
            .unique(format!("{}:{}", Self::KIND, tenant.0)))
    }
}

impl Job for SweepTenant {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = Sweeper;

    async fn run(self, ctx: &mut JobContext, sweeper: &Sweeper) -> anyhow::Result<()> {
        let tenant = tenant_of(ctx)?;
        let (removed, aborted) = sweeper.sweep(ctx.tenant_tx()?, tenant).await?;
        if removed + aborted > 0 {
            tracing::info!(removed, aborted, "removed orphaned objects and uploads");
        }
        Ok(())
    }
}

/// What [`SweepTenant`] jobs need: removes the objects under a tenant's prefix that no
/// live file owns, and aborts its multipart uploads, once they are older than the grace
/// period (younger ones may be uploads in flight).
pub struct Sweeper {
    storage: ObjectStore,
    grace: Duration,
}

impl Sweeper {
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

/// Removes every object of a purged tenant (enqueued by [`PurgeObjects`] in the purging
/// transaction). Payload `{"tenant_id": …}`; its dependency is the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeTenantObjects {
    /// The purged tenant.
    pub tenant_id: Uuid,
}

jobs::declare_job!(PurgeTenantObjects = "files.purge_tenant_objects");

impl Job for PurgeTenantObjects {
    const MAX_ATTEMPTS: i32 = 20;
    type Deps = ObjectStore;

    async fn run(self, ctx: &mut JobContext, storage: &ObjectStore) -> anyhow::Result<()> {
        let tenant = TenantId(self.tenant_id);
        if ctx.control.tenant_by_id(tenant).await?.is_some() {
            anyhow::bail!("tenant {} still exists; its objects stay", tenant.0);
        }
        let prefix = ObjectKey::tenant_prefix(tenant);
        for upload in storage.pending_uploads(&prefix).await? {
            storage.abort_upload(&upload.key, &upload.upload_id).await?;
        }
        let removed = storage.delete_prefix(&prefix).await?;
        tracing::info!(tenant_id = %tenant.0, removed, "removed a purged tenant's objects");
        Ok(())
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
            let enqueued = match (PurgeTenantObjects {
                tenant_id: tenant.0,
            })
            .to_job()
            {
                Ok(job) => jobs::enqueue(conn, job).await,
                Err(error) => Err(error),
            };
            enqueued.map_err(|e| match e {
                JobError::Database(e) => TenancyError::Database(e),
                JobError::Tenancy(e) => e,
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
    match (SweepOrphans {}).new_job() {
        Ok(job) => jobs::enqueue_every(control, interval, job, stop).await,
        Err(error) => tracing::error!(%error, "cannot schedule the orphan sweep"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shape(job: &impl Serialize) -> serde_json::Value {
        serde_json::to_value(job).expect("serializes")
    }

    // Queued jobs outlive a deploy: the payloads keep the shapes of the untyped handlers.
    #[test]
    fn payloads_keep_their_shapes() {
        let id = Uuid::now_v7();
        assert_eq!(shape(&Thumbnails { file_id: id }), json!({ "file_id": id }));
        assert_eq!(
            shape(&DeleteObjects { file_id: id }),
            json!({ "file_id": id })
        );
        assert_eq!(shape(&SweepOrphans {}), json!({}));
        assert_eq!(shape(&SweepTenant {}), json!({}));
        assert_eq!(
            shape(&PurgeTenantObjects { tenant_id: id }),
            json!({ "tenant_id": id })
        );
    }

    #[test]
    fn kinds_and_attempts_are_unchanged() {
        assert_eq!(Thumbnails::KIND, "files.thumbnails");
        assert_eq!(DeleteObjects::KIND, "files.delete_objects");
        assert_eq!(SweepOrphans::KIND, "files.sweep_orphans");
        assert_eq!(SweepTenant::KIND, "files.sweep_tenant");
        assert_eq!(PurgeTenantObjects::KIND, "files.purge_tenant_objects");
        assert_eq!(
            [
                Thumbnails::MAX_ATTEMPTS,
                DeleteObjects::MAX_ATTEMPTS,
                SweepOrphans::MAX_ATTEMPTS,
                SweepTenant::MAX_ATTEMPTS,
                PurgeTenantObjects::MAX_ATTEMPTS,
            ],
            [5, 20, 3, 3, 20]
        );
    }

    #[test]
    fn unique_keys_are_unchanged() {
        let id = Uuid::now_v7();
        let key = |job: Result<NewJob, JobError>| {
            let job = format!("{:?}", job.expect("serializes"));
            let start = job.find("unique_key: ").expect("has the field");
            job[start..]
                .split_once(" }")
                .map(|(k, _)| k.to_owned())
                .unwrap_or(job)
        };
        assert_eq!(
            key(Thumbnails { file_id: id }.new_job()),
            format!("unique_key: Some(\"files.thumbnails:{id}\")")
        );
        assert_eq!(
            key(DeleteObjects { file_id: id }.new_job()),
            format!("unique_key: Some(\"files.delete_objects:{id}\")")
        );
        assert_eq!(
            key(SweepOrphans {}.new_job()),
            "unique_key: Some(\"files.sweep_orphans\")"
        );
        assert_eq!(
            key(SweepTenant {}.new_job(TenantId(id))),
            format!("unique_key: Some(\"files.sweep_tenant:{id}\")")
        );
    }

    #[test]
    fn old_payloads_still_deserialize() {
        let id = Uuid::now_v7();
        let thumbs: Thumbnails = serde_json::from_value(json!({ "file_id": id })).expect("parse");
        assert_eq!(thumbs.file_id, id);
        let _: SweepOrphans = serde_json::from_value(json!({})).expect("parse");
        let _: SweepTenant = serde_json::from_value(json!({})).expect("parse");
    }
}
