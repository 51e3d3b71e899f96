//! The tenant registry: provisioning, lookup, status changes and purging.

use std::{future::Future, pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{Executor, PgConnection};

use crate::{
    ConstraintExt, ControlDb, TenancyError, Tenant, TenantId, TenantSlug, TenantStatus, TenantTx,
    migrate::{Ledger, TenantMigration, apply_pending, embedded_migrations},
    schema::{create_tenant_objects, drop_tenant_objects},
    spares,
    tenant_db::switch_statement,
};

/// A boxed future, for seeds behind trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Seed data other modules register for new tenants (RBAC's default roles, for one). Runs
/// inside the provisioning transaction, as the new tenant's role, after every tenant
/// migration; a failing seed aborts the whole provisioning.
pub trait TenantSeed: Send + Sync + 'static {
    /// Name for logs and errors.
    fn name(&self) -> &'static str;

    /// Inserts the seed rows.
    fn seed<'a>(&'a self, tx: &'a mut TenantTx) -> BoxFuture<'a, Result<(), TenancyError>>;
}

/// Runs inside the transaction that purges a tenant, for what must go with it outside the
/// database (its objects in the bucket): typically enqueueing a job, so that the purge and
/// the clean-up are committed together.
pub trait PurgeHook: Send + Sync + 'static {
    /// Called with the purging transaction, before it commits.
    fn on_purge<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: TenantId,
    ) -> BoxFuture<'a, Result<(), TenancyError>>;
}

/// Runs inside every provisioning transaction, as the login role, after the seeds: for
/// what must follow a provisioning outside the database's tables, typically enqueueing
/// the job that refills the pool of spare schemas (see [`ControlDb::replenish_spares`]), so
/// that it is committed, or rolled back, with the provisioning.
pub trait ProvisionHook: Send + Sync + 'static {
    /// Called with the provisioning transaction of `tenant`.
    fn on_provision<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tenant: TenantId,
    ) -> BoxFuture<'a, Result<(), TenancyError>>;
}

pub(crate) const TENANT_COLUMNS: &str =
    "id, slug, name, status, plan, created_at, updated_at, deleted_at, purge_after";

/// Trims and checks a display name.
pub fn validate_name(name: &str) -> Result<&str, TenancyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(TenancyError::InvalidName);
    }
    Ok(name)
}

impl ControlDb {
    /// Provisions a tenant in one transaction: its control-plane row, role, schema, grants,
    /// every tenant migration and every registered seed. Nothing is left behind on failure.
    ///
    /// The role and schema come from a spare when there is one (see
    /// [`Self::replenish_spares`]): the tenant then has the spare's id, and the provisioning
    /// applies only the migrations the spare lacks (normally none). Without a spare they
    /// are built in the same transaction, as the spare would have been.
    pub async fn create_tenant(
        &self,
        slug: &TenantSlug,
        name: &str,
    ) -> Result<Tenant, TenancyError> {
        self.create_tenant_with(slug, name, &embedded_migrations())
            .await
    }

    /// [`Self::create_tenant`] that also runs `extra` (after the registered seeds) in the
    /// provisioning transaction: sign-up creates the tenant's owner this way, so that the
    /// tenant never exists without one.
    pub async fn create_tenant_seeded(
        &self,
        slug: &TenantSlug,
        name: &str,
        extra: &dyn TenantSeed,
    ) -> Result<Tenant, TenancyError> {
        self.provision(slug, name, &embedded_migrations(), Some(extra))
            .await
    }

    /// [`Self::create_tenant`] with an explicit migration set (benchmarks and tests).
    pub async fn create_tenant_with(
        &self,
        slug: &TenantSlug,
        name: &str,
        migrations: &[TenantMigration],
    ) -> Result<Tenant, TenancyError> {
        self.provision(slug, name, migrations, None).await
    }

    async fn provision(
        &self,
        slug: &TenantSlug,
        name: &str,
        migrations: &[TenantMigration],
        extra: Option<&dyn TenantSeed>,
    ) -> Result<Tenant, TenancyError> {
        let name = validate_name(name)?;
        match self
            .provision_once(slug, name, migrations, extra, true)
            .await
        {
            Ok(tenant) => Ok(tenant),
            Err(Failure::Error(error)) => Err(error),
            // A spare built with a migration file that has changed since: it cannot become
            // a tenant's schema. Drop it (so no later provisioning trips over it again) and
            // build this tenant from scratch.
            Err(Failure::StaleSpare(spare, error)) => {
                tracing::warn!(spare_id = %spare, error = %crate::error_chain(&error), "a spare schema's migrations differ from this binary's; discarding it");
                if let Err(error) = self.discard_spare(spare).await {
                    tracing::warn!(spare_id = %spare, error = %crate::error_chain(&error), "cannot discard a stale spare schema");
                }
                self.provision_once(slug, name, migrations, extra, false)
                    .await
                    .map_err(Failure::into_error)
            }
        }
    }

    /// One provisioning transaction: the tenant row and a claimed spare's schema (or, with
    /// none to claim or `use_spare` false, a schema built from scratch), the migrations it
    /// lacks, the [`ProvisionHook`] and the seeds.
    async fn provision_once(
        &self,
        slug: &TenantSlug,
        name: &str,
        migrations: &[TenantMigration],
        extra: Option<&dyn TenantSeed>,
        use_spare: bool,
    ) -> Result<Tenant, Failure> {
        // The provisioning transaction starts as the login role (it creates or adopts the
        // tenant's role and schema) and switches to the tenant for the seeds.
        let mut tx = TenantTx::open(self.pool().acquire().await?, TenantId::new(), "begin").await?;
        let spare = match use_spare {
            true => spares::claim(&mut tx).await?,
            false => None,
        };
        if let Some(spare) = spare {
            tx.set_tenant(spare);
        }
        let id = tx.tenant_id();
        let filled: Result<Tenant, Failure> = async {
            let schema = id.schema_name();
            let tenant: Tenant = sqlx::query_as(&format!(
                "insert into public.tenants (id, slug, name, schema_name, role_name)
                 values ($1, $2, $3, $4, $4)
                 returning {TENANT_COLUMNS}"
            ))
            .bind(id.0)
            .bind(slug.as_str())
            .bind(name)
            .bind(&schema)
            .fetch_one(&mut *tx)
            .await
            .on_constraint("tenants_slug_key", || {
                TenancyError::SlugTaken(slug.to_string())
            })?;

            match spare {
                Some(spare) => spares::adopt(&mut tx, spare).await?,
                None => create_tenant_objects(&mut tx, id).await?,
            }
            match apply_pending(&mut tx, Ledger::Tenants, id, migrations).await {
                Ok(_) => {}
                Err(error @ TenancyError::ChecksumMismatch { .. }) if spare.is_some() => {
                    return Err(Failure::StaleSpare(id, error));
                }
                Err(error) => return Err(error.into()),
            }
            let switch = switch_statement("", id);
            (&mut *tx).execute(sqlx::raw_sql(&switch)).await?;
            let seeds = self.seeds().iter().map(|s| &**s as &dyn TenantSeed);
            for seed in seeds.chain(extra) {
                seed.seed(&mut tx).await.inspect_err(|_| {
                    tracing::error!(seed = seed.name(), tenant_id = %id, "tenant seed failed");
                })?;
            }
            // Last, just before the commit: the hook's job row has a unique key, and a
            // concurrent provisioning enqueueing the same key waits for this commit. Back as the
            // login role, so that what it enqueues is the platform's, not the tenant's.
            if let Some(hook) = self.provision_hook() {
                (&mut *tx)
                    .execute(sqlx::raw_sql("set local role none"))
                    .await?;
                hook.on_provision(&mut tx, id).await?;
            }
            Ok(tenant)
        }
        .await;
        let tenant = match filled {
            Ok(tenant) => tenant,
            Err(failure) => {
                // Rolled back at once, so that a claimed spare is free for the next
                // provisioning the moment this one fails (closing the connection would
                // release it only once the server noticed).
                let _ = tx.rollback().await;
                return Err(failure);
            }
        };
        tx.commit().await?;
        tracing::debug!(tenant_id = %id, from_spare = spare.is_some(), "provisioned a tenant");
        Ok(tenant)
    }

    /// The tenant with this id, whatever its status.
    pub async fn tenant_by_id(&self, id: TenantId) -> Result<Option<Tenant>, TenancyError> {
        Ok(sqlx::query_as(&format!(
            "select {TENANT_COLUMNS} from public.tenants where id = $1"
        ))
        .bind(id.0)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The tenant with this slug, whatever its status.
    pub async fn tenant_by_slug(&self, slug: &TenantSlug) -> Result<Option<Tenant>, TenancyError> {
        Ok(sqlx::query_as(&format!(
            "select {TENANT_COLUMNS} from public.tenants where slug = $1"
        ))
        .bind(slug.as_str())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Tenants ordered by slug, after `after` (keyset pagination), optionally of one status.
    pub async fn list_tenants(
        &self,
        status: Option<TenantStatus>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Tenant>, TenancyError> {
        Ok(sqlx::query_as(&format!(
            "select {TENANT_COLUMNS} from public.tenants
             where ($1::text is null or status = $1) and ($2::text is null or slug > $2)
             order by slug
             limit $3"
        ))
        .bind(status.map(TenantStatus::as_str))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Suspends or resumes a tenant. A deleted tenant stays deleted.
    pub async fn set_tenant_status(
        &self,
        id: TenantId,
        status: TenantStatus,
    ) -> Result<Tenant, TenancyError> {
        let current = self
            .tenant_by_id(id)
            .await?
            .ok_or(TenancyError::TenantNotFound)?;
        if current.status == TenantStatus::Deleted || status == TenantStatus::Deleted {
            return Err(TenancyError::InvalidTransition {
                from: current.status,
                to: status,
            });
        }
        let row: Option<Tenant> = sqlx::query_as(&format!(
            "update public.tenants set status = $2, updated_at = now()
             where id = $1 and status <> 'deleted'
             returning {TENANT_COLUMNS}"
        ))
        .bind(id.0)
        .bind(status.as_str())
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(tenant) => Ok(tenant),
            // Deleted between the two statements.
            None => Err(TenancyError::InvalidTransition {
                from: TenantStatus::Deleted,
                to: status,
            }),
        }
    }

    /// Renames and/or suspends or resumes a tenant, in one statement. A deleted tenant stays
    /// deleted.
    pub async fn update_tenant(
        &self,
        id: TenantId,
        name: Option<&str>,
        status: Option<TenantStatus>,
    ) -> Result<Tenant, TenancyError> {
        let name = name.map(validate_name).transpose()?;
        if status == Some(TenantStatus::Deleted) {
            return Err(TenancyError::InvalidTransition {
                from: TenantStatus::Active,
                to: TenantStatus::Deleted,
            });
        }
        let row: Option<Tenant> = sqlx::query_as(&format!(
            "update public.tenants
             set name = coalesce($2, name), status = coalesce($3, status), updated_at = now()
             where id = $1 and status <> 'deleted'
             returning {TENANT_COLUMNS}"
        ))
        .bind(id.0)
        .bind(name)
        .bind(status.map(TenantStatus::as_str))
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(tenant) => Ok(tenant),
            None => match self.tenant_by_id(id).await? {
                Some(t) => Err(TenancyError::InvalidTransition {
                    from: t.status,
                    to: status.unwrap_or(t.status),
                }),
                None => Err(TenancyError::TenantNotFound),
            },
        }
    }

    /// Marks a tenant deleted: unreachable at once, purged once `grace` has passed.
    /// Deleting a deleted tenant changes nothing.
    pub async fn delete_tenant(
        &self,
        id: TenantId,
        grace: Duration,
    ) -> Result<Tenant, TenancyError> {
        let grace = chrono::Duration::from_std(grace)
            .unwrap_or(chrono::Duration::MAX)
            .min(chrono::Duration::days(36_500));
        let row: Option<Tenant> = sqlx::query_as(&format!(
            "update public.tenants
             set status = 'deleted', deleted_at = coalesce(deleted_at, now()),
                 purge_after = coalesce(purge_after, now() + $2), updated_at = now()
             where id = $1
             returning {TENANT_COLUMNS}"
        ))
        .bind(id.0)
        .bind(grace)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(TenancyError::TenantNotFound)
    }

    /// Drops the schema and role of every deleted tenant whose grace period ended by
    /// `cutoff`, runs the [`PurgeHook`], and forgets the tenant. Safe to run from several processes at once.
    pub async fn purge_deleted_tenants(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<TenantId>, TenancyError> {
        let mut purged = Vec::new();
        loop {
            let mut tx = self.pool().begin().await?;
            let id: Option<uuid::Uuid> = sqlx::query_scalar(
                "select id from public.tenants
                 where status = 'deleted' and purge_after <= $1
                 order by purge_after
                 limit 1
                 for update skip locked",
            )
            .bind(cutoff)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id.map(TenantId) else { break };
            let dropped = async {
                drop_tenant_objects(&mut tx, id).await?;
                sqlx::query("delete from public.tenants where id = $1")
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
                if let Some(hook) = self.purge_hook() {
                    hook.on_purge(&mut tx, id).await?;
                }
                Ok::<_, TenancyError>(())
            }
            .await;
            match dropped {
                Ok(()) => {
                    tx.commit().await?;
                    tracing::info!(tenant_id = %id, "purged deleted tenant");
                    purged.push(id);
                }
                Err(error) => {
                    // One tenant that cannot be dropped now must not block the others:
                    // try it again in an hour.
                    drop(tx);
                    tracing::error!(tenant_id = %id, error = %crate::error_chain(&error), "purging a deleted tenant failed; retrying in an hour");
                    sqlx::query("update public.tenants set purge_after = now() + interval '1 hour' where id = $1")
                        .bind(id.0)
                        .execute(self.pool())
                        .await?;
                }
            }
        }
        Ok(purged)
    }
}

/// Why one provisioning transaction failed.
enum Failure {
    /// The claimed spare's ledger disagrees with the migrations (a changed file).
    StaleSpare(TenantId, TenancyError),
    /// Anything else: the caller gets it.
    Error(TenancyError),
}

impl Failure {
    fn into_error(self) -> TenancyError {
        match self {
            Self::StaleSpare(_, error) | Self::Error(error) => error,
        }
    }
}

impl From<TenancyError> for Failure {
    fn from(error: TenancyError) -> Self {
        Self::Error(error)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Error(error.into())
    }
}
