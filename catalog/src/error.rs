//! [`ProductError`]: why the database refused or failed a product query.
//!
//! The database has the last word on what is unique and consistent (two requests may race
//! past any check made before the write), so its constraint violations are named here by
//! constraint name, in one place (`violated`), which every writing statement of the store
//! hands to `tenancy::ConstraintExt::on_constraints`, instead of checking first. What
//! remains, `From<sqlx::Error>`, sorts the other failures by SQLSTATE.

/// Why a product query failed.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// A live product of the tenant has this SKU (`products_sku_key`).
    #[error("a product with this SKU exists")]
    SkuTaken,
    /// The compare-at price is below the price (`products_compare_at_not_below_price`).
    #[error("compare_at_price is below price")]
    CompareAtBelowPrice,
    /// Text PostgreSQL cannot store (a NUL character, or invalid encoding) got past
    /// validation.
    #[error("the text cannot be stored")]
    UnstorableText(#[source] sqlx::Error),
    /// Any other database failure.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

/// What the violation of `constraint` means, for the constraints that are the client's doing
/// (for `tenancy::ConstraintExt::on_constraints`).
pub(crate) fn violated(constraint: &str) -> Option<ProductError> {
    match constraint {
        "products_sku_key" => Some(ProductError::SkuTaken),
        "products_compare_at_not_below_price" => Some(ProductError::CompareAtBelowPrice),
        _ => None,
    }
}

/// SQLSTATEs of text PostgreSQL cannot store: `character_not_in_repertoire` and
/// `untranslatable_character` (a NUL in `text` or `jsonb`).
const UNSTORABLE_TEXT: &[&str] = &["22021", "22P05"];

impl From<sqlx::Error> for ProductError {
    fn from(e: sqlx::Error) -> Self {
        let unstorable = match &e {
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| UNSTORABLE_TEXT.contains(&code.as_ref())),
            _ => false,
        };
        if unstorable {
            Self::UnstorableText(e)
        } else {
            Self::Database(e)
        }
    }
}
