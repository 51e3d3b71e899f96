//! Enums stored as `text`: one spelling of their conversions for every domain crate.
//!
//! Tenant schemas never get enum types of their own (sqlx caches type OIDs by name, and
//! every schema would have its own), so a status or kind is a `text` column with a `CHECK`
//! constraint, and the Rust enum converts to and from that text. [`text_enum!`](crate::text_enum)
//! writes those conversions once, from one table of variants and their texts, so that they
//! cannot disagree and every crate spells them the same way: `as_str`, `Display`, `FromStr`
//! and `TryFrom<String>` (what `#[sqlx(try_from = "String")]` reads a column through), with
//! one error, [`UnknownValue`], for a text that names no variant.

/// A stored text that names no variant of the enum it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected value {value:?} for {kind}")]
pub struct UnknownValue {
    /// What the enum is (`product status`, `tenant status`).
    pub kind: &'static str,
    /// The text that was read.
    pub value: String,
}

/// Implements the text conversions of an enum stored as `text`: `ALL` (every variant, in
/// the order given), `as_str`, `Display`, `FromStr` and `TryFrom<String>`, both failing with
/// [`UnknownValue`].
///
/// ```
/// #[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// pub enum Colour {
///     /// Red.
///     Red,
///     /// Dark blue.
///     DarkBlue,
/// }
///
/// tenancy::text_enum!(Colour, "colour" { Red => "red", DarkBlue => "dark_blue" });
///
/// assert_eq!(Colour::DarkBlue.as_str(), "dark_blue");
/// assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
/// assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
/// assert!(Colour::try_from("Red".to_owned()).is_err());
/// ```
#[macro_export]
macro_rules! text_enum {
    ($ty:ident, $kind:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [Self; [$($text),+].len()] = [$(Self::$variant),+];

            /// The stored text (also the wire and serde name).
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::UnknownValue;

            fn from_str(text: &str) -> ::std::result::Result<Self, $crate::UnknownValue> {
                match text {
                    $($text => ::std::result::Result::Ok(Self::$variant),)+
                    _ => ::std::result::Result::Err($crate::UnknownValue {
                        kind: $kind,
                        value: ::std::borrow::ToOwned::to_owned(text),
                    }),
                }
            }
        }

        impl ::std::convert::TryFrom<::std::string::String> for $ty {
            type Error = $crate::UnknownValue;

            fn try_from(
                text: ::std::string::String,
            ) -> ::std::result::Result<Self, $crate::UnknownValue> {
                ::std::str::FromStr::from_str(&text)
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::UnknownValue;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Sample {
        One,
        TwoWords,
    }

    crate::text_enum!(Sample, "sample" { One => "one", TwoWords => "two_words" });

    #[test]
    fn every_variant_round_trips_and_strangers_are_named() {
        for sample in Sample::ALL {
            assert_eq!(sample.as_str().parse::<Sample>(), Ok(sample));
            assert_eq!(Sample::try_from(sample.to_string()), Ok(sample));
        }
        assert_eq!(
            "One".parse::<Sample>(),
            Err(UnknownValue {
                kind: "sample",
                value: "One".to_owned()
            })
        );
        assert_eq!(
            "x".parse::<Sample>().map_err(|e| e.to_string()),
            Err("unexpected value \"x\" for sample".to_owned())
        );
    }
}
