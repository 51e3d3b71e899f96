//! Running the service: the environment, tenancy housekeeping, background jobs, logging.

use std::{str::FromStr, time::Duration};

use serde::Deserialize;

use crate::{
    de,
    error::Rejection,
    loader::{Check, Section},
};

/// Whether development conveniences are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local development and tests: defaults for everything.
    Development,
    /// Secrets must be configured explicitly.
    Production,
}

/// The value is not one of the names of an enum setting.
#[derive(Debug, thiserror::Error)]
#[error("unknown name")]
pub struct UnknownName;

impl FromStr for Environment {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "development" | "dev" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            _ => Err(UnknownName),
        }
    }
}

/// The `environment` key, read before everything that depends on it.
#[derive(Deserialize)]
pub(crate) struct EnvironmentSetting {
    #[serde(deserialize_with = "de::parsed")]
    pub(crate) environment: Environment,
}

impl Section for EnvironmentSetting {
    const EXPECTED: &'static [(&'static str, &'static str)] =
        &[("environment", "`development` or `production`")];
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON on a pipe, pretty on a terminal.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err(UnknownName),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `tracing` filter directive (`CANOPY_LOG`, else `RUST_LOG`, else `info`).
    #[serde(rename = "log", deserialize_with = "de::text")]
    pub filter: String,
    /// Output format.
    #[serde(rename = "log_format", deserialize_with = "de::parsed")]
    pub format: LogFormat,
}

impl Section for LogSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("log", "a tracing filter"),
        ("log_format", "`auto`, `json` or `pretty`"),
    ];
}

/// Tenancy settings.
#[derive(Debug, Clone, Deserialize)]
pub struct TenancySettings {
    /// In-process cache lifetime of resolved tenants.
    #[serde(rename = "tenant_cache_ttl", deserialize_with = "de::duration")]
    pub cache_ttl: Duration,
    /// Delay between deleting a tenant and dropping its schema and role.
    #[serde(rename = "tenant_deletion_grace", deserialize_with = "de::duration")]
    pub deletion_grace: Duration,
    /// Tenants migrated at once.
    #[serde(deserialize_with = "de::parsed")]
    pub migrate_concurrency: usize,
    /// Spare tenant schemas kept built ahead of time, so that provisioning claims one
    /// instead of running the DDL (0: no pool, every tenant is built from scratch).
    #[serde(rename = "tenant_spares", deserialize_with = "de::parsed")]
    pub spares: usize,
}

impl Section for TenancySettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("tenant_cache_ttl", "a duration such as 60s"),
        ("tenant_deletion_grace", "a duration such as 7d"),
        ("migrate_concurrency", "a whole number from 1 to 256"),
        ("tenant_spares", "a whole number from 0 to 64"),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        Rejection::unless(
            (1..=256).contains(&self.migrate_concurrency),
            "migrate_concurrency",
        )?;
        Rejection::unless((0..=64).contains(&self.spares), "tenant_spares")
    }
}

/// Background job settings.
#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    /// Jobs run at once (0: no in-process workers).
    #[serde(deserialize_with = "de::parsed")]
    pub workers: usize,
    /// Lease of a claimed job.
    #[serde(rename = "job_lease", deserialize_with = "de::duration")]
    pub lease: Duration,
    /// Idle polling interval.
    #[serde(rename = "job_poll_interval", deserialize_with = "de::duration")]
    pub poll_interval: Duration,
    /// First retry delay.
    #[serde(rename = "job_backoff_base", deserialize_with = "de::duration")]
    pub backoff_base: Duration,
}

impl Section for JobSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("workers", "a whole number from 0 to 256"),
        ("job_lease", "a duration such as 60s"),
        ("job_poll_interval", "a duration such as 1s"),
        ("job_backoff_base", "a duration such as 2s"),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        Rejection::unless(self.workers <= 256, "workers")
    }
}
