//! Verifying the `Stripe-Signature` header of a webhook delivery: `t=<unix seconds>`, then
//! one or more `v1=<hex HMAC-SHA256 of "{t}.{body}">` (several during a secret rotation),
//! other schemes (`v0`, …) ignored. A delivery is genuine when any `v1` matches any of the
//! configured secrets (compared in constant time) and `t` is recent: at most
//! [`TOLERANCE`] old and at most [`FUTURE_SKEW`] ahead of our clock.
//!
//! Written against the HMAC primitives rather than async-stripe's helper, which takes one
//! secret and has no bound on timestamps from the future.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Oldest accepted delivery, in seconds.
pub const TOLERANCE: i64 = 300;
/// Furthest ahead of our clock a delivery may be dated, in seconds.
pub const FUTURE_SKEW: i64 = 60;

/// Why a delivery was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("the Stripe-Signature header is missing")]
    Missing,
    /// The header has no (single, numeric) `t`.
    #[error("the Stripe-Signature header has no valid timestamp")]
    NoTimestamp,
    /// The header has no `v1` signature.
    #[error("the Stripe-Signature header has no v1 signature")]
    NoSignature,
    /// `t` is older than the tolerance.
    #[error("the delivery is {age} s old, more than {TOLERANCE} s")]
    TooOld {
        /// Seconds.
        age: i64,
    },
    /// `t` is ahead of our clock.
    #[error("the delivery is dated {ahead} s in the future")]
    InFuture {
        /// Seconds.
        ahead: i64,
    },
    /// No `v1` matches any secret.
    #[error("no v1 signature matches")]
    Mismatch,
}

/// The HMAC-SHA256 of `"{t}.{body}"` under `secret`, hex.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// A complete header value for `body`, signed with each of `secrets` at `timestamp`
/// (for tests and benchmarks, and documentation of the format).
pub fn header(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut value = format!("t={timestamp}");
    for secret in secrets {
        value.push_str(",v1=");
        value.push_str(&sign(secret, timestamp, body));
    }
    value
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks `header` (the `Stripe-Signature` value, if any) for `body` against `secrets`, at
/// `now` (unix seconds). Returns the delivery's timestamp.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[impl AsRef<str>],
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::NoTimestamp);
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::NoTimestamp)?,
                );
            }
            // A malformed v1 simply never matches.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let age = now.saturating_sub(timestamp);
    if age > TOLERANCE {
        return Err(SignatureError::TooOld { age });
    }
    if -age > FUTURE_SKEW {
        return Err(SignatureError::InFuture { ahead: -age });
    }
    let genuine = secrets.iter().any(|secret| {
        let expected = mac(secret.as_ref(), timestamp, body);
        signatures
            .iter()
            .any(|signature| expected.clone().verify_slice(signature).is_ok())
    });
    if genuine {
        Ok(timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;

    #[test]
    fn a_genuine_delivery_passes() {
        let value = header(&["whsec_a"], NOW, BODY);
        assert_eq!(verify(Some(&value), BODY, &["whsec_a"], NOW), Ok(NOW));
    }

    #[test]
    fn any_v1_under_any_secret_passes_during_a_rotation() {
        // Signed with the old and the new secret; we know only one of them.
        let value = header(&["whsec_old", "whsec_new"], NOW, BODY);
        assert!(verify(Some(&value), BODY, &["whsec_new"], NOW).is_ok());
        assert!(verify(Some(&value), BODY, &["whsec_other", "whsec_old"], NOW).is_ok());
        // Signed with one; we know both.
        let value = header(&["whsec_new"], NOW, BODY);
        assert!(verify(Some(&value), BODY, &["whsec_old", "whsec_new"], NOW).is_ok());
    }

    #[test]
    fn forgeries_and_stale_deliveries_fail() {
        let value = header(&["whsec_a"], NOW, BODY);
        assert_eq!(
            verify(Some(&value), b"{\"id\":\"evt_2\"}", &["whsec_a"], NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&value), BODY, &["whsec_b"], NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&value), BODY, &["whsec_a"], NOW + 301),
            Err(SignatureError::TooOld { age: 301 })
        );
        assert!(verify(Some(&value), BODY, &["whsec_a"], NOW + 300).is_ok());
        assert_eq!(
            verify(Some(&value), BODY, &["whsec_a"], NOW - 61),
            Err(SignatureError::InFuture { ahead: 61 })
        );
        assert!(verify(Some(&value), BODY, &["whsec_a"], NOW - 60).is_ok());
        assert_eq!(
            verify(None, BODY, &["whsec_a"], NOW),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn only_v1_counts() {
        let v1 = sign("whsec_a", NOW, BODY);
        let only_v0 = format!("t={NOW},v0={v1}");
        assert_eq!(
            verify(Some(&only_v0), BODY, &["whsec_a"], NOW),
            Err(SignatureError::NoSignature)
        );
        let with_noise = format!("t={NOW}, v0=abc, v1=zz-not-hex, x=1, v1={v1}");
        assert!(verify(Some(&with_noise), BODY, &["whsec_a"], NOW).is_ok());
        let two_timestamps = format!("t={NOW},t={},v1={v1}", NOW + 1);
        assert_eq!(
            verify(Some(&two_timestamps), BODY, &["whsec_a"], NOW),
            Err(SignatureError::NoTimestamp)
        );
        let bad_timestamp = format!("t=soon,v1={v1}");
        assert_eq!(
            verify(Some(&bad_timestamp), BODY, &["whsec_a"], NOW),
            Err(SignatureError::NoTimestamp)
        );
    }
}
