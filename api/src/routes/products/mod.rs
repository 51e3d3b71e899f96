//! The tenant's product catalog (`/v1/products`): CRUD with optimistic concurrency
//! (`ETag` from `version`, `If-Match` → 412, `If-None-Match` → 304), soft delete and
//! restore, atomic stock adjustments that never go below zero, all-or-nothing bulk
//! creation, and keyset-paginated listing with filters, sorts and full-text search.

mod store;

use std::collections::{BTreeMap, HashMap};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::store::{
    Changes, Listing, NewProduct, Outcome, Product, ProductError, SortValue, StockOutcome,
};
use crate::{
    AppState,
    auth::permissions::{Authorized, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    limits::{self, Limited},
    payload::{JsonBody, Validate, all_valid},
    routes::{ApiTag, files::check_image_ids, page},
    tenant::CurrentTenant,
};

/// Products endpoints.
pub struct ProductsApi;

/// Where a product stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
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

macro_rules! db_text {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The value stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text,)* }
            }

            fn from_db(text: &str) -> Option<Self> {
                match text { $($text => Some($ty::$variant),)* _ => None }
            }
        }
    };
}

db_text!(ProductStatus { Draft => "draft", Active => "active", Archived => "archived" });
db_text!(ProductType { Physical => "physical", Digital => "digital", Service => "service" });

/// How listings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum, Deserialize, Serialize)]
#[oai(rename_all = "snake_case")]
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
    fn column(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::Name => "name",
            Self::Price => "price",
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum, Deserialize, Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// A product of the tenant's catalog.
#[derive(Debug, Object)]
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
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted (only listed with `include_deleted`).
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        let attributes = match p.attributes {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Self {
            low_stock: p.stock_quantity <= p.low_stock_threshold,
            id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            price: p.price,
            compare_at_price: p.compare_at_price,
            currency: p.currency,
            status: p.status,
            kind: p.kind,
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
#[derive(Debug, Object)]
pub struct ProductPage {
    /// The products, in the requested order.
    pub items: Vec<ProductView>,
    /// Pass as `cursor` (with the same `sort` and `order`) for the next page; absent on the
    /// last page.
    pub next_cursor: Option<String>,
}

/// Largest amount in minor units (10^14).
const MAX_AMOUNT: i64 = 100_000_000_000_000;
/// Largest stock quantity or threshold.
const MAX_STOCK: i64 = 1_000_000_000;

/// A product to create.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Stock-keeping unit: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    /// Generated (`SKU-…`) when absent.
    #[serde(default)]
    pub sku: Option<String>,
    /// Name, 1 to 200 characters.
    pub name: String,
    /// Description, up to 5,000 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Price in minor units, 0 to 10^14.
    pub price: i64,
    /// The "was" price in minor units, at least `price`.
    #[serde(default)]
    pub compare_at_price: Option<i64>,
    /// ISO 4217 currency code (`USD`, `EUR`, `JPY`, …).
    pub currency: String,
    /// Status (default `draft`).
    #[serde(default)]
    pub status: Option<ProductStatus>,
    /// Kind of product (default `physical`).
    #[oai(rename = "type")]
    #[serde(default, rename = "type")]
    pub kind: Option<ProductType>,
    /// Units in stock (default 0).
    #[serde(default)]
    pub stock_quantity: Option<i64>,
    /// Low-stock threshold (default 0).
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
    /// Free-form attributes: at most 50 keys of 1 to 64 characters, 16 KiB in all.
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// Tags: at most 20, each 1 to 50 characters; duplicates are dropped.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Image file ids, at most 10.
    #[serde(default)]
    pub image_ids: Option<Vec<Uuid>>,
}

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    /// New SKU.
    #[serde(default)]
    pub sku: Option<String>,
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New price in minor units.
    #[serde(default)]
    pub price: Option<i64>,
    /// New compare-at price; `null` removes it.
    #[serde(default)]
    pub compare_at_price: MaybeUndefined<i64>,
    /// New currency.
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
    #[serde(default)]
    pub stock_quantity: Option<i64>,
    /// New low-stock threshold.
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
    /// New attributes (replacing the old ones).
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// New tags (replacing the old ones).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// New image ids (replacing the old ones).
    #[serde(default)]
    pub image_ids: Option<Vec<Uuid>>,
}

/// A relative stock change.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct StockAdjustment {
    /// Units to add (negative to remove); the stock never goes below zero.
    pub delta: i64,
}

/// Products to create together.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BulkCreate {
    /// 1 to 1,000 products; all are created or none.
    pub items: Vec<CreateProduct>,
}

/// Products created together.
#[derive(Debug, Object)]
pub struct BulkCreated {
    /// The new products, in the order given.
    pub items: Vec<ProductView>,
}

/// Field checks shared by creation and changes; `at` prefixes field names (bulk items).
struct Checks<'a> {
    at: &'a str,
    errors: Vec<FieldError>,
}

impl Checks<'_> {
    fn fail(&mut self, field: &str, code: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(
            format!("{}{field}", self.at),
            code,
            message,
        ));
    }

    fn sku(&mut self, sku: &str) {
        let valid = (1..=64).contains(&sku.len())
            && sku.starts_with(|c: char| c.is_ascii_alphanumeric())
            && sku
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            self.fail(
                "sku",
                "invalid",
                "1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            );
        }
    }

    fn text(&mut self, field: &str, value: &str, min: usize, max: usize, newlines: bool) {
        let len = value.trim().chars().count();
        let bad_char = value
            .chars()
            .any(|c| c.is_control() && !(newlines && matches!(c, '\n' | '\r' | '\t')));
        if len < min || len > max || bad_char {
            self.fail(
                field,
                "length",
                format!("must be {min} to {max} characters, without control characters"),
            );
        }
    }

    fn amount(&mut self, field: &str, value: i64) {
        if !(0..=MAX_AMOUNT).contains(&value) {
            self.fail(
                field,
                "out_of_range",
                format!("must be 0 to {MAX_AMOUNT} minor units"),
            );
        }
    }

    fn count(&mut self, field: &str, value: i64) {
        if !(0..=MAX_STOCK).contains(&value) {
            self.fail(field, "out_of_range", format!("must be 0 to {MAX_STOCK}"));
        }
    }

    fn currency(&mut self, code: &str) {
        if iso_currency::Currency::from_code(code).is_none() {
            self.fail(
                "currency",
                "invalid",
                "must be an ISO 4217 code in upper case, such as USD",
            );
        }
    }

    fn attributes(&mut self, attributes: &BTreeMap<String, serde_json::Value>) {
        let size = serde_json::to_vec(attributes).map_or(usize::MAX, |v| v.len());
        if attributes.len() > 50 || size > 16 * 1024 {
            self.fail("attributes", "too_large", "at most 50 keys and 16 KiB");
        }
        if attributes
            .keys()
            .any(|k| k.is_empty() || k.chars().count() > 64 || k.chars().any(char::is_control))
        {
            self.fail(
                "attributes",
                "invalid_key",
                "keys must be 1 to 64 characters, without control characters",
            );
        }
        if attributes.values().any(holds_nul) {
            self.fail(
                "attributes",
                "invalid_value",
                "strings cannot contain NUL characters",
            );
        }
    }

    fn tags(&mut self, tags: &[String]) {
        if tags.len() > 20 {
            self.fail("tags", "too_long", "at most 20 tags");
        }
        for (i, tag) in tags.iter().enumerate() {
            let len = tag.trim().chars().count();
            if len == 0 || len > 50 || tag.chars().any(char::is_control) {
                self.fail(
                    &format!("tags[{i}]"),
                    "length",
                    "must be 1 to 50 characters, without control characters",
                );
            }
        }
    }

    fn images(&mut self, ids: &[Uuid]) {
        if ids.len() > 10 {
            self.fail("image_ids", "too_long", "at most 10 images");
        }
    }
}

/// The fields a creation or a change sets, borrowed for checking (absent: not set).
#[derive(Default)]
struct Fields<'a> {
    sku: Option<&'a str>,
    name: Option<&'a str>,
    description: Option<&'a str>,
    price: Option<i64>,
    compare_at_price: Option<i64>,
    currency: Option<&'a str>,
    stock_quantity: Option<i64>,
    low_stock_threshold: Option<i64>,
    attributes: Option<&'a BTreeMap<String, serde_json::Value>>,
    tags: Option<&'a [String]>,
    image_ids: Option<&'a [Uuid]>,
}

impl Fields<'_> {
    /// Every failing field, named with the prefix `at` (`items[3].` in bulk requests).
    fn check(&self, at: &str) -> Vec<FieldError> {
        let mut c = Checks {
            at,
            errors: Vec::new(),
        };
        if let Some(sku) = self.sku {
            c.sku(sku);
        }
        if let Some(name) = self.name {
            c.text("name", name, 1, 200, false);
        }
        if let Some(description) = self.description {
            c.text("description", description, 0, 5000, true);
        }
        if let Some(price) = self.price {
            c.amount("price", price);
        }
        if let Some(compare_at) = self.compare_at_price {
            c.amount("compare_at_price", compare_at);
            // Against a stored price, the database's constraint has the last word.
            if self.price.is_some_and(|price| compare_at < price) {
                c.fail(
                    "compare_at_price",
                    "below_price",
                    "must be at least `price`",
                );
            }
        }
        if let Some(currency) = self.currency {
            c.currency(currency);
        }
        if let Some(n) = self.stock_quantity {
            c.count("stock_quantity", n);
        }
        if let Some(n) = self.low_stock_threshold {
            c.count("low_stock_threshold", n);
        }
        if let Some(attributes) = self.attributes {
            c.attributes(attributes);
        }
        if let Some(tags) = self.tags {
            c.tags(tags);
        }
        if let Some(ids) = self.image_ids {
            c.images(ids);
        }
        c.errors
    }
}

impl CreateProduct {
    fn check(&self, at: &str) -> Vec<FieldError> {
        Fields {
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
        .check(at)
    }

    fn into_new(self) -> NewProduct {
        NewProduct {
            sku: self.sku.unwrap_or_else(generated_sku),
            name: self.name.trim().to_owned(),
            description: self.description.unwrap_or_default().trim().to_owned(),
            price: self.price,
            compare_at_price: self.compare_at_price,
            currency: self.currency,
            status: self.status.unwrap_or(ProductStatus::Draft),
            kind: self.kind.unwrap_or(ProductType::Physical),
            stock_quantity: self.stock_quantity.unwrap_or(0),
            low_stock_threshold: self.low_stock_threshold.unwrap_or(0),
            attributes: attributes_json(self.attributes.unwrap_or_default()),
            tags: normalize_tags(self.tags.unwrap_or_default()),
            image_ids: dedup(self.image_ids.unwrap_or_default()),
        }
    }
}

impl Validate for CreateProduct {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        all_valid(self.check(""))
    }
}

impl Validate for UpdateProduct {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let fields = Fields {
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
        all_valid(fields.check(""))
    }
}

impl Validate for StockAdjustment {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.delta == 0 || self.delta.unsigned_abs() > MAX_STOCK.unsigned_abs() {
            errors.push(FieldError::new(
                "delta",
                "out_of_range",
                format!("must be non-zero and at most {MAX_STOCK} either way"),
            ));
        }
        all_valid(errors)
    }
}

impl Validate for BulkCreate {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        if !(1..=1000).contains(&self.items.len()) {
            return Err(vec![FieldError::new(
                "items",
                "length",
                "give 1 to 1,000 products",
            )]);
        }
        let mut errors: Vec<FieldError> = self
            .items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| item.check(&format!("items[{i}].")))
            .collect();
        // The same SKU twice in one request.
        let mut first: HashMap<String, usize> = HashMap::new();
        for (i, item) in self.items.iter().enumerate() {
            if let Some(sku) = &item.sku
                && let Some(earlier) = first.insert(sku.to_lowercase(), i)
            {
                first.insert(sku.to_lowercase(), earlier);
                errors.push(FieldError::new(
                    format!("items[{i}].sku"),
                    "duplicate",
                    format!("items[{earlier}] has the same SKU"),
                ));
            }
        }
        all_valid(errors)
    }
}

/// Whether a JSON value holds a NUL character anywhere (PostgreSQL cannot store one).
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A database error as a problem: text PostgreSQL cannot store (a NUL character that got
/// past validation) is the client's 400, anything else a 500.
fn db_failure(e: sqlx::Error) -> ApiError {
    let bad_text = matches!(
        &e,
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("22021" | "22P05"))
    );
    if bad_text {
        ApiError::new(
            ErrorCode::BadRequest,
            "The request holds characters that cannot be stored (NUL).",
        )
    } else {
        ApiError::internal(e)
    }
}

/// A 400 unless the query parameter `name` is free of control characters.
fn plain_parameter(name: &str, value: Option<&str>) -> Result<(), ApiError> {
    if value.is_some_and(|v| v.chars().any(char::is_control)) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("Parameter `{name}` cannot contain control characters."),
        ));
    }
    Ok(())
}

fn generated_sku() -> String {
    let random = Uuid::new_v4().simple().to_string().to_uppercase();
    format!("SKU-{}", &random[..12])
}

fn attributes_json(attributes: BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Object(attributes.into_iter().collect())
}

fn normalize_tags(tags: Vec<String>) -> Vec<String> {
    let mut seen = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim().to_owned();
        if !seen.contains(&tag) {
            seen.push(tag);
        }
    }
    seen
}

fn dedup(ids: Vec<Uuid>) -> Vec<Uuid> {
    let mut seen = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

impl From<ProductError> for ApiError {
    fn from(err: ProductError) -> Self {
        match err {
            ProductError::SkuTaken => ApiError::new(
                ErrorCode::SkuTaken,
                "Another product of this tenant has this SKU.",
            ),
            ProductError::CompareAtBelowPrice => ApiError::validation(vec![FieldError::new(
                "compare_at_price",
                "below_price",
                "must be at least `price`",
            )]),
            ProductError::Database(e) => db_failure(e),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "No product of this tenant has this id.",
    )
}

/// The entity tag of a product version.
fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// The versions an `If-Match` / `If-None-Match` header names; `None` for `*`. Tags this API
/// did not issue, and weak ones (our tags are strong, and `If-Match` compares strongly),
/// match nothing.
fn parse_etags(header: &str) -> Option<Vec<i64>> {
    if header.trim() == "*" {
        return None;
    }
    Some(
        header
            .split(',')
            .filter_map(|tag| {
                tag.trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')?
                    .parse::<i64>()
                    .ok()
            })
            .collect(),
    )
}

fn outcome(outcome: Outcome) -> Result<Product, ApiError> {
    match outcome {
        Outcome::Done(product) => Ok(*product),
        Outcome::NotFound => Err(not_found()),
        Outcome::VersionMismatch(current) => Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!(
                "The product has changed (it is now at {}); fetch it again and retry.",
                etag(current)
            ),
        )
        .with_extension("current_version", current.into())),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    sort: ProductSort,
    order: SortOrder,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int: Option<i64>,
    id: Uuid,
}

fn encode_cursor(sort: ProductSort, order: SortOrder, p: &Product) -> String {
    let (time, text, int) = match sort {
        ProductSort::CreatedAt => (Some(p.created_at), None, None),
        ProductSort::UpdatedAt => (Some(p.updated_at), None, None),
        ProductSort::Name => (None, Some(p.name.clone()), None),
        ProductSort::Price => (None, None, Some(p.price)),
    };
    let cursor = Cursor {
        sort,
        order,
        time,
        text,
        int,
        id: p.id,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
}

fn decode_cursor(
    raw: &str,
    sort: ProductSort,
    order: SortOrder,
) -> Result<(SortValue, Uuid), ApiError> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidParameter,
            "Parameter `cursor` is not a cursor this API issued for this `sort` and `order`.",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if cursor.sort != sort || cursor.order != order {
        return Err(invalid());
    }
    let value = match (sort, cursor.time, cursor.text, cursor.int) {
        (ProductSort::CreatedAt | ProductSort::UpdatedAt, Some(t), None, None) => {
            SortValue::Time(t)
        }
        (ProductSort::Name, None, Some(s), None) if !s.contains('\0') => SortValue::Text(s),
        (ProductSort::Price, None, None, Some(n)) => SortValue::Int(n),
        _ => return Err(invalid()),
    };
    Ok((value, cursor.id))
}

/// A product, with its entity tag.
#[derive(ApiResponse)]
pub enum ProductResponse {
    /// The product.
    #[oai(status = 200)]
    Ok(
        Json<ProductView>,
        /// Entity tag of this version, for `If-Match` and `If-None-Match`.
        #[oai(header = "ETag")]
        String,
    ),
}

impl ProductResponse {
    fn of(product: Product) -> Self {
        let tag = etag(product.version);
        Self::Ok(Json(product.into()), tag)
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
        Json<ProductView>,
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
        Json<ProductView>,
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
    Created(Json<BulkCreated>),
}

/// A product was deleted.
#[derive(ApiResponse)]
pub enum ProductDeleted {
    /// Deleted (restorable with `POST /v1/products/{id}/restore`).
    #[oai(status = 204)]
    Deleted,
}

fn default_limit() -> i64 {
    20
}

#[OpenApi(tag = "ApiTag::Products")]
impl ProductsApi {
    /// List products.
    ///
    /// Keyset-paginated: pass `next_cursor` back as `cursor` with the same `sort` and
    /// `order`. Sorted by `created_at`, a walk sees every product that existed when it
    /// started exactly once, even while others are added; with the other sorts, a product
    /// whose sort key changes during the walk moves with it (and may be skipped or seen
    /// again). `q` searches SKU, name and description (web-search syntax:
    /// `"exact phrase"`, `-excluded`, `or`).
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per documented query parameter"
    )]
    #[oai(path = "/v1/products", method = "get", operation_id = "list_products")]
    async fn list_products(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsRead>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Only products with this status.
        status: Query<Option<ProductStatus>>,
        /// Only products of this kind.
        #[oai(name = "type")]
        kind: Query<Option<ProductType>>,
        /// Only products with this tag.
        #[oai(validator(min_length = 1, max_length = 50))]
        tag: Query<Option<String>>,
        /// Only products priced at least this (minor units).
        #[oai(validator(minimum(value = "0")))]
        min_price: Query<Option<i64>>,
        /// Only products priced at most this (minor units).
        #[oai(validator(minimum(value = "0")))]
        max_price: Query<Option<i64>>,
        /// Only products in this currency.
        #[oai(validator(pattern = "^[A-Z]{3}$"))]
        currency: Query<Option<String>>,
        /// `true`: only products at or below their low-stock threshold; `false`: only above.
        low_stock: Query<Option<bool>>,
        /// Only products changed at or after this instant (RFC 3339).
        updated_since: Query<Option<DateTime<Utc>>>,
        /// Full-text search over SKU, name and description.
        #[oai(validator(min_length = 1, max_length = 200))]
        q: Query<Option<String>>,
        /// Include soft-deleted products.
        #[oai(default)]
        include_deleted: Query<bool>,
        /// Sort key (default `created_at`).
        #[oai(default)]
        sort: Query<ProductSort>,
        /// Sort direction (default `asc`).
        #[oai(default)]
        order: Query<SortOrder>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        #[oai(validator(max_length = 1000))]
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<ProductPage>> {
        plain_parameter("q", q.0.as_deref())?;
        plain_parameter("tag", tag.0.as_deref())?;
        let (sort, order) = (sort.0, order.0);
        let after = cursor
            .0
            .as_deref()
            .map(|c| decode_cursor(c, sort, order))
            .transpose()?;
        let listing = Listing {
            status: status.0,
            kind: kind.0,
            tag: tag.0.map(|t| t.trim().to_owned()),
            min_price: min_price.0,
            max_price: max_price.0,
            currency: currency.0,
            low_stock: low_stock.0,
            updated_since: updated_since.0,
            search: q.0,
            include_deleted: include_deleted.0,
            sort,
            descending: order == SortOrder::Desc,
            after,
            limit: limit.0 + 1,
        };
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let products = store::list(&mut tx, listing).await.map_err(db_failure)?;
        tx.commit().await?;
        let (products, next_cursor) = page(products, limit.0, |p| encode_cursor(sort, order, p));
        Ok(Json(ProductPage {
            items: products.into_iter().map(ProductView::from).collect(),
            next_cursor,
        }))
    }

    /// Create a product.
    #[oai(
        path = "/v1/products",
        method = "post",
        operation_id = "create_product"
    )]
    async fn create_product(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsWrite>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        body: JsonBody<CreateProduct>,
    ) -> ApiResult<ProductCreated> {
        let new = body.0.into_new();
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        limits::ensure_room(
            &state,
            &mut tx,
            &auth.principal.tenant,
            Limited::Products,
            1,
        )
        .await?;
        check_image_ids(&mut tx, &[("image_ids".to_owned(), &new.image_ids)]).await?;
        let product = store::insert(&mut tx, std::slice::from_ref(&new))
            .await?
            .pop()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("insert returned no row")))?;
        tx.commit().await?;
        let tag = etag(product.version);
        let location = format!("/v1/products/{}", product.id);
        Ok(ProductCreated::Created(Json(product.into()), tag, location))
    }

    /// Create up to 1,000 products at once.
    ///
    /// All or nothing: any invalid item fails the whole request with a 422 listing every
    /// failing field as `items[<index>].<field>`; SKUs already in use are a 409 `sku_taken`
    /// naming the items.
    #[oai(
        path = "/v1/products/bulk",
        method = "post",
        operation_id = "bulk_create_products"
    )]
    async fn bulk_create_products(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsWrite>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        body: JsonBody<BulkCreate>,
    ) -> ApiResult<BulkResponse> {
        let new: Vec<NewProduct> = body
            .0
            .items
            .into_iter()
            .map(CreateProduct::into_new)
            .collect();
        let skus: Vec<String> = new.iter().map(|p| p.sku.clone()).collect();
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let adding = u64::try_from(new.len()).unwrap_or(u64::MAX);
        limits::ensure_room(
            &state,
            &mut tx,
            &auth.principal.tenant,
            Limited::Products,
            adding,
        )
        .await?;
        let taken = store::taken_skus(&mut tx, &skus)
            .await
            .map_err(ApiError::internal)?;
        if !taken.is_empty() {
            let errors: Vec<FieldError> = skus
                .iter()
                .enumerate()
                .filter(|(_, sku)| taken.contains(&sku.to_lowercase()))
                .map(|(i, _)| {
                    FieldError::new(
                        format!("items[{i}].sku"),
                        "taken",
                        "another product of this tenant has this SKU",
                    )
                })
                .collect();
            return Err(ApiError::new(
                ErrorCode::SkuTaken,
                format!(
                    "{} SKUs are in use already; nothing was created.",
                    errors.len()
                ),
            )
            .with_field_errors(errors));
        }
        let images: Vec<(String, &[Uuid])> = new
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("items[{i}].image_ids"), p.image_ids.as_slice()))
            .collect();
        check_image_ids(&mut tx, &images).await?;
        let created = store::insert(&mut tx, &new).await?;
        tx.commit().await?;
        Ok(BulkResponse::Created(Json(BulkCreated {
            items: created.into_iter().map(ProductView::from).collect(),
        })))
    }

    /// One product.
    ///
    /// With `If-None-Match` naming the current `ETag`, the answer is a bodiless 304.
    #[oai(
        path = "/v1/products/:id",
        method = "get",
        operation_id = "get_product"
    )]
    async fn get_product(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsRead>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Product id.
        id: Path<Uuid>,
        /// Include a soft-deleted product.
        #[oai(default)]
        include_deleted: Query<bool>,
        /// Entity tags of copies the client holds.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> ApiResult<ProductOrNotModified> {
        let cached = if_none_match.0.as_deref().map(parse_etags);
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let product = store::get(&mut tx, id.0, include_deleted.0)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(not_found)?;
        tx.commit().await?;
        let tag = etag(product.version);
        match cached {
            Some(None) => return Ok(ProductOrNotModified::NotModified(tag)),
            Some(Some(versions)) if versions.contains(&product.version) => {
                return Ok(ProductOrNotModified::NotModified(tag));
            }
            _ => {}
        }
        Ok(ProductOrNotModified::Ok(Json(product.into()), tag))
    }

    /// Change a product.
    ///
    /// With `If-Match`, the change applies only to that version (412
    /// `precondition_failed` otherwise): send the `ETag` you read to never overwrite a
    /// change you have not seen.
    #[oai(
        path = "/v1/products/:id",
        method = "patch",
        operation_id = "update_product"
    )]
    async fn update_product(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsWrite>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Product id.
        id: Path<Uuid>,
        /// The `ETag` the change is based on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateProduct>,
    ) -> ApiResult<ProductResponse> {
        let expected = if_match.0.as_deref().and_then(parse_etags);
        let body = body.0;
        let changes = Changes {
            sku: body.sku,
            name: body.name.map(|n| n.trim().to_owned()),
            description: body.description.map(|d| d.trim().to_owned()),
            price: body.price,
            compare_at_price: match body.compare_at_price {
                MaybeUndefined::Value(v) => Some(Some(v)),
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Undefined => None,
            },
            currency: body.currency,
            status: body.status,
            kind: body.kind,
            stock_quantity: body.stock_quantity,
            low_stock_threshold: body.low_stock_threshold,
            attributes: body.attributes.map(attributes_json),
            tags: body.tags.map(normalize_tags),
            image_ids: body.image_ids.map(dedup),
        };
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        if let Some(ids) = &changes.image_ids {
            check_image_ids(&mut tx, &[("image_ids".to_owned(), ids)]).await?;
        }
        let product = outcome(store::update(&mut tx, id.0, expected.as_deref(), changes).await?)?;
        tx.commit().await?;
        Ok(ProductResponse::of(product))
    }

    /// Delete a product (softly: it can be restored).
    ///
    /// Honours `If-Match` like `PATCH`.
    #[oai(
        path = "/v1/products/:id",
        method = "delete",
        operation_id = "delete_product"
    )]
    async fn delete_product(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsDelete>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Product id.
        id: Path<Uuid>,
        /// The `ETag` the deletion is based on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> ApiResult<ProductDeleted> {
        let expected = if_match.0.as_deref().and_then(parse_etags);
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let deleted = store::soft_delete(&mut tx, id.0, expected.as_deref())
            .await
            .map_err(ApiError::internal)?;
        outcome(deleted)?;
        tx.commit().await?;
        Ok(ProductDeleted::Deleted)
    }

    /// Restore a deleted product.
    ///
    /// A product that is not deleted is returned as it is. Its SKU must not have been
    /// given to another product meanwhile (409 `sku_taken`).
    #[oai(
        path = "/v1/products/:id/restore",
        method = "post",
        operation_id = "restore_product"
    )]
    async fn restore_product(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsWrite>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Product id.
        id: Path<Uuid>,
    ) -> ApiResult<ProductResponse> {
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let product = store::restore(&mut tx, id.0).await?.ok_or_else(not_found)?;
        // Restored, it counts again (a product that was live already does not change it).
        limits::ensure_room(
            &state,
            &mut tx,
            &auth.principal.tenant,
            Limited::Products,
            0,
        )
        .await?;
        tx.commit().await?;
        Ok(ProductResponse::of(product))
    }

    /// Add to or remove from the stock, atomically.
    ///
    /// Concurrent adjustments never lose one another and never take the stock below zero:
    /// one that would is refused with 409 `insufficient_stock` (and `available`).
    #[oai(
        path = "/v1/products/:id/stock",
        method = "post",
        operation_id = "adjust_stock"
    )]
    async fn adjust_stock(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::ProductsWrite>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// Product id.
        id: Path<Uuid>,
        body: JsonBody<StockAdjustment>,
    ) -> ApiResult<ProductResponse> {
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let adjusted = store::adjust_stock(&mut tx, id.0, body.0.delta, MAX_STOCK)
            .await
            .map_err(ApiError::internal)?;
        let product = match adjusted {
            StockOutcome::Adjusted(product) => *product,
            StockOutcome::NotFound => return Err(not_found()),
            StockOutcome::AboveMax(current) => {
                return Err(ApiError::validation(vec![FieldError::new(
                    "delta",
                    "out_of_range",
                    format!("the stock ({current}) may not exceed {MAX_STOCK}"),
                )]));
            }
            StockOutcome::Insufficient(available) => {
                return Err(ApiError::new(
                    ErrorCode::InsufficientStock,
                    format!(
                        "Only {available} in stock; removing {} would go below zero.",
                        body.0.delta.unsigned_abs()
                    ),
                )
                .with_extension("available", available.into()));
            }
        };
        tx.commit().await?;
        Ok(ProductResponse::of(product))
    }
}
