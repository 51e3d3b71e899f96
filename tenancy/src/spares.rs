//! Spare tenant schemas: a pool of schemas built ahead of time, so that provisioning a
//! tenant claims one instead of running every tenant migration's DDL while the caller waits.
//!
//! Creating a schema's tables, indexes and TOAST relations is file and catalog work that
//! costs about a millisecond per relation, and it grows with every tenant migration; copying
//! a template schema would do the same work. A spare is built exactly as a tenant's schema
//! is (role and schema `t_<id>` from a fresh [`TenantId`], grants, every tenant migration),
//! in a transaction of its own, with a row in `public.tenant_spares` and its ledger in
//! `public.spare_migrations`, but with no row in `public.tenants` and no seeds.
//!
//! * **Nothing reaches a spare.** Resolution, listings, jobs, tenant migrations and purges
//!   all read `public.tenants`; a spare has no row there, so no slug, id or `X-Tenant`
//!   resolves to it, and no worker runs a job for it.
//! * **Claiming** ([`claim`], then [`adopt`] once the tenant row exists) happens inside the
//!   provisioning transaction: the spare's row is locked with `for update skip locked` (two
//!   provisionings never take the same spare), its ledger rows move to
//!   `public.tenant_migrations` under the same id, and the spare row goes. Provisioning then
//!   applies what the spare lacks and seeds it, so the ledger stays the truth; if anything
//!   fails, the transaction rolls back and the spare is still a spare.
//! * **Replenishing** ([`ControlDb::replenish_spares`]) builds the missing spares in one
//!   transaction under a transaction-scoped advisory lock, counting the pool under that
//!   lock, so concurrent replenishers never build past the target. One transaction, because
//!   every committed change to roles makes each connection of the cluster recompute the
//!   login role's memberships (one per tenant) at its next `set role`: PostgreSQL 15 does
//!   that in time quadratic in their number, about 80 ms at 4,000 tenants, so a refill of
//!   four spares costs every connection one such stall instead of four.
//! * **Migrating** ([`ControlDb::migrate_spares`], run by `canopy migrate` after the tenants)
//!   brings spares current like tenants, and drops the ones that cannot be (a changed
//!   migration): a spare holds no data, so dropping one loses nothing.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    ControlDb, TenancyError, TenantId, error_chain,
    migrate::{Ledger, TenantMigration, apply_pending, embedded_migrations},
    schema::{create_tenant_objects, drop_tenant_objects},
};

/// Key of the transaction-scoped advisory lock replenishers hold while counting and building
/// (`canopy` in ASCII, then 1).
const REPLENISH_LOCK: i64 = 0x6361_6e6f_7079_0001;

/// What [`ControlDb::migrate_spares`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpareSummary {
    /// Spares that received at least one migration.
    pub migrated: usize,
    /// Spares that were already current.
    pub current: usize,
    /// Spares dropped because they could not be brought current (the replenisher builds
    /// new ones).
    pub dropped: usize,
}

/// Locks one spare for the caller's transaction, oldest first, skipping those another
/// provisioning holds. `None` when there is none to take.
pub(crate) async fn claim(conn: &mut PgConnection) -> Result<Option<TenantId>, TenancyError> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "select id from public.tenant_spares
         order by created_at, id
         limit 1
         for update skip locked",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(id.map(TenantId))
}

/// Makes the claimed spare `id` a tenant's schema: its ledger rows become the tenant's
/// (`public.tenants` must already hold the row with this id) and the spare row goes.
pub(crate) async fn adopt(conn: &mut PgConnection, id: TenantId) -> Result<(), TenancyError> {
    sqlx::query(
        "insert into public.tenant_migrations (tenant_id, version, description, checksum, applied_at)
         select spare_id, version, description, checksum, applied_at
         from public.spare_migrations where spare_id = $1",
    )
    .bind(id.0)
    .execute(&mut *conn)
    .await?;
    // Its `spare_migrations` rows go with it (`on delete cascade`).
    sqlx::query("delete from public.tenant_spares where id = $1")
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl ControlDb {
    /// Builds spares (with this binary's tenant migrations) until there are `target`, all in
    /// one transaction; returns how many it built. Safe to run from several processes at
    /// once: they take turns, and none builds past `target`.
    pub async fn replenish_spares(&self, target: usize) -> Result<usize, TenancyError> {
        self.replenish_spares_with(target, &embedded_migrations())
            .await
    }

    /// [`Self::replenish_spares`] with an explicit migration set (benchmarks and tests).
    pub async fn replenish_spares_with(
        &self,
        target: usize,
        migrations: &[TenantMigration],
    ) -> Result<usize, TenancyError> {
        let target = i64::try_from(target).unwrap_or(i64::MAX);
        let mut tx = self.pool().begin().await?;
        // Counted after the lock is held, so this sees every spare the previous holder
        // committed.
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(REPLENISH_LOCK)
            .execute(&mut *tx)
            .await?;
        let spares: i64 = sqlx::query_scalar("select count(*) from public.tenant_spares")
            .fetch_one(&mut *tx)
            .await?;
        let missing = usize::try_from(target.saturating_sub(spares)).unwrap_or(0);
        for _ in 0..missing {
            let id = build_spare(&mut tx, migrations).await?;
            tracing::debug!(spare_id = %id, "built a spare tenant schema");
        }
        tx.commit().await?;
        Ok(missing)
    }

    /// How many spares there are now.
    pub async fn spare_count(&self) -> Result<i64, TenancyError> {
        Ok(
            sqlx::query_scalar("select count(*) from public.tenant_spares")
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Brings every spare up to `migrations`, one transaction each, and drops those that
    /// cannot be brought current (see the module docs). A spare that a provisioning holds
    /// at that moment is skipped: the provisioning applies what it lacks.
    pub async fn migrate_spares(
        &self,
        migrations: &[TenantMigration],
    ) -> Result<SpareSummary, TenancyError> {
        let spares: Vec<Uuid> =
            sqlx::query_scalar("select id from public.tenant_spares order by id")
                .fetch_all(self.pool())
                .await?;
        let mut summary = SpareSummary::default();
        for id in spares.into_iter().map(TenantId) {
            let mut tx = self.pool().begin().await?;
            if !lock_spare(&mut tx, id).await? {
                tx.rollback().await?;
                continue;
            }
            // Rolled back explicitly, not dropped: a dropped transaction's rollback waits
            // for the connection's next use, and until then the spare stays locked.
            match apply_pending(&mut tx, Ledger::Spares, id, migrations).await {
                Ok(0) => {
                    tx.rollback().await?;
                    summary.current += 1;
                }
                Ok(_) => {
                    tx.commit().await?;
                    summary.migrated += 1;
                }
                Err(error) => {
                    tx.rollback().await?;
                    tracing::warn!(spare_id = %id, error = %error_chain(&error), "a spare schema cannot be brought current; dropping it");
                    if self.discard_spare(id).await? {
                        summary.dropped += 1;
                    }
                }
            }
        }
        Ok(summary)
    }

    /// Drops the spare `id` (its schema, role and rows) unless a provisioning holds it;
    /// returns whether it did.
    pub(crate) async fn discard_spare(&self, id: TenantId) -> Result<bool, TenancyError> {
        let mut tx = self.pool().begin().await?;
        if !lock_spare(&mut tx, id).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        drop_tenant_objects(&mut tx, id).await?;
        sqlx::query("delete from public.tenant_spares where id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Locks the spare row `id` for the caller's transaction; `false` when it is gone or a
/// provisioning holds it.
async fn lock_spare(conn: &mut PgConnection, id: TenantId) -> Result<bool, TenancyError> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "select id from public.tenant_spares where id = $1 for update skip locked",
    )
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

/// Builds one spare inside the caller's transaction: its row first (its ledger refers to
/// it), then the role, schema and grants, then every migration.
async fn build_spare(
    conn: &mut PgConnection,
    migrations: &[TenantMigration],
) -> Result<TenantId, TenancyError> {
    let id = TenantId::new();
    sqlx::query("insert into public.tenant_spares (id) values ($1)")
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    create_tenant_objects(conn, id).await?;
    apply_pending(conn, Ledger::Spares, id, migrations).await?;
    Ok(id)
}
