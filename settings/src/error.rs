//! [`ConfigError`], the one line an operator sees, and [`Rejection`], what a section's
//! parsing or validation says about one key before the loader names its source.
//!
//! Sections judge values without knowing where they came from; the loader
//! ([`crate::loader::Sources::name`]) turns a rejection into a `ConfigError` naming the
//! variable (`CANOPY_X`) or the file key, with the value masked when it is a secret.

use std::borrow::Cow;

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

/// Why a section refused one key. `expected: None` means the section's own expectation
/// for that key (its `EXPECTED` table); production checks and the plan catalog say more.
#[derive(Debug)]
pub(crate) enum Rejection {
    /// The value is present but not acceptable.
    Invalid {
        key: &'static str,
        expected: Option<Cow<'static, str>>,
    },
    /// The value is absent or empty.
    Missing {
        key: &'static str,
        expected: Option<Cow<'static, str>>,
    },
}

impl Rejection {
    /// The value of `key` is not acceptable, as the section's table describes.
    pub(crate) fn invalid(key: &'static str) -> Self {
        Self::Invalid {
            key,
            expected: None,
        }
    }

    /// `key` must be set, to what `expected` describes.
    pub(crate) fn missing(key: &'static str, expected: impl Into<Cow<'static, str>>) -> Self {
        Self::Missing {
            key,
            expected: Some(expected.into()),
        }
    }

    /// Rejects `key` unless `ok`.
    pub(crate) fn unless(ok: bool, key: &'static str) -> Result<(), Self> {
        if ok { Ok(()) } else { Err(Self::invalid(key)) }
    }
}
