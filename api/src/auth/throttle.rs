//! Fixed-window counters in Redis throttling login failures and recovery requests per
//! client IP and tenant. They fail closed: with Redis unreachable, the endpoints they
//! guard answer 503 with `Retry-After` rather than run unthrottled.

use std::{net::IpAddr, time::Duration};

use tenancy::TenantId;

use crate::{
    error::{ApiError, ErrorCode},
    state::RedisPool,
};

/// Which counter.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// Failed logins.
    LoginFailures,
    /// Forgot-password, reset-password and resend-verification requests.
    Recovery,
    /// Sign-ups (platform-wide: there is no tenant yet).
    Signup,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Self::LoginFailures => "login-failures",
            Self::Recovery => "recovery",
            Self::Signup => "signup",
        }
    }
}

/// The Redis key of `counter` for `ip` in `tenant` (or platform-wide).
pub fn key(counter: Counter, tenant: Option<TenantId>, ip: Option<IpAddr>) -> String {
    let ip = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    match tenant {
        Some(tenant) => format!("canopy:t:{tenant}:throttle:{}:{ip}", counter.name()),
        None => format!("canopy:throttle:{}:{ip}", counter.name()),
    }
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "throttle unavailable; refusing the request");
    ApiError::retry_after(
        ErrorCode::DependencyUnavailable,
        "This operation is temporarily unavailable; retry shortly.",
        5,
    )
}

fn throttled(retry_after: i64) -> ApiError {
    ApiError::retry_after(
        ErrorCode::RateLimited,
        "Too many attempts from this address; retry later.",
        u64::try_from(retry_after).unwrap_or(60),
    )
}

/// Refuses (429) when `key` has reached `limit` within its window.
pub async fn ensure_below(redis: &RedisPool, key: &str, limit: u32) -> Result<(), ApiError> {
    let mut conn = redis.get().await.map_err(unavailable)?;
    let (count, ttl): (Option<u32>, i64) = redis::pipe()
        .cmd("GET")
        .arg(key)
        .cmd("TTL")
        .arg(key)
        .query_async(&mut *conn)
        .await
        .map_err(unavailable)?;
    if count.unwrap_or(0) >= limit {
        return Err(throttled(ttl));
    }
    Ok(())
}

/// Counts one event on `key` (its window starting at the first), and refuses (429) once
/// the count exceeds `limit`.
pub async fn hit(
    redis: &RedisPool,
    key: &str,
    limit: u32,
    window: Duration,
) -> Result<(), ApiError> {
    let mut conn = redis.get().await.map_err(unavailable)?;
    let (count, _, ttl): (u32, i64, i64) = redis::pipe()
        .cmd("INCR")
        .arg(key)
        .cmd("EXPIRE")
        .arg(key)
        .arg(window.as_secs().max(1))
        .arg("NX")
        .cmd("TTL")
        .arg(key)
        .query_async(&mut *conn)
        .await
        .map_err(unavailable)?;
    if count > limit {
        return Err(throttled(ttl));
    }
    Ok(())
}
