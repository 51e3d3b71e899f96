//! Configuration: `CANOPY_*` environment variables over an optional TOML file, validated
//! once at start-up into typed settings.
//!
//! Every setting has one key. In the environment it is `CANOPY_<KEY>` (upper case); in the
//! file it is `<key>` (lower case). The environment wins. A missing or invalid value is a
//! [`ConfigError`] naming the variable and what is expected, never a panic.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, str::FromStr, time::Duration};

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use url::Url;

use crate::client_ip::TrustedProxies;

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

/// One documented setting: its key, default and meaning.
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    /// Lower-case key; the variable is `CANOPY_` + upper case.
    pub key: &'static str,
    /// Default, when any.
    pub default: Option<&'static str>,
    /// What it controls and what it expects.
    pub help: &'static str,
}

/// Every setting Canopy reads, in the order the README documents them.
pub const SETTINGS: &[SettingSpec] = &[
    spec(
        "environment",
        Some("development"),
        "`development` or `production`; production refuses development defaults for secrets",
    ),
    spec(
        "bind",
        Some("127.0.0.1:8080"),
        "address the HTTP server listens on, host:port (port 0 picks a free port)",
    ),
    spec(
        "base_domain",
        None,
        "domain whose subdomains name tenants (e.g. `canopy.example` for `acme.canopy.example`)",
    ),
    spec(
        "database_url",
        Some(DEFAULT_DATABASE_URL),
        "PostgreSQL URL of a role allowed to create roles and schemas",
    ),
    spec(
        "database_max_connections",
        Some("20"),
        "size of the one shared PostgreSQL pool",
    ),
    spec(
        "database_acquire_timeout",
        Some("5s"),
        "how long a request waits for a pooled connection",
    ),
    spec(
        "database_max_lifetime",
        Some("30m"),
        "pooled connections are recycled after this long",
    ),
    spec(
        "redis_url",
        Some(DEFAULT_REDIS_URL),
        "Redis URL (`redis://` or `rediss://`)",
    ),
    spec(
        "redis_pool_size",
        Some("16"),
        "Redis connections in the pool",
    ),
    spec(
        "body_limit",
        Some("1MiB"),
        "largest request body accepted outside file uploads (e.g. `512KiB`, `2MB`)",
    ),
    spec(
        "request_timeout",
        Some("30s"),
        "a request still running after this long is answered 503",
    ),
    spec(
        "shutdown_timeout",
        Some("30s"),
        "on SIGTERM/SIGINT, how long in-flight requests may take to finish",
    ),
    spec(
        "cors_origins",
        None,
        "comma-separated origins allowed by CORS (e.g. `https://app.example.com`); none when empty",
    ),
    spec(
        "health_timeout",
        Some("2s"),
        "per-dependency time budget of `/health/ready`",
    ),
    spec(
        "tenant_cache_ttl",
        Some("60s"),
        "how long a resolved tenant stays cached in process (changes announced over Redis drop it sooner)",
    ),
    spec(
        "tenant_deletion_grace",
        Some("7d"),
        "a deleted tenant's schema and role are dropped after this long",
    ),
    spec(
        "migrate_concurrency",
        Some("8"),
        "tenant schemas `canopy migrate` migrates at once",
    ),
    spec(
        "workers",
        Some("4"),
        "jobs `canopy serve` runs at once in process (0: none, leave jobs to `canopy worker`); also the concurrency of `canopy worker`",
    ),
    spec(
        "job_lease",
        Some("60s"),
        "a claimed job belongs to its worker this long (renewed while it runs); a dead worker's jobs run again after it",
    ),
    spec(
        "job_poll_interval",
        Some("1s"),
        "how often an idle worker looks for due jobs (new jobs also wake it at once)",
    ),
    spec(
        "job_backoff_base",
        Some("2s"),
        "first retry delay of a failed job; doubles with each attempt (with jitter), up to an hour",
    ),
    spec(
        "smtp_url",
        None,
        "SMTP server for email, e.g. `smtp://user:pass@mail.example:587?tls=required` or `smtps://mail.example:465`; when unset, email goes to the outbox (required in production)",
    ),
    spec(
        "outbox_dir",
        Some(".local/outbox"),
        "development email transport: each message is written here as an `.eml` file",
    ),
    spec(
        "email_from",
        Some("Canopy <no-reply@canopy.localhost>"),
        "sender address of every email (the tenant's name is shown as the sender name)",
    ),
    spec("jwt_issuer", Some("canopy"), "`iss` claim of access tokens"),
    spec(
        "jwt_audience",
        Some("canopy"),
        "`aud` claim of access tokens",
    ),
    spec(
        "jwt_access_ttl",
        Some("15m"),
        "lifetime of an access token (Ed25519 JWT; keys live in the database, see `canopy keys`)",
    ),
    spec(
        "jwt_refresh_ttl",
        Some("30d"),
        "lifetime of a refresh token (each use rotates it and starts a new lifetime); also how long Redis remembers revoked sessions and blocked users",
    ),
    spec(
        "refresh_grace",
        Some("10s"),
        "how long after a rotation the old refresh token still yields the same successor (a client racing itself); at most 10s",
    ),
    spec(
        "public_url",
        Some("http://127.0.0.1:8080"),
        "base URL of the application the links in emails point to (`/verify-email?token=…`, `/reset-password?token=…`)",
    ),
    spec(
        "verification_ttl",
        Some("24h"),
        "lifetime of an email verification link",
    ),
    spec(
        "password_reset_ttl",
        Some("1h"),
        "lifetime of a password reset link",
    ),
    spec(
        "invitation_ttl",
        Some("7d"),
        "lifetime of an invitation (`/accept-invitation?token=…`); a resend starts it again",
    ),
    spec(
        "permission_cache_ttl",
        Some("5m"),
        "how long Redis keeps a user's effective permissions (every role or assignment change voids them at once)",
    ),
    spec(
        "login_max_failures",
        Some("5"),
        "failed logins within `CANOPY_LOGIN_FAILURE_WINDOW` that lock an account",
    ),
    spec(
        "login_failure_window",
        Some("15m"),
        "window counting an account's failed logins, and a client IP's",
    ),
    spec(
        "login_lockout",
        Some("15m"),
        "how long a locked account stays locked",
    ),
    spec(
        "login_ip_max_failures",
        Some("30"),
        "failed logins per client IP and tenant within the window before that IP is throttled (429)",
    ),
    spec(
        "recovery_ip_max_requests",
        Some("10"),
        "forgot-password, reset-password and resend-verification requests per client IP and tenant within the window before that IP is throttled (429)",
    ),
    spec(
        "signup_ip_max_requests",
        Some("20"),
        "sign-ups per client IP per hour before that IP is throttled (429)",
    ),
    spec(
        "trust_forwarded_for",
        Some("false"),
        "removed: `true` used to trust `X-Forwarded-For` from any peer (so any client could choose its own IP); it now refuses to start, naming `CANOPY_TRUSTED_PROXIES` to set instead (when that is set, this switch is ignored)",
    ),
    spec(
        "trusted_proxies",
        None,
        "comma-separated CIDRs or addresses of the proxies in front of Canopy (e.g. `10.0.0.0/8,127.0.0.1/32`); from a peer in the list, the client IP is the right-most `X-Forwarded-For` entry not in it; none when empty",
    ),
    spec(
        "metrics_bind",
        Some("127.0.0.1:9090"),
        "address of the separate listener serving `/metrics` (for `canopy serve` and `canopy worker`; give each process on a host its own port), or `off`",
    ),
    spec(
        "rate_limit_enabled",
        Some("true"),
        "`false` turns the per-IP and per-user request limits and their fallback cap off (the plan's rate and the login, recovery and sign-up throttles stay)",
    ),
    spec(
        "rate_limit_ip_per_second",
        Some("3"),
        "requests per second (and burst) from one client IP (an IPv6 /64) to unauthenticated routes; 0: no such limit",
    ),
    spec(
        "rate_limit_ip_per_minute",
        Some("100"),
        "requests per minute from one client IP to unauthenticated routes; 0: no such limit",
    ),
    spec(
        "rate_limit_user_per_second",
        Some("20"),
        "requests per second (and burst) by one user on authenticated routes; 0: no such limit",
    ),
    spec(
        "rate_limit_user_per_minute",
        Some("600"),
        "requests per minute by one user on authenticated routes; 0: no such limit",
    ),
    spec(
        "rate_limit_fallback_per_second",
        Some("200"),
        "while Redis cannot judge the limits, this process serves at most this many rate-limited requests per second (429 past it); 0: no cap",
    ),
    spec(
        "password_hash_threads",
        Some("0"),
        "threads hashing passwords at low priority; 0 means one per core",
    ),
    spec(
        "password_hash_queue",
        Some("256"),
        "password hashes waiting or running before logins are told to retry (503)",
    ),
    spec(
        "s3_endpoint",
        Some(DEFAULT_S3_ENDPOINT),
        "S3-compatible endpoint URL",
    ),
    spec("s3_region", Some("garage"), "S3 region"),
    spec(
        "s3_bucket",
        Some("canopy"),
        "bucket holding every tenant's objects (keys are prefixed by tenant id)",
    ),
    spec(
        "s3_access_key_id",
        Some(DEFAULT_S3_ACCESS_KEY_ID),
        "S3 access key id",
    ),
    spec(
        "s3_secret_access_key",
        Some(DEFAULT_S3_SECRET_ACCESS_KEY),
        "S3 secret access key",
    ),
    spec(
        "thumbnail_sizes",
        Some("128,512"),
        "comma-separated thumbnail sizes in pixels on the longest edge (16 to 2048, at most 4)",
    ),
    spec(
        "file_url_ttl",
        Some("5m"),
        "lifetime of the presigned URLs that file downloads and thumbnails redirect to (at most 7d)",
    ),
    spec(
        "orphan_sweep_interval",
        Some("1h"),
        "how often the orphan sweeper removes objects without a file record and aborts stale multipart uploads",
    ),
    spec(
        "orphan_grace",
        Some("6h"),
        "the sweeper leaves objects and multipart uploads younger than this alone (uploads in flight)",
    ),
    spec(
        "decode_memory",
        Some("512MiB"),
        "memory all image decodes of a process share (thumbnail jobs wait for room; an image needing more than all of it ends `failed`); at least 16MiB",
    ),
    spec(
        "plans",
        None,
        "plan catalog as a JSON array replacing the default `free`/`pro`/`business` one: `[{\"name\": \"free\", \"price_ids\": [], \"limits\": {\"storage_bytes\": \"1 GiB\", \"upload_bytes\": \"10 MiB\", \"products\": 100, \"seats\": 3, \"file_types\": [\"image/png\"]}}]`",
    ),
    spec(
        "stripe_secret_key",
        Some(DEFAULT_STRIPE_SECRET_KEY),
        "Stripe secret API key (`sk_live_…`/`sk_test_…`); production refuses the development placeholder",
    ),
    spec(
        "stripe_api_base",
        Some("https://api.stripe.com"),
        "base URL of the Stripe API (tests point it at a local server)",
    ),
    spec(
        "stripe_webhook_secrets",
        Some(DEFAULT_STRIPE_WEBHOOK_SECRET),
        "comma-separated webhook signing secrets (`whsec_…`); a delivery signed with any of them is accepted, so a rotation lists the old and the new one",
    ),
    spec(
        "billing_success_url",
        None,
        "where Checkout sends the customer after paying (default: `<public_url>/billing/success?session_id={CHECKOUT_SESSION_ID}`)",
    ),
    spec(
        "billing_cancel_url",
        None,
        "where Checkout sends a customer who gives up (default: `<public_url>/billing/cancel`)",
    ),
    spec(
        "billing_return_url",
        None,
        "where the billing portal returns to (default: `<public_url>/billing`)",
    ),
    spec(
        "billing_reconcile_interval",
        Some("15m"),
        "how often recent Stripe events are listed to catch deliveries that never arrived",
    ),
    spec(
        "log",
        Some("info"),
        "log filter in `tracing` syntax (e.g. `info,canopy=debug`); `RUST_LOG` is read when this is unset",
    ),
    spec(
        "log_format",
        Some("auto"),
        "`json`, `pretty`, or `auto` (pretty on a terminal, JSON otherwise)",
    ),
];

const fn spec(key: &'static str, default: Option<&'static str>, help: &'static str) -> SettingSpec {
    SettingSpec { key, default, help }
}

/// A setting that could not be read; its `Display` is the one line shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is present but not acceptable.
    #[error("{source_name}={value:?} is invalid: expected {expected}")]
    Invalid {
        /// `CANOPY_X` or `key` in the named file.
        source_name: String,
        /// The rejected value (secrets are masked).
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A required value is absent.
    #[error("{var} is required: {expected}")]
    Missing {
        /// The variable to set.
        var: String,
        /// What it should hold.
        expected: String,
    },
    /// The configuration file could not be read or parsed, or names an unknown key.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Whether development conveniences are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local development and tests: defaults for everything.
    Development,
    /// Secrets must be configured explicitly.
    Production,
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

/// PostgreSQL settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Parsed connection options (the password is inside and never printed).
    pub connect: PgConnectOptions,
    /// Pool size.
    pub max_connections: u32,
    /// Wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// Recycle connections after this long.
    pub max_lifetime: Duration,
}

/// Redis settings.
#[derive(Clone)]
pub struct RedisSettings {
    /// The URL (may carry a password, hence not `Debug`-printed).
    pub url: SecretString,
    /// Pool size.
    pub pool_size: u32,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// Tenancy settings.
#[derive(Debug, Clone)]
pub struct TenancySettings {
    /// In-process cache lifetime of resolved tenants.
    pub cache_ttl: Duration,
    /// Delay between deleting a tenant and dropping its schema and role.
    pub deletion_grace: Duration,
    /// Tenants migrated at once.
    pub migrate_concurrency: usize,
}

/// Background job settings.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Jobs run at once (0: no in-process workers).
    pub workers: usize,
    /// Lease of a claimed job.
    pub lease: Duration,
    /// Idle polling interval.
    pub poll_interval: Duration,
    /// First retry delay.
    pub backoff_base: Duration,
}

/// Email settings.
#[derive(Clone)]
pub struct EmailSettings {
    /// SMTP URL (may hold credentials); `None`: write to the outbox.
    pub smtp_url: Option<SecretString>,
    /// Outbox directory of the development transport.
    pub outbox_dir: std::path::PathBuf,
    /// Sender.
    pub from: String,
}

impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSettings")
            .field("smtp", &self.smtp_url.is_some())
            .field("outbox_dir", &self.outbox_dir)
            .field("from", &self.from)
            .finish()
    }
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address.
    pub bind: SocketAddr,
    /// Tenant subdomains live under this domain.
    pub base_domain: Option<String>,
    /// Largest JSON body.
    pub body_limit: u64,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Allowed CORS origins.
    pub cors_origins: Vec<String>,
    /// Per-dependency budget of the readiness check.
    pub health_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Listen address of the `/metrics` listener (`None`: off).
    pub metrics_bind: Option<SocketAddr>,
}

/// General request limits (see `rate_limit`); a count of 0 turns that limit off.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Whether the per-IP and per-user limits apply.
    pub enabled: bool,
    /// Per client IP and second, unauthenticated routes.
    pub ip_per_second: u32,
    /// Per client IP and minute, unauthenticated routes.
    pub ip_per_minute: u32,
    /// Per user and second, authenticated routes.
    pub user_per_second: u32,
    /// Per user and minute, authenticated routes.
    pub user_per_minute: u32,
    /// The process's cap while Redis cannot judge (0: none).
    pub fallback_per_second: u32,
}

/// Identity: links, token lifetimes, lockout and throttles, password hashing.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Window in which a rotated refresh token yields its successor again.
    pub refresh_grace: Duration,
    /// Base URL of links in emails.
    pub public_url: Url,
    /// Verification link lifetime.
    pub verification_ttl: Duration,
    /// Reset link lifetime.
    pub password_reset_ttl: Duration,
    /// Invitation lifetime.
    pub invitation_ttl: Duration,
    /// Lifetime of a cached set of effective permissions.
    pub permission_cache_ttl: Duration,
    /// Failures that lock an account.
    pub login_max_failures: u32,
    /// Failure counting window (accounts and IPs).
    pub login_failure_window: Duration,
    /// Lock duration.
    pub login_lockout: Duration,
    /// Failed logins per IP and tenant per window.
    pub login_ip_max_failures: u32,
    /// Recovery requests per IP and tenant per window.
    pub recovery_ip_max_requests: u32,
    /// Sign-ups per IP per hour.
    pub signup_ip_max_requests: u32,
    /// Hashing threads (0: one per core).
    pub password_hash_threads: usize,
    /// Hashing queue bound.
    pub password_hash_queue: usize,
}

/// Access and refresh token settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
}

/// Object storage settings.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Endpoint URL.
    pub endpoint: Url,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret key.
    pub secret_access_key: SecretString,
}

/// File settings.
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// Thumbnail sizes (longest edge, pixels), ascending.
    pub thumbnail_sizes: Vec<u32>,
    /// Lifetime of presigned download URLs.
    pub url_ttl: Duration,
    /// Period of the orphan sweeper.
    pub orphan_sweep_interval: Duration,
    /// Age below which the sweeper leaves objects and uploads alone.
    pub orphan_grace: Duration,
    /// Memory all image decodes of the process share, in bytes.
    pub decode_memory: u64,
}

/// Billing settings.
#[derive(Clone)]
pub struct BillingSettings {
    /// Stripe secret key.
    pub secret_key: SecretString,
    /// Stripe API base URL.
    pub api_base: Url,
    /// Webhook signing secrets.
    pub webhook_secrets: Vec<SecretString>,
    /// Checkout success URL.
    pub success_url: String,
    /// Checkout cancel URL.
    pub cancel_url: String,
    /// Billing portal return URL.
    pub return_url: String,
    /// Period of the reconciliation job.
    pub reconcile_interval: Duration,
}

impl fmt::Debug for BillingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingSettings")
            .field("api_base", &self.api_base.as_str())
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .field("return_url", &self.return_url)
            .field("reconcile_interval", &self.reconcile_interval)
            .finish_non_exhaustive()
    }
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `tracing` filter directive.
    pub filter: String,
    /// Output format.
    pub format: LogFormat,
}

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
    pub plans: billing::PlanCatalog,
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
}

impl Settings {
    /// Reads the process environment and, when given, a TOML file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let file_values = match file {
            Some(path) => read_file(path)?,
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

    fn from_sources(
        env: &BTreeMap<String, String>,
        file: &BTreeMap<String, String>,
        file_path: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let src = Sources {
            env,
            file,
            file_path,
        };
        let environment = src.parse(
            "environment",
            "`development` or `production`",
            |v| match v {
                "development" | "dev" => Some(Environment::Development),
                "production" | "prod" => Some(Environment::Production),
                _ => None,
            },
        )?;

        let http = HttpSettings {
            bind: src.parse("bind", "host:port, e.g. 127.0.0.1:8080", |v| {
                SocketAddr::from_str(v).ok()
            })?,
            base_domain: src.optional(
                "base_domain",
                "a domain name such as canopy.example",
                |v| {
                    let v = v.trim_start_matches('.').to_ascii_lowercase();
                    let ok = !v.is_empty()
                        && v.len() <= 253
                        && v.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        });
                    ok.then_some(v)
                },
            )?,
            body_limit: src.parse("body_limit", "a size such as 1MiB or 524288", parse_size)?,
            request_timeout: src.parse(
                "request_timeout",
                "a duration such as 30s",
                parse_duration,
            )?,
            shutdown_timeout: src.parse(
                "shutdown_timeout",
                "a duration such as 30s",
                parse_duration,
            )?,
            cors_origins: src
                .optional(
                    "cors_origins",
                    "comma-separated origins such as https://app.example.com",
                    |v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|o| !o.is_empty())
                            .map(|o| {
                                let url = Url::parse(o).ok()?;
                                let plain = matches!(url.scheme(), "http" | "https")
                                    && url.host().is_some()
                                    && url.path() == "/"
                                    && url.query().is_none();
                                plain.then(|| o.trim_end_matches('/').to_owned())
                            })
                            .collect::<Option<Vec<_>>>()
                    },
                )?
                .unwrap_or_default(),
            health_timeout: src.parse("health_timeout", "a duration such as 2s", parse_duration)?,
            trusted_proxies: match src.optional(
                "trusted_proxies",
                "comma-separated CIDRs or addresses such as 10.0.0.0/8,127.0.0.1/32",
                TrustedProxies::parse,
            )? {
                Some(proxies) => proxies,
                None => {
                    // The deprecated switch trusted `X-Forwarded-For` from any peer, so any
                    // client could pick its own address; it no longer starts.
                    src.parse(
                        "trust_forwarded_for",
                        "`false`: `true` is refused, since it let any client choose its own IP \
                         through X-Forwarded-For; list the proxies in front of Canopy in \
                         CANOPY_TRUSTED_PROXIES (e.g. 10.0.0.0/8,127.0.0.1/32) and remove \
                         CANOPY_TRUST_FORWARDED_FOR",
                        |v| v.eq_ignore_ascii_case("false").then_some(()),
                    )?;
                    TrustedProxies::none()
                }
            },
            metrics_bind: src.parse(
                "metrics_bind",
                "host:port such as 127.0.0.1:9090, or `off`",
                |v| match v {
                    "off" => Some(None),
                    v => SocketAddr::from_str(v).ok().map(Some),
                },
            )?,
        };
        let count = |max: u32| move |v: &str| v.parse::<u32>().ok().filter(|n| *n <= max);
        let rate_limit = RateLimitSettings {
            enabled: src.parse("rate_limit_enabled", "`true` or `false`", |v| {
                v.parse().ok()
            })?,
            ip_per_second: src.parse(
                "rate_limit_ip_per_second",
                "a whole number from 0 to 1000000",
                count(1_000_000),
            )?,
            ip_per_minute: src.parse(
                "rate_limit_ip_per_minute",
                "a whole number from 0 to 1000000",
                count(1_000_000),
            )?,
            user_per_second: src.parse(
                "rate_limit_user_per_second",
                "a whole number from 0 to 1000000",
                count(1_000_000),
            )?,
            user_per_minute: src.parse(
                "rate_limit_user_per_minute",
                "a whole number from 0 to 1000000",
                count(1_000_000),
            )?,
            fallback_per_second: src.parse(
                "rate_limit_fallback_per_second",
                "a whole number from 0 to 1000000",
                count(1_000_000),
            )?,
        };

        let database = DatabaseSettings {
            connect: src.parse_secret(
                "database_url",
                "a postgres:// URL such as postgres://user:pass@host:5432/db",
                |v| {
                    let url = Url::parse(v).ok()?;
                    if !matches!(url.scheme(), "postgres" | "postgresql") {
                        return None;
                    }
                    PgConnectOptions::from_str(v).ok()
                },
            )?,
            max_connections: src.parse(
                "database_max_connections",
                "a whole number from 1 to 10000",
                |v| v.parse().ok().filter(|n| (1..=10_000).contains(n)),
            )?,
            acquire_timeout: src.parse(
                "database_acquire_timeout",
                "a duration such as 5s",
                parse_duration,
            )?,
            max_lifetime: src.parse(
                "database_max_lifetime",
                "a duration such as 30m",
                parse_duration,
            )?,
        };

        let redis = RedisSettings {
            url: src.parse_secret("redis_url", "a redis:// or rediss:// URL", |v| {
                let url = Url::parse(v).ok()?;
                matches!(url.scheme(), "redis" | "rediss").then(|| SecretString::from(v))
            })?,
            pool_size: src.parse("redis_pool_size", "a whole number from 1 to 1000", |v| {
                v.parse().ok().filter(|n| (1..=1000).contains(n))
            })?,
        };

        let jwt = JwtSettings {
            issuer: src.parse("jwt_issuer", "a non-empty string", non_empty)?,
            audience: src.parse("jwt_audience", "a non-empty string", non_empty)?,
            access_ttl: src.parse("jwt_access_ttl", "a duration such as 15m", parse_duration)?,
            refresh_ttl: src.parse("jwt_refresh_ttl", "a duration such as 30d", parse_duration)?,
        };
        let whole =
            |max: u32| move |v: &str| v.parse::<u32>().ok().filter(|n| (1..=max).contains(n));
        let auth = AuthSettings {
            refresh_grace: src.parse("refresh_grace", "a duration of at most 10s", |v| {
                parse_duration(v).filter(|d| *d <= Duration::from_secs(10))
            })?,
            public_url: src.parse("public_url", "an http(s):// URL", |v| {
                Url::parse(v)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            })?,
            verification_ttl: src.parse(
                "verification_ttl",
                "a duration such as 24h",
                parse_duration,
            )?,
            password_reset_ttl: src.parse(
                "password_reset_ttl",
                "a duration such as 1h",
                parse_duration,
            )?,
            invitation_ttl: src.parse(
                "invitation_ttl",
                "a duration from 1m to 90d, such as 7d",
                |v| {
                    parse_duration(v).filter(|d| {
                        (Duration::from_secs(60)..=Duration::from_secs(90 * 86_400)).contains(d)
                    })
                },
            )?,
            permission_cache_ttl: src.parse(
                "permission_cache_ttl",
                "a duration such as 5m",
                parse_duration,
            )?,
            login_max_failures: src.parse(
                "login_max_failures",
                "a whole number from 1 to 100",
                whole(100),
            )?,
            login_failure_window: src.parse(
                "login_failure_window",
                "a duration such as 15m",
                parse_duration,
            )?,
            login_lockout: src.parse("login_lockout", "a duration such as 15m", parse_duration)?,
            login_ip_max_failures: src.parse(
                "login_ip_max_failures",
                "a whole number from 1 to 100000",
                whole(100_000),
            )?,
            recovery_ip_max_requests: src.parse(
                "recovery_ip_max_requests",
                "a whole number from 1 to 100000",
                whole(100_000),
            )?,
            signup_ip_max_requests: src.parse(
                "signup_ip_max_requests",
                "a whole number from 1 to 100000",
                whole(100_000),
            )?,
            password_hash_threads: src.parse(
                "password_hash_threads",
                "a whole number from 0 to 256",
                |v| v.parse().ok().filter(|n| (0..=256).contains(n)),
            )?,
            password_hash_queue: src.parse(
                "password_hash_queue",
                "a whole number from 1 to 100000",
                |v| v.parse().ok().filter(|n| (1..=100_000).contains(n)),
            )?,
        };

        let s3 = S3Settings {
            endpoint: src.parse("s3_endpoint", "an http(s):// URL", |v| {
                Url::parse(v)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            })?,
            region: src.parse("s3_region", "a non-empty string", non_empty)?,
            bucket: src.parse(
                "s3_bucket",
                "a bucket name (3-63 of a-z, 0-9, '-', '.')",
                |v| {
                    let ok = (3..=63).contains(&v.len())
                        && v.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        });
                    ok.then(|| v.to_owned())
                },
            )?,
            access_key_id: src.parse("s3_access_key_id", "a non-empty string", non_empty)?,
            secret_access_key: src.parse_secret(
                "s3_secret_access_key",
                "a non-empty string",
                |v| (!v.is_empty()).then(|| SecretString::from(v)),
            )?,
        };
        let dev_s3_key = src
            .get("s3_secret_access_key")
            .is_none_or(|(_, v)| v == DEFAULT_S3_SECRET_ACCESS_KEY);
        if environment == Environment::Production && dev_s3_key {
            return Err(ConfigError::Missing {
                var: "CANOPY_S3_SECRET_ACCESS_KEY".into(),
                expected:
                    "the object store's secret key (production does not use the development key)"
                        .into(),
            });
        }

        let files = FileSettings {
            thumbnail_sizes: src.parse(
                "thumbnail_sizes",
                "1 to 4 comma-separated sizes from 16 to 2048",
                |v| {
                    let mut sizes = v
                        .split(',')
                        .map(|s| s.trim().parse().ok().filter(|n| (16..=2048).contains(n)))
                        .collect::<Option<Vec<u32>>>()?;
                    sizes.sort_unstable();
                    sizes.dedup();
                    (1..=4).contains(&sizes.len()).then_some(sizes)
                },
            )?,
            url_ttl: src.parse("file_url_ttl", "a duration from 1s to 7d", |v| {
                parse_duration(v).filter(|d| *d <= Duration::from_secs(7 * 24 * 3600))
            })?,
            orphan_sweep_interval: src.parse(
                "orphan_sweep_interval",
                "a duration such as 1h",
                parse_duration,
            )?,
            orphan_grace: src.parse("orphan_grace", "a duration such as 1h", parse_duration)?,
            decode_memory: src.parse(
                "decode_memory",
                "a size from 16MiB, such as 512MiB",
                |v| parse_size(v).filter(|n| *n >= 16 << 20),
            )?,
        };
        let plans = match src.get("plans") {
            Some((name, v)) if !v.is_empty() => {
                billing::PlanCatalog::from_json(&v).map_err(|e| ConfigError::Invalid {
                    source_name: name,
                    value: v,
                    expected: format!("a JSON plan catalog ({e})"),
                })?
            }
            _ => billing::PlanCatalog::default(),
        };

        let public_url = auth.public_url.as_str().trim_end_matches('/').to_owned();
        let url_or = |key: &str, default: String| -> Result<String, ConfigError> {
            Ok(src
                .optional(key, "an http(s):// URL", |v| {
                    Url::parse(v)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .map(|_| v.to_owned())
                })?
                .unwrap_or(default))
        };
        let billing = BillingSettings {
            secret_key: src.parse_secret("stripe_secret_key", "a Stripe secret key", |v| {
                (!v.is_empty()).then(|| SecretString::from(v))
            })?,
            api_base: src.parse("stripe_api_base", "an http(s):// URL", |v| {
                Url::parse(v)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            })?,
            webhook_secrets: src.parse_secret(
                "stripe_webhook_secrets",
                "comma-separated signing secrets",
                |v| {
                    let secrets: Vec<SecretString> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(SecretString::from)
                        .collect();
                    (!secrets.is_empty()).then_some(secrets)
                },
            )?,
            success_url: url_or(
                "billing_success_url",
                format!("{public_url}/billing/success?session_id={{CHECKOUT_SESSION_ID}}"),
            )?,
            cancel_url: url_or("billing_cancel_url", format!("{public_url}/billing/cancel"))?,
            return_url: url_or("billing_return_url", format!("{public_url}/billing"))?,
            reconcile_interval: src.parse(
                "billing_reconcile_interval",
                "a duration such as 15m",
                parse_duration,
            )?,
        };
        if environment == Environment::Production {
            for (key, placeholder) in [
                ("stripe_secret_key", DEFAULT_STRIPE_SECRET_KEY),
                ("stripe_webhook_secrets", DEFAULT_STRIPE_WEBHOOK_SECRET),
            ] {
                if src.get(key).is_none_or(|(_, v)| v == placeholder) {
                    return Err(ConfigError::Missing {
                        var: env_name(key),
                        expected: "the Stripe account's own value (production does not use the development placeholder)".into(),
                    });
                }
            }
        }

        let log = LogSettings {
            filter: match src.get("log") {
                Some((_, v)) => v,
                None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            },
            format: src.parse("log_format", "`auto`, `json` or `pretty`", |v| match v {
                "auto" => Some(LogFormat::Auto),
                "json" => Some(LogFormat::Json),
                "pretty" => Some(LogFormat::Pretty),
                _ => None,
            })?,
        };

        let jobs = JobSettings {
            workers: src.parse("workers", "a whole number from 0 to 256", |v| {
                v.parse().ok().filter(|n| (0..=256).contains(n))
            })?,
            lease: src.parse("job_lease", "a duration such as 60s", parse_duration)?,
            poll_interval: src.parse(
                "job_poll_interval",
                "a duration such as 1s",
                parse_duration,
            )?,
            backoff_base: src.parse("job_backoff_base", "a duration such as 2s", parse_duration)?,
        };
        let smtp_url = src.optional("smtp_url", "an smtp:// or smtps:// URL", |v| {
            let url = Url::parse(v).ok()?;
            (matches!(url.scheme(), "smtp" | "smtps") && url.host().is_some())
                .then(|| SecretString::from(v))
        });
        let smtp_url = match smtp_url {
            Ok(url) => url,
            Err(ConfigError::Invalid {
                source_name,
                expected,
                ..
            }) => {
                return Err(ConfigError::Invalid {
                    source_name,
                    value: "<redacted>".into(),
                    expected,
                });
            }
            Err(other) => return Err(other),
        };
        if environment == Environment::Production && smtp_url.is_none() {
            return Err(ConfigError::Missing {
                var: "CANOPY_SMTP_URL".into(),
                expected:
                    "an smtp:// or smtps:// URL (production does not write email to an outbox)"
                        .into(),
            });
        }
        let email = EmailSettings {
            smtp_url,
            outbox_dir: src.parse("outbox_dir", "a directory path", |v| {
                (!v.is_empty()).then(|| v.into())
            })?,
            from: src.parse(
                "email_from",
                "an address such as `Canopy <no-reply@example.com>`",
                |v| {
                    let address = v
                        .rsplit_once('<')
                        .map_or(v, |(_, a)| a.trim_end_matches('>'));
                    let (local, domain) = address.trim().split_once('@')?;
                    (!local.is_empty() && domain.contains('.')).then(|| v.to_owned())
                },
            )?,
        };
        let tenancy = TenancySettings {
            cache_ttl: src.parse("tenant_cache_ttl", "a duration such as 60s", parse_duration)?,
            deletion_grace: src.parse(
                "tenant_deletion_grace",
                "a duration such as 7d",
                parse_duration,
            )?,
            migrate_concurrency: src.parse(
                "migrate_concurrency",
                "a whole number from 1 to 256",
                |v| v.parse().ok().filter(|n| (1..=256).contains(n)),
            )?,
        };

        if environment == Environment::Production && src.get("public_url").is_none() {
            return Err(ConfigError::Missing {
                var: "CANOPY_PUBLIC_URL".into(),
                expected: "the https:// URL users open (links in emails point there)".into(),
            });
        }

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
        })
    }
}

/// Where values come from, in priority order: environment, then file, then defaults.
struct Sources<'a> {
    env: &'a BTreeMap<String, String>,
    file: &'a BTreeMap<String, String>,
    file_path: Option<&'a Path>,
}

impl Sources<'_> {
    /// The raw value and the name to blame when it is wrong.
    fn get(&self, key: &str) -> Option<(String, String)> {
        let var = env_name(key);
        if let Some(v) = self.env.get(&var) {
            return Some((var, v.trim().to_owned()));
        }
        if let Some(v) = self.file.get(key) {
            let path = self
                .file_path
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Some((format!("`{key}` in {path}"), v.trim().to_owned()));
        }
        None
    }

    fn default_of(key: &str) -> Option<&'static str> {
        SETTINGS
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| s.default)
    }

    fn optional<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            Some((_, v)) if v.is_empty() => Ok(None),
            Some((name, v)) => parse(&v).map(Some).ok_or_else(|| ConfigError::Invalid {
                source_name: name,
                value: v,
                expected: expected.to_owned(),
            }),
            None => Ok(Self::default_of(key).and_then(parse)),
        }
    }

    fn parse<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        self.optional(key, expected, parse)?
            .ok_or_else(|| ConfigError::Missing {
                var: env_name(key),
                expected: expected.to_owned(),
            })
    }

    /// Like [`Self::parse`], but never echoes the value (URLs carry passwords).
    fn parse_secret<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        self.parse(key, expected, parse).map_err(|e| match e {
            ConfigError::Invalid {
                source_name,
                expected,
                ..
            } => ConfigError::Invalid {
                source_name,
                value: "<redacted>".into(),
                expected,
            },
            other => other,
        })
    }
}

fn env_name(key: &str) -> String {
    format!("CANOPY_{}", key.to_ascii_uppercase())
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

fn parse_duration(v: &str) -> Option<Duration> {
    humantime::parse_duration(v).ok().filter(|d| !d.is_zero())
}

fn parse_size(v: &str) -> Option<u64> {
    let bytes = match v.parse::<u64>() {
        Ok(n) => n,
        Err(_) => v.parse::<bytesize::ByteSize>().ok()?.as_u64(),
    };
    (bytes > 0).then_some(bytes)
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let fail = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(e.message().to_owned()))?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        if !SETTINGS.iter().any(|s| s.key == key) {
            return Err(fail(format!("unknown setting `{key}`")));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| fail(format!("`{key}` must be a list of strings")))?
                .join(","),
            other => {
                return Err(fail(format!(
                    "`{key}` must be a string, number or list, not {}",
                    other.type_str()
                )));
            }
        };
        values.insert(key, value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../README.md");
        for setting in SETTINGS {
            let var = format!("| `{}` |", env_name(setting.key));
            assert!(
                readme.contains(&var),
                "README.md's configuration table lacks {var}"
            );
        }
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = Settings::from_env_map(&BTreeMap::new()).expect("defaults are valid");
        assert_eq!(s.http.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database.max_connections, 20);
        assert_eq!(s.http.body_limit, 1024 * 1024);
        assert_eq!(s.jwt.access_ttl, Duration::from_secs(900));
        assert_eq!(s.s3.bucket, "canopy");
        assert!(s.http.cors_origins.is_empty());
    }

    #[test]
    fn invalid_value_names_the_variable_and_the_expectation() {
        let err = Settings::from_env_map(&env(&[("CANOPY_BIND", "nonsense")])).unwrap_err();
        let line = err.to_string();
        assert!(
            line.starts_with("CANOPY_BIND=\"nonsense\" is invalid"),
            "{line}"
        );
        assert!(line.contains("host:port"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn secrets_are_never_echoed() {
        let err =
            Settings::from_env_map(&env(&[("CANOPY_DATABASE_URL", "mysql://u:hunter2@h/db")]))
                .unwrap_err();
        let line = err.to_string();
        assert!(line.contains("CANOPY_DATABASE_URL"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn production_requires_real_secrets_and_urls() {
        let prod = |extra: &[(&str, &str)]| {
            let mut vars = vec![("CANOPY_ENVIRONMENT", "production")];
            vars.extend_from_slice(extra);
            Settings::from_env_map(&env(&vars))
        };
        let err = prod(&[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CANOPY_S3_SECRET_ACCESS_KEY is required"),
            "{err}"
        );
        assert!(prod(&[("CANOPY_S3_SECRET_ACCESS_KEY", DEFAULT_S3_SECRET_ACCESS_KEY)]).is_err());
        let s3 = ("CANOPY_S3_SECRET_ACCESS_KEY", "a-real-secret");
        let err = prod(&[s3]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CANOPY_STRIPE_SECRET_KEY is required"),
            "{err}"
        );
        assert!(prod(&[s3, ("CANOPY_STRIPE_SECRET_KEY", DEFAULT_STRIPE_SECRET_KEY)]).is_err());
        let key = ("CANOPY_STRIPE_SECRET_KEY", "sk_live_real");
        let err = prod(&[s3, key]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CANOPY_STRIPE_WEBHOOK_SECRETS is required"),
            "{err}"
        );
        let hooks = ("CANOPY_STRIPE_WEBHOOK_SECRETS", "whsec_real");
        let err = prod(&[s3, key, hooks]).unwrap_err();
        assert!(
            err.to_string().starts_with("CANOPY_SMTP_URL is required"),
            "{err}"
        );
        let smtp = ("CANOPY_SMTP_URL", "smtps://mailer:pw@mail.example:465");
        let err = prod(&[s3, key, hooks, smtp]).unwrap_err();
        assert!(
            err.to_string().starts_with("CANOPY_PUBLIC_URL is required"),
            "{err}"
        );
        assert!(
            prod(&[
                s3,
                key,
                hooks,
                smtp,
                ("CANOPY_PUBLIC_URL", "https://app.example")
            ])
            .is_ok()
        );
    }

    #[test]
    fn sizes_durations_and_origins_parse() {
        let s = Settings::from_env_map(&env(&[
            ("CANOPY_BODY_LIMIT", "512KiB"),
            ("CANOPY_REQUEST_TIMEOUT", "1m 30s"),
            (
                "CANOPY_CORS_ORIGINS",
                "https://a.example, http://localhost:3000/",
            ),
            ("CANOPY_BASE_DOMAIN", "Canopy.Example"),
        ]))
        .expect("valid");
        assert_eq!(s.http.body_limit, 512 * 1024);
        assert_eq!(s.http.request_timeout, Duration::from_secs(90));
        assert_eq!(
            s.http.cors_origins,
            ["https://a.example", "http://localhost:3000"]
        );
        assert_eq!(s.http.base_domain.as_deref(), Some("canopy.example"));
        for (var, bad) in [
            ("CANOPY_BODY_LIMIT", "lots"),
            ("CANOPY_REQUEST_TIMEOUT", "0s"),
            ("CANOPY_CORS_ORIGINS", "*"),
            ("CANOPY_DATABASE_MAX_CONNECTIONS", "0"),
            ("CANOPY_S3_BUCKET", "Has_Upper"),
            ("CANOPY_LOG_FORMAT", "xml"),
        ] {
            let err = Settings::from_env_map(&env(&[(var, bad)])).expect_err(var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn edge_settings_parse_and_the_old_forwarded_for_switch_refuses_to_trust_any_peer() {
        let s = Settings::from_env_map(&BTreeMap::new()).expect("defaults");
        assert!(s.http.trusted_proxies.is_empty());
        assert_eq!(
            s.http.metrics_bind.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9090")
        );
        assert!(s.rate_limit.enabled);
        assert_eq!(
            (s.rate_limit.ip_per_second, s.rate_limit.ip_per_minute),
            (3, 100)
        );
        assert_eq!(
            (s.rate_limit.user_per_second, s.rate_limit.user_per_minute),
            (20, 600)
        );

        let s = Settings::from_env_map(&env(&[
            ("CANOPY_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1/32"),
            ("CANOPY_METRICS_BIND", "off"),
            ("CANOPY_RATE_LIMIT_ENABLED", "false"),
            ("CANOPY_RATE_LIMIT_IP_PER_SECOND", "0"),
        ]))
        .expect("valid");
        assert_eq!(
            s.http.trusted_proxies,
            TrustedProxies::parse("10.0.0.0/8,127.0.0.1").expect("valid")
        );
        assert_eq!(s.http.metrics_bind, None);
        assert!(!s.rate_limit.enabled);
        assert_eq!(s.rate_limit.ip_per_second, 0);

        // The old switch: `false` is accepted, `true` refuses to start and says what to
        // set instead, unless the list is set (which replaces it).
        let off =
            Settings::from_env_map(&env(&[("CANOPY_TRUST_FORWARDED_FOR", "false")])).expect("ok");
        assert!(off.http.trusted_proxies.is_empty());
        for value in ["true", "TRUE", "yes"] {
            let err = Settings::from_env_map(&env(&[("CANOPY_TRUST_FORWARDED_FOR", value)]))
                .expect_err(value)
                .to_string();
            assert!(
                err.starts_with(&format!("CANOPY_TRUST_FORWARDED_FOR={value:?} is invalid")),
                "{err}"
            );
            assert!(err.contains("CANOPY_TRUSTED_PROXIES"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let both = Settings::from_env_map(&env(&[
            ("CANOPY_TRUST_FORWARDED_FOR", "true"),
            ("CANOPY_TRUSTED_PROXIES", "10.0.0.1"),
        ]))
        .expect("ok");
        assert_eq!(
            both.http.trusted_proxies,
            TrustedProxies::parse("10.0.0.1").expect("valid")
        );

        for (var, bad) in [
            ("CANOPY_TRUSTED_PROXIES", "10.0.0.0/40"),
            ("CANOPY_TRUSTED_PROXIES", "proxy.internal"),
            ("CANOPY_METRICS_BIND", "9090"),
            ("CANOPY_RATE_LIMIT_USER_PER_MINUTE", "-1"),
            ("CANOPY_RATE_LIMIT_ENABLED", "maybe"),
        ] {
            let err = Settings::from_env_map(&env(&[(var, bad)])).expect_err(var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn file_values_apply_and_the_environment_wins() {
        let dir = std::env::temp_dir().join(format!("canopy-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("canopy.toml");
        std::fs::write(&path, "bind = \"127.0.0.1:9000\"\ndatabase_max_connections = 7\ncors_origins = [\"https://x.example\"]\n")
            .expect("write");
        let s = Settings::from_sources(
            &env(&[("CANOPY_BIND", "127.0.0.1:9100")]),
            &read_file(&path).expect("parse"),
            Some(&path),
        )
        .expect("valid");
        assert_eq!(s.http.bind.port(), 9100);
        assert_eq!(s.database.max_connections, 7);
        assert_eq!(s.http.cors_origins, ["https://x.example"]);

        std::fs::write(&path, "databse_url = \"x\"\n").expect("write");
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("unknown setting `databse_url`"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
