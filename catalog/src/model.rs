//! What a product is: the row as stored, its enums and the bounds of its numbers.
//!
//! The enums are plain Rust enums. In the database they are `text` columns with a `CHECK`
//! constraint (never per-schema enum types: sqlx caches type OIDs by name, and every tenant
//! schema would have its own), so each enum converts to and from its stored text with
//! `tenancy::text_enum!`, and serde uses the same snake_case names. The HTTP crate has view enums of its own that map
//! to these.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use tenancy::UnknownValue;

/// Largest amount in minor units (10^14).
pub const MAX_AMOUNT: i64 = 100_000_000_000_000;
/// Largest stock quantity or threshold.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// Where a product stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    /// Being prepared; not for sale.
    Draft,
    /// For sale.
    Active,
    /// No longer sold; kept for the record.
    Archived,
}

/// What kind of thing a product is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductType {
    /// Shipped goods.
    Physical,
    /// Downloads, licences.
    Digital,
    /// Work done.
    Service,
}

tenancy::text_enum!(ProductStatus, "product status" {
    Draft => "draft", Active => "active", Archived => "archived"
});
tenancy::text_enum!(ProductType, "product type" {
    Physical => "physical", Digital => "digital", Service => "service"
});

/// How listings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductSort {
    /// Creation time.
    #[default]
    CreatedAt,
    /// Time of the last change.
    UpdatedAt,
    /// Name.
    Name,
    /// Price in minor units (across currencies).
    Price,
}

impl ProductSort {
    /// The column listings are ordered by (with `id` as the tie-breaker).
    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::Name => "name",
            Self::Price => "price",
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// A product row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Product {
    /// Product id (UUIDv7).
    pub id: Uuid,
    /// Stock-keeping unit, unique among the tenant's live products (case-insensitively).
    pub sku: String,
    /// Name.
    pub name: String,
    /// Description (plain text).
    pub description: String,
    /// Price in minor units of `currency`.
    pub price: i64,
    /// The "was" price in minor units; at least `price`.
    pub compare_at_price: Option<i64>,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: ProductStatus,
    /// Kind of product (the column `type`).
    #[sqlx(rename = "type", try_from = "String")]
    pub kind: ProductType,
    /// Units in stock.
    pub stock_quantity: i64,
    /// At or below this many units the product is low on stock.
    pub low_stock_threshold: i64,
    /// Free-form attributes (a JSON object).
    pub attributes: serde_json::Value,
    /// Tags.
    pub tags: Vec<String>,
    /// Ids of the product's images (files of the tenant).
    pub image_ids: Vec<Uuid>,
    /// Incremented by every change.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Product {
    /// Whether the stock is at or below the low-stock threshold.
    pub fn low_stock(&self) -> bool {
        self.stock_quantity <= self.low_stock_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_round_trips_and_matches_serde() {
        for status in [
            ProductStatus::Draft,
            ProductStatus::Active,
            ProductStatus::Archived,
        ] {
            assert_eq!(status.as_str().parse::<ProductStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::Value::from(status.as_str()))
            );
        }
        for kind in [
            ProductType::Physical,
            ProductType::Digital,
            ProductType::Service,
        ] {
            assert_eq!(ProductType::try_from(kind.as_str().to_owned()), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::from(kind.as_str()))
            );
        }
        assert!("Draft".parse::<ProductStatus>().is_err());
    }
}
