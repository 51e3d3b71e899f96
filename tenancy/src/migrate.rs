//! Tenant migrations: the SQL in `migrations/tenant/`, applied to every tenant schema in
//! lockstep, one transaction per tenant, recorded in the control plane's
//! `tenant_migrations` ledger.
//!
//! One transaction per tenant keeps lock usage flat however many tenants there are, makes
//! a run resumable (what committed stays committed) and keeps one failing tenant from
//! touching the others.

use std::{borrow::Cow, sync::Arc};

use futures_util::{StreamExt, stream};
use sqlx::{PgConnection, PgPool};

use sqlx::Executor;

use crate::{ControlDb, TenancyError, TenantId, error_chain};

/// Tenant migrations, embedded at build time from `migrations/tenant/`.
static TENANT_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/tenant");

/// One migration to apply to every tenant schema.
#[derive(Debug, Clone)]
pub struct TenantMigration {
    /// Ordering key (the file's numeric prefix).
    pub version: i64,
    /// The file's description.
    pub description: Cow<'static, str>,
    /// The SQL, run with the tenant schema as the only search path entry.
    pub sql: Cow<'static, str>,
    /// SHA-384 of the SQL, as sqlx computes it.
    pub checksum: Cow<'static, [u8]>,
}

/// The tenant migrations this binary carries, oldest first.
pub fn embedded_migrations() -> Vec<TenantMigration> {
    TENANT_MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| TenantMigration {
            version: m.version,
            description: m.description.clone(),
            sql: m.sql.clone(),
            checksum: m.checksum.clone(),
        })
        .collect()
}

/// Which ledger records the migrations a schema has: a tenant's rows in
/// `public.tenant_migrations`, or a spare's in `public.spare_migrations` (see
/// [`ControlDb::replenish_spares`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ledger {
    /// `public.tenant_migrations`.
    Tenants,
    /// `public.spare_migrations`.
    Spares,
}

impl Ledger {
    fn applied_sql(self) -> &'static str {
        match self {
            Self::Tenants => {
                "select version, checksum from public.tenant_migrations where tenant_id = $1"
            }
            Self::Spares => {
                "select version, checksum from public.spare_migrations where spare_id = $1"
            }
        }
    }

    fn record_sql(self) -> &'static str {
        match self {
            Self::Tenants => {
                "insert into public.tenant_migrations (tenant_id, version, description, checksum)
                 values ($1, $2, $3, $4)"
            }
            Self::Spares => {
                "insert into public.spare_migrations (spare_id, version, description, checksum)
                 values ($1, $2, $3, $4)"
            }
        }
    }
}

/// What happened to one tenant during a run.
#[derive(Debug)]
pub struct TenantOutcome {
    /// The tenant.
    pub tenant: TenantId,
    /// Its slug, for humans.
    pub slug: String,
    /// Migrations applied (0: already current), or why it failed.
    pub result: Result<usize, String>,
}

/// Totals of a run.
#[derive(Debug, Default)]
pub struct MigrationSummary {
    /// Tenants that received at least one migration.
    pub migrated: usize,
    /// Tenants that were already current.
    pub current: usize,
    /// Tenants that failed, with the reason.
    pub failed: Vec<(String, String)>,
}

impl ControlDb {
    /// Brings every tenant schema (except deleted ones) up to `migrations`, at most
    /// `concurrency` tenants at a time, calling `on_outcome` as each one finishes.
    pub async fn migrate_tenants(
        &self,
        migrations: &[TenantMigration],
        concurrency: usize,
        on_outcome: impl Fn(&TenantOutcome),
    ) -> Result<MigrationSummary, TenancyError> {
        let tenants: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "select id, slug from public.tenants where status <> 'deleted' order by id",
        )
        .fetch_all(self.pool())
        .await?;
        let migrations: Arc<[TenantMigration]> = migrations.into();
        let pool = self.pool().clone();
        let mut outcomes = stream::iter(tenants)
            .map(|(id, slug)| {
                let pool = pool.clone();
                let migrations = migrations.clone();
                async move {
                    let tenant = TenantId(id);
                    let result = migrate_one(&pool, tenant, &migrations)
                        .await
                        .map_err(|e| error_chain(&e));
                    TenantOutcome {
                        tenant,
                        slug,
                        result,
                    }
                }
            })
            .buffer_unordered(concurrency.max(1));
        let mut summary = MigrationSummary::default();
        while let Some(outcome) = outcomes.next().await {
            on_outcome(&outcome);
            match &outcome.result {
                Ok(0) => summary.current += 1,
                Ok(_) => summary.migrated += 1,
                Err(reason) => summary.failed.push((outcome.slug.clone(), reason.clone())),
            }
        }
        Ok(summary)
    }

    /// Fails with [`TenancyError::TenantsBehind`] when a live tenant lacks the newest
    /// embedded migration: the server must not serve a schema its queries do not match.
    /// Spares are not tenants and do not count: a lagging spare is brought current inside
    /// the provisioning that claims it.
    pub async fn ensure_tenants_current(&self) -> Result<(), TenancyError> {
        let Some(latest) = embedded_migrations().last().map(|m| m.version) else {
            return Ok(());
        };
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from public.tenants t
             where t.status <> 'deleted'
               and not exists (select 1 from public.tenant_migrations m
                               where m.tenant_id = t.id and m.version = $1)",
        )
        .bind(latest)
        .fetch_one(self.pool())
        .await?;
        if behind > 0 {
            return Err(TenancyError::TenantsBehind { behind, latest });
        }
        Ok(())
    }
}

async fn migrate_one(
    pool: &PgPool,
    tenant: TenantId,
    migrations: &[TenantMigration],
) -> Result<usize, TenancyError> {
    let mut tx = pool.begin().await?;
    // Locking the tenant row serialises concurrent migrators on the same tenant.
    let status: Option<String> =
        sqlx::query_scalar("select status from public.tenants where id = $1 for no key update")
            .bind(tenant.0)
            .fetch_optional(&mut *tx)
            .await?;
    if status.as_deref().is_none_or(|s| s == "deleted") {
        return Ok(0);
    }
    let applied = apply_pending(&mut tx, Ledger::Tenants, tenant, migrations).await?;
    if applied > 0 {
        tx.commit().await?;
    }
    Ok(applied)
}

/// Applies the migrations the schema of `tenant` lacks, inside the caller's transaction, and
/// records them in `ledger`. The caller's transaction is left with the tenant schema as its
/// search path when anything was applied.
///
/// Raw SQL runs as `conn.execute(raw_sql(..))`: the `raw_sql(..).execute(conn)` form makes
/// the future fail rustc's `Send` check (sqlx issue 3150).
pub(crate) async fn apply_pending(
    conn: &mut PgConnection,
    ledger: Ledger,
    tenant: TenantId,
    migrations: &[TenantMigration],
) -> Result<usize, TenancyError> {
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(ledger.applied_sql())
        .bind(tenant.0)
        .fetch_all(&mut *conn)
        .await?;
    for (version, checksum) in &applied {
        let changed = migrations
            .iter()
            .any(|m| m.version == *version && m.checksum.as_ref() != checksum.as_slice());
        if changed {
            return Err(TenancyError::ChecksumMismatch { version: *version });
        }
    }
    let pending: Vec<TenantMigration> = migrations
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .cloned()
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let ident = tenant.quoted_ident();
    let setup = format!("set local search_path to {ident}; set local lock_timeout = '30s'");
    (&mut *conn).execute(sqlx::raw_sql(&setup)).await?;
    for m in &pending {
        let sql: String = m.sql.clone().into_owned();
        (&mut *conn).execute(sqlx::raw_sql(&sql)).await?;
        sqlx::query(ledger.record_sql())
            .bind(tenant.0)
            .bind(m.version)
            .bind(m.description.clone().into_owned())
            .bind(m.checksum.clone().into_owned())
            .execute(&mut *conn)
            .await?;
    }
    Ok(pending.len())
}
