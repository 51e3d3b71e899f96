//! The request and response types of `/v1/products`: the poem-openapi `Object`, `Enum` and
//! `ApiResponse` types that make up the OpenAPI document, and their mapping to and from the
//! `catalog` crate's domain types.
//!
//! The enums here mirror `catalog`'s (which carry no poem derive) variant for variant, with
//! the same names, so the document's schemas are those of the domain. The rules of product
//! input live in `catalog::input`; `Validate` only hands the fields over and turns the
//! domain's field errors into the 422's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::{ApiResponse, Enum, Object, types::MaybeUndefined};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use catalog::{Product, ProductDraft, ProductFields, ProductPatch};

use super::etag;
use crate::{
    error::{FieldCode, FieldError},
    payload::{JsonReply, Validate, as_poem},
};

/// Where a product stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize, Serialize)]
#[oai(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize, Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ProductType {
    /// Shipped goods.
    Physical,
    /// Downloads, licences.
    Digital,
    /// Work done.
    Service,
}

/// How listings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum)]
#[oai(rename_all = "snake_case")]
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

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum)]
#[oai(rename_all = "snake_case")]
pub enum SortOrder {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// `From` both ways between a view enum and the `catalog` enum of the same name and variants.
macro_rules! mirror {
    ($ty:ident { $($variant:ident),* $(,)? }) => {
        impl From<catalog::$ty> for $ty {
            fn from(value: catalog::$ty) -> Self {
                match value { $(catalog::$ty::$variant => Self::$variant,)* }
            }
        }

        impl From<$ty> for catalog::$ty {
            fn from(value: $ty) -> Self {
                match value { $($ty::$variant => Self::$variant,)* }
            }
        }
    };
}

mirror!(ProductStatus {
    Draft,
    Active,
    Archived
});
mirror!(ProductType {
    Physical,
    Digital,
    Service
});
mirror!(ProductSort {
    CreatedAt,
    UpdatedAt,
    Name,
    Price
});
mirror!(SortOrder { Asc, Desc });

// Rendered by serde (`JsonReply`), which must agree with the poem-openapi derive field
// for field (debug builds check every response).
/// A product of the tenant's catalog.
#[derive(Debug, Object, Serialize)]
pub struct ProductView {
    /// Product id.
    pub id: Uuid,
    /// Stock-keeping unit, unique among the tenant's live products (case-insensitively).
    pub sku: String,
    /// Name.
    pub name: String,
    /// Description (plain text).
    pub description: String,
    /// Price in minor units of `currency` (cents for USD, yen for JPY).
    pub price: i64,
    /// The "was" price, in minor units; at least `price`.
    pub compare_at_price: Option<i64>,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Status.
    pub status: ProductStatus,
    /// Kind of product.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: ProductType,
    /// Units in stock.
    pub stock_quantity: i64,
    /// At or below this many units the product is low on stock.
    pub low_stock_threshold: i64,
    /// Whether `stock_quantity` is at or below `low_stock_threshold`.
    pub low_stock: bool,
    /// Free-form attributes.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Ids of the product's images (files of this tenant).
    pub image_ids: Vec<Uuid>,
    /// Incremented by every change; the `ETag` is derived from it.
    pub version: i64,
    /// Creation time.
    #[serde(serialize_with = "as_poem::time")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(serialize_with = "as_poem::time")]
    pub updated_at: DateTime<Utc>,
    /// When it was deleted (only listed with `include_deleted`).
    #[serde(serialize_with = "as_poem::optional_time")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        let low_stock = p.low_stock();
        let attributes = match p.attributes {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Self {
            low_stock,
            id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            price: p.price,
            compare_at_price: p.compare_at_price,
            currency: p.currency,
            status: p.status.into(),
            kind: p.kind.into(),
            stock_quantity: p.stock_quantity,
            low_stock_threshold: p.low_stock_threshold,
            attributes,
            tags: p.tags,
            image_ids: p.image_ids,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
            deleted_at: p.deleted_at,
        }
    }
}

/// A page of products.
#[derive(Debug, Object, Serialize)]
pub struct ProductPage {
    /// The products, in the requested order.
    pub items: Vec<ProductView>,
    /// Pass as `cursor` (with the same `sort` and `order`) for the next page; absent on the
    /// last page.
    pub next_cursor: Option<String>,
}

/// A product to create.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Stock-keeping unit: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    /// Generated (`SKU-…`) when absent.
    #[oai(validator(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    ))]
    #[serde(default)]
    pub sku: Option<String>,
    /// Name: 1 to 200 characters once surrounding whitespace is trimmed, without control
    /// characters.
    pub name: String,
    /// Description: up to 5,000 characters once surrounding whitespace is trimmed, without
    /// control characters other than line breaks (`\n`, `\r`) and tabs.
    #[serde(default)]
    pub description: Option<String>,
    /// Price in minor units, 0 to 10^14.
    #[oai(validator(minimum(value = "0"), maximum(value = "100000000000000")))]
    pub price: i64,
    /// The "was" price in minor units, at least `price`.
    #[oai(validator(minimum(value = "0"), maximum(value = "100000000000000")))]
    #[serde(default)]
    pub compare_at_price: Option<i64>,
    /// ISO 4217 currency code (`USD`, `EUR`, `JPY`, …).
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
    /// Status (default `draft`).
    #[serde(default)]
    pub status: Option<ProductStatus>,
    /// Kind of product (default `physical`).
    #[oai(rename = "type")]
    #[serde(default, rename = "type")]
    pub kind: Option<ProductType>,
    /// Units in stock (default 0).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    #[serde(default)]
    pub stock_quantity: Option<i64>,
    /// Low-stock threshold (default 0).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
    /// Free-form attributes: at most 50 keys of 1 to 64 characters, 16 KiB in all.
    #[oai(validator(max_properties = 50))]
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// Tags: at most 20, each 1 to 50 characters once surrounding whitespace is trimmed,
    /// without control characters; duplicates are dropped.
    #[oai(validator(max_items = 20))]
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Image file ids, at most 10.
    #[oai(validator(max_items = 10))]
    #[serde(default)]
    pub image_ids: Option<Vec<Uuid>>,
}

// The schema's bounds of amounts and counts (attributes take literals only).
const _: () = assert!(
    catalog::MAX_AMOUNT == 100_000_000_000_000 && catalog::MAX_STOCK == 1_000_000_000,
    "update the minimum/maximum of the product amounts and counts"
);

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    /// New SKU.
    #[oai(validator(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    ))]
    #[serde(default)]
    pub sku: Option<String>,
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New price in minor units.
    #[oai(validator(minimum(value = "0"), maximum(value = "100000000000000")))]
    #[serde(default)]
    pub price: Option<i64>,
    /// New compare-at price; `null` removes it.
    #[oai(validator(minimum(value = "0"), maximum(value = "100000000000000")))]
    #[serde(default)]
    pub compare_at_price: MaybeUndefined<i64>,
    /// New currency.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    #[serde(default)]
    pub currency: Option<String>,
    /// New status.
    #[serde(default)]
    pub status: Option<ProductStatus>,
    /// New kind.
    #[oai(rename = "type")]
    #[serde(default, rename = "type")]
    pub kind: Option<ProductType>,
    /// New stock quantity (prefer `POST /v1/products/{id}/stock` for relative changes).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    #[serde(default)]
    pub stock_quantity: Option<i64>,
    /// New low-stock threshold.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
    /// New attributes (replacing the old ones).
    #[oai(validator(max_properties = 50))]
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// New tags (replacing the old ones).
    #[oai(validator(max_items = 20))]
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// New image ids (replacing the old ones).
    #[oai(validator(max_items = 10))]
    #[serde(default)]
    pub image_ids: Option<Vec<Uuid>>,
}

/// A relative stock change.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct StockAdjustment {
    /// Units to add (negative to remove), non-zero; the stock never goes below zero.
    #[oai(validator(minimum(value = "-1000000000"), maximum(value = "1000000000")))]
    pub delta: i64,
}

/// Products to create together.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BulkCreate {
    /// 1 to 1,000 products; all are created or none.
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub items: Vec<CreateProduct>,
}

/// Products created together.
#[derive(Debug, Object, Serialize)]
pub struct BulkCreated {
    /// The new products, in the order given.
    pub items: Vec<ProductView>,
}

impl From<catalog::FieldCode> for FieldCode {
    fn from(code: catalog::FieldCode) -> Self {
        use catalog::FieldCode as C;
        match code {
            C::Invalid => FieldCode::Invalid,
            C::Length => FieldCode::Length,
            C::OutOfRange => FieldCode::OutOfRange,
            C::BelowPrice => FieldCode::BelowPrice,
            C::TooLarge => FieldCode::TooLarge,
            C::InvalidKey => FieldCode::InvalidKey,
            C::InvalidValue => FieldCode::InvalidValue,
            C::TooLong => FieldCode::TooLong,
            C::Duplicate => FieldCode::Duplicate,
        }
    }
}

impl From<catalog::FieldError> for FieldError {
    fn from(e: catalog::FieldError) -> Self {
        FieldError::new(e.field, e.code.into(), e.message)
    }
}

/// The domain's failing fields as the 422's.
fn field_errors(invalid: catalog::InvalidInput) -> Vec<FieldError> {
    invalid.errors.into_iter().map(FieldError::from).collect()
}

impl CreateProduct {
    fn fields(&self) -> ProductFields<'_> {
        ProductFields {
            sku: self.sku.as_deref(),
            name: Some(&self.name),
            description: self.description.as_deref(),
            price: Some(self.price),
            compare_at_price: self.compare_at_price,
            currency: Some(&self.currency),
            stock_quantity: self.stock_quantity,
            low_stock_threshold: self.low_stock_threshold,
            attributes: self.attributes.as_ref(),
            tags: self.tags.as_deref(),
            image_ids: self.image_ids.as_deref(),
        }
    }
}

impl From<CreateProduct> for ProductDraft {
    fn from(p: CreateProduct) -> Self {
        Self {
            sku: p.sku,
            name: p.name,
            description: p.description,
            price: p.price,
            compare_at_price: p.compare_at_price,
            currency: p.currency,
            status: p.status.map(Into::into),
            kind: p.kind.map(Into::into),
            stock_quantity: p.stock_quantity,
            low_stock_threshold: p.low_stock_threshold,
            attributes: p.attributes,
            tags: p.tags,
            image_ids: p.image_ids,
        }
    }
}

impl Validate for CreateProduct {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.fields().validate().map_err(field_errors)
    }
}

impl From<UpdateProduct> for ProductPatch {
    fn from(p: UpdateProduct) -> Self {
        Self {
            sku: p.sku,
            name: p.name,
            description: p.description,
            price: p.price,
            compare_at_price: match p.compare_at_price {
                MaybeUndefined::Value(v) => Some(Some(v)),
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Undefined => None,
            },
            currency: p.currency,
            status: p.status.map(Into::into),
            kind: p.kind.map(Into::into),
            stock_quantity: p.stock_quantity,
            low_stock_threshold: p.low_stock_threshold,
            attributes: p.attributes,
            tags: p.tags,
            image_ids: p.image_ids,
        }
    }
}

impl Validate for UpdateProduct {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let fields = ProductFields {
            sku: self.sku.as_deref(),
            name: self.name.as_deref(),
            description: self.description.as_deref(),
            price: self.price,
            compare_at_price: self.compare_at_price.value().copied(),
            currency: self.currency.as_deref(),
            stock_quantity: self.stock_quantity,
            low_stock_threshold: self.low_stock_threshold,
            attributes: self.attributes.as_ref(),
            tags: self.tags.as_deref(),
            image_ids: self.image_ids.as_deref(),
        };
        fields.validate().map_err(field_errors)
    }
}

impl Validate for StockAdjustment {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        catalog::check_stock_delta(self.delta).map_err(field_errors)
    }
}

impl Validate for BulkCreate {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let items: Vec<ProductFields<'_>> = self.items.iter().map(CreateProduct::fields).collect();
        catalog::check_bulk(&items).map_err(field_errors)
    }
}

/// A product, with its entity tag.
#[derive(ApiResponse)]
pub enum ProductResponse {
    /// The product.
    #[oai(status = 200)]
    Ok(
        JsonReply<ProductView>,
        /// Entity tag of this version, for `If-Match` and `If-None-Match`.
        #[oai(header = "ETag")]
        String,
    ),
}

impl ProductResponse {
    pub(super) fn of(product: Product) -> Self {
        let tag = etag(product.version);
        Self::Ok(JsonReply(product.into()), tag)
    }
}

/// A product, unless the client's copy is current.
#[derive(ApiResponse)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once per request and turned into a response at once"
)]
pub enum ProductOrNotModified {
    /// The product.
    #[oai(status = 200)]
    Ok(
        JsonReply<ProductView>,
        /// Entity tag of this version.
        #[oai(header = "ETag")]
        String,
    ),
    /// `If-None-Match` names the current version.
    #[oai(status = 304)]
    NotModified(
        /// Entity tag of this version.
        #[oai(header = "ETag")]
        String,
    ),
}

/// A new product.
#[derive(ApiResponse)]
pub enum ProductCreated {
    /// Created.
    #[oai(status = 201)]
    Created(
        JsonReply<ProductView>,
        /// Entity tag of this version.
        #[oai(header = "ETag")]
        String,
        /// Where the product lives.
        #[oai(header = "Location")]
        String,
    ),
}

/// Products created together.
#[derive(ApiResponse)]
pub enum BulkResponse {
    /// All created.
    #[oai(status = 201)]
    Created(JsonReply<BulkCreated>),
}

/// A product was deleted.
#[derive(ApiResponse)]
pub enum ProductDeleted {
    /// Deleted (restorable with `POST /v1/products/{id}/restore`).
    #[oai(status = 204)]
    Deleted,
}
