//! Email: the SMTP transport or the development outbox, and the sender.

use std::{fmt, path::PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::{
    DEFAULT_UNSUBSCRIBE_KEY, de,
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
    /// Key of the one-click unsubscribe links.
    #[serde(deserialize_with = "de::secret")]
    pub unsubscribe_key: SecretString,
    /// Where unsubscribe links point (the API's `POST /v1/email/unsubscribe`).
    #[serde(deserialize_with = "de::http_url")]
    pub unsubscribe_url: Url,
}

impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSettings")
            .field("smtp", &self.smtp_url.is_some())
            .field("outbox_dir", &self.outbox_dir)
            .field("from", &self.from)
            .field("unsubscribe_url", &self.unsubscribe_url.as_str())
            .finish_non_exhaustive()
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
        ("unsubscribe_key", "a secret of at least 32 bytes"),
        ("unsubscribe_url", "an http(s):// URL"),
    ];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        if check.production() && self.smtp_url.is_none() {
            return Err(Rejection::missing(
                "smtp_url",
                "an smtp:// or smtps:// URL (production does not write email to an outbox)",
            ));
        }
        Rejection::unless(
            self.unsubscribe_key.expose_secret().len() >= 32,
            "unsubscribe_key",
        )?;
        if check.production() {
            if check
                .configured("unsubscribe_key")
                .is_none_or(|v| v == DEFAULT_UNSUBSCRIBE_KEY)
            {
                return Err(Rejection::missing(
                    "unsubscribe_key",
                    "a secret of your own (production does not use the development key)",
                ));
            }
            if check.configured("unsubscribe_url").is_none() {
                return Err(Rejection::missing(
                    "unsubscribe_url",
                    "the https:// URL of the API's `POST /v1/email/unsubscribe`",
                ));
            }
        }
        Rejection::unless(is_sender(&self.from), "email_from")
    }
}
