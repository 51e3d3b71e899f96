//! Authentication: who is calling. A bearer access token is verified against the tenant
//! the request addresses (resolved here, once per request), then checked against the
//! revocation list and the caller's rate limits in **one** Redis round trip, which can also
//! read other per-user keys for the caller (the permission cache, for [`super::authz`]).
//!
//! The steps, in order (each a function below): read the bearer token, resolve the tenant,
//! verify the token, gather the limits, make the round trip, check revocation, conclude the
//! rate limits (a revoked token is a 401 before it is a 429), record the span fields.
//!
//! A bearer token starting `cnt_` is a tenant API key (`identity::api_keys`) and takes its
//! own path where one is accepted ([`crate::auth::Authorized`]): parse it, refuse it for
//! another tenant (403, as a token of another tenant), check its secret against its row
//! (cached briefly, [`admission::api_keys`]), its revocation and expiry, then the same
//! round trip as a user's, with the key's id standing where a session id stands and its
//! creator where the user stands (so the creator's rate limits and block apply). Every
//! other token takes the JWT path, unchanged. Person-only extractors ([`UserAuth`],
//! [`crate::auth::MaybeSignedIn`]) answer a key with 403 `api_key_not_allowed`.

use std::sync::Arc;

use identity::{AccessClaims, ClientInfo, TokenError, api_keys::KeyToken};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use rbac::PermissionSet;
use tenancy::{Tenant, TenantId, TenantTx};
use uuid::Uuid;

use crate::{
    AppState,
    auth::revocation::{Credential, Revocations},
    client_ip::ClientIp,
    error::{ApiError, ErrorCode},
    rate_limit::{Deferred, Limit, RateLimiter, Verdict, conclude},
    redis::RedisError,
};

/// The security scheme of tenant users ([`UserAuth`]).
pub(crate) const USER_AUTH: &str = "UserAuth";

/// The security scheme of tenant API keys ([`ApiKeyAuth`]).
pub(crate) const API_KEY_AUTH: &str = "ApiKeyAuth";

/// The user a request is authenticated as: a person with an access token, or an API key
/// acting for its creator.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user; for an API key, its creator (attribution and outranking are theirs).
    pub user_id: Uuid,
    /// Their session; for an API key, the key's id (revoked through the same list).
    pub session_id: Uuid,
    /// The tenant the request addresses (and the token was issued by).
    pub tenant: Arc<Tenant>,
    /// The verified claims of an access token (`None` for an API key).
    pub claims: Option<AccessClaims>,
    /// The API key the request was made with, if it was.
    pub api_key: Option<KeyActor>,
}

/// The API key a request was made with.
#[derive(Debug, Clone)]
pub struct KeyActor {
    /// Key id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// What the key was given (the request may do only what both it and the creator hold).
    pub permissions: PermissionSet,
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

/// A request authenticated by a tenant API key (`Authorization: Bearer cnt_…`, from
/// `POST /v1/api-keys`), acting with the key's permissions as far as its creator still
/// holds them. The key must belong to the tenant the request addresses, be unexpired and
/// unrevoked, and its creator must not be blocked. Accepted by the operations that list it
/// beside `UserAuth`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "cnt_…")]
pub struct ApiKeyAuth(pub Bearer);

async fn check_access_token(request: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = app_state(request)?;
    let tenant = crate::tenant::resolve(&state.tenants, request).await?;
    let (principal, _) = authenticate_token(
        request,
        state,
        tenant,
        &bearer.token,
        Keys::Refused,
        no_more_keys,
    )
    .await?;
    Ok(principal)
}

/// Whether an extractor takes tenant API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// Keys are authenticated (permission checks follow).
    Accepted,
    /// Person-only: a key is a 403 `api_key_not_allowed`.
    Refused,
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
    keys: Keys,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    let token = bearer_token(request)?;
    let state = app_state(request)?;
    let tenant = crate::tenant::resolve(&state.tenants, request).await?;
    authenticate_token(request, state, tenant, token, keys, also_read).await
}

/// [`authenticate_reading`] for a caller that resolved the tenant already.
pub(crate) async fn authenticate_in(
    request: &Request,
    tenant: Arc<Tenant>,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    let token = bearer_token(request)?;
    authenticate_token(
        request,
        app_state(request)?,
        tenant,
        token,
        Keys::Refused,
        also_read,
    )
    .await
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
    keys: Keys,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    if KeyToken::looks_like_one(token) {
        return match keys {
            Keys::Accepted => authenticate_key(request, state, tenant, token, also_read).await,
            Keys::Refused => Err(not_for_keys()),
        };
    }
    let claims = verify(state, token, &tenant).await?;
    let (user, session) = (claims.sub, claims.sid);
    let mut keys = Revocations::keys(tenant.id, user, session).to_vec();
    keys.extend(also_read(tenant.id, user));
    let limits = limits_of(request, state, &tenant, user);
    let (verdict, revocation, more) = look_up(state, &limits, &keys).await;
    state
        .revocations
        .check_looked_up(
            tenant.id,
            user,
            Credential::Session(session),
            revocation.as_deref(),
        )
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
        claims: Some(claims),
        api_key: None,
    };
    Ok((principal, more))
}

/// The 403 of an operation only a person may call, for an API key.
pub(crate) fn not_for_keys() -> ApiError {
    ApiError::new(
        ErrorCode::ApiKeyNotAllowed,
        "An API key cannot call this operation; sign in as a person.",
    )
}

fn invalid_key() -> ApiError {
    ApiError::new(ErrorCode::InvalidToken, "The API key is not valid.")
}

/// [`authenticate_token`] for a tenant API key (see the module docs).
async fn authenticate_key(
    request: &Request,
    state: &AppState,
    tenant: Arc<Tenant>,
    token: &str,
    also_read: AlsoRead,
) -> Result<(Principal, LookedUp), ApiError> {
    let presented = KeyToken::parse(token).ok_or_else(invalid_key)?;
    if presented.tenant != tenant.id.0 {
        return Err(ApiError::new(
            ErrorCode::WrongTenant,
            "This API key belongs to another tenant.",
        ));
    }
    let key = state
        .api_keys
        .record(tenant.id, presented.id)
        .await?
        .filter(|key| presented.matches(&key.secret_hash))
        .ok_or_else(invalid_key)?;
    // The creator's status is read with the row (cached for a few seconds at most), not
    // only from the revocation list, whose entries expire and are cleared on a password
    // reset: a blocked creator's keys never come back.
    if key.revoked_at.is_some() {
        return Err(invalid_key());
    }
    if key.creator_status != identity::UserStatus::Active {
        return Err(ApiError::new(
            ErrorCode::InvalidToken,
            "This API key has been revoked, or its creator is blocked.",
        ));
    }
    if key.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Err(ApiError::new(
            ErrorCode::ApiKeyExpired,
            "The API key has expired.",
        ));
    }
    let user = key.created_by;
    let mut keys = Revocations::keys(tenant.id, user, key.id).to_vec();
    keys.extend(also_read(tenant.id, user));
    let limits = limits_of(request, state, &tenant, user);
    let (verdict, revocation, more) = look_up(state, &limits, &keys).await;
    state
        .revocations
        .check_looked_up(
            tenant.id,
            user,
            Credential::ApiKey(key.id),
            revocation.as_deref(),
        )
        .await
        .map_err(|e| match e {
            admission::AdmissionError::Revoked => ApiError::new(
                ErrorCode::InvalidToken,
                "This API key has been revoked, or its creator is blocked.",
            ),
            other => other.into(),
        })?;
    conclude(request, verdict)?;
    if let Err(error) = state
        .api_keys
        .record_use(tenant.id, key.id, &client_info(request))
        .await
    {
        tracing::warn!(error = %tenancy::error_chain(&error), "could not record an API key's use");
    }
    let span = tracing::Span::current();
    span.record("tenant_id", tracing::field::display(tenant.id));
    span.record("user_id", tracing::field::display(user));
    let (permissions, _) = PermissionSet::from_names(key.permissions.iter().map(String::as_str));
    let principal = Principal {
        user_id: user,
        session_id: key.id,
        tenant,
        claims: None,
        api_key: Some(KeyActor {
            id: key.id,
            name: key.name.clone(),
            permissions,
        }),
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
