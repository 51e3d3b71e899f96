//! The key that encrypts secrets stored at rest (TOTP secrets of two-factor
//! authentication): 32 bytes, written as base64 or as 64 hex digits. Development has a
//! fixed, documented key ([`crate::DEFAULT_SECRETS_KEY`]); production refuses it.

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::{
    DEFAULT_SECRETS_KEY,
    de::{self, INVALID},
    error::Rejection,
    loader::{Check, Section},
};

/// Length in bytes of the secrets key.
pub const SECRETS_KEY_BYTES: usize = 32;

/// Encryption of secrets at rest.
#[derive(Clone, Deserialize)]
pub struct SecretsSettings {
    /// The 32-byte key.
    #[serde(rename = "secrets_key", deserialize_with = "key")]
    // Private, and the `Debug` below never shows it.
    key: [u8; SECRETS_KEY_BYTES],
}

impl SecretsSettings {
    /// The key's bytes (never log them).
    pub fn key(&self) -> &[u8; SECRETS_KEY_BYTES] {
        &self.key
    }
}

impl fmt::Debug for SecretsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsSettings").finish_non_exhaustive()
    }
}

/// Decodes a key written as 64 hex digits or as base64 (standard alphabet, padded or not)
/// of exactly 32 bytes; `None` for anything else.
pub fn parse_key(text: &str) -> Option<[u8; SECRETS_KEY_BYTES]> {
    let text = text.trim();
    let bytes =
        if text.len() == 2 * SECRETS_KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..SECRETS_KEY_BYTES)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?
        } else {
            STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .ok()?
        };
    bytes.try_into().ok()
}

fn key<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; SECRETS_KEY_BYTES], D::Error> {
    let text = de::text(d)?;
    if text.is_empty() {
        return Err(D::Error::custom(de::MISSING));
    }
    parse_key(&text).ok_or_else(|| D::Error::custom(INVALID))
}

impl Section for SecretsSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[(
        "secrets_key",
        "32 bytes as base64 or as 64 hex digits (e.g. `openssl rand -base64 32`)",
    )];

    fn validate(&self, check: &Check<'_>) -> Result<(), Rejection> {
        // Compared as bytes: the development key written in hex is still the development key.
        let development = parse_key(DEFAULT_SECRETS_KEY);
        if check.production()
            && (check.configured("secrets_key").is_none() || Some(*self.key()) == development)
        {
            return Err(Rejection::missing(
                "secrets_key",
                "a key of your own, 32 random bytes as base64 (production does not use the development key)",
            ));
        }
        Ok(())
    }
}
