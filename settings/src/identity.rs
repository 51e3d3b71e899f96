//! Identity: access and refresh tokens, links in emails, lockout and throttles, password
//! hashing.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::{
    de,
    error::Rejection,
    loader::{Check, Section},
};

/// Access and refresh token settings.
#[derive(Debug, Clone, Deserialize)]
pub struct JwtSettings {
    /// `iss` claim.
    #[serde(rename = "jwt_issuer", deserialize_with = "de::parsed")]
    pub issuer: String,
    /// `aud` claim.
    #[serde(rename = "jwt_audience", deserialize_with = "de::parsed")]
    pub audience: String,
    /// Access token lifetime.
    #[serde(rename = "jwt_access_ttl", deserialize_with = "de::duration")]
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    #[serde(rename = "jwt_refresh_ttl", deserialize_with = "de::duration")]
    pub refresh_ttl: Duration,
}

impl Section for JwtSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("jwt_issuer", "a non-empty string"),
        ("jwt_audience", "a non-empty string"),
        ("jwt_access_ttl", "a duration such as 15m"),
        ("jwt_refresh_ttl", "a duration such as 30d"),
    ];
}

/// Identity: links, token lifetimes, lockout and throttles, password hashing.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Window in which a rotated refresh token yields its successor again.
    #[serde(deserialize_with = "de::duration")]
    pub refresh_grace: Duration,
    /// Base URL of links in emails.
    #[serde(deserialize_with = "de::http_url")]
    pub public_url: Url,
    /// Verification link lifetime.
    #[serde(deserialize_with = "de::duration")]
    pub verification_ttl: Duration,
    /// Reset link lifetime.
    #[serde(deserialize_with = "de::duration")]
    pub password_reset_ttl: Duration,
    /// Invitation lifetime.
    #[serde(deserialize_with = "de::duration")]
    pub invitation_ttl: Duration,
    /// Lifetime of a cached set of effective permissions.
    #[serde(deserialize_with = "de::duration")]
    pub permission_cache_ttl: Duration,
    /// Failures that lock an account.
    #[serde(deserialize_with = "de::parsed")]
    pub login_max_failures: u32,
    /// Failure counting window (accounts and IPs).
    #[serde(deserialize_with = "de::duration")]
    pub login_failure_window: Duration,
    /// Lock duration.
    #[serde(deserialize_with = "de::duration")]
    pub login_lockout: Duration,
    /// Failed logins per IP and tenant per window.
    #[serde(deserialize_with = "de::parsed")]
    pub login_ip_max_failures: u32,
    /// Recovery requests per IP and tenant per window.
    #[serde(deserialize_with = "de::parsed")]
    pub recovery_ip_max_requests: u32,
    /// Sign-ups per IP per hour.
    #[serde(deserialize_with = "de::parsed")]
    pub signup_ip_max_requests: u32,
    /// Hashing threads (0: one per core).
    #[serde(deserialize_with = "de::parsed")]
    pub password_hash_threads: usize,
    /// Hashing queue bound.
    #[serde(deserialize_with = "de::parsed")]
    pub password_hash_queue: usize,
}

const DAY: u64 = 86_400;

impl Section for AuthSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("refresh_grace", "a duration of at most 10s"),
        ("public_url", "an http(s):// URL"),
        ("verification_ttl", "a duration such as 24h"),
        ("password_reset_ttl", "a duration such as 1h"),
        ("invitation_ttl", "a duration from 1m to 90d, such as 7d"),
        ("permission_cache_ttl", "a duration such as 5m"),
        ("login_max_failures", "a whole number from 1 to 100"),
        ("login_failure_window", "a duration such as 15m"),
        ("login_lockout", "a duration such as 15m"),
        ("login_ip_max_failures", "a whole number from 1 to 100000"),
        (
            "recovery_ip_max_requests",
            "a whole number from 1 to 100000",
        ),
        ("signup_ip_max_requests", "a whole number from 1 to 100000"),
        ("password_hash_threads", "a whole number from 0 to 256"),
        ("password_hash_queue", "a whole number from 1 to 100000"),
    ];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        Rejection::unless(
            self.refresh_grace <= Duration::from_secs(10),
            "refresh_grace",
        )?;
        Rejection::unless(
            (Duration::from_secs(60)..=Duration::from_secs(90 * DAY))
                .contains(&self.invitation_ttl),
            "invitation_ttl",
        )?;
        for (key, count, max) in [
            ("login_max_failures", self.login_max_failures, 100),
            ("login_ip_max_failures", self.login_ip_max_failures, 100_000),
            (
                "recovery_ip_max_requests",
                self.recovery_ip_max_requests,
                100_000,
            ),
            (
                "signup_ip_max_requests",
                self.signup_ip_max_requests,
                100_000,
            ),
        ] {
            Rejection::unless((1..=max).contains(&count), key)?;
        }
        Rejection::unless(self.password_hash_threads <= 256, "password_hash_threads")?;
        Rejection::unless(
            (1..=100_000).contains(&self.password_hash_queue),
            "password_hash_queue",
        )?;
        if check.production() && check.configured("public_url").is_none() {
            return Err(Rejection::missing(
                "public_url",
                "the https:// URL users open (links in emails point there)",
            ));
        }
        Ok(())
    }
}
