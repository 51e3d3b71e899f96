//! Authentication and authorization of tenant users: the bearer-token security scheme
//! ([`UserAuth`]), the permission check built on it ([`permissions::Authorized`]), the
//! revocation list it consults ([`revocation`]), the Redis throttles of login and recovery
//! ([`throttle`]), and the identity jobs (verification and reset emails, [`jobs`]).

pub mod jobs;
pub mod permissions;
pub mod revocation;
pub mod throttle;

use std::{net::IpAddr, sync::Arc, time::Duration};

use identity::{AccessClaims, ClientInfo, TokenError};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use tenancy::Tenant;
use uuid::Uuid;

use rbac::PermissionSet;

use crate::{
    AppState,
    auth::{permissions::Permissions, revocation::Revocations},
    error::{ApiError, ErrorCode},
    state::RedisPool,
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

/// How long one Redis operation may take before the database is asked instead.
pub(crate) const REDIS_BUDGET: Duration = Duration::from_millis(500);

/// Runs one Redis operation within [`REDIS_BUDGET`]; any failure as text.
pub(crate) async fn with_redis<'p, T, F, Fut>(redis: &'p RedisPool, op: F) -> Result<T, String>
where
    F: FnOnce(bb8::PooledConnection<'p, bb8_redis::RedisConnectionManager>) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    tokio::time::timeout(REDIS_BUDGET, async {
        let conn = redis.get().await.map_err(|e| e.to_string())?;
        op(conn).await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// `MGET keys` and, when given, one more hit on the per-minute counter `counter` (created
/// with a two-minute expiry), in one round trip within [`REDIS_BUDGET`]. Returns the values
/// and the counter's new value.
async fn mget_and_count(
    redis: &RedisPool,
    keys: &[String],
    counter: Option<&str>,
) -> Result<(Vec<Option<String>>, Option<i64>), String> {
    with_redis(redis, |mut conn| async move {
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(keys);
        if let Some(counter) = counter {
            pipe.cmd("SET")
                .arg(counter)
                .arg(0)
                .arg("EX")
                .arg(120)
                .arg("NX")
                .ignore()
                .cmd("INCR")
                .arg(counter);
            let (values, count) = pipe
                .query_async::<(Vec<Option<String>>, i64)>(&mut *conn)
                .await?;
            Ok((values, Some(count)))
        } else {
            let (values,) = pipe
                .query_async::<(Vec<Option<String>>,)>(&mut *conn)
                .await?;
            Ok((values, None))
        }
    })
    .await
}

/// `MGET keys` within [`REDIS_BUDGET`].
pub(crate) async fn mget(
    redis: &RedisPool,
    keys: &[String],
) -> Result<Vec<Option<String>>, String> {
    with_redis(redis, |mut conn| async move {
        redis::cmd("MGET")
            .arg(keys)
            .query_async::<Vec<Option<String>>>(&mut *conn)
            .await
    })
    .await
}

/// Tries `attempt` again in the background (after 200 ms, doubling up to 10 s) until it
/// succeeds or `retry_for` has passed: a Redis write that the database's truth depends on
/// must not be lost to a blip. `what` names it in the log.
pub(crate) fn retry_in_background<F, Fut>(retry_for: Duration, what: &'static str, attempt: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + retry_for;
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::time::sleep(delay).await;
            match attempt().await {
                Ok(()) => return,
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(%error, "gave up {what}");
                    return;
                }
                Err(_) => delay = (delay * 2).min(Duration::from_secs(10)),
            }
        }
    });
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
    // The plan's request rate, counted per tenant and minute in the same round trip.
    let rate = state
        .settings
        .plans
        .limits(&tenant.plan)
        .requests_per_minute;
    let now = chrono::Utc::now().timestamp();
    let counter = rate.map(|_| format!("canopy:t:{}:rate:{}", tenant.id, now / 60));
    let looked_up = mget_and_count(&state.redis, &keys, counter.as_deref()).await;
    let counted = looked_up.as_ref().ok().and_then(|(_, count)| *count);
    let looked_up = looked_up.map(|(values, _)| values);
    let (revocation, permission) = match &looked_up {
        Ok(values) if values.len() == keys.len() => {
            let (r, p) = values.split_at(3);
            (Ok(r), Ok(p))
        }
        Ok(_) => {
            let error = "MGET answered the wrong number of values";
            (Err(error), Err(error))
        }
        Err(e) => (Err(e.as_str()), Err(e.as_str())),
    };
    state
        .revocations
        .check_looked_up(tenant.id, user, session, revocation)
        .await?;
    if let (Some(allowed), Some(count)) = (rate, counted)
        && u64::try_from(count).unwrap_or(0) > allowed
    {
        // Over the plan's rate, judged once the token is known to be valid. With Redis
        // down the rate goes unchecked: it is a fairness control, and the database is not
        // worth a lookup per request for it.
        return Err(ApiError::retry_after(
            ErrorCode::RateLimited,
            format!("The tenant's plan allows {allowed} requests per minute."),
            u64::try_from(60 - now.rem_euclid(60)).unwrap_or(1),
        )
        .with_extension("limit", "requests_per_minute".into())
        .with_extension("allowed", allowed.into()));
    }
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
