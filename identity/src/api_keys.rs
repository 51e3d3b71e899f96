//! Tenant API keys (service accounts): the wire form of a key, and the SQL of the
//! `api_keys` table of a tenant schema.
//!
//! A key reads `cnt_<id>_<secret>`: `cnt_` ("Canopy tenant"; platform keys are `cnp_`), 43
//! base64url characters of the tenant's id and the key's id (16 bytes each), `_`, and 43
//! base64url characters of a 256-bit secret. Saying its tenant lets a key used against
//! another tenant be refused as *wrong tenant* (403) before any SQL, like an access token
//! of another tenant; the schema it is looked up in is still the one the request resolved,
//! never one built from the key's text. Only the SHA-256 of the secret is stored and it is
//! compared in constant time. The key's permissions are a set of catalog names; what it
//! may do at a given moment is that set intersected with its creator's permissions then.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::{ClientInfo, StoreError};

/// Every tenant API key starts with this, so secret scanners can recognise one.
pub const KEY_PREFIX: &str = "cnt_";

/// Most live keys a tenant may have.
pub const MAX_KEYS_PER_TENANT: i64 = 100;

/// Longest lifetime a key may be given (its `expires_at` at most this far ahead).
pub const MAX_LIFETIME_DAYS: i64 = 366;

const ID_CHARS: usize = 43;
const SECRET_CHARS: usize = 43;
/// Length of every key on the wire.
pub const KEY_LEN: usize = KEY_PREFIX.len() + ID_CHARS + 1 + SECRET_CHARS;

/// A key as the client holds it. Never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyToken {
    /// The tenant the key belongs to.
    pub tenant: Uuid,
    /// The key's id.
    pub id: Uuid,
    secret: [u8; 32],
}

impl std::fmt::Debug for KeyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyToken")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyToken {
    /// A new key of `tenant`: a fresh id and 256 bits from the operating system.
    pub fn generate(tenant: Uuid) -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random generator failed");
        Self {
            tenant,
            id: Uuid::new_v4(),
            secret,
        }
    }

    /// Whether `presented` claims to be a tenant API key (so that authentication takes it
    /// for one rather than for an access token).
    pub fn looks_like_one(presented: &str) -> bool {
        presented.starts_with(KEY_PREFIX)
    }

    /// Parses what a client sent; `None` for anything this service cannot have issued.
    pub fn parse(presented: &str) -> Option<Self> {
        if presented.len() != KEY_LEN || !presented.is_ascii() {
            return None;
        }
        let rest = presented.strip_prefix(KEY_PREFIX)?;
        let (id, rest) = rest.split_at(ID_CHARS);
        let secret = rest.strip_prefix('_')?;
        let ids: [u8; 32] = URL_SAFE_NO_PAD.decode(id).ok()?.try_into().ok()?;
        let secret: [u8; 32] = URL_SAFE_NO_PAD.decode(secret).ok()?.try_into().ok()?;
        let tenant = Uuid::from_slice(&ids[..16]).ok()?;
        let id = Uuid::from_slice(&ids[16..]).ok()?;
        Some(Self { tenant, id, secret })
    }

    /// The wire form (`cnt_…`, [`KEY_LEN`] characters).
    pub fn encode(&self) -> String {
        let mut ids = [0u8; 32];
        ids[..16].copy_from_slice(self.tenant.as_bytes());
        ids[16..].copy_from_slice(self.id.as_bytes());
        format!(
            "{KEY_PREFIX}{}_{}",
            URL_SAFE_NO_PAD.encode(ids),
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }

    /// What the database stores: the SHA-256 of the secret.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret).to_vec()
    }

    /// Whether this token's secret is the one `stored` is the hash of (constant time).
    pub fn matches(&self, stored: &[u8]) -> bool {
        bool::from(self.hash().as_slice().ct_eq(stored))
    }
}

/// A key as listed (never with its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    /// Key id.
    pub id: Uuid,
    /// What its creator called it.
    pub name: String,
    /// Permission names (of the catalog).
    pub permissions: Vec<String>,
    /// Who made it.
    pub created_by: Uuid,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client address of that use.
    pub last_used_ip: Option<String>,
}

/// What authenticating with a key needs of its row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRecord {
    /// Key id.
    pub id: Uuid,
    /// Its name (the audit log shows it).
    pub name: String,
    /// Permission names.
    pub permissions: Vec<String>,
    /// Its creator.
    pub created_by: Uuid,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// Its creator's status (the key works only while it is active).
    #[sqlx(try_from = "String")]
    pub creator_status: crate::UserStatus,
}

/// A key to create.
#[derive(Debug)]
pub struct NewKey<'a> {
    /// The token made for it ([`KeyToken::generate`]).
    pub token: &'a KeyToken,
    /// Its name (validated by the caller).
    pub name: &'a str,
    /// Its permission names (validated by the caller).
    pub permissions: &'a [String],
    /// Its creator.
    pub created_by: Uuid,
    /// Its expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Errors of creating a key.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The tenant has [`MAX_KEYS_PER_TENANT`] live keys already.
    #[error("the tenant has as many API keys as it may have")]
    TooMany,
    /// Database failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ApiKeyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

const LISTED: &str = "id, name, permissions, created_by, created_at, expires_at, last_used_at,
                      host(last_used_ip) as last_used_ip";

/// Stores `key`, unless the tenant has [`MAX_KEYS_PER_TENANT`] live keys already (counted
/// under a per-tenant transaction-scoped lock, so that concurrent creations cannot pass the bound).
pub async fn create_key(conn: &mut PgConnection, key: NewKey<'_>) -> Result<ApiKey, ApiKeyError> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("canopy:{}:api_keys", key.token.tenant))
        .execute(&mut *conn)
        .await?;
    let live: i64 = sqlx::query_scalar(
        "select count(*) from api_keys
         where revoked_at is null and (expires_at is null or expires_at > now())",
    )
    .fetch_one(&mut *conn)
    .await?;
    if live >= MAX_KEYS_PER_TENANT {
        return Err(ApiKeyError::TooMany);
    }
    Ok(sqlx::query_as(&format!(
        "insert into api_keys (id, name, permissions, created_by, expires_at, secret_hash)
         values ($1, $2, $3, $4, $5, $6)
         returning {LISTED}"
    ))
    .bind(key.token.id)
    .bind(key.name)
    .bind(key.permissions)
    .bind(key.created_by)
    .bind(key.expires_at)
    .bind(key.token.hash())
    .fetch_one(conn)
    .await?)
}

/// The unrevoked keys of the tenant: every live one (there are at most
/// [`MAX_KEYS_PER_TENANT`]) first, newest first, then expired ones (until revoked, so
/// that they can be seen and cleaned up) in what room is left of the same bound, so an
/// expired key never hides a live one.
pub async fn list_keys(conn: &mut PgConnection) -> Result<Vec<ApiKey>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {LISTED} from api_keys where revoked_at is null
         order by (expires_at is not null and expires_at <= now()), created_at desc, id
         limit {MAX_KEYS_PER_TENANT}"
    ))
    .fetch_all(conn)
    .await?)
}

/// One unrevoked key.
pub async fn get_key(conn: &mut PgConnection, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {LISTED} from api_keys where id = $1 and revoked_at is null"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Revokes key `id`; returns it if it was live.
pub async fn revoke_key(conn: &mut PgConnection, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "update api_keys set revoked_at = now() where id = $1 and revoked_at is null
         returning {LISTED}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Revokes every live key `user` made (their creator is blocked: deactivated, banned or
/// flagged with a security issue); returns their ids, to announce on the revocation list
/// after commit. Revoked for good: a key is not revived when its creator is.
pub async fn revoke_keys_of(conn: &mut PgConnection, user: Uuid) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "update api_keys set revoked_at = now() where created_by = $1 and revoked_at is null
         returning id",
    )
    .bind(user)
    .fetch_all(conn)
    .await?)
}

/// The row authentication checks a presented key against (revoked or not), with its
/// creator's status.
pub async fn key_record(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<KeyRecord>, StoreError> {
    Ok(sqlx::query_as(
        "select k.id, k.name, k.permissions, k.created_by, k.expires_at, k.revoked_at,
                k.secret_hash, u.status as creator_status
         from api_keys k join users u on u.id = k.created_by where k.id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Whether key `id` of `user` may still be used, read from the database: unrevoked,
/// unexpired, and its creator active (the revocation list's fallback).
pub async fn key_is_valid(
    conn: &mut PgConnection,
    user: Uuid,
    id: Uuid,
) -> Result<bool, StoreError> {
    let valid: Option<bool> = sqlx::query_scalar(
        "select k.revoked_at is null and (k.expires_at is null or k.expires_at > now())
                and u.status = 'active'
         from api_keys k join users u on u.id = k.created_by
         where k.id = $1 and k.created_by = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(conn)
    .await?;
    Ok(valid.unwrap_or(false))
}

/// Keys revoked at or after `since` (what the revocation list must hold of them).
pub async fn revoked_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar("select id from api_keys where revoked_at >= $1")
            .bind(since)
            .fetch_all(conn)
            .await?,
    )
}

/// Records a use of key `id` from `client`, unless one was recorded in the last minute.
/// Returns whether it wrote.
pub async fn record_use(
    conn: &mut PgConnection,
    id: Uuid,
    client: &ClientInfo,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update api_keys set last_used_at = now(), last_used_ip = $2::inet
         where id = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute')",
    )
    .bind(id)
    .bind(client.ip_text())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        let tenant = Uuid::new_v4();
        let token = KeyToken::generate(tenant);
        let wire = token.encode();
        assert_eq!(wire.len(), KEY_LEN);
        assert!(wire.starts_with("cnt_"));
        let parsed = KeyToken::parse(&wire).expect("parses");
        assert_eq!(parsed, token);
        assert_eq!(parsed.tenant, tenant);
        assert!(parsed.matches(&token.hash()));
        assert!(!KeyToken::generate(tenant).matches(&token.hash()));
        assert_ne!(token.hash().as_slice(), &token.secret[..]);
        let mut wrong_separator = wire.clone().into_bytes();
        wrong_separator[KEY_PREFIX.len() + ID_CHARS] = b'x';
        for bad in [
            String::new(),
            "cnt_".into(),
            format!("{wire}A"),
            wire[..KEY_LEN - 1].to_owned(),
            wire.replacen("cnt_", "cnp_", 1),
            String::from_utf8(wrong_separator).expect("ascii"),
            format!("cnt_{}", "!".repeat(KEY_LEN - 4)),
            format!("cnt_{}é", &wire[4..KEY_LEN - 2]),
        ] {
            assert_eq!(KeyToken::parse(&bad), None, "{bad}");
        }
        assert!(!format!("{token:?}").contains(&wire[KEY_LEN - SECRET_CHARS..]));
    }
}
