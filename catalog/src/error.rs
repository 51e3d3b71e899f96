//! [`ProductError`]: why the database refused or failed a product query.
//!
//! The database has the last word on what is unique and consistent (two requests may race
//! past any check made before the write), so its constraint violations are named here by
//! constraint name, in one place (the `From<sqlx::Error>` impl), instead of checking first.

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
    #[error(transparent)]
    Database(sqlx::Error),
}

/// What the violation of `constraint` means, for the constraints that are the client's doing.
fn violated(constraint: &str) -> Option<ProductError> {
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
        let sqlx::Error::Database(db) = &e else {
            return Self::Database(e);
        };
        if let Some(err) = db.constraint().and_then(violated) {
            return err;
        }
        if db
            .code()
            .is_some_and(|code| UNSTORABLE_TEXT.contains(&code.as_ref()))
        {
            return Self::UnstorableText(e);
        }
        Self::Database(e)
    }
}
