//! Single-use tickets: how a browser, which cannot set headers on a WebSocket, authenticates
//! one without putting a bearer token into a URL that gets logged.
//!
//! `POST /v1/realtime/tickets` (bearer-authenticated) issues one: `rt_<tenant id, 32 hex
//! digits>_<256 random bits, base64url>`, valid [`TICKET_TTL`]. Redis keeps only its
//! SHA-256, `canopy:t:<tenant>:rt:ticket:<sha256 hex>` → the principal's ids, and
//! consuming it is one `GETDEL`: single use, atomically, across instances. The tenant in the
//! ticket lets the edge refuse a ticket used against another tenant (403 `wrong_tenant`)
//! without consuming it. Redis unreachable: no ticket is issued (503), since none could be
//! checked.

use std::time::Duration;

use admission::{
    redis::{RedisError, RedisPool, with_redis},
    revocation::Credential,
};
use identity::OpaqueToken;
use serde::{Deserialize, Serialize};
use tenancy::TenantId;
use uuid::Uuid;

/// How long a ticket is valid by default (`CANOPY_REALTIME_TICKET_TTL`).
pub const TICKET_TTL: Duration = Duration::from_secs(30);

const PREFIX: &str = "rt_";

/// Who a ticket was issued to: the ids of the principal, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The user (an API key's creator).
    pub user: Uuid,
    /// The session, when a person asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Uuid>,
    /// The API key, when a key asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Uuid>,
    /// The key's permissions (what its connection may receive is also bounded by them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_permissions: Vec<String>,
}

impl Holder {
    /// The credential the ticket stands for (`None` for a record naming neither).
    pub fn credential(&self) -> Option<Credential> {
        match (self.session, self.api_key) {
            (Some(session), None) => Some(Credential::Session(session)),
            (None, Some(key)) => Some(Credential::ApiKey(key)),
            _ => None,
        }
    }
}

/// A ticket as presented, split into its tenant and its secret.
#[derive(Debug)]
pub struct Presented {
    /// The tenant it was issued in.
    pub tenant: TenantId,
    secret: OpaqueToken,
}

impl Presented {
    /// Reads a presented ticket; `None` for anything this service cannot have issued.
    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(PREFIX)?;
        let (tenant, secret) = rest.split_once('_')?;
        if tenant.len() != 32 {
            return None;
        }
        Some(Self {
            tenant: TenantId(Uuid::try_parse(tenant).ok()?),
            secret: OpaqueToken::parse(secret)?,
        })
    }
}

/// The Redis key of a ticket: its tenant and its SHA-256, never the ticket itself.
pub fn ticket_key(tenant: TenantId, secret_sha256_hex: &str) -> String {
    format!("canopy:t:{tenant}:rt:ticket:{secret_sha256_hex}")
}

/// Issues a ticket for `holder` in `tenant`, valid for `ttl`; the error when Redis cannot
/// store it (then there is no ticket: it could not be checked).
pub async fn issue(
    redis: &RedisPool,
    tenant: TenantId,
    holder: &Holder,
    ttl: Duration,
) -> Result<String, RedisError> {
    let secret = OpaqueToken::generate();
    let key = ticket_key(tenant, &hex::encode(secret.hash()));
    let value =
        serde_json::to_string(holder).map_err(|e| RedisError::UnexpectedReply(e.to_string()))?;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    with_redis(redis, |mut conn| async move {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .arg("NX")
            .query_async::<()>(&mut *conn)
            .await
    })
    .await?;
    Ok(format!("{PREFIX}{}_{}", tenant.0.simple(), secret.encode()))
}

/// Consumes `ticket` (atomically: a second use finds nothing): its holder, or `None` when it
/// is unknown, used or expired.
pub async fn consume(redis: &RedisPool, ticket: &Presented) -> Result<Option<Holder>, RedisError> {
    let key = ticket_key(ticket.tenant, &hex::encode(ticket.secret.hash()));
    let value = with_redis(redis, |mut conn| async move {
        redis::cmd("GETDEL")
            .arg(key)
            .query_async::<Option<String>>(&mut *conn)
            .await
    })
    .await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tickets_parse() {
        let tenant = TenantId(Uuid::new_v4());
        let secret = OpaqueToken::generate();
        let raw = format!("rt_{}_{}", tenant.0.simple(), secret.encode());
        let presented = Presented::parse(&raw).expect("well formed");
        assert_eq!(presented.tenant, tenant);
        assert!(Presented::parse(&raw.replace("rt_", "xx_")).is_none());
        assert!(Presented::parse(&format!("rt_{}_{}", tenant.0, secret.encode())).is_none());
        assert!(Presented::parse(&format!("rt_{}_short", tenant.0.simple())).is_none());
    }
}
