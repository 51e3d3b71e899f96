//! Access tokens: EdDSA (Ed25519) JWTs, with keys kept in the control plane and published
//! as a JWKS.
//!
//! Verification trusts nothing in the token before its signature checks out: the algorithm
//! is pinned to EdDSA (so `none` and HMAC-with-the-public-key confusion cannot happen), the
//! `kid` header only selects among keys this service holds (an unknown one triggers at most
//! one reload of the key table per second), and `exp`, `nbf`, `iss`, `aud` and `typ` are
//! all required and checked with an explicit leeway.
//!
//! A token that verified is remembered for a while ([`VERIFIED_TTL`], at most
//! [`VERIFIED_CAPACITY`] tokens), keyed by the whole token, so that the next requests
//! carrying it skip the signature check (an Ed25519 verification was a tenth of a product
//! listing's CPU). A remembered token is taken only while the key that signed it is still
//! held and the token unexpired, so retirement and expiry bite as before.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The `typ` claim of access tokens. Other token kinds, should any be added, carry their own
/// value and are refused where an access token is expected.
pub const ACCESS_TYPE: &str = "access";

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// How often, at most, an unknown `kid` makes the key table be read again.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// How long a verified token is remembered (see the module docs): no longer than the
/// minute within which a retirement reaches every server.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// How many verified tokens are remembered at most.
pub const VERIFIED_CAPACITY: u64 = 10_000;

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// The user's tenant.
    pub tid: Uuid,
    /// The session (device) the token belongs to.
    pub sid: Uuid,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Unique token id.
    pub jti: Uuid,
    /// Token kind: [`ACCESS_TYPE`].
    pub typ: String,
}

/// Why a token was refused. Clients only learn "invalid" or "expired".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp` (beyond the leeway).
    #[error("the access token has expired")]
    Expired,
    /// Anything else: malformed, bad signature, unknown or retired key, wrong claims.
    #[error("the access token is invalid: {0}")]
    Invalid(&'static str),
    /// The key table could not be read.
    #[error("signing keys unavailable: {0}")]
    Keys(#[from] KeyError),
}

/// Errors of the key table.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Database failure.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A stored key could not be used, or no key exists.
    #[error("{0}")]
    Unusable(String),
}

/// One public key as a JWK (RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    /// `OKP`.
    pub kty: &'static str,
    /// `Ed25519`.
    pub crv: &'static str,
    /// The public key, base64url.
    pub x: String,
    /// Key id, matching the `kid` header of tokens it verifies.
    pub kid: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// `EdDSA`.
    pub alg: &'static str,
}

/// A signing key as listed by [`list_keys`].
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Key id.
    pub kid: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Retirement time, if retired.
    pub retired_at: Option<DateTime<Utc>>,
}

struct Keyring {
    signing: Option<(String, EncodingKey)>,
    verifying: HashMap<String, DecodingKey>,
    public: Vec<PublicJwk>,
}

/// Issues and verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct AccessTokens {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    issuer: String,
    audience: String,
    ttl: Duration,
    validation: Validation,
    keyring: RwLock<Arc<Keyring>>,
    /// Held while an unknown kid reloads the keys: concurrent requests wait for it.
    last_reload: tokio::sync::Mutex<Instant>,
    /// Tokens that verified, with the id of the key that signed them and their claims
    /// (see the module docs).
    verified: moka::sync::Cache<String, (String, AccessClaims)>,
}

impl AccessTokens {
    /// Tokens signed and verified with the keys in `pool`'s control plane. Nothing is read
    /// until [`Self::initialize`].
    pub fn new(pool: PgPool, issuer: &str, audience: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        Self {
            inner: Arc::new(Inner {
                pool,
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                ttl,
                validation,
                keyring: RwLock::new(Arc::new(Keyring {
                    signing: None,
                    verifying: HashMap::new(),
                    public: Vec::new(),
                })),
                last_reload: tokio::sync::Mutex::new(
                    Instant::now()
                        .checked_sub(RELOAD_INTERVAL)
                        .unwrap_or_else(Instant::now),
                ),
                verified: moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY)
                    .time_to_live(VERIFIED_TTL)
                    .build(),
            }),
        }
    }

    /// Creates the first signing key when there is none, and loads the keys.
    pub async fn initialize(&self) -> Result<(), KeyError> {
        let mut tx = self.inner.pool.begin().await?;
        // One instance creates the first key; the others wait and find it.
        sqlx::query("lock table public.signing_keys in share row exclusive mode")
            .execute(&mut *tx)
            .await?;
        let active: i64 =
            sqlx::query_scalar("select count(*) from public.signing_keys where retired_at is null")
                .fetch_one(&mut *tx)
                .await?;
        if active == 0 {
            let kid = insert_new_key(&mut tx).await?;
            tracing::info!(%kid, "created the first access-token signing key");
        }
        tx.commit().await?;
        self.reload().await
    }

    /// Lifetime of an access token.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Reads the key table again (picks up rotations and retirements).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let keyring = read_keyring(&self.inner.pool).await?;
        *self
            .inner
            .keyring
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(keyring);
        Ok(())
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.inner
            .keyring
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A signed access token for `user` of `tenant` in `session`, and its claims.
    pub fn issue(
        &self,
        user: Uuid,
        tenant: Uuid,
        session: Uuid,
    ) -> Result<(String, AccessClaims), KeyError> {
        let keyring = self.keyring();
        let (kid, key) = keyring
            .signing
            .as_ref()
            .ok_or_else(|| KeyError::Unusable("no signing key is active".into()))?;
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user,
            tid: tenant,
            sid: session,
            iat: now,
            nbf: now,
            exp: now + i64::try_from(self.inner.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
            jti: Uuid::new_v4(),
            typ: ACCESS_TYPE.to_owned(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some("at+jwt".to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| KeyError::Unusable(e.to_string()))?;
        Ok((token, claims))
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if let Some((kid, claims)) = self.inner.verified.get(token) {
            // Its key retired since: judged afresh (and refused) below.
            if self.keyring().verifying.contains_key(&kid) {
                return unexpired(claims, Utc::now().timestamp());
            }
            self.inner.verified.invalidate(token);
        }
        let (kid, claims) = self.verify_signed(token).await?;
        self.inner
            .verified
            .insert(token.to_owned(), (kid, claims.clone()));
        Ok(claims)
    }

    /// [`Self::verify`] without the memory: checks the signature and every claim, and
    /// returns the key id with the claims.
    async fn verify_signed(&self, token: &str) -> Result<(String, AccessClaims), TokenError> {
        // Parsing the header is safe: it only reads base64 and JSON; nothing in it is trusted.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid("algorithm not accepted"));
        }
        let kid = header.kid.ok_or(TokenError::Invalid("no key id"))?;
        if kid.len() > 64 {
            return Err(TokenError::Invalid("unknown key"));
        }
        let key = match self.keyring().verifying.get(&kid) {
            Some(key) => key.clone(),
            None => {
                self.reload_for_unknown_kid(&kid).await?;
                self.keyring()
                    .verifying
                    .get(&kid)
                    .cloned()
                    .ok_or(TokenError::Invalid("unknown key"))?
            }
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &self.inner.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::ImmatureSignature => TokenError::Invalid("not yet valid"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience"),
                _ => TokenError::Invalid("malformed"),
            })?;
        let claims = data.claims;
        if claims.typ != ACCESS_TYPE {
            return Err(TokenError::Invalid("not an access token"));
        }
        let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(0);
        if claims.iat > Utc::now().timestamp() + leeway {
            return Err(TokenError::Invalid("issued in the future"));
        }
        Ok((kid, claims))
    }

    async fn reload_for_unknown_kid(&self, kid: &str) -> Result<(), KeyError> {
        let mut last = self.inner.last_reload.lock().await;
        // A reload that finished while this request waited may have brought the key.
        if self.keyring().verifying.contains_key(kid) || last.elapsed() < RELOAD_INTERVAL {
            return Ok(());
        }
        *last = Instant::now();
        self.reload().await
    }

    /// The public keys that verify tokens, newest first.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.keyring().public.clone()
    }
}

/// `claims` of a token verified earlier, unless it has expired since (beyond the leeway,
/// as the full check judges `exp`). Its other claims do not change with time: `nbf` and
/// `iat` held when it verified and hold later still.
fn unexpired(claims: AccessClaims, now: i64) -> Result<AccessClaims, TokenError> {
    let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(0);
    if claims.exp < now - leeway {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

async fn read_keyring(pool: &PgPool) -> Result<Keyring, KeyError> {
    let rows = sqlx::query(
        "select kid, private_key, public_key from public.signing_keys
         where retired_at is null order by created_at desc, kid",
    )
    .fetch_all(pool)
    .await?;
    let mut keyring = Keyring {
        signing: None,
        verifying: HashMap::new(),
        public: Vec::new(),
    };
    for row in rows {
        let kid: String = row.try_get("kid")?;
        let private: Vec<u8> = row.try_get("private_key")?;
        let public: Vec<u8> = row.try_get("public_key")?;
        if keyring.signing.is_none() {
            Ed25519KeyPair::from_pkcs8(&private).map_err(|_| {
                KeyError::Unusable(format!("signing key {kid} is not a valid Ed25519 key"))
            })?;
            keyring.signing = Some((kid.clone(), EncodingKey::from_ed_der(&private)));
        }
        keyring
            .verifying
            .insert(kid.clone(), DecodingKey::from_ed_der(&public));
        keyring.public.push(PublicJwk {
            kty: "OKP",
            crv: "Ed25519",
            x: URL_SAFE_NO_PAD.encode(&public),
            kid,
            use_: "sig",
            alg: "EdDSA",
        });
    }
    Ok(keyring)
}

/// Creates a new signing key, which signs every token from now on (on each instance once it
/// reloads its keys; tokens signed by it verify everywhere at once). Returns its `kid`.
pub async fn rotate_key(pool: &PgPool) -> Result<String, KeyError> {
    let mut conn = pool.acquire().await?;
    insert_new_key(&mut conn).await
}

async fn insert_new_key(conn: &mut sqlx::PgConnection) -> Result<String, KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Unusable("key generation failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| KeyError::Unusable("key generation failed".into()))?;
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).map_err(|e| KeyError::Unusable(e.to_string()))?;
    let kid = URL_SAFE_NO_PAD.encode(id);
    sqlx::query(
        "insert into public.signing_keys (kid, private_key, public_key) values ($1, $2, $3)",
    )
    .bind(&kid)
    .bind(pkcs8.as_ref())
    .bind(pair.public_key().as_ref())
    .execute(conn)
    .await?;
    Ok(kid)
}

/// Retires a key: tokens it signed stop verifying (once instances reload, within a minute).
/// Refuses to retire the last active key. Returns whether the key existed and was active.
pub async fn retire_key(pool: &PgPool, kid: &str) -> Result<bool, KeyError> {
    let mut tx = pool.begin().await?;
    sqlx::query("lock table public.signing_keys in share row exclusive mode")
        .execute(&mut *tx)
        .await?;
    let active: Vec<String> =
        sqlx::query_scalar("select kid from public.signing_keys where retired_at is null")
            .fetch_all(&mut *tx)
            .await?;
    if !active.iter().any(|k| k == kid) {
        return Ok(false);
    }
    if active.len() == 1 {
        return Err(KeyError::Unusable(
            "this is the only active key: rotate first, then retire it".into(),
        ));
    }
    sqlx::query("update public.signing_keys set retired_at = now() where kid = $1")
        .bind(kid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Every key, newest first.
pub async fn list_keys(pool: &PgPool) -> Result<Vec<KeyInfo>, KeyError> {
    let rows = sqlx::query(
        "select kid, created_at, retired_at from public.signing_keys order by created_at desc",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(KeyInfo {
                kid: row.try_get("kid")?,
                created_at: row.try_get("created_at")?,
                retired_at: row.try_get("retired_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(KeyError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            sub: Uuid::nil(),
            tid: Uuid::nil(),
            sid: Uuid::nil(),
            iat: exp - 900,
            nbf: exp - 900,
            exp,
            iss: "i".into(),
            aud: "a".into(),
            jti: Uuid::nil(),
            typ: ACCESS_TYPE.into(),
        }
    }

    #[test]
    fn a_remembered_token_expires_as_the_full_check_judges() {
        let leeway = i64::try_from(LEEWAY.as_secs()).unwrap();
        let exp = 1_000_000;
        assert!(unexpired(claims(exp), exp).is_ok());
        assert!(unexpired(claims(exp), exp + leeway).is_ok());
        assert!(matches!(
            unexpired(claims(exp), exp + leeway + 1),
            Err(TokenError::Expired)
        ));
    }
}
