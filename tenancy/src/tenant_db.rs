//! `TenantDb`: the only way to run tenant-scoped SQL.
//!
//! Every tenant transaction starts with one simple-protocol round trip that opens the
//! transaction and switches it to the tenant's role and schema:
//!
//! ```sql
//! begin; set local role "t_<id>"; set local search_path to "t_<id>"
//! ```
//!
//! Both settings are transaction-local, so commit, rollback, an error or a dropped future
//! (sqlx rolls back a dropped transaction before the connection is used again) all return
//! the pooled connection to the login role and its default search path. While the
//! transaction runs, the database itself refuses anything outside the tenant's schema:
//! another tenant's schema and the control plane answer *permission denied*. The search
//! path holds the tenant schema alone, so a table missing from a lagging tenant is an error,
//! never the control plane's table of the same name.

use std::ops::{Deref, DerefMut};

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

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
        let tx = self
            .pool
            .begin_with(switch_statement("begin; ", tenant))
            .await?;
        Ok(TenantTx { tx, tenant })
    }
}

/// `set local role` and `set local search_path` for `tenant`, after `prefix`.
pub(crate) fn switch_statement(prefix: &str, tenant: TenantId) -> String {
    let ident = tenant.quoted_ident();
    format!("{prefix}set local role {ident}; set local search_path to {ident}")
}

/// A transaction inside one tenant's schema. Dereferences to the connection, so queries
/// run with `query(...).fetch_one(&mut *tx)`. Dropping it without [`TenantTx::commit`]
/// rolls back.
#[derive(Debug)]
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
}

impl TenantTx {
    pub(crate) fn from_transaction(tx: Transaction<'static, Postgres>, tenant: TenantId) -> Self {
        Self { tx, tenant }
    }

    /// Whose transaction this is.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), TenancyError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), TenancyError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
