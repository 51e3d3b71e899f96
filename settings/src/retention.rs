//! Retention: how long finished rows are kept before the scheduled prune jobs delete them,
//! how often those jobs run, and how many rows one delete takes.

use std::time::Duration;

use serde::Deserialize;

use crate::{
    de,
    error::Rejection,
    loader::{Check, Section},
};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Shortest retention: an hour. Sessions are kept at least as long as an access token lives
/// whatever the setting (see `api`'s `register_retention`), so a pruned revoked session is
/// never behind a token that still verifies.
pub const MIN_RETENTION: Duration = HOUR;
/// Shortest retention of webhook events: longer than reconciliation looks back at Stripe's
/// events (3 days), which takes an event it no longer finds stored for one never delivered.
pub const MIN_WEBHOOK_RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);
/// Longest retention: ten years.
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Retention settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Sessions and refresh tokens are kept this long after revocation or expiry.
    #[serde(rename = "retain_sessions", deserialize_with = "de::duration")]
    pub sessions: Duration,
    /// Email tokens (verification, reset) are kept this long after use or expiry.
    #[serde(rename = "retain_email_tokens", deserialize_with = "de::duration")]
    pub email_tokens: Duration,
    /// Invitations are kept this long after acceptance, revocation or expiry.
    #[serde(rename = "retain_invitations", deserialize_with = "de::duration")]
    pub invitations: Duration,
    /// Succeeded jobs are kept this long after they finished.
    #[serde(rename = "retain_succeeded_jobs", deserialize_with = "de::duration")]
    pub succeeded_jobs: Duration,
    /// Processed (or ignored) webhook events are kept this long after processing.
    #[serde(rename = "retain_webhook_events", deserialize_with = "de::duration")]
    pub webhook_events: Duration,
    /// Audit events are kept this long, unless the tenant's plan sets `audit_retention`.
    #[serde(rename = "retain_audit_events", deserialize_with = "de::duration")]
    pub audit_events: Duration,
    /// Settled email records are kept this long.
    #[serde(rename = "retain_email_messages", deserialize_with = "de::duration")]
    pub email_messages: Duration,
    /// How often the prune jobs are enqueued.
    #[serde(deserialize_with = "de::duration")]
    pub prune_interval: Duration,
    /// Rows one delete statement (one short transaction) takes at most.
    #[serde(deserialize_with = "de::parsed")]
    pub prune_batch: i64,
}

impl Section for RetentionSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("retain_sessions", "a duration from 1h to 3650d"),
        ("retain_email_tokens", "a duration from 1h to 3650d"),
        ("retain_invitations", "a duration from 1h to 3650d"),
        ("retain_succeeded_jobs", "a duration from 1h to 3650d"),
        ("retain_webhook_events", "a duration from 4d to 3650d"),
        ("retain_audit_events", "a duration from 1h to 3650d"),
        ("retain_email_messages", "a duration from 1h to 3650d"),
        ("prune_interval", "a duration from 1m to 7d"),
        ("prune_batch", "a whole number from 1 to 100000"),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        let retention = MIN_RETENTION..=MAX_RETENTION;
        for (value, key) in [
            (self.sessions, "retain_sessions"),
            (self.email_tokens, "retain_email_tokens"),
            (self.invitations, "retain_invitations"),
            (self.succeeded_jobs, "retain_succeeded_jobs"),
            (self.audit_events, "retain_audit_events"),
            (self.email_messages, "retain_email_messages"),
        ] {
            Rejection::unless(retention.contains(&value), key)?;
        }
        Rejection::unless(
            (MIN_WEBHOOK_RETENTION..=MAX_RETENTION).contains(&self.webhook_events),
            "retain_webhook_events",
        )?;
        Rejection::unless(
            (Duration::from_secs(60)..=7 * DAY).contains(&self.prune_interval),
            "prune_interval",
        )?;
        Rejection::unless((1..=100_000).contains(&self.prune_batch), "prune_batch")
    }
}
