//! Where values come from and how a section is read from them.
//!
//! The layers, lowest first: the defaults of [`crate::SETTINGS`], `RUST_LOG` (for `log`
//! only), the TOML file, the `CANOPY_*` environment. figment merges them, so a key takes its
//! value from the highest layer that has it, and extracts each section with serde.
//!
//! Every layer holds plain strings: the file reader flattens TOML values to text, and
//! environment values are taken as written. (figment's own `Env` provider would read
//! `CANOPY_PLANS`'s JSON as a dictionary and `0123` as a number; it also reads only the
//! process environment, while [`crate::Settings::from_env_map`] takes an explicit map.)
//! A value is trimmed; an empty one counts as absent, so a required key set to nothing is
//! *missing*, not its default.

use std::{borrow::Cow, collections::BTreeMap, path::Path};

use figment::{
    Figment, Metadata, Profile, Provider,
    value::{Dict, Map, Value},
};
use serde::de::DeserializeOwned;

use crate::{
    ConfigError, Environment, SETTINGS,
    de::{INVALID, MISSING},
    error::Rejection,
    spec::env_name,
};

/// Keys whose values are never echoed in an error (URLs carry passwords).
const SECRET_KEYS: &[&str] = &[
    "database_url",
    "redis_url",
    "s3_secret_access_key",
    "stripe_secret_key",
    "stripe_webhook_secrets",
    "smtp_url",
    "secrets_key",
];

const DEFAULTS: &str = "defaults";
const ENVIRONMENT: &str = "environment";
const FILE: &str = "config file";
const RUST_LOG: &str = "RUST_LOG";

/// One section of the settings: read with serde from the merged layers, then validated.
pub(crate) trait Section: DeserializeOwned {
    /// What each of the section's keys expects, as error messages say it.
    const EXPECTED: &'static [(&'static str, &'static str)];

    /// Checks what serde cannot: ranges, cross-field rules, production's requirements.
    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        Ok(())
    }
}

/// What a section's validation may ask beyond its own values.
pub(crate) struct Check<'a> {
    /// Development or production.
    pub(crate) environment: Environment,
    sources: &'a Sources,
}

impl Check<'_> {
    /// Whether this is production.
    pub(crate) fn production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// The value of `key` as the operator set it (environment or file), not a default.
    pub(crate) fn configured(&self, key: &str) -> Option<String> {
        self.sources
            .raw(key)
            .filter(|(origin, _)| matches!(*origin, ENVIRONMENT | FILE))
            .map(|(_, value)| value)
    }

    /// The value of `key` from whichever layer has it, defaults included.
    pub(crate) fn value(&self, key: &str) -> Option<String> {
        self.sources.raw(key).map(|(_, value)| value)
    }
}

/// A layer of plain string values under one name (the callers trim what operators wrote).
struct Layer {
    name: &'static str,
    values: Dict,
}

impl Layer {
    fn new<'a>(name: &'static str, pairs: impl IntoIterator<Item = (String, &'a str)>) -> Self {
        let values = pairs
            .into_iter()
            .map(|(key, value)| (key, Value::from(value.to_owned())))
            .collect();
        Self { name, values }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The merged layers, and the file's path to name in errors.
pub(crate) struct Sources {
    figment: Figment,
    file_path: String,
}

impl Sources {
    /// Layers the defaults, `RUST_LOG`, the file's values and the `CANOPY_*` variables.
    pub(crate) fn new(
        env: &BTreeMap<String, String>,
        file: &BTreeMap<String, String>,
        file_path: Option<&Path>,
    ) -> Self {
        let defaults = SETTINGS
            .iter()
            .filter_map(|s| Some((s.key.to_owned(), s.default?)));
        let rust_log = std::env::var("RUST_LOG").ok();
        let rust_log = rust_log.as_deref().map(|v| ("log".to_owned(), v));
        // Only `CANOPY_<KEY>` with the key in upper case names a setting, as documented.
        let env = env.iter().filter_map(|(var, value)| {
            let key = var.strip_prefix("CANOPY_")?.to_ascii_lowercase();
            (env_name(&key) == *var).then_some((key, value.trim()))
        });
        let file = file.iter().map(|(k, v)| (k.clone(), v.trim()));
        let figment = Figment::new()
            .merge(Layer::new(DEFAULTS, defaults))
            .merge(Layer::new(RUST_LOG, rust_log))
            .merge(Layer::new(FILE, file))
            .merge(Layer::new(ENVIRONMENT, env));
        let file_path = file_path
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Self { figment, file_path }
    }

    /// The value of `key` and the name of the layer it came from.
    fn raw(&self, key: &str) -> Option<(&'static str, String)> {
        let value = self.figment.find_value(key).ok()?;
        let origin = match self.figment.get_metadata(value.tag()) {
            Some(m) if m.name == ENVIRONMENT => ENVIRONMENT,
            Some(m) if m.name == FILE => FILE,
            _ => DEFAULTS,
        };
        Some((origin, value.into_string()?))
    }

    /// Reads and validates one section.
    pub(crate) fn section<S: Section>(&self, environment: Environment) -> Result<S, ConfigError> {
        let section: S = self
            .figment
            .extract()
            .map_err(|e| self.name(rejection_of(&e), S::EXPECTED))?;
        let check = Check {
            environment,
            sources: self,
        };
        section
            .validate(&check)
            .map_err(|r| self.name(r, S::EXPECTED))?;
        Ok(section)
    }

    /// The one-line error for a rejection: the variable or file key, the value (masked
    /// when secret) and the expectation.
    pub(crate) fn name(
        &self,
        rejection: Rejection,
        table: &[(&'static str, &'static str)],
    ) -> ConfigError {
        let expected = |key: &str, given: Option<Cow<'static, str>>| {
            given.map_or_else(
                || {
                    let text = table.iter().find(|(k, _)| *k == key).map(|(_, e)| *e);
                    text.unwrap_or("a valid value").to_owned()
                },
                Cow::into_owned,
            )
        };
        match rejection {
            Rejection::Missing { key, expected: e } => ConfigError::Missing {
                var: env_name(key),
                expected: expected(key, e),
            },
            Rejection::Invalid { key, expected: e } => {
                let (origin, value) = self.raw(key).unwrap_or((DEFAULTS, String::new()));
                let source_name = match origin {
                    FILE => format!("`{key}` in {}", self.file_path),
                    _ => env_name(key),
                };
                let value = if SECRET_KEYS.contains(&key) {
                    "<redacted>".to_owned()
                } else {
                    value
                };
                ConfigError::Invalid {
                    source_name,
                    value,
                    expected: expected(key, e),
                }
            }
        }
    }
}

/// What a figment extraction error says about which key, in the terms of [`Rejection`].
fn rejection_of(error: &figment::Error) -> Rejection {
    let first = error.clone().into_iter().next();
    let (path, kind) = match &first {
        Some(e) => (e.path.last().map(String::as_str), Some(&e.kind)),
        None => (None, None),
    };
    let key = static_key(path.unwrap_or_default());
    match kind {
        Some(figment::error::Kind::MissingField(field)) => Rejection::Missing {
            key: static_key(field),
            expected: None,
        },
        Some(figment::error::Kind::Message(m)) if m == MISSING => Rejection::Missing {
            key,
            expected: None,
        },
        Some(figment::error::Kind::Message(m)) if m == INVALID => Rejection::invalid(key),
        // Only strings reach the deserializers, so anything else is a value they refused.
        _ => Rejection::invalid(key),
    }
}

/// The key as it appears in [`SETTINGS`] (errors carry the key as a `String`).
fn static_key(key: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .map_or("unknown", |s| s.key)
}

/// Reads a TOML file of settings into plain strings (lists joined with commas), refusing
/// keys that are not settings.
pub(crate) fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
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
