//! Authentication and authorization of tenant users: the bearer-token security scheme
//! ([`UserAuth`]), the permission check built on it ([`permissions::Authorized`]), the
//! revocation list it consults ([`revocation`]), the Redis throttles of login and recovery
//! ([`throttle`]), and the identity jobs (verification and reset emails, [`jobs`]).

pub mod jobs;
pub mod permissions;
pub mod revocation;
pub mod throttle;

use std::{net::IpAddr, sync::Arc};

use identity::{AccessClaims, ClientInfo, TokenError};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use tenancy::Tenant;
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiError, ErrorCode},
};

/// The user a request is authenticated as.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user.
    pub user_id: Uuid,
    /// Their session.
    pub session_id: Uuid,
    /// The tenant the request addresses (and the token was issued by).
    pub tenant: Arc<Tenant>,
    /// The verified claims.
    pub claims: AccessClaims,
}

/// A request authenticated by a user's access token (`Authorization: Bearer <JWT>` from
/// `POST /v1/auth/login`). The token must be issued by the tenant the request addresses,
/// unexpired, and its session and user must not be revoked or blocked.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_access_token")]
pub struct UserAuth(pub Principal);

async fn check_access_token(request: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = request
        .data::<AppState>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not attached")))?;
    let tenant = state.tenants.resolve(request).await?;
    let claims = state
        .tokens
        .verify(&bearer.token)
        .await
        .map_err(|e| match e {
            TokenError::Expired => ApiError::new(
                ErrorCode::TokenExpired,
                "The access token has expired; refresh it.",
            ),
            TokenError::Invalid(why) => {
                tracing::debug!(reason = why, "access token refused");
                ApiError::new(ErrorCode::InvalidToken, "The access token is not valid.")
            }
            TokenError::Keys(e) => ApiError::internal(e),
        })?;
    if claims.tid != tenant.id.0 {
        return Err(ApiError::new(
            ErrorCode::WrongTenant,
            "This access token belongs to another tenant.",
        )
        .into());
    }
    state
        .revocations
        .check(tenant.id, claims.sub, claims.sid)
        .await?;
    let span = tracing::Span::current();
    span.record("tenant_id", tracing::field::display(tenant.id));
    span.record("user_id", tracing::field::display(claims.sub));
    Ok(Principal {
        user_id: claims.sub,
        session_id: claims.sid,
        tenant,
        claims,
    })
}

/// Who is calling: the peer address (or, behind a trusted proxy, the last
/// `X-Forwarded-For` entry) and the user agent.
pub fn client_info(request: &Request, trust_forwarded_for: bool) -> ClientInfo {
    let forwarded = trust_forwarded_for
        .then(|| {
            request
                .headers()
                .get("x-forwarded-for")?
                .to_str()
                .ok()?
                .rsplit(',')
                .next()?
                .trim()
                .parse::<IpAddr>()
                .ok()
        })
        .flatten();
    let peer = request
        .remote_addr()
        .as_socket_addr()
        .map(|addr| addr.ip().to_canonical());
    let user_agent = request
        .headers()
        .get(poem::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect());
    ClientInfo {
        ip: forwarded.or(peer),
        user_agent,
    }
}
