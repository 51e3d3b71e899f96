//! General rate limits, judged in one Redis round trip per request: per client IP on
//! unauthenticated routes, per user on authenticated ones, and per tenant at the plan's
//! `requests_per_minute`. (The login, recovery and sign-up throttles of
//! [`crate::auth::throttle`] come on top; they count failures, not requests.)
//!
//! The buckets, their Lua script and the verdict live in [`admission::rate_limit`]
//! (re-exported here); this module is the HTTP side: the edge middleware, the
//! `RateLimit-*` headers, and the 429 a refusal renders as.
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
//! Failure policy: these limits fail open, behind a process-wide cap
//! ([`RateLimiter::fallback`]); the auth throttles keep failing closed.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub use admission::rate_limit::{Limit, Quota, RateLimiter, Scope, Verdict};
use poem::{
    Endpoint, IntoResponse, Middleware, Request, Response, Route, RouteMethod,
    endpoint::make_sync,
    http::{HeaderName, HeaderValue, Method, header},
};

use crate::{
    client_ip::{ClientIp, ForwardedFor, TrustedProxies},
    error::{ApiError, ErrorCode},
};

/// Rendering a [`Verdict`] as the request's outcome.
pub trait VerdictExt {
    /// `Ok` to go on, or the 429.
    fn into_result(self) -> Result<(), ApiError>;
}

impl VerdictExt for Verdict {
    fn into_result(self) -> Result<(), ApiError> {
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
