//! `TenantDb`: the only way to run tenant-scoped SQL.
//!
//! Every tenant transaction starts with one simple-protocol round trip that opens the
//! transaction and switches it to the tenant's role and schema:
//!
//! ```sql
//! begin; set local role "t_<id>"; set local search_path to "t_<id>"
//! ```
//!
//! Both settings are transaction-local, so commit and rollback return the pooled connection
//! to the login role and its default search path. While the transaction runs, the database
//! itself refuses anything outside the tenant's schema: another tenant's schema and the
//! control plane answer *permission denied*. The search path holds the tenant schema alone,
//! so a table missing from a lagging tenant is an error, never the control plane's table
//! of the same name.
//!
//! [`TenantTx`] manages the transaction itself rather than through sqlx's `Transaction`:
//! sqlx (0.8) does not roll back a `begin` that fails or is cancelled half-way, and would
//! hand the pool a connection still inside the tenant's transaction, acting as the tenant.
//! A `TenantTx` that ends any way other than [`TenantTx::commit`] or
//! [`TenantTx::rollback`] (an error, a dropped request future) closes its connection
//! instead of returning it to the pool.

use std::ops::{Deref, DerefMut};

use sqlx::{Executor, PgConnection, PgPool, Postgres, pool::PoolConnection};

use crate::{TenancyError, TenantId};

/// Opens tenant-scoped transactions on the shared pool.
#[derive(Debug, Clone)]
pub struct TenantDb {
    pool: PgPool,
}

impl TenantDb {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Begins a transaction acting as `tenant`'s role inside its schema.
    pub async fn begin(&self, tenant: TenantId) -> Result<TenantTx, TenancyError> {
        let conn = self.pool.acquire().await?;
        TenantTx::open(conn, tenant, &switch_statement("begin; ", tenant)).await
    }
}

/// `set local role` and `set local search_path` for `tenant`, after `prefix`.
pub(crate) fn switch_statement(prefix: &str, tenant: TenantId) -> String {
    let ident = tenant.quoted_ident();
    format!("{prefix}set local role {ident}; set local search_path to {ident}")
}

/// A transaction inside one tenant's schema. Dereferences to the connection, so queries
/// run with `query(...).fetch_one(&mut *tx)`. Dropping it without [`TenantTx::commit`] or
/// [`TenantTx::rollback`] discards its work (the connection is closed, which rolls back).
#[derive(Debug)]
pub struct TenantTx {
    conn: PoolConnection<Postgres>,
    tenant: TenantId,
    open: bool,
}

impl TenantTx {
    /// Runs `begin_statement` (which must open a transaction) on `conn`. Should this fail or
    /// be cancelled, the guard closes the connection.
    pub(crate) async fn open(
        conn: PoolConnection<Postgres>,
        tenant: TenantId,
        begin_statement: &str,
    ) -> Result<Self, TenancyError> {
        let mut tx = Self {
            conn,
            tenant,
            open: true,
        };
        (&mut *tx.conn)
            .execute(sqlx::raw_sql(begin_statement))
            .await?;
        Ok(tx)
    }

    /// Makes this the transaction of `tenant` instead: provisioning opens its transaction
    /// before it knows whether it claims a spare, whose id the tenant then takes. Only before
    /// any switch to a tenant role.
    pub(crate) fn set_tenant(&mut self, tenant: TenantId) {
        self.tenant = tenant;
    }

    /// Whose transaction this is.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    /// Commits.
    pub async fn commit(mut self) -> Result<(), TenancyError> {
        (&mut *self.conn).execute(sqlx::raw_sql("commit")).await?;
        self.open = false;
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), TenancyError> {
        (&mut *self.conn).execute(sqlx::raw_sql("rollback")).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if self.open {
            // Its state is unknown (a statement may still be running): never reuse it.
            self.conn.close_on_drop();
        }
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}
