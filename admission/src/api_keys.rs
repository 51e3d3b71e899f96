//! Tenant API keys at admission: their rows, cached in process for a few seconds keyed by
//! (tenant, key id), and the once-a-minute record of their last use.
//!
//! The cache keeps verification off the database on a busy key; it never decides alone
//! whether a key still works. Revocation is announced like a session's (the key's id in
//! the revocation list, [`crate::revocation`], read in authentication's one Redis round
//! trip, with its fallback to the database), so a revoked key is refused on the very next
//! request on every instance, cached row or not; the instance that revoked it also drops
//! its row here. Expiry is judged from the row on every request. Unknown ids are cached as
//! such too (bounded capacity), so random ids cost one query each at most every
//! [`ROW_TTL`].

use std::{sync::Arc, time::Duration};

use identity::{ClientInfo, api_keys::KeyRecord};
use tenancy::{TenantDb, TenantId};
use uuid::Uuid;

use crate::AdmissionError;

/// How long a row is kept in process.
pub const ROW_TTL: Duration = Duration::from_secs(5);

/// Most rows kept in process.
const CAPACITY: u64 = 10_000;

/// How often the last use of one key is written at most (per instance; the statement
/// itself skips a write within a minute of the last, across instances).
const USE_INTERVAL: Duration = Duration::from_secs(60);

/// Cached key rows and last-use records.
pub struct ApiKeys {
    tenant_db: TenantDb,
    rows: moka::sync::Cache<(TenantId, Uuid), Option<Arc<KeyRecord>>>,
    used: moka::sync::Cache<(TenantId, Uuid), ()>,
}

impl ApiKeys {
    /// Rows are kept for [`ROW_TTL`].
    pub fn new(tenant_db: TenantDb) -> Self {
        Self {
            tenant_db,
            rows: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ROW_TTL)
                .build(),
            used: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(USE_INTERVAL)
                .build(),
        }
    }

    /// The row of key `id` of `tenant` (`None`: no such key), from the cache or the
    /// tenant's schema.
    pub async fn record(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<Arc<KeyRecord>>, AdmissionError> {
        if let Some(row) = self.rows.get(&(tenant, id)) {
            return Ok(row);
        }
        let mut tx = self.tenant_db.begin(tenant).await?;
        let row = identity::api_keys::key_record(&mut tx, id)
            .await
            .map_err(store_error)?
            .map(Arc::new);
        tx.commit().await?;
        self.rows.insert((tenant, id), row.clone());
        Ok(row)
    }

    /// Drops the cached row of key `id` (after revoking it here).
    pub fn forget(&self, tenant: TenantId, id: Uuid) {
        self.rows.invalidate(&(tenant, id));
    }

    /// Records a use of key `id` from `client`, at most once a minute.
    pub async fn record_use(
        &self,
        tenant: TenantId,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), AdmissionError> {
        if self.used.contains_key(&(tenant, id)) {
            return Ok(());
        }
        let mut tx = self.tenant_db.begin(tenant).await?;
        identity::api_keys::record_use(&mut tx, id, client)
            .await
            .map_err(store_error)?;
        tx.commit().await?;
        self.used.insert((tenant, id), ());
        Ok(())
    }
}

fn store_error(error: identity::StoreError) -> AdmissionError {
    match error {
        identity::StoreError::Database(e) => AdmissionError::Database(e),
        other => AdmissionError::Database(sqlx::Error::Protocol(other.to_string())),
    }
}
