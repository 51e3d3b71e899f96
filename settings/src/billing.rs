//! Billing: the plan catalog, Stripe's keys and webhook secrets, Checkout's URLs.

use std::{fmt, time::Duration};

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::{
    DEFAULT_STRIPE_SECRET_KEY, DEFAULT_STRIPE_WEBHOOK_SECRET, de,
    error::Rejection,
    loader::{Check, Section},
};

/// Billing settings.
#[derive(Clone, Deserialize)]
pub struct BillingSettings {
    /// Stripe secret key.
    #[serde(rename = "stripe_secret_key", deserialize_with = "de::secret")]
    pub secret_key: SecretString,
    /// Stripe API base URL.
    #[serde(rename = "stripe_api_base", deserialize_with = "de::http_url")]
    pub api_base: Url,
    /// Webhook signing secrets.
    #[serde(
        rename = "stripe_webhook_secrets",
        deserialize_with = "de::secret_list"
    )]
    pub webhook_secrets: Vec<SecretString>,
    /// Checkout success URL.
    #[serde(
        rename = "billing_success_url",
        default,
        deserialize_with = "de::optional_http_url"
    )]
    pub success_url: String,
    /// Checkout cancel URL.
    #[serde(
        rename = "billing_cancel_url",
        default,
        deserialize_with = "de::optional_http_url"
    )]
    pub cancel_url: String,
    /// Billing portal return URL.
    #[serde(
        rename = "billing_return_url",
        default,
        deserialize_with = "de::optional_http_url"
    )]
    pub return_url: String,
    /// Period of the reconciliation job.
    #[serde(
        rename = "billing_reconcile_interval",
        deserialize_with = "de::duration"
    )]
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

impl BillingSettings {
    /// Fills the Checkout and portal URLs left unset with pages under `public_url`.
    pub(crate) fn with_default_urls(mut self, public_url: &Url) -> Self {
        let base = public_url.as_str().trim_end_matches('/');
        for (url, default) in [
            (
                &mut self.success_url,
                format!("{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}"),
            ),
            (&mut self.cancel_url, format!("{base}/billing/cancel")),
            (&mut self.return_url, format!("{base}/billing")),
        ] {
            if url.is_empty() {
                *url = default;
            }
        }
        self
    }
}

impl Section for BillingSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        ("stripe_secret_key", "a Stripe secret key"),
        ("stripe_api_base", "an http(s):// URL"),
        ("stripe_webhook_secrets", "comma-separated signing secrets"),
        ("billing_success_url", "an http(s):// URL"),
        ("billing_cancel_url", "an http(s):// URL"),
        ("billing_return_url", "an http(s):// URL"),
        ("billing_reconcile_interval", "a duration such as 15m"),
    ];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        if !check.production() {
            return Ok(());
        }
        // Compared as written: a list that merely contains the placeholder is the
        // operator's own.
        for (key, placeholder) in [
            ("stripe_secret_key", DEFAULT_STRIPE_SECRET_KEY),
            ("stripe_webhook_secrets", DEFAULT_STRIPE_WEBHOOK_SECRET),
        ] {
            if check.configured(key).is_none_or(|v| v == placeholder) {
                return Err(Rejection::missing(
                    key,
                    "the Stripe account's own value (production does not use the development placeholder)",
                ));
            }
        }
        Ok(())
    }
}

/// The plan catalog: JSON replacing the default `free`/`pro`/`business` one.
#[derive(Deserialize)]
pub(crate) struct PlanSettings {
    #[serde(default, deserialize_with = "de::optional_text")]
    plans: Option<String>,
}

impl PlanSettings {
    /// The configured catalog, or the default one.
    pub(crate) fn catalog(&self) -> Result<billing::PlanCatalog, Rejection> {
        match &self.plans {
            Some(json) => billing::PlanCatalog::from_json(json).map_err(|e| Rejection::Invalid {
                key: "plans",
                expected: Some(format!("a JSON plan catalog ({e})").into()),
            }),
            None => Ok(billing::PlanCatalog::default()),
        }
    }
}

impl Section for PlanSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[("plans", "a JSON plan catalog")];
}
