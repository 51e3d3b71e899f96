//! The SQL of products, over a connection of the tenant's `TenantDb` transaction (a
//! `tenancy::TenantTx` derefs to the `PgConnection` every function takes, so the tenant's
//! role and search path are already set).
//!
//! Listing is keyset-paginated on `(sort column, id)`; every query names its columns
//! (statements are cached by text across tenant schemas, so never `select *`). Dynamic parts
//! (filters, sort) are built with `QueryBuilder`: values are always bound, column names only
//! ever come from [`ProductSort`]. Rows are read with `sqlx::FromRow` ([`Product`]); every
//! writing statement names the constraints it may violate through
//! `tenancy::ConstraintExt::on_constraints`, and every other database error becomes a
//! [`ProductError`] by `From`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use tenancy::ConstraintExt;
use uuid::Uuid;

use crate::{
    error::{ProductError, violated},
    model::{Product, ProductSort, ProductStatus, ProductType, SortOrder},
};

const COLUMNS: &str = "id, sku, name, description, price, compare_at_price, currency, status, \
     type, stock_quantity, low_stock_threshold, attributes, tags, image_ids, version, \
     created_at, updated_at, deleted_at";

/// A product to create (validated).
#[derive(Debug, Clone)]
pub struct NewProduct {
    /// SKU (checked, or generated).
    pub sku: String,
    /// Name, trimmed.
    pub name: String,
    /// Description, trimmed.
    pub description: String,
    /// Price in minor units.
    pub price: i64,
    /// Compare-at price in minor units.
    pub compare_at_price: Option<i64>,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Status.
    pub status: ProductStatus,
    /// Kind of product.
    pub kind: ProductType,
    /// Units in stock.
    pub stock_quantity: i64,
    /// Low-stock threshold.
    pub low_stock_threshold: i64,
    /// Attributes (a JSON object).
    pub attributes: serde_json::Value,
    /// Tags, trimmed, each once.
    pub tags: Vec<String>,
    /// Image file ids, each once.
    pub image_ids: Vec<Uuid>,
}

/// Inserts products in one statement (all or none).
pub async fn insert(
    conn: &mut PgConnection,
    products: &[NewProduct],
) -> Result<Vec<Product>, ProductError> {
    let mut query = QueryBuilder::<Postgres>::new(
        "insert into products (id, sku, name, description, price, compare_at_price, currency, \
         status, type, stock_quantity, low_stock_threshold, attributes, tags, image_ids) ",
    );
    query.push_values(products, |mut row, p| {
        row.push_bind(Uuid::now_v7())
            .push_bind(&p.sku)
            .push_bind(&p.name)
            .push_bind(&p.description)
            .push_bind(p.price)
            .push_bind(p.compare_at_price)
            .push_bind(&p.currency)
            .push_bind(p.status.as_str())
            .push_bind(p.kind.as_str())
            .push_bind(p.stock_quantity)
            .push_bind(p.low_stock_threshold)
            .push_bind(&p.attributes)
            .push_bind(&p.tags)
            .push_bind(&p.image_ids);
    });
    query.push(format_args!(" returning {COLUMNS}"));
    let mut created = query
        .build_query_as::<Product>()
        .fetch_all(conn)
        .await
        .on_constraints(violated)?;
    // `returning` follows the insert order in practice but does not promise it.
    created.sort_by_key(|p| p.id);
    Ok(created)
}

/// Which of these SKUs (compared case-insensitively) live products already use.
pub async fn taken_skus(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<Vec<String>, ProductError> {
    Ok(sqlx::query_scalar(
        "select lower(sku) from products where deleted_at is null and lower(sku) = any($1)",
    )
    .bind(skus.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

/// The product with this id (soft-deleted ones only with `include_deleted`).
pub async fn get(
    conn: &mut PgConnection,
    id: Uuid,
    include_deleted: bool,
) -> Result<Option<Product>, ProductError> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from products where id = $1 and ($2 or deleted_at is null)"
    ))
    .bind(id)
    .bind(include_deleted)
    .fetch_optional(conn)
    .await?)
}

/// Changes to a product; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct Changes {
    /// New SKU.
    pub sku: Option<String>,
    /// New name, trimmed.
    pub name: Option<String>,
    /// New description, trimmed.
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
    /// New attributes (a JSON object).
    pub attributes: Option<serde_json::Value>,
    /// New tags, trimmed, each once.
    pub tags: Option<Vec<String>>,
    /// New image ids, each once.
    pub image_ids: Option<Vec<Uuid>>,
}

/// What became of a conditional write.
#[derive(Debug)]
pub enum Outcome {
    /// Done; the product as it is now.
    Done(Box<Product>),
    /// No live product has this id.
    NotFound,
    /// `If-Match` named another version; the current one.
    VersionMismatch(i64),
}

/// Locks the live product and checks its version against `expected`.
async fn lock_version(
    conn: &mut PgConnection,
    id: Uuid,
    expected: Option<&[i64]>,
) -> Result<Option<Outcome>, ProductError> {
    let current: Option<i64> = sqlx::query_scalar(
        "select version from products where id = $1 and deleted_at is null for update",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(match (current, expected) {
        (None, _) => Some(Outcome::NotFound),
        (Some(v), Some(expected)) if !expected.contains(&v) => Some(Outcome::VersionMismatch(v)),
        _ => None,
    })
}

/// Applies `changes` to a live product whose version is one of `expected` (any, if `None`).
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    expected: Option<&[i64]>,
    changes: Changes,
) -> Result<Outcome, ProductError> {
    if let Some(outcome) = lock_version(conn, id, expected).await? {
        return Ok(outcome);
    }
    let mut query = QueryBuilder::<Postgres>::new(
        "update products set version = version + 1, updated_at = now()",
    );
    macro_rules! set {
        ($column:literal, $value:expr) => {
            if let Some(value) = $value {
                query.push(concat!(", ", $column, " = ")).push_bind(value);
            }
        };
    }
    set!("sku", changes.sku);
    set!("name", changes.name);
    set!("description", changes.description);
    set!("price", changes.price);
    set!("compare_at_price", changes.compare_at_price);
    set!("currency", changes.currency);
    set!("status", changes.status.map(ProductStatus::as_str));
    set!("type", changes.kind.map(ProductType::as_str));
    set!("stock_quantity", changes.stock_quantity);
    set!("low_stock_threshold", changes.low_stock_threshold);
    set!("attributes", changes.attributes);
    set!("tags", changes.tags);
    set!("image_ids", changes.image_ids);
    query
        .push(" where id = ")
        .push_bind(id)
        .push(format_args!(" returning {COLUMNS}"));
    let product = query
        .build_query_as::<Product>()
        .fetch_one(conn)
        .await
        .on_constraints(violated)?;
    Ok(Outcome::Done(Box::new(product)))
}

/// Soft-deletes a live product whose version is one of `expected` (any, if `None`).
pub async fn soft_delete(
    conn: &mut PgConnection,
    id: Uuid,
    expected: Option<&[i64]>,
) -> Result<Outcome, ProductError> {
    if let Some(outcome) = lock_version(conn, id, expected).await? {
        return Ok(outcome);
    }
    let product = sqlx::query_as(&format!(
        "update products set deleted_at = now(), updated_at = now(), version = version + 1
         where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
    .on_constraints(violated)?;
    Ok(Outcome::Done(Box::new(product)))
}

/// Brings a soft-deleted product back (a live one is returned as it is).
pub async fn restore(conn: &mut PgConnection, id: Uuid) -> Result<Option<Product>, ProductError> {
    let restored = sqlx::query_as(&format!(
        "update products set deleted_at = null, updated_at = now(), version = version + 1
         where id = $1 and deleted_at is not null returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .on_constraints(violated)?;
    match restored {
        Some(product) => Ok(Some(product)),
        None => get(conn, id, false).await,
    }
}

/// What became of a stock adjustment.
#[derive(Debug)]
pub enum StockOutcome {
    /// Applied; the product as it is now.
    Adjusted(Box<Product>),
    /// The delta would take the stock below zero; what there is.
    Insufficient(i64),
    /// The delta would take the stock above the maximum; what there is.
    AboveMax(i64),
    /// No live product has this id.
    NotFound,
}

/// Adds `delta` to the stock in one statement, never below zero nor above `max`.
pub async fn adjust_stock(
    conn: &mut PgConnection,
    id: Uuid,
    delta: i64,
    max: i64,
) -> Result<StockOutcome, ProductError> {
    let adjusted = sqlx::query_as(&format!(
        "update products
         set stock_quantity = stock_quantity + $2, version = version + 1, updated_at = now()
         where id = $1 and deleted_at is null and stock_quantity + $2 between 0 and $3
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(delta)
    .bind(max)
    .fetch_optional(&mut *conn)
    .await
    .on_constraints(violated)?;
    if let Some(product) = adjusted {
        return Ok(StockOutcome::Adjusted(Box::new(product)));
    }
    let stock: Option<i64> = sqlx::query_scalar(
        "select stock_quantity from products where id = $1 and deleted_at is null",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(match stock {
        None => StockOutcome::NotFound,
        Some(stock) if delta < 0 => StockOutcome::Insufficient(stock),
        Some(stock) => StockOutcome::AboveMax(stock),
    })
}

/// A position in a listing: the last row's sort value and id.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    /// `created_at` / `updated_at`.
    Time(DateTime<Utc>),
    /// `name`.
    Text(String),
    /// `price`.
    Int(i64),
}

/// What to list.
#[derive(Debug, Default)]
pub struct Listing {
    /// Only products with this status.
    pub status: Option<ProductStatus>,
    /// Only products of this kind.
    pub kind: Option<ProductType>,
    /// Only products with this tag.
    pub tag: Option<String>,
    /// Only products priced at least this.
    pub min_price: Option<i64>,
    /// Only products priced at most this.
    pub max_price: Option<i64>,
    /// Only products in this currency.
    pub currency: Option<String>,
    /// `true`: only products at or below their low-stock threshold; `false`: only above.
    pub low_stock: Option<bool>,
    /// Only products changed at or after this instant.
    pub updated_since: Option<DateTime<Utc>>,
    /// Full-text search (web-search syntax) over SKU, name and description.
    pub search: Option<String>,
    /// Include soft-deleted products.
    pub include_deleted: bool,
    /// Sort key.
    pub sort: ProductSort,
    /// Sort direction.
    pub order: SortOrder,
    /// Start after this position (from a cursor).
    pub after: Option<(SortValue, Uuid)>,
    /// At most this many rows.
    pub limit: i64,
}

/// One page of products (`limit` rows; ask for one more to learn whether a next page exists).
pub async fn list(conn: &mut PgConnection, listing: Listing) -> Result<Vec<Product>, ProductError> {
    let mut query =
        QueryBuilder::<Postgres>::new(format!("select {COLUMNS} from products where true"));
    if !listing.include_deleted {
        query.push(" and deleted_at is null");
    }
    if let Some(status) = listing.status {
        query.push(" and status = ").push_bind(status.as_str());
    }
    if let Some(kind) = listing.kind {
        query.push(" and type = ").push_bind(kind.as_str());
    }
    if let Some(tag) = listing.tag {
        query
            .push(" and tags @> array[")
            .push_bind(tag)
            .push("]::text[]");
    }
    if let Some(min) = listing.min_price {
        query.push(" and price >= ").push_bind(min);
    }
    if let Some(max) = listing.max_price {
        query.push(" and price <= ").push_bind(max);
    }
    if let Some(currency) = listing.currency {
        query.push(" and currency = ").push_bind(currency);
    }
    match listing.low_stock {
        Some(true) => query.push(" and stock_quantity <= low_stock_threshold"),
        Some(false) => query.push(" and stock_quantity > low_stock_threshold"),
        None => &mut query,
    };
    if let Some(since) = listing.updated_since {
        query.push(" and updated_at >= ").push_bind(since);
    }
    if let Some(search) = listing.search {
        query
            .push(" and search @@ (websearch_to_tsquery('english'::regconfig, ")
            .push_bind(search.clone())
            .push(") || websearch_to_tsquery('simple'::regconfig, ")
            .push_bind(search)
            .push("))");
    }
    let column = listing.sort.column();
    let (cmp, direction) = match listing.order {
        SortOrder::Desc => ("<", "desc"),
        SortOrder::Asc => (">", "asc"),
    };
    if let Some((value, id)) = listing.after {
        query.push(format_args!(" and ({column}, id) {cmp} ("));
        match value {
            SortValue::Time(t) => query.push_bind(t),
            SortValue::Text(s) => query.push_bind(s),
            SortValue::Int(n) => query.push_bind(n),
        };
        query.push(", ").push_bind(id).push(")");
    }
    query.push(format_args!(
        " order by {column} {direction}, id {direction} limit "
    ));
    query.push_bind(listing.limit);
    Ok(query.build_query_as::<Product>().fetch_all(conn).await?)
}
