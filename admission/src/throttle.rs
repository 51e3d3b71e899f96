//! Fixed-window counters in Redis throttling login failures and recovery requests per
//! client IP and tenant (and sign-ups per client IP). They fail closed: with Redis
//! unreachable they answer [`AdmissionError::ThrottleUnavailable`] (a 503 with
//! `Retry-After`), so the endpoints they guard never run unthrottled.

use std::{net::IpAddr, time::Duration};

use tenancy::TenantId;

use crate::{AdmissionError, client_key, redis::RedisPool};

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

/// The Redis key of `counter` for `ip` in `tenant` (or platform-wide). The address is
/// counted as the general rate limits count it ([`client_key`]: IPv6 per /64), so rotating
/// addresses within one /64 does not earn fresh counters.
pub fn key(counter: Counter, tenant: Option<TenantId>, ip: Option<IpAddr>) -> String {
    let ip = ip.map_or_else(|| "unknown".to_owned(), client_key);
    match tenant {
        Some(tenant) => format!("canopy:t:{tenant}:throttle:{}:{ip}", counter.name()),
        None => format!("canopy:throttle:{}:{ip}", counter.name()),
    }
}

fn unavailable(error: impl std::fmt::Display) -> AdmissionError {
    tracing::warn!(%error, "throttle unavailable; refusing the request");
    AdmissionError::ThrottleUnavailable
}

fn throttled(retry_after: i64) -> AdmissionError {
    AdmissionError::Throttled {
        retry_after: u64::try_from(retry_after).unwrap_or(60),
    }
}

/// Refuses ([`AdmissionError::Throttled`], a 429) when `key` has reached `limit` within
/// its window.
pub async fn ensure_below(redis: &RedisPool, key: &str, limit: u32) -> Result<(), AdmissionError> {
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

/// Counts one event on `key` (its window starting at the first), and refuses
/// ([`AdmissionError::Throttled`], a 429) once the count exceeds `limit`.
pub async fn hit(
    redis: &RedisPool,
    key: &str,
    limit: u32,
    window: Duration,
) -> Result<(), AdmissionError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_within_one_ipv6_slash_64_share_a_counter() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("test address"));
        let tenant = Some(TenantId(uuid::Uuid::nil()));
        for (counter, tenant) in [
            (Counter::LoginFailures, tenant),
            (Counter::Recovery, tenant),
            (Counter::Signup, None),
        ] {
            let key = |address| key(counter, tenant, ip(address));
            assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:dead:beef:0:7"));
            assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
            assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
            assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
            assert!(key("203.0.113.7").ends_with(":203.0.113.7"));
        }
    }
}
