//! Two-factor authentication with time-based one-time passwords (TOTP, RFC 6238: HMAC-SHA1,
//! 6 digits, 30-second steps, 160-bit secrets), free of HTTP and SQL: the secrets, their
//! `otpauth://` URI and QR code, checking a code against a window of ±1 step, the
//! encryption of secrets at rest ([`SecretsCipher`]), recovery codes, and the second
//! factor a client presents ([`SecondFactor`]). The tables are in `store::mfa`; the
//! endpoints in the API crate.
//!
//! Replay: checking a code only says which step it belongs to
//! ([`TotpSecret::matching_step`]); whoever accepts it must then move the user's last
//! accepted step forward atomically (`store::accept_totp_step`), so a code is accepted at
//! most once, even by two concurrent requests.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use chrono::{DateTime, Utc};
use qrcode::{QrCode, render::svg};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Secret, Totp};
use uuid::Uuid;

/// Seconds per TOTP step.
pub const STEP_SECONDS: u64 = 30;
/// Digits of a TOTP code.
pub const DIGITS: usize = 6;
/// Bytes of a TOTP secret (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;
/// Steps before and after the current one whose codes are accepted (clock drift).
pub const WINDOW: u64 = 1;
/// Recovery codes per user.
pub const RECOVERY_CODES: usize = 10;
/// Length of a recovery code as shown: three groups of four characters (`xxxx-xxxx-xxxx`).
pub const RECOVERY_CODE_LENGTH: usize = 14;

/// The alphabet of recovery codes: Crockford's base32 in lower case (no `i`, `l`, `o`,
/// `u`), 5 bits per character, so a code's 12 characters carry 60 bits.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The key id written before every ciphertext, so that a later key can be told apart.
const KEY_ID: u8 = 1;
const NONCE_BYTES: usize = 12;

/// Errors of two-factor authentication.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// A stored secret does not decrypt with this key for this tenant and user (another
    /// key, a row copied from elsewhere, or corruption).
    #[error("the stored TOTP secret does not decrypt with the configured secrets key")]
    Undecryptable,
    /// The QR code could not be made (the URI is too long for a QR code).
    #[error("the otpauth URI does not fit a QR code")]
    QrCode(#[source] qrcode::types::QrError),
}

/// A TOTP secret. Never logged; stored only through [`SecretsCipher::seal`].
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret([u8; SECRET_BYTES]);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// 160 bits from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
        Self(bytes)
    }

    /// The secret of `bytes` (as decrypted); `None` unless they are [`SECRET_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// Parses the base32 form authenticator apps are given (as [`Self::base32`] writes it).
    pub fn from_base32(text: &str) -> Option<Self> {
        let bytes = Secret::try_from_base32(text).ok()?;
        Self::from_bytes(bytes.as_ref())
    }

    /// The raw bytes, for encryption.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Base32 without padding, as typed into an authenticator app.
    pub fn base32(&self) -> String {
        Secret::from(self.0).to_base32()
    }

    fn totp(&self, issuer: Option<&str>, account: &str) -> Totp {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_skew(0)
            .with_step_duration(STEP_SECONDS)
            .with_secret(self.0)
            .with_issuer(issuer.map(label_part))
            .with_account_name(label_part(account))
            .build_noncompliant()
    }

    /// The `otpauth://totp/…` URI authenticator apps read: `issuer` (the tenant) and
    /// `account` (the user's email) label the entry; a `:` in either becomes a space, as
    /// the format reserves it.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        self.totp(Some(issuer), account)
            .to_url()
            .expect("the account name is not empty and holds no `:`")
    }

    /// The code of `step`.
    pub fn code_at(&self, step: u64) -> String {
        self.totp(None, "-")
            .generate(step.saturating_mul(STEP_SECONDS))
            .to_string()
    }

    /// The step within ±[`WINDOW`] of `now_step` whose code `code` is (the latest, if
    /// several are), or `None`. Anything but [`DIGITS`] ASCII digits is no code. The caller
    /// must still refuse a step at or before the last one accepted.
    pub fn matching_step(&self, code: &str, now_step: u64) -> Option<u64> {
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let totp = self.totp(None, "-");
        (now_step.saturating_sub(WINDOW)..=now_step.saturating_add(WINDOW))
            .rev()
            .find(|step| totp.check(code, step * STEP_SECONDS).is_some())
    }
}

/// A `:` separates the issuer from the account in an otpauth label; elsewhere it is
/// refused, so it becomes a space.
fn label_part(text: &str) -> String {
    let cleaned = text.replace(':', " ");
    if cleaned.trim().is_empty() {
        "-".to_owned()
    } else {
        cleaned
    }
}

/// The TOTP step of `now`.
pub fn step_at(now: DateTime<Utc>) -> u64 {
    u64::try_from(now.timestamp()).unwrap_or(0) / STEP_SECONDS
}

/// An SVG image of the QR code of `uri` (text, no raster image).
pub fn qr_svg(uri: &str) -> Result<String, MfaError> {
    let code = QrCode::new(uri.as_bytes()).map_err(MfaError::QrCode)?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

/// Encrypts secrets at rest with AES-256-GCM under the configured secrets key: a key id
/// byte, a random 96-bit nonce, then the ciphertext and its tag. The associated data
/// binds each ciphertext to its tenant and user, so a row copied to another user (or
/// tenant) does not decrypt.
#[derive(Clone)]
pub struct SecretsCipher(Aes256Gcm);

impl std::fmt::Debug for SecretsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsCipher(<redacted>)")
    }
}

impl SecretsCipher {
    /// The cipher of a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(Aes256Gcm::new(key.into()))
    }

    fn associated_data(tenant: Uuid, user: Uuid) -> Vec<u8> {
        let mut aad = b"canopy totp secret v1\0".to_vec();
        aad.push(KEY_ID);
        aad.extend_from_slice(tenant.as_bytes());
        aad.extend_from_slice(user.as_bytes());
        aad
    }

    /// Encrypts `secret` of `user` in `tenant`.
    pub fn seal(&self, tenant: Uuid, user: Uuid, secret: &TotpSecret) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the operating system's random generator failed");
        let aad = Self::associated_data(tenant, user);
        let ciphertext = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encrypts 20 bytes");
        let mut sealed = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        sealed.push(KEY_ID);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts what [`Self::seal`] made for `user` in `tenant`.
    pub fn open(&self, tenant: Uuid, user: Uuid, sealed: &[u8]) -> Result<TotpSecret, MfaError> {
        let (&key_id, rest) = sealed.split_first().ok_or(MfaError::Undecryptable)?;
        if key_id != KEY_ID || rest.len() < NONCE_BYTES {
            return Err(MfaError::Undecryptable);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let aad = Self::associated_data(tenant, user);
        let plain = self
            .0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| MfaError::Undecryptable)?;
        TotpSecret::from_bytes(&plain).ok_or(MfaError::Undecryptable)
    }
}

/// A recovery code as shown once to its user: `xxxx-xxxx-xxxx`, 60 random bits.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

impl RecoveryCode {
    /// A fresh code.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 12];
        getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
        let chars: Vec<char> = bytes
            .iter()
            .map(|b| char::from(RECOVERY_ALPHABET[usize::from(b & 31)]))
            .collect();
        let groups: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
        Self(groups.join("-"))
    }

    /// [`RECOVERY_CODES`] fresh codes.
    pub fn generate_set() -> Vec<Self> {
        (0..RECOVERY_CODES).map(|_| Self::generate()).collect()
    }

    /// The code as shown.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the database stores: the SHA-256 of the normalized code (codes carry 60
    /// random bits, so a fast hash is enough, as for opaque tokens).
    pub fn hash(&self) -> Vec<u8> {
        hash_normalized(&normalize_recovery_code(&self.0).unwrap_or_default())
    }
}

/// The hash of a recovery code as a client typed it (any case, with or without the
/// hyphens, Crockford's look-alikes `i`/`l` for `1` and `o` for `0`), or `None` when it
/// cannot be a recovery code.
pub fn recovery_code_hash(typed: &str) -> Option<Vec<u8>> {
    normalize_recovery_code(typed).map(|n| hash_normalized(&n))
}

fn normalize_recovery_code(typed: &str) -> Option<String> {
    if typed.len() > 2 * RECOVERY_CODE_LENGTH {
        return None;
    }
    let normalized: String = typed
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| match c.to_ascii_lowercase() {
            'i' | 'l' => '1',
            'o' => '0',
            c => c,
        })
        .collect();
    (normalized.len() == 12 && normalized.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)))
        .then_some(normalized)
}

fn hash_normalized(normalized: &str) -> Vec<u8> {
    Sha256::digest(normalized.as_bytes()).to_vec()
}

/// The second factor a client presents.
#[derive(Debug, Clone, Copy)]
pub enum SecondFactor<'a> {
    /// A code from the authenticator app.
    Totp(&'a str),
    /// One of the recovery codes.
    RecoveryCode(&'a str),
}

impl SecondFactor<'_> {
    /// The method's name in audit details (`totp`, `recovery_code`).
    pub fn method(&self) -> &'static str {
        match self {
            SecondFactor::Totp(_) => "totp",
            SecondFactor::RecoveryCode(_) => "recovery_code",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890", 8 digits there: the
        // last 6 digits are the 6-digit codes.
        let secret = TotpSecret::from_bytes(b"12345678901234567890").expect("20 bytes");
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(secret.code_at(time / STEP_SECONDS), code, "{time}");
        }
    }

    #[test]
    fn window_is_one_step_either_side() {
        let secret = TotpSecret::generate();
        let now: u64 = 1_000_000;
        for offset in [-1i64, 0, 1] {
            let step = now.checked_add_signed(offset).expect("small");
            assert_eq!(secret.matching_step(&secret.code_at(step), now), Some(step));
        }
        for step in [now - 2, now + 2] {
            let code = secret.code_at(step);
            // A code of ±2 steps could collide with the window's by chance (1 in 10⁶).
            if (now - 1..=now + 1).all(|s| secret.code_at(s) != code) {
                assert_eq!(secret.matching_step(&code, now), None);
            }
        }
        for bad in ["", "12345", "1234567", "12345a", " 123456", "١٢٣٤٥٦"] {
            assert_eq!(secret.matching_step(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn base32_round_trips_and_the_uri_names_it() {
        let secret = TotpSecret::generate();
        let text = secret.base32();
        assert_eq!(text.len(), 32);
        assert_eq!(TotpSecret::from_base32(&text), Some(secret.clone()));
        let uri = secret.otpauth_uri("Acme: Inc", "ada@example.com");
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains(&format!("secret={text}")), "{uri}");
        assert!(uri.contains("issuer=Acme"), "{uri}");
        assert_eq!(format!("{secret:?}"), "TotpSecret(<redacted>)");
    }

    #[test]
    fn sealed_secrets_open_only_for_their_tenant_user_and_key() {
        let cipher = SecretsCipher::new(&[7; 32]);
        let (tenant, user) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = TotpSecret::generate();
        let sealed = cipher.seal(tenant, user, &secret);
        assert_eq!(sealed[0], KEY_ID);
        assert_eq!(sealed.len(), 1 + NONCE_BYTES + SECRET_BYTES + 16);
        assert!(!sealed.windows(SECRET_BYTES).any(|w| w == secret.as_bytes()));
        assert_ne!(sealed, cipher.seal(tenant, user, &secret), "fresh nonce");
        assert_eq!(
            cipher.open(tenant, user, &sealed).expect("opens"),
            secret.clone()
        );
        assert!(cipher.open(tenant, Uuid::new_v4(), &sealed).is_err());
        assert!(cipher.open(Uuid::new_v4(), user, &sealed).is_err());
        assert!(
            SecretsCipher::new(&[8; 32])
                .open(tenant, user, &sealed)
                .is_err()
        );
        let mut other_key_id = sealed.clone();
        other_key_id[0] = 2;
        assert!(cipher.open(tenant, user, &other_key_id).is_err());
        assert!(cipher.open(tenant, user, &sealed[..10]).is_err());
        assert!(cipher.open(tenant, user, &[]).is_err());
    }

    #[test]
    fn recovery_codes_are_shaped_and_normalized() {
        let codes = RecoveryCode::generate_set();
        assert_eq!(codes.len(), RECOVERY_CODES);
        for code in &codes {
            let text = code.as_str();
            assert_eq!(text.len(), RECOVERY_CODE_LENGTH, "{text}");
            assert_eq!(text.matches('-').count(), 2, "{text}");
            assert_eq!(recovery_code_hash(text), Some(code.hash()));
            assert_eq!(
                recovery_code_hash(&text.replace('-', "").to_uppercase()),
                Some(code.hash())
            );
        }
        let distinct: std::collections::HashSet<_> = codes.iter().map(RecoveryCode::hash).collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        assert_eq!(
            recovery_code_hash("0000-1111-2222"),
            recovery_code_hash("oooo-iiii-2222")
        );
        for bad in [
            "",
            "abcd-efgh",
            "abcd-efgh-jkmn-p",
            "uuuu-uuuu-uuuu",
            "123456",
        ] {
            assert_eq!(recovery_code_hash(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_qr_code_is_an_svg() {
        let uri = TotpSecret::generate().otpauth_uri("Acme", "ada@example.com");
        let svg = qr_svg(&uri).expect("fits");
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    }
}
