//! Email addresses as accounts know them: the address as the user typed it (for display
//! and delivery) and its *key*, the one normalized form that every comparison, lookup and
//! the unique index use.
//!
//! The key is computed here and only here, in Rust, and stored by Rust: SQL never derives
//! it. (PostgreSQL's `lower()` under the C collation folds ASCII only, while Rust's
//! `to_lowercase` folds all of Unicode; keys built by both made `ANA@BÜCHER.TEST` and
//! `ana@bücher.test` two accounts, and the same address unfindable by its own spelling.)
//!
//! The normalization is, in order: trim Unicode white space; Unicode NFC; Unicode
//! default lower-casing of the **whole** address (`str::to_lowercase`: the full,
//! locale-independent `toLowercase` of the Unicode standard); every final sigma `ς`
//! spelled `σ` (which of the two `toLowercase` picks depends on the neighbouring letters,
//! so `ΕΛΛΑΣ.TEST` would lower-case to `ελλασ.test` while its owner types `ελλας.test`;
//! case folding makes the same choice); NFC again (lower-casing may leave a composable
//! sequence). This is the case-mapping and normalization part of the PRECIS
//! `UsernameCaseMapped` profile (RFC 8265 §3.3), which prefers `toLowerCase` to full case
//! folding for identifiers: folding would also make `straße` and `strasse` one key. The local part is
//! lower-cased too: RFC 5321 allows a server to treat it case-sensitively, but no real
//! provider does, and this service has always matched addresses in any case. The domain is
//! not converted between its Unicode and its IDNA (`xn--`) spellings: a user typing the
//! punycode form gets a different key.

use unicode_normalization::UnicodeNormalization;

/// An email address and its normalized key. Validity (is it a mailbox address?) is
/// checked at the edge before one is made; this type only normalizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    given: String,
    key: String,
}

impl Email {
    /// `raw` as typed: kept trimmed for display and delivery, keyed by [`email_key`].
    pub fn new(raw: &str) -> Self {
        Self {
            given: raw.trim().to_owned(),
            key: email_key(raw),
        }
    }

    /// The address as given (trimmed): what is shown and written to.
    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// The normalized key: equal for two spellings of one mailbox.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.given)
    }
}

/// The normalized key of `raw`, as the module docs define it. Idempotent:
/// `email_key(&email_key(x)) == email_key(x)`.
pub fn email_key(raw: &str) -> String {
    let composed: String = raw.trim().nfc().collect();
    composed.to_lowercase().replace('ς', "σ").nfc().collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn spellings_of_one_mailbox_share_a_key() {
        for (a, b) in [
            ("ANA@BÜCHER.TEST", "ana@bücher.test"),
            ("  Bea@Example.com ", "bea@example.com"),
            // Decomposed Ü (U+0055 U+0308) and precomposed ü are one mailbox.
            ("ana@bu\u{308}cher.test", "ana@bücher.test"),
            ("ANA@BU\u{308}CHER.TEST", "ana@bücher.test"),
            ("ΟΔΥΣΣΕΥΣ@ΕΛΛΑΣ.TEST", "οδυσσευς@ελλας.test"),
            ("ΟΔΥΣΣΕΥΣ@ΕΛΛΑΣ.TEST", "οδυσσευσ@ελλασ.test"),
            ("STRASSE@ẞ.TEST", "strasse@ß.test"),
        ] {
            assert_eq!(email_key(a), email_key(b), "{a} vs {b}");
        }
        assert_eq!(email_key("ANA@BÜCHER.TEST"), "ana@bücher.test");
        assert_ne!(
            email_key("ana@bücher.test"),
            email_key("ana@xn--bcher-kva.test")
        );
    }

    #[test]
    fn the_address_is_kept_as_given_but_trimmed() {
        let email = Email::new(" ANA@BÜCHER.TEST\n");
        assert_eq!(email.as_str(), "ANA@BÜCHER.TEST");
        assert_eq!(email.key(), "ana@bücher.test");
    }

    proptest! {
        #[test]
        fn the_key_is_idempotent(raw in any::<String>()) {
            let key = email_key(&raw);
            prop_assert_eq!(email_key(&key), key.clone());
            let email = Email::new(&key);
            prop_assert_eq!(email.key(), key.as_str());
        }

        // Letters whose case round-trips, and sigma (no ß: its upper case is `SS`).
        #[test]
        fn the_key_ignores_case_and_composition(raw in "[a-zA-Z0-9.@À-ÖØ-Þà-öø-þΑ-Ωα-ωА-я-]{1,30}") {
            let upper = raw.to_uppercase();
            let decomposed: String = raw.nfd().collect();
            prop_assert_eq!(email_key(&upper), email_key(&raw.to_lowercase()));
            prop_assert_eq!(email_key(&decomposed), email_key(&raw));
        }
    }
}
