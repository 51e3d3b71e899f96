//! Email: the SMTP transport or the development outbox, and the sender.

use std::{fmt, path::PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::{
    de,
    error::Rejection,
    loader::{Check, Section},
};

/// Email settings.
#[derive(Clone, Deserialize)]
pub struct EmailSettings {
    /// SMTP URL (may hold credentials); `None`: write to the outbox.
    #[serde(default, deserialize_with = "de::smtp_url")]
    pub smtp_url: Option<SecretString>,
    /// Outbox directory of the development transport.
    #[serde(deserialize_with = "de::parsed")]
    pub outbox_dir: PathBuf,
    /// Sender.
    #[serde(rename = "email_from", deserialize_with = "de::parsed")]
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

/// Whether `from` looks like `Name <local@domain.tld>` or `local@domain.tld`.
fn is_sender(from: &str) -> bool {
    let address = from
        .rsplit_once('<')
        .map_or(from, |(_, a)| a.trim_end_matches('>'));
    address
        .trim()
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
}

impl Section for EmailSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("smtp_url", "an smtp:// or smtps:// URL"),
        ("outbox_dir", "a directory path"),
        (
            "email_from",
            "an address such as `Canopy <no-reply@example.com>`",
        ),
    ];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        if check.production() && self.smtp_url.is_none() {
            return Err(Rejection::missing(
                "smtp_url",
                "an smtp:// or smtps:// URL (production does not write email to an outbox)",
            ));
        }
        Rejection::unless(is_sender(&self.from), "email_from")
    }
}
