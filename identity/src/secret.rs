//! Opaque secrets handed to clients (refresh tokens, email verification and password reset
//! tokens): 256 random bits, base64url, stored only as their SHA-256.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// Length in bytes of every opaque token.
pub const TOKEN_BYTES: usize = 32;

/// A token as the client sees it. Never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueToken([u8; TOKEN_BYTES]);

impl std::fmt::Debug for OpaqueToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpaqueToken(<redacted>)")
    }
}

impl OpaqueToken {
    /// 256 bits from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
        Self(bytes)
    }

    /// Parses what a client sent; `None` for anything this service cannot have issued.
    pub fn parse(presented: &str) -> Option<Self> {
        if presented.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(presented).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The wire form (43 base64url characters).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The link an email carries: `base` with `path` and the token as the only query
    /// parameter (`…/verify-email?token=…`).
    pub fn link(&self, base: &url::Url, path: &str) -> String {
        let mut url = base.clone();
        url.set_path(path);
        url.query_pairs_mut()
            .clear()
            .append_pair("token", &self.encode());
        url.to_string()
    }

    /// What the database stores and looks up.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0).to_vec()
    }

    /// Encrypts `successor` so that only a holder of `self` can recover it: XOR with a key
    /// derived from this token, which the database never sees. Each token seals exactly one
    /// successor, so the one-time key is never reused.
    pub fn seal(&self, successor: &OpaqueToken) -> Vec<u8> {
        let key = self.sealing_key();
        successor.0.iter().zip(key).map(|(a, b)| a ^ b).collect()
    }

    /// Recovers the successor sealed by [`Self::seal`].
    pub fn unseal(&self, sealed: &[u8]) -> Option<OpaqueToken> {
        let key = self.sealing_key();
        let bytes: Vec<u8> = sealed.iter().zip(key).map(|(a, b)| a ^ b).collect();
        Some(OpaqueToken(bytes.try_into().ok()?))
    }

    fn sealing_key(&self) -> [u8; TOKEN_BYTES] {
        let mut hasher = Sha256::new();
        hasher.update(b"canopy refresh successor v1\0");
        hasher.update(self.0);
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        let token = OpaqueToken::generate();
        let wire = token.encode();
        assert_eq!(wire.len(), 43);
        assert_eq!(OpaqueToken::parse(&wire), Some(token.clone()));
        assert_ne!(OpaqueToken::generate(), token);
        for bad in [
            "",
            "short",
            &format!("{wire}="),
            &wire[..42],
            &wire.replace(|_| true, "!"),
        ] {
            assert_eq!(OpaqueToken::parse(bad), None, "{bad}");
        }
        assert_eq!(format!("{token:?}"), "OpaqueToken(<redacted>)");
    }

    #[test]
    fn only_the_predecessor_unseals_its_successor() {
        let old = OpaqueToken::generate();
        let new = OpaqueToken::generate();
        let sealed = old.seal(&new);
        assert_ne!(sealed, new.0.to_vec());
        assert_eq!(old.unseal(&sealed), Some(new.clone()));
        assert_ne!(OpaqueToken::generate().unseal(&sealed), Some(new));
    }
}
