//! The stores Canopy talks to: PostgreSQL, Redis and the S3 bucket.

use std::{fmt, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use url::Url;

use crate::{
    DEFAULT_S3_SECRET_ACCESS_KEY, de,
    error::Rejection,
    loader::{Check, Section},
};

/// PostgreSQL settings.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Parsed connection options (the password is inside and never printed).
    #[serde(rename = "database_url", deserialize_with = "de::postgres")]
    pub connect: PgConnectOptions,
    /// Pool size.
    #[serde(rename = "database_max_connections", deserialize_with = "de::parsed")]
    pub max_connections: u32,
    /// Wait for a pooled connection.
    #[serde(rename = "database_acquire_timeout", deserialize_with = "de::duration")]
    pub acquire_timeout: Duration,
    /// Recycle connections after this long.
    #[serde(rename = "database_max_lifetime", deserialize_with = "de::duration")]
    pub max_lifetime: Duration,
}

impl Section for DatabaseSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        (
            "database_url",
            "a postgres:// URL such as postgres://user:pass@host:5432/db",
        ),
        ("database_max_connections", "a whole number from 1 to 10000"),
        ("database_acquire_timeout", "a duration such as 5s"),
        ("database_max_lifetime", "a duration such as 30m"),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        Rejection::unless(
            (1..=10_000).contains(&self.max_connections),
            "database_max_connections",
        )
    }
}

/// Redis settings.
#[derive(Clone, Deserialize)]
pub struct RedisSettings {
    /// The URL (may carry a password, hence not `Debug`-printed).
    #[serde(rename = "redis_url", deserialize_with = "de::redis_url")]
    pub url: SecretString,
    /// Pool size.
    #[serde(rename = "redis_pool_size", deserialize_with = "de::parsed")]
    pub pool_size: u32,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl Section for RedisSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("redis_url", "a redis:// or rediss:// URL"),
        ("redis_pool_size", "a whole number from 1 to 1000"),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        Rejection::unless((1..=1000).contains(&self.pool_size), "redis_pool_size")
    }
}

/// Object storage settings.
#[derive(Debug, Clone, Deserialize)]
pub struct S3Settings {
    /// Endpoint URL.
    #[serde(rename = "s3_endpoint", deserialize_with = "de::http_url")]
    pub endpoint: Url,
    /// Region.
    #[serde(rename = "s3_region", deserialize_with = "de::parsed")]
    pub region: String,
    /// Bucket.
    #[serde(rename = "s3_bucket", deserialize_with = "de::parsed")]
    pub bucket: String,
    /// Access key id.
    #[serde(rename = "s3_access_key_id", deserialize_with = "de::parsed")]
    pub access_key_id: String,
    /// Secret key.
    #[serde(rename = "s3_secret_access_key", deserialize_with = "de::secret")]
    pub secret_access_key: SecretString,
}

impl Section for S3Settings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("s3_endpoint", "an http(s):// URL"),
        ("s3_region", "a non-empty string"),
        ("s3_bucket", "a bucket name (3-63 of a-z, 0-9, '-', '.')"),
        ("s3_access_key_id", "a non-empty string"),
        ("s3_secret_access_key", "a non-empty string"),
    ];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        let bucket = &self.bucket;
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        Rejection::unless(valid_bucket, "s3_bucket")?;
        if check.production()
            && self.secret_access_key.expose_secret() == DEFAULT_S3_SECRET_ACCESS_KEY
        {
            return Err(Rejection::missing(
                "s3_secret_access_key",
                "the object store's secret key (production does not use the development key)",
            ));
        }
        Ok(())
    }
}
