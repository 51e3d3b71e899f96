//! The request pipeline, outermost first:
//!
//! 1. [`SecurityHeaders`] on every response, error responses included;
//! 2. [`Observe`]: request id, the request's tracing span, metrics, panic catching, and the
//!    translation of every error into problem+json;
//! 3. CORS, when origins are configured;
//! 4. [`Timeout`] and [`BodyLimit`] (except for the requests start-up exempts: file
//!    uploads, which stream under the plan's limit, see `routes::files`);
//! 5. [`crate::rate_limit::RateLimit`]: the client address, and the per-IP limits. The
//!    per-user and per-tenant limits need the user, so on authenticated routes they are
//!    judged by authentication, in the Redis round trip it makes anyway (one per request
//!    in all; see `rate_limit`);
//! 6. tenant resolution, authentication and authorization (added by their modules);
//! 7. the handler.

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use poem::{
    Body, Endpoint, IntoResponse, Middleware, PathPattern, Request, Response,
    http::{HeaderName, HeaderValue, header},
};
use tracing::{Instrument, field::Empty};

use crate::{
    error::{ApiError, BodyLimitExceeded, ErrorCode},
    metrics::Metrics,
    rate_limit::ResponseHeaders,
};

/// The header carrying the request id in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id, available to handlers as request data.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// Keeps a caller's id when it is short and plain (it ends up in logs and headers);
    /// otherwise makes a new one.
    fn from_request(req: &Request) -> Self {
        let incoming = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=128).contains(&v.len())
                    && v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                    })
            });
        match incoming {
            Some(id) => Self(id.into()),
            None => Self(uuid::Uuid::now_v7().to_string().into()),
        }
    }
}

/// Outermost middleware; see the module docs.
pub struct Observe {
    metrics: Arc<Metrics>,
}

impl Observe {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveEndpoint {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Endpoint produced by [`Observe`].
pub struct ObserveEndpoint<E> {
    inner: E,
    metrics: Arc<Metrics>,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let start = Instant::now();
        let request_id = RequestId::from_request(&req);
        req.set_data(request_id.clone());
        // Headers any layer wants on the response, whoever ends up rendering it.
        let extra_headers = ResponseHeaders::default();
        req.set_data(extra_headers.clone());
        let method = req.method().clone();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id.0,
            method = %method,
            path = %req.uri().path(),
            route = Empty,
            status = Empty,
            latency_ms = Empty,
            tenant_id = Empty,
            user_id = Empty,
        );

        async move {
            let outcome = AssertUnwindSafe(self.inner.call(req)).catch_unwind().await;
            let (route, mut response) = match outcome {
                Ok(Ok(output)) => {
                    let response = output.into_response();
                    (
                        response.data::<PathPattern>().map(|p| p.0.clone()),
                        response,
                    )
                }
                Ok(Err(err)) => {
                    // A path no route matches has no template (nested routers may still
                    // have attached their prefix).
                    let route = (!err.is::<poem::error::NotFoundError>())
                        .then(|| err.data::<PathPattern>().map(|p| p.0.clone()))
                        .flatten();
                    (
                        route,
                        ApiError::from_poem(err).into_problem_response(&request_id.0),
                    )
                }
                Err(panic) => {
                    tracing::error!(panic = panic_message(&*panic), "handler panicked");
                    let err = ApiError::new(
                        ErrorCode::InternalError,
                        "An unexpected error occurred. Quote the request id if you report it.",
                    );
                    (None, err.into_problem_response(&request_id.0))
                }
            };
            extra_headers.apply(&mut response);
            if let Ok(value) = HeaderValue::from_str(&request_id.0) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
            }

            let status = response.status();
            let elapsed = start.elapsed();
            // Unmatched paths share one label: raw paths would let clients mint series.
            let route = route
                .as_deref()
                .filter(|r| !r.is_empty())
                .unwrap_or("unmatched");
            let span = tracing::Span::current();
            span.record("route", route);
            span.record("status", status.as_u16());
            span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
            self.metrics
                .observe_request(method.as_str(), route, status.as_u16(), elapsed);
            if status.is_server_error() {
                tracing::warn!("request completed");
            } else {
                tracing::info!("request completed");
            }
            Ok(response)
        }
        .instrument(span)
        .await
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Hardening headers on every response.
pub struct SecurityHeaders;

impl<E: Endpoint> Middleware<E> for SecurityHeaders {
    type Output = SecurityHeadersEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        SecurityHeadersEndpoint { inner }
    }
}

/// Endpoint produced by [`SecurityHeaders`].
pub struct SecurityHeadersEndpoint<E> {
    inner: E,
}

/// The Swagger UI page inlines its script and styles; everything else is JSON and may
/// load nothing at all.
const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        img-src 'self' data:; font-src data:; connect-src 'self'; frame-ancestors 'none'";
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

impl<E: Endpoint> Endpoint for SecurityHeadersEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let is_docs = req.uri().path() == "/docs" || req.uri().path().starts_with("/docs/");
        let mut response = self.inner.call(req).await?.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(if is_docs { DOCS_CSP } else { API_CSP }),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

/// Requests that [`Timeout`] and [`BodyLimit`] leave alone: uploads, which stream for as
/// long as the client sends under limits of their own (see `routes::files`). Start-up says
/// which they are, so the pipeline needs no knowledge of the routes.
pub type Exempt = fn(&Request) -> bool;

fn nothing_exempt(_: &Request) -> bool {
    false
}

/// Abandons requests that run longer than the configured deadline (503
/// `request_timeout`). Dropping the handler's future rolls back its open transaction.
pub struct Timeout {
    limit: Duration,
    exempt: Exempt,
}

impl Timeout {
    /// Every request ends within `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            exempt: nothing_exempt,
        }
    }

    /// Except those `exempt` picks.
    pub fn except(mut self, exempt: Exempt) -> Self {
        self.exempt = exempt;
        self
    }
}

impl<E: Endpoint> Middleware<E> for Timeout {
    type Output = TimeoutEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        TimeoutEndpoint {
            inner,
            limit: self.limit,
            exempt: self.exempt,
        }
    }
}

/// Endpoint produced by [`Timeout`].
pub struct TimeoutEndpoint<E> {
    inner: E,
    limit: Duration,
    exempt: Exempt,
}

impl<E: Endpoint> Endpoint for TimeoutEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if (self.exempt)(&req) {
            // Streams for as long as the client sends; stalls are cut off by the endpoint.
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        match tokio::time::timeout(self.limit, self.inner.call(req)).await {
            Ok(result) => result.map(IntoResponse::into_response),
            Err(_) => Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "The request did not complete within {} s.",
                    self.limit.as_secs_f64()
                ),
            )
            .into()),
        }
    }
}

/// Caps request bodies: at once from `Content-Length`, and while streaming for bodies that
/// do not announce their length.
pub struct BodyLimit {
    limit: u64,
    exempt: Exempt,
}

impl BodyLimit {
    /// No body is larger than `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            exempt: nothing_exempt,
        }
    }

    /// Except those of the requests `exempt` picks.
    pub fn except(mut self, exempt: Exempt) -> Self {
        self.exempt = exempt;
        self
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            limit: self.limit,
            exempt: self.exempt,
        }
    }
}

/// Endpoint produced by [`BodyLimit`].
pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: u64,
    exempt: Exempt,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<E::Output> {
        if (self.exempt)(&req) {
            // Limited by the tenant's plan, in the endpoint.
            return self.inner.call(req).await;
        }
        let limit = self.limit;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("The request body is larger than the limit of {limit} bytes."),
            )
            .into());
        }
        let mut seen = 0u64;
        let stream = req.take_body().into_bytes_stream().map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > limit {
                return Err(std::io::Error::other(BodyLimitExceeded { limit }));
            }
            Ok(chunk)
        });
        req.set_body(Body::from_bytes_stream(stream));
        self.inner.call(req).await
    }
}

/// The methods each route supports, for the `Allow` header every 405 carries (RFC 9110
/// §15.5.6). Start-up fills it from the OpenAPI document and the routes outside it.
#[derive(Debug, Default)]
pub struct AllowedMethods {
    routes: Vec<(Vec<Segment>, HeaderValue)>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Literal(String),
    Parameter,
}

impl AllowedMethods {
    /// Every path of an OpenAPI document with the operations it declares.
    pub fn from_openapi(doc: &serde_json::Value) -> Self {
        let mut allowed = Self::default();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .filter(|key| {
                    matches!(
                        key.as_str(),
                        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
                    )
                })
                .map(|method| method.to_ascii_uppercase())
                .collect();
            allowed.add(path, &methods);
        }
        allowed
    }

    /// `template` (`/a/{id}` or `/a/:id`) supports `methods` (and `HEAD`, where it has
    /// `GET`: the router answers it).
    pub fn add(&mut self, template: &str, methods: &[impl AsRef<str>]) {
        let mut methods: Vec<&str> = methods.iter().map(AsRef::as_ref).collect();
        if methods.contains(&"GET") && !methods.contains(&"HEAD") {
            methods.push("HEAD");
        }
        methods.sort_unstable();
        let segments = template
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with(':') || (s.starts_with('{') && s.ends_with('}')) {
                    Segment::Parameter
                } else {
                    Segment::Literal(s.to_owned())
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
            self.routes.push((segments, value));
        }
    }

    /// The `Allow` value of the route the router picks for `path`: where several
    /// templates match, literal segments win over parameters, as in the router.
    fn of(&self, path: &str) -> Option<&HeaderValue> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.routes
            .iter()
            .filter(|(template, _)| {
                template.len() == segments.len()
                    && template.iter().zip(&segments).all(|(t, s)| match t {
                        Segment::Literal(literal) => literal == s,
                        Segment::Parameter => true,
                    })
            })
            // `Literal` orders before `Parameter`: the most literal template first.
            .min_by(|(a, _), (b, _)| {
                let rank = |t: &[Segment]| -> Vec<bool> {
                    t.iter().map(|s| *s == Segment::Parameter).collect()
                };
                rank(a).cmp(&rank(b))
            })
            .map(|(_, value)| value)
    }
}

/// Adds `Allow` to the 405s of the routes it wraps.
pub struct Allow(pub Arc<AllowedMethods>);

impl<E: Endpoint> Middleware<E> for Allow {
    type Output = AllowEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        AllowEndpoint {
            inner,
            allowed: self.0.clone(),
        }
    }
}

/// Endpoint produced by [`Allow`].
pub struct AllowEndpoint<E> {
    inner: E,
    allowed: Arc<AllowedMethods>,
}

impl<E: Endpoint> Endpoint for AllowEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        match self.inner.call(req).await {
            Ok(output) => Ok(output.into_response()),
            Err(err) if err.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED => {
                let Some(allow) = self.allowed.of(&path) else {
                    return Err(err);
                };
                let pattern = err.data::<PathPattern>().cloned();
                let mut err: poem::Error = ApiError::from_poem(err)
                    .with_header(header::ALLOW, allow.clone())
                    .into();
                if let Some(pattern) = pattern {
                    err.set_data(pattern);
                }
                Err(err)
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_most_literal_template_names_the_allowed_methods() {
        let mut allowed = AllowedMethods::from_openapi(&json!({
            "paths": {
                "/v1/users/{id}": {"get": {}, "patch": {}, "parameters": []},
                "/v1/users/me": {"get": {}},
                "/v1/users": {"post": {}, "get": {}},
            }
        }));
        allowed.add("/problems/:code", &["GET"]);
        let of = |path| {
            allowed
                .of(path)
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        assert_eq!(of("/v1/users/me").as_deref(), Some("GET, HEAD"));
        assert_eq!(of("/v1/users/42").as_deref(), Some("GET, HEAD, PATCH"));
        assert_eq!(of("/v1/users").as_deref(), Some("GET, HEAD, POST"));
        assert_eq!(of("/problems/not_found").as_deref(), Some("GET, HEAD"));
        assert_eq!(of("/v1/users/42/sessions"), None);
    }
}
