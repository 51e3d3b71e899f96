//! Product input as a client sends it: the rules it must meet, and its normalisation into
//! what the store writes.
//!
//! Checks collect every failing field rather than stopping at the first, so that a client
//! can fix a form (or a bulk request of 1,000 items) in one round; each [`FieldError`] names
//! the field as the client wrote it (`items[3].price`), with a stable `code`. The HTTP crate
//! turns an [`InvalidInput`] into its 422 `validation_failed`.
//!
//! The database's constraints repeat the essential rules (SKU format, lengths, ranges), so a
//! value that slipped past these checks is still refused; these checks exist to say *which*
//! field is wrong, and all of them at once.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::{
    model::{MAX_AMOUNT, MAX_STOCK, ProductStatus, ProductType},
    store::{Changes, NewProduct},
};

/// One failing field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field (`sku`, `items[3].price`, `tags[2]`).
    pub field: String,
    /// Why it fails.
    pub code: FieldCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Why a field of product input fails. The HTTP crate maps each to its wire code (of the
/// same name in snake_case) in its one list of field codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldCode {
    /// Not of the required form (SKU, currency).
    Invalid,
    /// Text or a list outside its length bounds, or holding control characters.
    Length,
    /// A number outside its range.
    OutOfRange,
    /// The compare-at price is below the price.
    BelowPrice,
    /// Attributes with too many keys or bytes.
    TooLarge,
    /// An attribute key that is empty, too long or holds control characters.
    InvalidKey,
    /// An attribute value holding NUL.
    InvalidValue,
    /// A list with too many items.
    TooLong,
    /// The same SKU twice in one request.
    Duplicate,
}

/// Product input that breaks the rules: every failing field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid field(s) in the product input", .errors.len())]
pub struct InvalidInput {
    /// The failing fields, in the order of the input.
    pub errors: Vec<FieldError>,
}

impl InvalidInput {
    /// `Ok` when nothing failed.
    fn unless_any(errors: Vec<FieldError>) -> Result<(), InvalidInput> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidInput { errors })
        }
    }
}

/// The fields a creation or a change sets, borrowed for checking (absent: not set).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProductFields<'a> {
    /// SKU.
    pub sku: Option<&'a str>,
    /// Name.
    pub name: Option<&'a str>,
    /// Description.
    pub description: Option<&'a str>,
    /// Price in minor units.
    pub price: Option<i64>,
    /// Compare-at price in minor units (absent also when a change removes it).
    pub compare_at_price: Option<i64>,
    /// Currency code.
    pub currency: Option<&'a str>,
    /// Stock quantity.
    pub stock_quantity: Option<i64>,
    /// Low-stock threshold.
    pub low_stock_threshold: Option<i64>,
    /// Attributes.
    pub attributes: Option<&'a BTreeMap<String, serde_json::Value>>,
    /// Tags (before normalisation).
    pub tags: Option<&'a [String]>,
    /// Image file ids.
    pub image_ids: Option<&'a [Uuid]>,
}

impl ProductFields<'_> {
    /// Every failing field of one product, or `Ok`.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        InvalidInput::unless_any(self.check(""))
    }

    /// Every failing field, named with the prefix `at` (`items[3].` in bulk requests).
    pub fn check(&self, at: &str) -> Vec<FieldError> {
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
                    FieldCode::BelowPrice,
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

/// Checks products to create together: 1 to 1,000 of them, each valid (fields named
/// `items[<index>].<field>`), and no SKU twice (compared case-insensitively).
pub fn check_bulk(items: &[ProductFields<'_>]) -> Result<(), InvalidInput> {
    if !(1..=1000).contains(&items.len()) {
        return Err(InvalidInput {
            errors: vec![FieldError {
                field: "items".to_owned(),
                code: FieldCode::Length,
                message: "give 1 to 1,000 products".to_owned(),
            }],
        });
    }
    let mut errors: Vec<FieldError> = items
        .iter()
        .enumerate()
        .flat_map(|(i, item)| item.check(&format!("items[{i}].")))
        .collect();
    // The same SKU twice in one request.
    let mut first: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(sku) = item.sku
            && let Some(earlier) = first.insert(sku.to_lowercase(), i)
        {
            first.insert(sku.to_lowercase(), earlier);
            errors.push(FieldError {
                field: format!("items[{i}].sku"),
                code: FieldCode::Duplicate,
                message: format!("items[{earlier}] has the same SKU"),
            });
        }
    }
    InvalidInput::unless_any(errors)
}

/// Checks a relative stock change: non-zero, and at most [`MAX_STOCK`] either way.
pub fn check_stock_delta(delta: i64) -> Result<(), InvalidInput> {
    let mut errors = Vec::new();
    if delta == 0 || delta.unsigned_abs() > MAX_STOCK.unsigned_abs() {
        errors.push(FieldError {
            field: "delta".to_owned(),
            code: FieldCode::OutOfRange,
            message: format!("must be non-zero and at most {MAX_STOCK} either way"),
        });
    }
    InvalidInput::unless_any(errors)
}

/// Field checks shared by creation and changes; `at` prefixes field names (bulk items).
struct Checks<'a> {
    at: &'a str,
    errors: Vec<FieldError>,
}

impl Checks<'_> {
    fn fail(&mut self, field: &str, code: FieldCode, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: format!("{}{field}", self.at),
            code,
            message: message.into(),
        });
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
                FieldCode::Invalid,
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
                FieldCode::Length,
                format!("must be {min} to {max} characters, without control characters"),
            );
        }
    }

    fn amount(&mut self, field: &str, value: i64) {
        if !(0..=MAX_AMOUNT).contains(&value) {
            self.fail(
                field,
                FieldCode::OutOfRange,
                format!("must be 0 to {MAX_AMOUNT} minor units"),
            );
        }
    }

    fn count(&mut self, field: &str, value: i64) {
        if !(0..=MAX_STOCK).contains(&value) {
            self.fail(
                field,
                FieldCode::OutOfRange,
                format!("must be 0 to {MAX_STOCK}"),
            );
        }
    }

    fn currency(&mut self, code: &str) {
        if iso_currency::Currency::from_code(code).is_none() {
            self.fail(
                "currency",
                FieldCode::Invalid,
                "must be an ISO 4217 code in upper case, such as USD",
            );
        }
    }

    fn attributes(&mut self, attributes: &BTreeMap<String, serde_json::Value>) {
        let size = serde_json::to_vec(attributes).map_or(usize::MAX, |v| v.len());
        if attributes.len() > 50 || size > 16 * 1024 {
            self.fail(
                "attributes",
                FieldCode::TooLarge,
                "at most 50 keys and 16 KiB",
            );
        }
        if attributes
            .keys()
            .any(|k| k.is_empty() || k.chars().count() > 64 || k.chars().any(char::is_control))
        {
            self.fail(
                "attributes",
                FieldCode::InvalidKey,
                "keys must be 1 to 64 characters, without control characters",
            );
        }
        if attributes.values().any(holds_nul) {
            self.fail(
                "attributes",
                FieldCode::InvalidValue,
                "strings cannot contain NUL characters",
            );
        }
    }

    fn tags(&mut self, tags: &[String]) {
        if tags.len() > 20 {
            self.fail("tags", FieldCode::TooLong, "at most 20 tags");
        }
        for (i, tag) in tags.iter().enumerate() {
            let len = tag.trim().chars().count();
            if len == 0 || len > 50 || tag.chars().any(char::is_control) {
                self.fail(
                    &format!("tags[{i}]"),
                    FieldCode::Length,
                    "must be 1 to 50 characters, without control characters",
                );
            }
        }
    }

    fn images(&mut self, ids: &[Uuid]) {
        if ids.len() > 10 {
            self.fail("image_ids", FieldCode::TooLong, "at most 10 images");
        }
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

/// A product to create, as the client sent it (checked with [`ProductFields`]); absent
/// fields get their defaults in [`ProductDraft::into_new`].
#[derive(Debug, Clone)]
pub struct ProductDraft {
    /// SKU; generated (`SKU-` and 12 hex digits) when absent.
    pub sku: Option<String>,
    /// Name.
    pub name: String,
    /// Description (default empty).
    pub description: Option<String>,
    /// Price in minor units.
    pub price: i64,
    /// Compare-at price in minor units.
    pub compare_at_price: Option<i64>,
    /// Currency code.
    pub currency: String,
    /// Status (default draft).
    pub status: Option<ProductStatus>,
    /// Kind (default physical).
    pub kind: Option<ProductType>,
    /// Units in stock (default 0).
    pub stock_quantity: Option<i64>,
    /// Low-stock threshold (default 0).
    pub low_stock_threshold: Option<i64>,
    /// Attributes (default none).
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// Tags (default none).
    pub tags: Option<Vec<String>>,
    /// Image file ids (default none).
    pub image_ids: Option<Vec<Uuid>>,
}

impl ProductDraft {
    /// The product to insert: defaults filled in, text trimmed, duplicates dropped.
    pub fn into_new(self) -> NewProduct {
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

/// Changes to a product, as the client sent them (checked with [`ProductFields`]);
/// `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProductPatch {
    /// New SKU.
    pub sku: Option<String>,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New price.
    pub price: Option<i64>,
    /// New compare-at price; `Some(None)` removes it.
    pub compare_at_price: Option<Option<i64>>,
    /// New currency.
    pub currency: Option<String>,
    /// New status.
    pub status: Option<ProductStatus>,
    /// New kind.
    pub kind: Option<ProductType>,
    /// New stock quantity.
    pub stock_quantity: Option<i64>,
    /// New low-stock threshold.
    pub low_stock_threshold: Option<i64>,
    /// New attributes (replacing the old ones).
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
    /// New tags (replacing the old ones).
    pub tags: Option<Vec<String>>,
    /// New image ids (replacing the old ones).
    pub image_ids: Option<Vec<Uuid>>,
}

impl ProductPatch {
    /// The changes to write: text trimmed, duplicates dropped.
    pub fn into_changes(self) -> Changes {
        Changes {
            sku: self.sku,
            name: self.name.map(|n| n.trim().to_owned()),
            description: self.description.map(|d| d.trim().to_owned()),
            price: self.price,
            compare_at_price: self.compare_at_price,
            currency: self.currency,
            status: self.status,
            kind: self.kind,
            stock_quantity: self.stock_quantity,
            low_stock_threshold: self.low_stock_threshold,
            attributes: self.attributes.map(attributes_json),
            tags: self.tags.map(normalize_tags),
            image_ids: self.image_ids.map(dedup),
        }
    }
}

/// A SKU for a product created without one: `SKU-` and 12 random upper-case hex digits.
fn generated_sku() -> String {
    let random = Uuid::new_v4().simple().to_string().to_uppercase();
    format!("SKU-{}", &random[..12])
}

fn attributes_json(attributes: BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Object(attributes.into_iter().collect())
}

/// Tags trimmed, each kept once (first occurrence first).
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

/// Ids each kept once, in their order.
fn dedup(ids: Vec<Uuid>) -> Vec<Uuid> {
    let mut seen = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(errors: &[FieldError]) -> Vec<(&str, FieldCode)> {
        errors.iter().map(|e| (e.field.as_str(), e.code)).collect()
    }

    #[test]
    fn every_failing_field_is_listed_with_its_prefix() {
        let attributes = BTreeMap::from([(String::new(), serde_json::json!("a\0b"))]);
        let tags = vec!["ok".to_owned(), " ".to_owned()];
        let fields = ProductFields {
            sku: Some("-bad"),
            name: Some("  "),
            price: Some(-1),
            compare_at_price: Some(5),
            currency: Some("usd"),
            stock_quantity: Some(MAX_STOCK + 1),
            attributes: Some(&attributes),
            tags: Some(&tags),
            ..ProductFields::default()
        };
        assert_eq!(
            fields_of(&fields.check("items[2].")),
            [
                ("items[2].sku", FieldCode::Invalid),
                ("items[2].name", FieldCode::Length),
                ("items[2].price", FieldCode::OutOfRange),
                ("items[2].currency", FieldCode::Invalid),
                ("items[2].stock_quantity", FieldCode::OutOfRange),
                ("items[2].attributes", FieldCode::InvalidKey),
                ("items[2].attributes", FieldCode::InvalidValue),
                ("items[2].tags[1]", FieldCode::Length),
            ]
        );
    }

    #[test]
    fn compare_at_below_price_is_refused() {
        let fields = ProductFields {
            price: Some(10),
            compare_at_price: Some(9),
            ..ProductFields::default()
        };
        let invalid = fields.validate().expect_err("9 is below 10");
        assert_eq!(
            fields_of(&invalid.errors),
            [("compare_at_price", FieldCode::BelowPrice)]
        );
        let fields = ProductFields {
            price: Some(10),
            compare_at_price: Some(10),
            currency: Some("JPY"),
            sku: Some("A.b_c-1"),
            ..ProductFields::default()
        };
        assert_eq!(fields.validate(), Ok(()));
    }

    #[test]
    fn bulk_names_items_and_duplicate_skus() {
        assert_eq!(
            check_bulk(&[]).map_err(|e| fields_of(&e.errors).len()),
            Err(1)
        );
        let items = [
            ProductFields {
                sku: Some("ABC"),
                ..ProductFields::default()
            },
            ProductFields {
                sku: Some("x y"),
                ..ProductFields::default()
            },
            ProductFields {
                sku: Some("abc"),
                ..ProductFields::default()
            },
        ];
        let invalid = check_bulk(&items).expect_err("a bad and a duplicate SKU");
        assert_eq!(
            fields_of(&invalid.errors),
            [
                ("items[1].sku", FieldCode::Invalid),
                ("items[2].sku", FieldCode::Duplicate)
            ]
        );
        assert_eq!(invalid.errors[1].message, "items[0] has the same SKU");
    }

    #[test]
    fn stock_delta_is_non_zero_and_bounded() {
        assert!(check_stock_delta(0).is_err());
        assert!(check_stock_delta(-MAX_STOCK - 1).is_err());
        assert_eq!(check_stock_delta(-MAX_STOCK), Ok(()));
        assert_eq!(check_stock_delta(1), Ok(()));
    }

    #[test]
    fn drafts_get_defaults_and_normalised_values() {
        let image = Uuid::now_v7();
        let new = ProductDraft {
            sku: None,
            name: "  Lamp ".to_owned(),
            description: None,
            price: 100,
            compare_at_price: None,
            currency: "EUR".to_owned(),
            status: None,
            kind: None,
            stock_quantity: None,
            low_stock_threshold: None,
            attributes: None,
            tags: Some(vec![" a".to_owned(), "a ".to_owned(), "b".to_owned()]),
            image_ids: Some(vec![image, image]),
        }
        .into_new();
        assert!(new.sku.starts_with("SKU-") && new.sku.len() == 16);
        assert_eq!(new.name, "Lamp");
        assert_eq!(new.description, "");
        assert_eq!(new.status, ProductStatus::Draft);
        assert_eq!(new.kind, ProductType::Physical);
        assert_eq!(new.attributes, serde_json::json!({}));
        assert_eq!(new.tags, ["a", "b"]);
        assert_eq!(new.image_ids, [image]);
        let generated = Checks {
            at: "",
            errors: Vec::new(),
        };
        let mut generated = generated;
        generated.sku(&new.sku);
        assert!(generated.errors.is_empty(), "a generated SKU is valid");
    }
}
