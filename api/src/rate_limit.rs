//! General rate limits, judged in one Redis round trip per request: per client IP on
//! unauthenticated routes, per user on authenticated ones, and per tenant at the plan's
//! `requests_per_minute`. (The login, recovery and sign-up throttles of
//! [`crate::auth::throttle`] come on top; they count failures, not requests.)
//!
//! Every limit is a GCRA bucket (the "generic cell rate algorithm": one timestamp per key,
//! the theoretical arrival time, so a bucket costs one small string and never a list). A
//! limit of `n` per period lets `n` requests through at once and then one every
//! `period / n`. One Lua script ([`SCRIPT`], run with EVALSHA and loaded on NOSCRIPT by
//! [`redis::Script`]) judges all the buckets of a request at once, against Redis's clock
//! so that every instance agrees, charges them only when every one allows the request, and
//! returns the figures for the `RateLimit-*` headers. It also reads, in the same call, any
//! keys the caller needs: the authenticated path passes the revocation and permission keys
//! it used to `MGET`, so an authenticated request still costs one round trip in all.
//!
//! Where each limit is judged:
//! - [`RateLimit`], the middleware in front of tenant resolution and authentication, works
//!   out the client address ([`crate::client_ip`]) and judges the per-IP buckets of every
//!   request, except those to an authenticated route that carry a bearer token: those are
//!   left to authentication ([`crate::auth`]), which knows the user and tenant and adds
//!   their buckets to its own round trip (and judges them after the revocation check, so a
//!   revoked token is told 401, not 429). Which routes are authenticated comes from the
//!   OpenAPI document, so it cannot drift from the code. A deferred request whose
//!   authentication stopped before its round trip (a malformed or foreign token; the
//!   handler never ran) is judged per IP afterwards, so junk tokens are limited too.
//! - Liveness (`/health/live`) and the Stripe webhook are not limited: liveness touches
//!   nothing and must answer during an incident, and webhook senders retry what is refused
//!   (their signatures are checked before anything is stored). Readiness (`/health/ready`)
//!   is limited per IP like any unauthenticated route: each request pings PostgreSQL,
//!   Redis and S3, and load balancers probe from a few addresses far below the limits.
//!
//! Failure policy: these limits fail open. With Redis unreachable (and for a second after
//! each failure, so an outage does not add a timeout to every request), a process-wide
//! [`governor`] limiter caps this process's rate instead, so an outage is not a
//! free-for-all. The auth throttles keep failing closed.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, Quota as GovernorQuota};
use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response, Route, RouteMethod,
    endpoint::make_sync,
    http::{HeaderName, HeaderValue, Method, header},
};
use tenancy::TenantId;
use uuid::Uuid;

use crate::{
    client_ip::{ClientIp, ForwardedFor, TrustedProxies, client_key},
    error::{ApiError, ErrorCode},
    metrics::Metrics,
    redis::{RedisError, RedisPool, mget, with_redis},
    settings::RateLimitSettings,
};

/// GCRA over `KEYS[1..n]`, then `MGET` of the remaining keys.
///
/// `ARGV[1]` is `n`; limit `i` has its count in `ARGV[2i]` and its period (microseconds)
/// in `ARGV[2i + 1]`. Returns `{{allowed, i, remaining, reset, retry}, {values…}}`:
/// whether every limit allows the request (then all were charged, else none), the limit
/// to report (the one with the least room left; when refused, the one that refused for
/// longest), its remaining requests, microseconds until it is full again, and when
/// refused microseconds until the request would fit.
pub const SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local allowed = 1
local report, remaining, reset, retry = 0, -1, 0, 0
local tats = {}
for i = 1, n do
  local count = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local interval = math.floor(period / count)
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then tat = math.max(tonumber(stored) or now, now) end
  local new_tat = tat + interval
  local allow_at = new_tat - period
  if allow_at > now then
    local wait = allow_at - now
    if allowed == 1 or wait > retry then
      report, remaining, reset, retry = i, 0, tat - now, wait
    end
    allowed = 0
  elseif allowed == 1 then
    local left = math.floor((now - allow_at) / interval)
    if remaining < 0 or left < remaining or (left == remaining and new_tat - now > reset) then
      report, remaining, reset = i, left, new_tat - now
    end
  end
  tats[i] = new_tat
end
if allowed == 1 then
  for i = 1, n do
    local ttl = math.floor((tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
local values = {}
if #KEYS > n then
  local lookup = {}
  for i = n + 1, #KEYS do lookup[#lookup + 1] = KEYS[i] end
  values = redis.call('MGET', unpack(lookup))
end
return {{allowed, report, remaining, reset, retry}, values}
";

/// What a limit is counted per, for messages and the problem's `limit` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Requests per second from one client address.
    IpPerSecond,
    /// Requests per minute from one client address.
    IpPerMinute,
    /// Requests per second by one user.
    UserPerSecond,
    /// Requests per minute by one user.
    UserPerMinute,
    /// The tenant plan's `requests_per_minute`, all its users together.
    Plan,
}

impl Scope {
    /// The problem's `limit` member.
    pub fn name(self) -> &'static str {
        match self {
            Self::IpPerSecond => "ip_per_second",
            Self::IpPerMinute => "ip_per_minute",
            Self::UserPerSecond => "user_per_second",
            Self::UserPerMinute => "user_per_minute",
            Self::Plan => "requests_per_minute",
        }
    }

    fn detail(self, count: u32) -> String {
        match self {
            Self::IpPerSecond => {
                format!("Too many requests from this address: {count} per second are allowed.")
            }
            Self::IpPerMinute => {
                format!("Too many requests from this address: {count} per minute are allowed.")
            }
            Self::UserPerSecond => {
                format!("Too many requests by this user: {count} per second are allowed.")
            }
            Self::UserPerMinute => {
                format!("Too many requests by this user: {count} per minute are allowed.")
            }
            Self::Plan => format!("The tenant's plan allows {count} requests per minute."),
        }
    }
}

/// One bucket a request is judged against.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Its Redis key (ids and a parsed address only).
    pub key: String,
    /// What it counts.
    pub scope: Scope,
    /// Requests per period (and the burst allowed at once).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

/// The figures of the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The limit reported (the one with the least room left).
    pub limit: u32,
    /// Requests left before it refuses.
    pub remaining: u64,
    /// Until it is full again.
    pub reset: Duration,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; the figures when Redis judged.
    Allowed(Option<Quota>),
    /// Over a limit.
    Refused {
        /// Which.
        scope: Scope,
        /// Its figures (remaining 0).
        quota: Quota,
        /// Until the request would fit.
        retry_after: Duration,
    },
    /// Redis could not judge, and the process-wide cap is reached.
    LocalCap,
}

impl Verdict {
    /// The figures for the headers, when known.
    pub fn quota(&self) -> Option<Quota> {
        match self {
            Self::Allowed(quota) => *quota,
            Self::Refused { quota, .. } => Some(*quota),
            Self::LocalCap => None,
        }
    }

    /// `Ok` to go on, or the 429.
    pub fn into_result(self) -> Result<(), ApiError> {
        match self {
            Self::Allowed(_) => Ok(()),
            Self::Refused {
                scope,
                quota,
                retry_after,
            } => Err(ApiError::retry_after(
                ErrorCode::RateLimited,
                scope.detail(quota.limit),
                ceil_secs(retry_after),
            )
            .with_extension("limit", scope.name().into())
            .with_extension("allowed", quota.limit.into())),
            Self::LocalCap => Err(ApiError::retry_after(
                ErrorCode::RateLimited,
                "The service is limiting its request rate; retry shortly.",
                1,
            )
            .with_extension("limit", "process".into())),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros()
        .div_ceil(1_000_000)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Headers that whatever response goes out should carry, whoever renders it (the
/// pipeline's `Observe` attaches one per request and applies it last).
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders(Arc<Mutex<Vec<(HeaderName, HeaderValue)>>>);

impl ResponseHeaders {
    /// Sets `name` (replacing an earlier value).
    pub fn set(&self, name: HeaderName, value: HeaderValue) {
        let mut headers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value));
    }

    /// The `RateLimit-*` headers of `quota`.
    pub fn set_quota(&self, quota: Quota) {
        self.set(
            HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(quota.limit),
        );
        self.set(
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(quota.remaining),
        );
        self.set(
            HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(ceil_secs(quota.reset)),
        );
    }

    /// Adds everything set to `response` (existing values of the same names are replaced).
    pub fn apply(&self, response: &mut Response) {
        let headers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, value) in headers.iter() {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

/// Marks a request whose limits authentication judges (see the module docs); taken once.
#[derive(Debug, Clone, Default)]
pub struct Deferred(Arc<AtomicBool>);

impl Deferred {
    /// Claims the judgement: true the first time only.
    pub fn take(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}

/// Judges limits in Redis, with the process-wide fallback.
pub struct RateLimiter {
    settings: RateLimitSettings,
    redis: RedisPool,
    metrics: Arc<Metrics>,
    script: redis::Script,
    fallback: Option<DefaultDirectRateLimiter>,
    started: Instant,
    /// Milliseconds since `started` until which Redis is not asked (after a failure).
    skip_redis_until: AtomicU64,
}

/// How long Redis is left alone after a failed check.
const BACK_OFF: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// A limiter with `settings`, counting in `redis`, its refusals in `metrics`.
    pub fn new(settings: RateLimitSettings, redis: RedisPool, metrics: Arc<Metrics>) -> Self {
        let fallback = NonZeroU32::new(settings.fallback_per_second)
            .map(|rate| governor::RateLimiter::direct(GovernorQuota::per_second(rate)));
        Self {
            settings,
            redis,
            metrics,
            script: redis::Script::new(SCRIPT),
            fallback,
            started: Instant::now(),
            skip_redis_until: AtomicU64::new(0),
        }
    }

    /// Whether the per-IP and per-user limits apply.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The per-IP buckets of `ip` (IPv6 clients share one per /64, which is what one
    /// subscriber is usually given: see [`client_key`]).
    pub fn ip_limits(&self, ip: Option<IpAddr>) -> Vec<Limit> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let who = ip.map_or_else(|| "unknown".to_owned(), client_key);
        let key = |suffix: &str| format!("canopy:rl:ip:{who}:{suffix}");
        per_second_and_minute(
            (key("s"), Scope::IpPerSecond, self.settings.ip_per_second),
            (key("m"), Scope::IpPerMinute, self.settings.ip_per_minute),
        )
    }

    /// The per-user buckets of `user` in `tenant`.
    pub fn user_limits(&self, tenant: TenantId, user: Uuid) -> Vec<Limit> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let key = |suffix: &str| format!("canopy:t:{tenant}:rl:u:{user}:{suffix}");
        per_second_and_minute(
            (
                key("s"),
                Scope::UserPerSecond,
                self.settings.user_per_second,
            ),
            (
                key("m"),
                Scope::UserPerMinute,
                self.settings.user_per_minute,
            ),
        )
    }

    /// The plan's bucket of `tenant`: `per_minute` requests a minute (applies whether or
    /// not the general limits are enabled: it is part of the plan).
    pub fn plan_limit(tenant: TenantId, per_minute: u64) -> Limit {
        Limit {
            key: format!("canopy:t:{tenant}:rl:plan"),
            scope: Scope::Plan,
            count: u32::try_from(per_minute).unwrap_or(u32::MAX).max(1),
            period: Duration::from_secs(60),
        }
    }

    /// Judges `limits` and reads `lookups`, in one round trip. `Err` when Redis could not
    /// be asked; judge with [`Self::fallback`] then.
    pub async fn check(
        &self,
        limits: &[Limit],
        lookups: &[String],
    ) -> Result<(Verdict, Vec<Option<String>>), RedisError> {
        if limits.is_empty() {
            let values = if lookups.is_empty() {
                Vec::new()
            } else {
                mget(&self.redis, lookups).await?
            };
            return Ok((Verdict::Allowed(None), values));
        }
        let now = self.millis();
        if now < self.skip_redis_until.load(Ordering::Relaxed) {
            return Err(RedisError::BackingOff);
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(limits.len());
        for limit in limits {
            invocation.key(&limit.key);
        }
        for key in lookups {
            invocation.key(key);
        }
        for limit in limits {
            invocation
                .arg(limit.count.max(1))
                .arg(u64::try_from(limit.period.as_micros()).unwrap_or(u64::MAX));
        }
        let reply = with_redis(&self.redis, |mut conn| async move {
            invocation
                .invoke_async::<(Vec<i64>, Vec<Option<String>>)>(&mut *conn)
                .await
        })
        .await;
        let (figures, values) = match reply {
            Ok(reply) => reply,
            Err(error) => {
                self.skip_redis_until
                    .store(now + BACK_OFF.as_millis() as u64, Ordering::Relaxed);
                return Err(error);
            }
        };
        let [allowed, report, remaining, reset, retry] = figures[..] else {
            return Err(RedisError::UnexpectedReply(format!(
                "the rate-limit script answered {figures:?}"
            )));
        };
        let limit = usize::try_from(report - 1)
            .ok()
            .and_then(|i| limits.get(i))
            .ok_or_else(|| {
                RedisError::UnexpectedReply(format!(
                    "the rate-limit script reported limit {report}"
                ))
            })?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        let quota = Quota {
            limit: limit.count,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
        };
        let verdict = if allowed == 1 {
            Verdict::Allowed(Some(quota))
        } else {
            self.metrics.observe_rate_limited(limit.scope.name());
            Verdict::Refused {
                scope: limit.scope,
                quota,
                retry_after: micros(retry),
            }
        };
        Ok((verdict, values))
    }

    /// The verdict when Redis could not judge: the process-wide cap (none when the general
    /// limits are off: the plan's rate alone then goes unchecked, as before).
    pub fn fallback(&self) -> Verdict {
        if !self.settings.enabled {
            return Verdict::Allowed(None);
        }
        self.metrics.observe_rate_limit_fallback();
        match &self.fallback {
            Some(cap) if cap.check().is_err() => {
                self.metrics.observe_rate_limited("process");
                Verdict::LocalCap
            }
            _ => Verdict::Allowed(None),
        }
    }

    /// Judges `limits` alone, falling back to the process-wide cap.
    pub async fn judge(&self, limits: &[Limit]) -> Verdict {
        match self.check(limits, &[]).await {
            Ok((verdict, _)) => verdict,
            Err(error) => {
                tracing::debug!(%error, "rate limits unavailable; applying the process cap");
                self.fallback()
            }
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn per_second_and_minute(second: (String, Scope, u32), minute: (String, Scope, u32)) -> Vec<Limit> {
    [
        (second, Duration::from_secs(1)),
        (minute, Duration::from_secs(60)),
    ]
    .into_iter()
    .filter(|((_, _, count), _)| *count > 0)
    .map(|((key, scope, count), period)| Limit {
        key,
        scope,
        count,
        period,
    })
    .collect()
}

/// Writes `verdict`'s figures into the request's [`ResponseHeaders`], then turns it into
/// the request's outcome.
pub fn conclude(request: &Request, verdict: Verdict) -> Result<(), ApiError> {
    if let (Some(quota), Some(headers)) = (verdict.quota(), request.data::<ResponseHeaders>()) {
        headers.set_quota(quota);
    }
    verdict.into_result()
}

/// The routes authenticated by a user's access token, from the OpenAPI document.
fn user_routes(document: &str) -> Route {
    let marker = || make_sync(|_| ());
    let mut route = Route::new();
    let Ok(document) = serde_json::from_str::<serde_json::Value>(document) else {
        return route;
    };
    let Some(paths) = document["paths"].as_object() else {
        return route;
    };
    for (path, operations) in paths {
        let mut methods = RouteMethod::new();
        let mut any = false;
        for (method, operation) in operations.as_object().into_iter().flatten() {
            let by_user = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|requirement| requirement.get("UserAuth").is_some());
            let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            if by_user {
                methods = methods.method(method, marker());
                any = true;
            }
        }
        if any {
            let template = path.replace('{', ":").replace('}', "");
            route = match route.try_at(&template, methods) {
                Ok(route) => route,
                Err(error) => {
                    tracing::error!(%error, path, "cannot classify a route for rate limiting");
                    return Route::new();
                }
            };
        }
    }
    route
}

/// The edge middleware: client address, then the per-IP limits (see the module docs).
pub struct RateLimit {
    limiter: Arc<RateLimiter>,
    proxies: TrustedProxies,
    user_routes: Arc<Route>,
}

impl RateLimit {
    /// Judges with `limiter`; client addresses through `proxies`; which operations take
    /// a user's token from the OpenAPI `document`.
    pub fn new(limiter: Arc<RateLimiter>, proxies: TrustedProxies, document: &str) -> Self {
        Self {
            limiter,
            proxies,
            user_routes: Arc::new(user_routes(document)),
        }
    }
}

impl<E: Endpoint> Middleware<E> for RateLimit {
    type Output = RateLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        RateLimitEndpoint {
            inner,
            limiter: self.limiter.clone(),
            proxies: self.proxies.clone(),
            user_routes: self.user_routes.clone(),
        }
    }
}

/// Endpoint produced by [`RateLimit`].
pub struct RateLimitEndpoint<E> {
    inner: E,
    limiter: Arc<RateLimiter>,
    proxies: TrustedProxies,
    user_routes: Arc<Route>,
}

impl<E> RateLimitEndpoint<E> {
    async fn by_user(&self, req: &Request) -> bool {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
            });
        if !bearer {
            return false;
        }
        let probe = Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone())
            .finish();
        self.user_routes.call(probe).await.is_ok()
    }
}

/// Routes no limit applies to: liveness (touches nothing, and must answer during an
/// incident) and the webhooks (see the module docs). Readiness is not among them: it pings
/// PostgreSQL, Redis and S3, so unlimited it would be an amplifier onto all three.
fn exempt(path: &str) -> bool {
    path == "/health/live" || path.starts_with("/webhooks/")
}

impl<E: Endpoint> Endpoint for RateLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let peer = req.remote_addr().as_socket_addr().map(|addr| addr.ip());
        let ip = self.proxies.client_ip_of(peer, req.headers());
        req.set_data(ClientIp(ip));
        if !self.limiter.enabled() || exempt(req.uri().path()) {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        if self.by_user(&req).await {
            let deferred = Deferred::default();
            req.set_data(deferred.clone());
            let headers = req.data::<ResponseHeaders>().cloned();
            let outcome = self.inner.call(req).await.map(IntoResponse::into_response);
            if deferred.take() {
                // Authentication stopped before judging (the handler did not run): the
                // request counts against its address.
                let verdict = self.limiter.judge(&self.limiter.ip_limits(ip)).await;
                if let (Some(quota), Some(headers)) = (verdict.quota(), headers) {
                    headers.set_quota(quota);
                }
                verdict.into_result()?;
            }
            return outcome;
        }
        let verdict = self.limiter.judge(&self.limiter.ip_limits(ip)).await;
        conclude(&req, verdict)?;
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn authenticated_routes_are_read_from_the_document() {
        let routes = user_routes(&crate::routes::openapi_json());
        let probe = |method: Method, path: &str| {
            routes.call(Request::builder().method(method).uri_str(path).finish())
        };
        assert!(probe(Method::GET, "/v1/me").await.is_ok());
        assert!(
            probe(
                Method::GET,
                "/v1/products/0190c6b2-0000-7000-8000-000000000000"
            )
            .await
            .is_ok()
        );
        // A route where signing in is optional: a bearer there is judged by authentication.
        assert!(probe(Method::GET, "/v1/tenant").await.is_ok());
        // Public and platform-key routes are judged per address.
        assert!(probe(Method::POST, "/v1/auth/login").await.is_err());
        assert!(probe(Method::POST, "/v1/auth/register").await.is_err());
        assert!(probe(Method::GET, "/v1/admin/tenants").await.is_err());
        assert!(probe(Method::GET, "/metrics").await.is_err());
    }

    #[test]
    fn only_liveness_and_the_webhooks_are_exempt() {
        assert!(exempt("/health/live"));
        assert!(exempt("/webhooks/stripe"));
        for path in [
            "/health/ready",
            "/health/live/x",
            "/health/other",
            "/v1/auth/login",
        ] {
            assert!(!exempt(path), "{path}");
        }
    }

    #[test]
    fn a_refusal_names_its_limit_and_when_to_return() {
        let refused = Verdict::Refused {
            scope: Scope::IpPerSecond,
            quota: Quota {
                limit: 3,
                remaining: 0,
                reset: Duration::from_millis(900),
            },
            retry_after: Duration::from_millis(200),
        };
        let error = refused.into_result().expect_err("refused");
        assert_eq!(error.code(), ErrorCode::RateLimited);
        let response = error.into_problem_response("r");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert!(Verdict::Allowed(None).into_result().is_ok());
    }
}
