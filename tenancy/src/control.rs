//! The control-plane handle: the one shared connection pool and the platform-wide SQL
//! that runs in the `public` schema (tenants, jobs, keys, the migration ledger).

use std::{sync::Arc, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{ProvisionHook, PurgeHook, TenancyError, TenantDb, TenantSeed};

/// Control-plane migrations, embedded at build time from `migrations/control/`.
static CONTROL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/control");

/// How the shared pool is sized and recycled.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connection options (URL already parsed and validated by the caller).
    pub connect: PgConnectOptions,
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// How long a request waits for a free connection before giving up.
    pub acquire_timeout: Duration,
    /// Connections are closed after this long. Connections touch many tenant schemas and
    /// their catalog caches grow with each one, so they must not live forever.
    pub max_lifetime: Duration,
}

/// A snapshot of the pool for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    /// Open connections.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Configured maximum.
    pub max: u32,
}

/// The explicitly named handle for platform-wide (control-plane) SQL.
///
/// It owns the single pool all tenants share; tenant-scoped SQL never uses it directly.
#[derive(Clone)]
pub struct ControlDb {
    pool: PgPool,
    seeds: Arc<[Arc<dyn TenantSeed>]>,
    purge_hook: Option<Arc<dyn PurgeHook>>,
    provision_hook: Option<Arc<dyn ProvisionHook>>,
}

impl std::fmt::Debug for ControlDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlDb")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl ControlDb {
    /// Builds the shared pool without connecting: the first query connects, so a
    /// database that is down at start-up shows in `/health/ready` instead of a crash.
    pub fn connect_lazy(settings: &PoolSettings) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .max_lifetime(settings.max_lifetime)
            // No ping before every checkout: it is a round trip per request. A connection
            // that died meanwhile fails its one query and is discarded.
            .test_before_acquire(false)
            .connect_lazy_with(settings.connect.clone());
        Self {
            pool,
            seeds: Arc::new([]),
            purge_hook: None,
            provision_hook: None,
        }
    }

    /// Registers the seeds every new tenant receives (see [`TenantSeed`]).
    pub fn with_seeds(mut self, seeds: Vec<Arc<dyn TenantSeed>>) -> Self {
        self.seeds = seeds.into();
        self
    }

    /// Registers what runs inside every tenant purge (see [`PurgeHook`]).
    pub fn with_purge_hook(mut self, hook: Arc<dyn PurgeHook>) -> Self {
        self.purge_hook = Some(hook);
        self
    }

    /// Registers what runs inside every provisioning (see [`ProvisionHook`]).
    pub fn with_provision_hook(mut self, hook: Arc<dyn ProvisionHook>) -> Self {
        self.provision_hook = Some(hook);
        self
    }

    pub(crate) fn provision_hook(&self) -> Option<&Arc<dyn ProvisionHook>> {
        self.provision_hook.as_ref()
    }

    pub(crate) fn purge_hook(&self) -> Option<&Arc<dyn PurgeHook>> {
        self.purge_hook.as_ref()
    }

    pub(crate) fn seeds(&self) -> &[Arc<dyn TenantSeed>] {
        &self.seeds
    }

    /// The handle for tenant-scoped transactions, on the same pool.
    pub fn tenant_db(&self) -> TenantDb {
        TenantDb::new(self.pool.clone())
    }

    /// The pool, for control-plane queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending control-plane migration.
    pub async fn migrate(&self) -> Result<(), TenancyError> {
        CONTROL_MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }

    /// Fails with [`TenancyError::MigrationsPending`] unless every control-plane migration
    /// this binary carries has been applied: a server must not run against an older schema.
    pub async fn ensure_migrated(&self) -> Result<(), TenancyError> {
        let exists: bool =
            sqlx::query_scalar("select to_regclass('public._sqlx_migrations') is not null")
                .fetch_one(&self.pool)
                .await?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar("select version from public._sqlx_migrations where success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        let pending: Vec<_> = CONTROL_MIGRATIONS
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .collect();
        match pending.first() {
            None => Ok(()),
            Some(first) => Err(TenancyError::MigrationsPending {
                pending: pending.len(),
                first: format!("{} ({})", first.version, first.description),
            }),
        }
    }

    /// One round trip to the database.
    pub async fn ping(&self) -> Result<(), TenancyError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Current pool occupancy.
    pub fn status(&self) -> PoolStatus {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStatus {
            size,
            idle,
            max: self.pool.options().get_max_connections(),
        }
    }

    /// Closes every connection; waits for checked-out ones to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
