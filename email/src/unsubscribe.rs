//! One-click unsubscribe (RFC 8058): the signed token a non-essential message's
//! `List-Unsubscribe` link carries, and the preference it records in the tenant's schema
//! (`email_unsubscribes`), which the mailer reads before sending such a message.
//!
//! A token is `u1.<payload>.<mac>`, both parts base64url without padding: the payload is
//! `<tenant id>:<user id>:<category>` (simple hex ids), the MAC its HMAC-SHA256 under the
//! unsubscribe key with the version prefix. It names the tenant, so the endpoint needs no
//! tenant from the request, and it cannot be altered to name another tenant or user. It
//! does not expire (a link in an old message must keep working); the version lets a later
//! format or key coexist.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgConnection;
use tenancy::TenantId;
use url::Url;
use uuid::Uuid;

use crate::Category;

const VERSION: &str = "u1";

/// Longest token [`UnsubscribeKey::verify`] reads (a real one is about 130 characters).
pub const TOKEN_MAX: usize = 256;

/// What a valid token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscription {
    /// Whose user.
    pub tenant: TenantId,
    /// Who declines.
    pub user: Uuid,
    /// What they decline.
    pub category: Category,
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct UnsubscribeKey(Vec<u8>);

impl std::fmt::Debug for UnsubscribeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsubscribeKey(…)")
    }
}

impl UnsubscribeKey {
    /// A key from the configured secret.
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload);
        mac
    }

    /// The token naming `what`.
    pub fn sign(&self, what: Unsubscription) -> String {
        let payload = format!(
            "{}:{}:{}",
            what.tenant.0.simple(),
            what.user.simple(),
            what.category.as_str()
        );
        let mac = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!(
            "{VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(mac)
        )
    }

    /// What `token` names, if this key signed it (compared in constant time).
    pub fn verify(&self, token: &str) -> Option<Unsubscription> {
        if token.len() > TOKEN_MAX {
            return None;
        }
        let mut parts = token.split('.');
        let (Some(VERSION), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        self.mac(&payload).verify_slice(&mac).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let mut fields = payload.split(':');
        let (Some(tenant), Some(user), Some(category), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        Some(Unsubscription {
            tenant: TenantId(Uuid::parse_str(tenant).ok()?),
            user: Uuid::parse_str(user).ok()?,
            category: category.parse().ok()?,
        })
    }
}

/// Where unsubscribe links point, and the key that signs them.
#[derive(Debug, Clone)]
pub struct UnsubscribeLinks {
    key: UnsubscribeKey,
    url: Url,
}

impl UnsubscribeLinks {
    /// Links to `url?token=…` (the API's `POST /v1/email/unsubscribe`) signed with `key`.
    pub fn new(key: UnsubscribeKey, url: Url) -> Self {
        Self { key, url }
    }

    /// The one-click link for `user` of `tenant` declining `category`.
    pub fn link(&self, tenant: TenantId, user: Uuid, category: Category) -> Url {
        let token = self.key.sign(Unsubscription {
            tenant,
            user,
            category,
        });
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("token", &token);
        url
    }

    /// The `List-Unsubscribe` header value for that link.
    pub(crate) fn header_for(&self, tenant: TenantId, user: Uuid, category: Category) -> String {
        format!("<{}>", self.link(tenant, user, category))
    }
}

/// Records in `conn` (the token's tenant's transaction) that `user` declines `category`;
/// again is a no-op, and so is a user who no longer exists.
pub async fn unsubscribe(
    conn: &mut PgConnection,
    user: Uuid,
    category: Category,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into email_unsubscribes (user_id, category)
         select id, $2 from users where id = $1
         on conflict (user_id, category) do nothing",
    )
    .bind(user)
    .bind(category.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether `user` declined `category` (never true of [`Category::Essential`]).
pub async fn is_unsubscribed(
    conn: &mut PgConnection,
    user: Uuid,
    category: Category,
) -> Result<bool, sqlx::Error> {
    if category == Category::Essential {
        return Ok(false);
    }
    sqlx::query_scalar(
        "select exists (select 1 from email_unsubscribes where user_id = $1 and category = $2)",
    )
    .bind(user)
    .bind(category.as_str())
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_unaltered_and_under_its_key() {
        let key = UnsubscribeKey::new(b"a key of the tests");
        let what = Unsubscription {
            tenant: TenantId(Uuid::now_v7()),
            user: Uuid::now_v7(),
            category: Category::NonEssential,
        };
        let token = key.sign(what);
        assert!(token.len() < TOKEN_MAX, "{token}");
        assert_eq!(key.verify(&token), Some(what));
        assert_eq!(UnsubscribeKey::new(b"another key").verify(&token), None);
        // Another tenant in the payload, the MAC kept.
        let (_, rest) = token.split_once('.').expect("version");
        let (_, mac) = rest.split_once('.').expect("mac");
        let forged_payload = format!(
            "{}:{}:non_essential",
            Uuid::now_v7().simple(),
            what.user.simple()
        );
        let forged = format!("u1.{}.{mac}", URL_SAFE_NO_PAD.encode(forged_payload));
        assert_eq!(key.verify(&forged), None);
        assert_eq!(key.verify(&token.replacen("u1.", "u2.", 1)), None);
        assert_eq!(key.verify(&format!("{token}.x")), None);
        assert_eq!(key.verify(""), None);
        assert_eq!(key.verify(&"a".repeat(TOKEN_MAX + 1)), None);
    }
}
