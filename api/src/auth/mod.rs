//! Authentication and authorization of tenant users: the bearer-token security scheme
//! ([`UserAuth`]), the permission check built on it ([`permissions::Authorized`]), the
//! revocation list it consults ([`revocation`]), the Redis throttles of login and recovery
//! ([`throttle`]).

pub mod permissions;
pub mod revocation;
pub mod throttle;

use std::sync::Arc;

use identity::{AccessClaims, ClientInfo, TokenError};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use tenancy::Tenant;
use uuid::Uuid;

use rbac::PermissionSet;

use crate::{
    AppState,
    auth::{permissions::Permissions, revocation::Revocations},
    client_ip::ClientIp,
    error::{ApiError, ErrorCode},
    rate_limit::{RateLimiter, Verdict},
    redis::RedisError,
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
    let (principal, _) = authenticate_token(request, &bearer.token, false).await?;
    Ok(principal)
}

/// Authenticates the bearer token of `request`, and with `with_permissions` also looks up
/// what the user may do: the revocation entries and the cached permissions come from
/// Redis in one round trip.
pub(crate) async fn authenticate(
    request: &Request,
    with_permissions: bool,
) -> Result<(Principal, Option<PermissionSet>), ApiError> {
    let token = request
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "Authentication is required."))?;
    authenticate_token(request, token, with_permissions).await
}

async fn authenticate_token(
    request: &Request,
    token: &str,
    with_permissions: bool,
) -> Result<(Principal, Option<PermissionSet>), ApiError> {
    let state = request
        .data::<AppState>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not attached")))?;
    let tenant = state.tenants.resolve(request).await?;
    let claims = state.tokens.verify(token).await.map_err(|e| match e {
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
        ));
    }
    let (user, session) = (claims.sub, claims.sid);
    let mut keys = Revocations::keys(tenant.id, user, session).to_vec();
    if with_permissions {
        keys.extend(Permissions::keys(tenant.id, user));
    }
    // The user's limits (unless the edge judged this request already) and the plan's
    // request rate, judged by the script that also reads the keys: one round trip.
    let mut limits = Vec::new();
    if request
        .data::<crate::rate_limit::Deferred>()
        .is_some_and(|deferred| deferred.take())
    {
        limits.extend(state.rate_limiter.user_limits(tenant.id, user));
    }
    if let Some(rate) = state
        .settings
        .plans
        .limits(&tenant.plan)
        .requests_per_minute
    {
        limits.push(RateLimiter::plan_limit(tenant.id, rate));
    }
    let looked_up = state.rate_limiter.check(&limits, &keys).await;
    let (verdict, looked_up) = match looked_up {
        Ok((verdict, values)) => (verdict, Ok(values)),
        // Redis down: the process-wide cap stands in for the limits (they fail open).
        Err(error) if limits.is_empty() => (Verdict::Allowed(None), Err(error)),
        Err(error) => (state.rate_limiter.fallback(), Err(error)),
    };
    let wrong_count =
        RedisError::UnexpectedReply("MGET answered the wrong number of values".into());
    let (revocation, permission) = match &looked_up {
        Ok(values) if values.len() == keys.len() => {
            let (r, p) = values.split_at(3);
            (Ok(r), Ok(p))
        }
        Ok(_) => (Err(&wrong_count), Err(&wrong_count)),
        Err(e) => (Err(e), Err(e)),
    };
    state
        .revocations
        .check_looked_up(tenant.id, user, session, revocation)
        .await?;
    // Over a limit, judged once the token is known to be valid (a revoked token is a 401).
    crate::rate_limit::conclude(request, verdict)?;
    let granted = if with_permissions {
        Some(
            state
                .permissions
                .of_looked_up(tenant.id, user, permission)
                .await?,
        )
    } else {
        None
    };
    let span = tracing::Span::current();
    span.record("tenant_id", tracing::field::display(tenant.id));
    span.record("user_id", tracing::field::display(user));
    Ok((
        Principal {
            user_id: user,
            session_id: session,
            tenant,
            claims,
        },
        granted,
    ))
}

/// Who is calling: the client address the edge worked out (the peer's, or behind trusted
/// proxies the one they forwarded; see [`crate::client_ip`]) and the user agent.
pub fn client_info(request: &Request) -> ClientInfo {
    let ip = match request.data::<ClientIp>() {
        Some(ClientIp(ip)) => *ip,
        None => request
            .remote_addr()
            .as_socket_addr()
            .map(|addr| addr.ip().to_canonical()),
    };
    let user_agent = request
        .headers()
        .get(poem::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect());
    ClientInfo { ip, user_agent }
}
