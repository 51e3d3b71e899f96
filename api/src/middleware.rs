//! The request pipeline, outermost first:
//!
//! 1. [`SecurityHeaders`] on every response, error responses included;
//! 2. [`Observe`]: request id, the request's tracing span, metrics, panic catching, and the
//!    translation of every error into problem+json;
//! 3. CORS, when origins are configured;
//! 4. [`Timeout`] and [`BodyLimit`] (except for file uploads, which stream under the plan's
//!    limit: see `routes::files`);
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
    error::{ApiError, ErrorCode},
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

/// Abandons requests that run longer than the configured deadline (503
/// `request_timeout`). Dropping the handler's future rolls back its open transaction.
pub struct Timeout(pub Duration);

impl<E: Endpoint> Middleware<E> for Timeout {
    type Output = TimeoutEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        TimeoutEndpoint {
            inner,
            limit: self.0,
        }
    }
}

/// Endpoint produced by [`Timeout`].
pub struct TimeoutEndpoint<E> {
    inner: E,
    limit: Duration,
}

impl<E: Endpoint> Endpoint for TimeoutEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if crate::routes::files::is_upload(&req) {
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

/// Marker carried by the I/O error a body stream yields once it passes the limit, so the
/// error mapper answers 413 rather than 400.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyLimitExceeded {
    /// The limit that was crossed.
    pub limit: u64,
}

/// Caps request bodies: at once from `Content-Length`, and while streaming for bodies that
/// do not announce their length.
pub struct BodyLimit(pub u64);

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            limit: self.0,
        }
    }
}

/// Endpoint produced by [`BodyLimit`].
pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: u64,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<E::Output> {
        if crate::routes::files::is_upload(&req) {
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
