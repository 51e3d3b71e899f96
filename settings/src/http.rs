//! The HTTP edge: listeners, body and time limits, CORS, trusted proxies, request limits.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use crate::{
    TrustedProxies, de,
    error::Rejection,
    loader::{Check, Section},
};

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Listen address.
    #[serde(deserialize_with = "de::parsed")]
    pub bind: SocketAddr,
    /// Tenant subdomains live under this domain.
    #[serde(default, deserialize_with = "de::domain")]
    pub base_domain: Option<String>,
    /// Largest JSON body.
    #[serde(deserialize_with = "de::size")]
    pub body_limit: u64,
    /// Per-request deadline.
    #[serde(deserialize_with = "de::duration")]
    pub request_timeout: Duration,
    /// Grace period for in-flight requests at shutdown.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_timeout: Duration,
    /// Allowed CORS origins.
    #[serde(default, deserialize_with = "de::origins")]
    pub cors_origins: Vec<String>,
    /// Per-dependency budget of the readiness check.
    #[serde(deserialize_with = "de::duration")]
    pub health_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(default, deserialize_with = "de::parsed_or_default")]
    pub trusted_proxies: TrustedProxies,
    /// Listen address of the `/metrics` listener (`None`: off).
    #[serde(deserialize_with = "de::socket_addr_or_off")]
    pub metrics_bind: Option<SocketAddr>,
}

/// The deprecated switch, whose `true` trusted `X-Forwarded-For` from any peer.
const TRUST_FORWARDED_FOR: &str = "trust_forwarded_for";

impl Section for HttpSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("bind", "host:port, e.g. 127.0.0.1:8080"),
        ("base_domain", "a domain name such as canopy.example"),
        ("body_limit", "a size such as 1MiB or 524288"),
        ("request_timeout", "a duration such as 30s"),
        ("shutdown_timeout", "a duration such as 30s"),
        (
            "cors_origins",
            "comma-separated origins such as https://app.example.com",
        ),
        ("health_timeout", "a duration such as 2s"),
        (
            "trusted_proxies",
            "comma-separated CIDRs or addresses such as 10.0.0.0/8,127.0.0.1/32",
        ),
        (
            TRUST_FORWARDED_FOR,
            "`false`: `true` is refused, since it let any client choose its own IP \
             through X-Forwarded-For; list the proxies in front of Canopy in \
             CANOPY_TRUSTED_PROXIES (e.g. 10.0.0.0/8,127.0.0.1/32) and remove \
             CANOPY_TRUST_FORWARDED_FOR",
        ),
        ("metrics_bind", "host:port such as 127.0.0.1:9090, or `off`"),
    ];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        // The deprecated switch trusted `X-Forwarded-For` from any peer, so any client
        // could pick its own address; it no longer starts. A proxy list replaces it.
        if check
            .configured("trusted_proxies")
            .is_none_or(|v| v.is_empty())
        {
            match check.value(TRUST_FORWARDED_FOR) {
                Some(v) if v.eq_ignore_ascii_case("false") => {}
                Some(v) if !v.is_empty() => return Err(Rejection::invalid(TRUST_FORWARDED_FOR)),
                _ => {
                    return Err(Rejection::Missing {
                        key: TRUST_FORWARDED_FOR,
                        expected: None,
                    });
                }
            }
        }
        Ok(())
    }
}

/// General request limits (see `rate_limit`); a count of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    /// Whether the per-IP and per-user limits apply.
    #[serde(rename = "rate_limit_enabled", deserialize_with = "de::parsed")]
    pub enabled: bool,
    /// Per client IP and second, unauthenticated routes.
    #[serde(rename = "rate_limit_ip_per_second", deserialize_with = "de::parsed")]
    pub ip_per_second: u32,
    /// Per client IP and minute, unauthenticated routes.
    #[serde(rename = "rate_limit_ip_per_minute", deserialize_with = "de::parsed")]
    pub ip_per_minute: u32,
    /// Per user and second, authenticated routes.
    #[serde(rename = "rate_limit_user_per_second", deserialize_with = "de::parsed")]
    pub user_per_second: u32,
    /// Per user and minute, authenticated routes.
    #[serde(rename = "rate_limit_user_per_minute", deserialize_with = "de::parsed")]
    pub user_per_minute: u32,
    /// The process's cap while Redis cannot judge (0: none).
    #[serde(
        rename = "rate_limit_fallback_per_second",
        deserialize_with = "de::parsed"
    )]
    pub fallback_per_second: u32,
}

const MAX_RATE: u32 = 1_000_000;
const RATE: &str = "a whole number from 0 to 1000000";

impl Section for RateLimitSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("rate_limit_enabled", "`true` or `false`"),
        ("rate_limit_ip_per_second", RATE),
        ("rate_limit_ip_per_minute", RATE),
        ("rate_limit_user_per_second", RATE),
        ("rate_limit_user_per_minute", RATE),
        ("rate_limit_fallback_per_second", RATE),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        for (key, count) in [
            ("rate_limit_ip_per_second", self.ip_per_second),
            ("rate_limit_ip_per_minute", self.ip_per_minute),
            ("rate_limit_user_per_second", self.user_per_second),
            ("rate_limit_user_per_minute", self.user_per_minute),
            ("rate_limit_fallback_per_second", self.fallback_per_second),
        ] {
            Rejection::unless(count <= MAX_RATE, key)?;
        }
        Ok(())
    }
}
