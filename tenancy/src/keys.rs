//! Platform API keys: the credentials of `/v1/admin/*`. A key is 256 random bits shown
//! once; the control plane keeps its SHA-256 (a fast hash is right for a high-entropy
//! secret: there is nothing to brute-force) and a short prefix to tell keys apart.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{ControlDb, TenancyError};

/// Every key starts with this, so leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "cnp_";

/// A key just made: the only moment its secret exists outside the caller.
#[derive(Debug)]
pub struct NewApiKey {
    /// Key id.
    pub id: Uuid,
    /// The secret, to hand to the operator once.
    pub key: String,
}

/// A key that authenticated a request.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Key id.
    pub id: Uuid,
    /// What the operator called it.
    pub name: String,
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

impl ControlDb {
    /// Makes and stores a new key.
    pub async fn create_api_key(&self, name: &str) -> Result<NewApiKey, TenancyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| TenancyError::Database(sqlx::Error::Io(std::io::Error::other(e))))?;
        let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into public.platform_api_keys (id, name, prefix, key_hash) values ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(name)
        .bind(&key[..KEY_PREFIX.len() + 8])
        .bind(hash(&key))
        .execute(self.pool())
        .await?;
        Ok(NewApiKey { id, key })
    }

    /// The live key matching `presented`, recording its use.
    pub async fn verify_api_key(&self, presented: &str) -> Result<Option<ApiKey>, TenancyError> {
        if !presented.starts_with(KEY_PREFIX) || presented.len() > 128 {
            return Ok(None);
        }
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "update public.platform_api_keys set last_used_at = now()
             where key_hash = $1 and revoked_at is null
             returning id, name",
        )
        .bind(hash(presented))
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(id, name)| ApiKey { id, name }))
    }
}
