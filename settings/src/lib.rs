//! Canopy's configuration: `CANOPY_*` environment variables over an optional TOML file,
//! validated once at start-up into typed sections.
//!
//! Every setting has one key, listed in [`SETTINGS`] with its default. In the environment
//! it is `CANOPY_<KEY>` (upper case); in the file it is `<key>` (lower case). Keys are flat
//! (`CANOPY_DATABASE_URL`, `database_url`), while the types group them by concern: each
//! section ([`HttpSettings`], [`DatabaseSettings`], …) is a serde-derived struct that
//! figment fills from the merged layers (`loader`), with one deserializer per kind of value
//! (`de`: durations, sizes, secrets, URLs, addresses, lists) and a `validate` for what
//! serde cannot check (ranges, production's refusal of development secrets and URLs).
//! The environment wins over the file. A missing or invalid value is a [`ConfigError`]
//! whose one line names the variable and what is expected, never a panic.
//!
//! The crate is free of HTTP so that every crate and binary can read the same settings;
//! `api` re-exports it as `api::settings`.

mod billing;
mod de;
mod email;
mod error;
mod files;
mod http;
mod identity;
mod loader;
mod operations;
mod proxies;
mod realtime;
mod retention;
mod secrets;
mod spec;
mod stores;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, path::Path};

// The tests moved from `api/src/settings.rs` unchanged and name these through
// `use super::*`.
#[cfg(test)]
use std::time::Duration;

pub use crate::{
    billing::BillingSettings,
    email::EmailSettings,
    error::ConfigError,
    files::FileSettings,
    http::{HttpSettings, RateLimitSettings},
    identity::{AuthSettings, JwtSettings},
    operations::{Environment, JobSettings, LogFormat, LogSettings, TenancySettings, UnknownName},
    proxies::{InvalidProxyList, TrustedProxies},
    realtime::RealtimeSettings,
    retention::{MAX_RETENTION, MIN_RETENTION, RetentionSettings},
    secrets::{SECRETS_KEY_BYTES, SecretsSettings, parse_key as parse_secrets_key},
    spec::{SETTINGS, SettingSpec},
    stores::{DatabaseSettings, RedisSettings, S3Settings},
};
use crate::{
    billing::PlanSettings,
    loader::{Section, Sources},
    operations::EnvironmentSetting,
};
#[cfg(test)]
use crate::{loader::read_file, spec::env_name};

/// Default development database: the local cluster that `deploy/local/up.sh` starts.
pub const DEFAULT_DATABASE_URL: &str = "postgres://canopy:canopy@127.0.0.1:5432/canopy";
/// Default development Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default development S3 server (Garage's S3 port).
pub const DEFAULT_S3_ENDPOINT: &str = "http://127.0.0.1:3900";
/// Development S3 key imported by `deploy/local/up.sh`.
pub const DEFAULT_S3_ACCESS_KEY_ID: &str = "GK0123456789abcdef01234567";
/// Secret of the development S3 key.
pub const DEFAULT_S3_SECRET_ACCESS_KEY: &str =
    "8d8e3b8f3a8c4e2f9b1d7a6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f";

/// Placeholder Stripe key for development (the API is not reachable with it).
pub const DEFAULT_STRIPE_SECRET_KEY: &str = "sk_test_canopy_development";
/// Development webhook signing secret.
pub const DEFAULT_STRIPE_WEBHOOK_SECRET: &str = "whsec_canopy_development";
/// Development key encrypting secrets at rest (base64 of the 32 ASCII bytes
/// `canopy-development-secrets-key!!`); production refuses it.
pub const DEFAULT_SECRETS_KEY: &str = "Y2Fub3B5LWRldmVsb3BtZW50LXNlY3JldHMta2V5ISE=";
/// Development key of unsubscribe links (production refuses it).
pub const DEFAULT_UNSUBSCRIBE_KEY: &str = "canopy-development-unsubscribe-key";

/// Everything Canopy is configured with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Development or production.
    pub environment: Environment,
    /// HTTP server.
    pub http: HttpSettings,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// Tokens.
    pub jwt: JwtSettings,
    /// Sign-up, login, recovery and their throttles.
    pub auth: AuthSettings,
    /// Object storage.
    pub s3: S3Settings,
    /// Files and thumbnails.
    pub files: FileSettings,
    /// The plan catalog.
    pub plans: ::billing::PlanCatalog,
    /// Payments.
    pub billing: BillingSettings,
    /// Logging.
    pub log: LogSettings,
    /// Tenancy.
    pub tenancy: TenancySettings,
    /// Background jobs.
    pub jobs: JobSettings,
    /// Email.
    pub email: EmailSettings,
    /// General request limits.
    pub rate_limit: RateLimitSettings,
    /// How long finished rows are kept, and the prune jobs.
    pub retention: RetentionSettings,
    /// The key encrypting secrets at rest (TOTP secrets).
    pub secrets: SecretsSettings,
    /// Realtime connections.
    pub realtime: RealtimeSettings,
}

impl Settings {
    /// Reads the process environment and, when given, a TOML file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let file_values = match file {
            Some(path) => loader::read_file(path)?,
            None => BTreeMap::new(),
        };
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CANOPY_"))
            .collect();
        Self::from_sources(&env, &file_values, file)
    }

    /// Builds settings from explicit sources; `env` holds `CANOPY_*` variables.
    pub fn from_env_map(env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_sources(env, &BTreeMap::new(), None)
    }

    /// Reads the sections one after the other; the first refusal is the error. Identity
    /// comes last, so production's missing secrets are named before its public URL.
    pub(crate) fn from_sources(
        env: &BTreeMap<String, String>,
        file: &BTreeMap<String, String>,
        file_path: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let src = Sources::new(env, file, file_path);
        let environment = src
            .section::<EnvironmentSetting>(Environment::Development)?
            .environment;
        let http = src.section(environment)?;
        let rate_limit = src.section(environment)?;
        let database = src.section(environment)?;
        let redis = src.section(environment)?;
        let jwt = src.section(environment)?;
        let s3 = src.section(environment)?;
        let files = src.section(environment)?;
        let plans = src
            .section::<PlanSettings>(environment)?
            .catalog()
            .map_err(|r| src.name(r, PlanSettings::EXPECTED))?;
        let billing: BillingSettings = src.section(environment)?;
        let log = src.section(environment)?;
        let jobs = src.section(environment)?;
        let email = src.section(environment)?;
        let tenancy = src.section(environment)?;
        let retention = src.section(environment)?;
        let secrets = src.section(environment)?;
        let realtime = src.section(environment)?;
        let auth: AuthSettings = src.section(environment)?;
        let billing = billing.with_default_urls(&auth.public_url);
        Ok(Self {
            environment,
            http,
            database,
            redis,
            jwt,
            auth,
            s3,
            files,
            plans,
            billing,
            log,
            tenancy,
            jobs,
            email,
            rate_limit,
            retention,
            secrets,
            realtime,
        })
    }
}
