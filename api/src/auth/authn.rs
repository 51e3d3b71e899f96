//! Authentication: who is calling. A bearer access token is verified against the tenant
//! the request addresses (resolved here, once per request), then checked against the
//! revocation list and the caller's rate limits in **one** Redis round trip, which can also
//! read other per-user keys for the caller (the permission cache, for [`super::authz`]).
//!
//! The steps, in order (each a function below): read the bearer token, resolve the tenant,
//! verify the token, gather the limits, make the round trip, check revocation, conclude the
//! rate limits (a revoked token is a 401 before it is a 429), record the span fields.

use std::sync::Arc;

use identity::{AccessClaims, ClientInfo, TokenError};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use tenancy::{Tenant, TenantId, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::revocation::Revocations,
    client_ip::ClientIp,
    error::{ApiError, ErrorCode},
    rate_limit::{Deferred, Limit, RateLimiter, Verdict, conclude},
    redis::RedisError,
};

/// The security scheme of tenant users ([`UserAuth`]).
pub(crate) const USER_AUTH: &str = "UserAuth";

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

impl Principal {
    /// Opens the transaction of the caller's tenant. Commit it explicitly: dropped, it
    /// rolls back.
    pub async fn begin(&self, state: &AppState) -> Result<TenantTx, ApiError> {
        Ok(state.tenant_db.begin(self.tenant.id).await?)
    }
}

/// A request authenticated by a user's access token (`Authorization: Bearer <JWT>` from
/// `POST /v1/auth/login`). The token must be issued by the tenant the request addresses,
/// unexpired, and its session and user must not be revoked or blocked.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_access_token")]
pub struct UserAuth(pub Principal);

impl UserAuth {
    /// Opens the transaction of the caller's tenant (see [`Principal::begin`]).
    pub async fn begin(&self, state: &AppState) -> Result<TenantTx, ApiError> {
        self.0.begin(state).await
    }
}

async fn check_access_token(request: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = app_state(request)?;
    let tenant = crate::tenant::resolve(&state.tenants, request).await?;
    let (principal, _) =
        authenticate_token(request, state, tenant, &bearer.token, no_more_keys).await?;
    Ok(principal)
}

fn no_more_keys(_: TenantId, _: Uuid) -> Vec<String> {
    Vec::new()
}

/// What the round trip read for the caller beyond the revocation entries (the keys the
/// caller of [`authenticate_reading`] asked for, in order), or why Redis could not say.
pub(crate) type LookedUp = Result<Vec<Option<String>>, RedisError>;

/// The keys to read for a caller (their tenant, their id) in authentication's round trip.
pub(crate) type AlsoRead = fn(TenantId, Uuid) -> Vec<String>;

/// Authenticates the bearer token of `request` (401 without one) in the tenant it
/// addresses and, in the same Redis round trip, reads the keys `also_read` names.
pub(crate) async fn authenticate_reading(
    request: &Request,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    let token = bearer_token(request)?;
    let state = app_state(request)?;
    let tenant = crate::tenant::resolve(&state.tenants, request).await?;
    authenticate_token(request, state, tenant, token, also_read).await
}

/// [`authenticate_reading`] for a caller that resolved the tenant already.
pub(crate) async fn authenticate_in(
    request: &Request,
    tenant: Arc<Tenant>,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    let token = bearer_token(request)?;
    authenticate_token(request, app_state(request)?, tenant, token, also_read).await
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(request: &Request) -> Result<&str, ApiError> {
    request
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "Authentication is required."))
}

/// The attached [`AppState`].
pub(crate) fn app_state(request: &Request) -> Result<&AppState, ApiError> {
    request
        .data::<AppState>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not attached")))
}

async fn authenticate_token(
    request: &Request,
    state: &AppState,
    tenant: Arc<Tenant>,
    token: &str,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    let claims = verify(state, token, &tenant).await?;
    let (user, session) = (claims.sub, claims.sid);
    let mut keys = Revocations::keys(tenant.id, user, session).to_vec();
    keys.extend(also_read(tenant.id, user));
    let limits = limits_of(request, state, &tenant, user);
    let (verdict, revocation, more) = look_up(state, &limits, &keys).await;
    state
        .revocations
        .check_looked_up(tenant.id, user, session, revocation.as_deref())
        .await?;
    // Over a limit, judged once the token is known to be valid (a revoked token is a 401).
    conclude(request, verdict)?;
    let span = tracing::Span::current();
    span.record("tenant_id", tracing::field::display(tenant.id));
    span.record("user_id", tracing::field::display(user));
    let principal = Principal {
        user_id: user,
        session_id: session,
        tenant,
        claims,
    };
    Ok((principal, more))
}

/// The verified claims of `token`, which must be issued by `tenant`.
async fn verify(state: &AppState, token: &str, tenant: &Tenant) -> Result<AccessClaims, ApiError> {
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
    Ok(claims)
}

/// The user's limits (unless the edge judged this request already) and the plan's
/// request rate.
fn limits_of(request: &Request, state: &AppState, tenant: &Tenant, user: Uuid) -> Vec<Limit> {
    let mut limits = Vec::new();
    if request
        .data::<Deferred>()
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
    limits
}

/// Judges `limits` and reads `keys` (the three revocation keys first) in one round trip:
/// the verdict, the revocation entries and the values of the remaining keys.
async fn look_up(
    state: &AppState,
    limits: &[Limit],
    keys: &[String],
) -> (Verdict, LookedUp, LookedUp) {
    let (verdict, looked_up) = match state.rate_limiter.check(limits, keys).await {
        Ok((verdict, values)) => (verdict, Ok(values)),
        // Redis down: the process-wide cap stands in for the limits (they fail open).
        Err(error) if limits.is_empty() => (Verdict::Allowed(None), Err(error)),
        Err(error) => (state.rate_limiter.fallback(), Err(error)),
    };
    let wrong_count =
        || RedisError::UnexpectedReply("MGET answered the wrong number of values".into());
    let (revocation, more) = match looked_up {
        Ok(mut values) if values.len() == keys.len() => {
            let more = values.split_off(3);
            (Ok(values), Ok(more))
        }
        Ok(_) => (Err(wrong_count()), Err(wrong_count())),
        Err(error) => {
            let again = RedisError::UnexpectedReply(error.to_string());
            (Err(error), Err(again))
        }
    };
    (verdict, revocation, more)
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
