//! The `SETTINGS` table: every key Canopy reads, its default and what it means, in the
//! order the README documents them.
//!
//! The table is the one list of keys. The loader takes its defaults from here (the lowest
//! layer under the file and the environment), the file reader refuses keys missing from it,
//! and a unit test checks the README's configuration table names every entry.

use crate::{
    DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, DEFAULT_S3_ACCESS_KEY_ID, DEFAULT_S3_ENDPOINT,
    DEFAULT_S3_SECRET_ACCESS_KEY, DEFAULT_SECRETS_KEY, DEFAULT_STRIPE_SECRET_KEY,
    DEFAULT_STRIPE_WEBHOOK_SECRET, DEFAULT_UNSUBSCRIBE_KEY,
};

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
        "tenant_spares",
        Some("4"),
        "spare tenant schemas the workers keep built ahead of time, so that creating a tenant claims one instead of running every tenant migration (0: none, each tenant is built from scratch)",
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
        "retain_sessions",
        Some("7d"),
        "sessions and refresh tokens are deleted this long after they were revoked or expired (1h to 3650d)",
    ),
    spec(
        "retain_email_tokens",
        Some("7d"),
        "verification and password-reset tokens are deleted this long after they were used or expired (1h to 3650d)",
    ),
    spec(
        "retain_invitations",
        Some("30d"),
        "invitations are deleted this long after they were accepted, revoked or expired (1h to 3650d)",
    ),
    spec(
        "retain_succeeded_jobs",
        Some("7d"),
        "succeeded jobs are deleted this long after they finished; dead jobs are kept until retried (1h to 3650d)",
    ),
    spec(
        "retain_webhook_events",
        Some("90d"),
        "processed and ignored webhook events are deleted this long after processing; pending and failed ones are kept (1h to 3650d)",
    ),
    spec(
        "retain_audit_events",
        Some("365d"),
        "audit events are deleted once this old, unless the tenant's plan sets `audit_retention` (1h to 3650d)",
    ),
    spec(
        "retain_email_messages",
        Some("30d"),
        "sent, failed and suppressed email records (`GET /v1/emails`) are deleted once this old; queued ones are kept (1h to 3650d)",
    ),
    spec(
        "prune_interval",
        Some("1h"),
        "how often the prune jobs are enqueued (1m to 7d)",
    ),
    spec(
        "prune_batch",
        Some("1000"),
        "rows one prune statement deletes at most, each batch in its own short transaction (1 to 100000)",
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
    spec(
        "unsubscribe_key",
        Some(DEFAULT_UNSUBSCRIBE_KEY),
        "secret (at least 32 bytes) signing the one-click unsubscribe links of non-essential email (HMAC-SHA256); changing it voids the links of mail already sent (required in production)",
    ),
    spec(
        "unsubscribe_url",
        Some("http://127.0.0.1:8080/v1/email/unsubscribe"),
        "public URL of the API's `POST /v1/email/unsubscribe`, which the `List-Unsubscribe` links of non-essential email point to (required in production)",
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
        "lifetime of an access token (Ed25519 JWT; keys live in the database, see `canopy admin keys`)",
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
        "secrets_key",
        Some(DEFAULT_SECRETS_KEY),
        "32-byte key encrypting secrets at rest (TOTP secrets), as base64 or 64 hex digits (`openssl rand -base64 32`); production refuses the development key",
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
        "realtime_queue",
        Some("256"),
        "capacity of each realtime connection's outgoing queue; a client that reads so slowly that it fills is cut off (close 4009)",
    ),
    spec(
        "realtime_max_per_user",
        Some("10"),
        "most realtime connections (WebSocket and SSE) of one user on one instance; over it, 429 `too_many_connections`",
    ),
    spec(
        "realtime_ping",
        Some("20s"),
        "how often the server pings each WebSocket client",
    ),
    spec(
        "realtime_idle",
        Some("60s"),
        "a WebSocket client that sends nothing, not even a pong, for this long is dropped (close 4008)",
    ),
    spec(
        "realtime_max_message",
        Some("16KiB"),
        "largest incoming WebSocket message (close 4013 above it)",
    ),
    spec(
        "realtime_messages_per_second",
        Some("20"),
        "most incoming WebSocket messages per second on one connection (an error frame, then close 4029)",
    ),
    spec(
        "realtime_recheck",
        Some("30s"),
        "how often each realtime connection re-checks its credential and tenant, besides the announcements that close it at once (every second while the instance's subscription is down)",
    ),
    spec(
        "realtime_ticket_ttl",
        Some("30s"),
        "how long a single-use ticket from `POST /v1/realtime/tickets` is valid",
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

/// The variable naming `key` in the environment: `CANOPY_` and the key in upper case.
pub(crate) fn env_name(key: &str) -> String {
    format!("CANOPY_{}", key.to_ascii_uppercase())
}
