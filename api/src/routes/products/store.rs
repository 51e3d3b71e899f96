//! The SQL of products, over a connection of the tenant's `TenantDb` transaction.
//!
//! Listing is keyset-paginated on `(sort column, id)`; every query names its columns.
//! Dynamic parts (filters, sort) are built with `QueryBuilder`: values are always bound,
//! column names only ever come from [`ProductSort`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, postgres::PgRow};
use uuid::Uuid;

use super::{ProductSort, ProductStatus, ProductType};

/// A product row.
#[derive(Debug, Clone)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price: i64,
    pub compare_at_price: Option<i64>,
    pub currency: String,
    pub status: ProductStatus,
    pub kind: ProductType,
    pub stock_quantity: i64,
    pub low_stock_threshold: i64,
    pub attributes: serde_json::Value,
    pub tags: Vec<String>,
    pub image_ids: Vec<Uuid>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, sku, name, description, price, compare_at_price, currency, status, \
     type, stock_quantity, low_stock_threshold, attributes, tags, image_ids, version, \
     created_at, updated_at, deleted_at";

fn from_row(row: &PgRow) -> Result<Product, sqlx::Error> {
    let decode = |column: &str, value: String| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unexpected value {value:?}").into(),
    };
    let status: String = row.try_get("status")?;
    let kind: String = row.try_get("type")?;
    Ok(Product {
        id: row.try_get("id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price: row.try_get("price")?,
        compare_at_price: row.try_get("compare_at_price")?,
        currency: row.try_get("currency")?,
        status: ProductStatus::from_db(&status).ok_or_else(|| decode("status", status.clone()))?,
        kind: ProductType::from_db(&kind).ok_or_else(|| decode("type", kind.clone()))?,
        stock_quantity: row.try_get("stock_quantity")?,
        low_stock_threshold: row.try_get("low_stock_threshold")?,
        attributes: row.try_get("attributes")?,
        tags: row.try_get("tags")?,
        image_ids: row.try_get("image_ids")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

/// Why a write was refused by the database.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// A live product of the tenant has this SKU.
    #[error("a product with this SKU exists")]
    SkuTaken,
    /// The compare-at price is below the price.
    #[error("compare_at_price is below price")]
    CompareAtBelowPrice,
    /// Database failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn classify(e: sqlx::Error) -> ProductError {
    match &e {
        sqlx::Error::Database(db) => match db.constraint() {
            Some("products_sku_key") => ProductError::SkuTaken,
            Some("products_compare_at_not_below_price") => ProductError::CompareAtBelowPrice,
            _ => ProductError::Database(e),
        },
        _ => ProductError::Database(e),
    }
}

/// A product to create (validated).
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price: i64,
    pub compare_at_price: Option<i64>,
    pub currency: String,
    pub status: ProductStatus,
    pub kind: ProductType,
    pub stock_quantity: i64,
    pub low_stock_threshold: i64,
    pub attributes: serde_json::Value,
    pub tags: Vec<String>,
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
    let rows = query.build().fetch_all(conn).await.map_err(classify)?;
    let mut created = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    // `returning` follows the insert order in practice but does not promise it.
    created.sort_by_key(|p| p.id);
    Ok(created)
}

/// Which of these SKUs (compared case-insensitively) live products already use.
pub async fn taken_skus(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select lower(sku) from products where deleted_at is null and lower(sku) = any($1)",
    )
    .bind(skus.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
}

/// The product with this id (soft-deleted ones only with `include_deleted`).
pub async fn get(
    conn: &mut PgConnection,
    id: Uuid,
    include_deleted: bool,
) -> Result<Option<Product>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "select {COLUMNS} from products where id = $1 and ($2 or deleted_at is null)"
    ))
    .bind(id)
    .bind(include_deleted)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Changes to a product; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct Changes {
    pub sku: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub compare_at_price: Option<Option<i64>>,
    pub currency: Option<String>,
    pub status: Option<ProductStatus>,
    pub kind: Option<ProductType>,
    pub stock_quantity: Option<i64>,
    pub low_stock_threshold: Option<i64>,
    pub attributes: Option<serde_json::Value>,
    pub tags: Option<Vec<String>>,
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
) -> Result<Option<Outcome>, sqlx::Error> {
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
    let row = query.build().fetch_one(conn).await.map_err(classify)?;
    Ok(Outcome::Done(Box::new(from_row(&row)?)))
}

/// Soft-deletes a live product whose version is one of `expected` (any, if `None`).
pub async fn soft_delete(
    conn: &mut PgConnection,
    id: Uuid,
    expected: Option<&[i64]>,
) -> Result<Outcome, sqlx::Error> {
    if let Some(outcome) = lock_version(conn, id, expected).await? {
        return Ok(outcome);
    }
    let row = sqlx::query(&format!(
        "update products set deleted_at = now(), updated_at = now(), version = version + 1
         where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await?;
    Ok(Outcome::Done(Box::new(from_row(&row)?)))
}

/// Brings a soft-deleted product back (a live one is returned as it is).
pub async fn restore(conn: &mut PgConnection, id: Uuid) -> Result<Option<Product>, ProductError> {
    let row = sqlx::query(&format!(
        "update products set deleted_at = null, updated_at = now(), version = version + 1
         where id = $1 and deleted_at is not null returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?;
    match row {
        Some(row) => Ok(Some(from_row(&row)?)),
        None => Ok(get(conn, id, false).await?),
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
) -> Result<StockOutcome, sqlx::Error> {
    let row = sqlx::query(&format!(
        "update products
         set stock_quantity = stock_quantity + $2, version = version + 1, updated_at = now()
         where id = $1 and deleted_at is null and stock_quantity + $2 between 0 and $3
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(delta)
    .bind(max)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = row {
        return Ok(StockOutcome::Adjusted(Box::new(from_row(&row)?)));
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
    pub status: Option<ProductStatus>,
    pub kind: Option<ProductType>,
    pub tag: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub currency: Option<String>,
    pub low_stock: Option<bool>,
    pub updated_since: Option<DateTime<Utc>>,
    pub search: Option<String>,
    pub include_deleted: bool,
    pub sort: ProductSort,
    pub descending: bool,
    pub after: Option<(SortValue, Uuid)>,
    pub limit: i64,
}

/// One page of products (`limit` rows; ask for one more to learn whether a next page exists).
pub async fn list(conn: &mut PgConnection, listing: Listing) -> Result<Vec<Product>, sqlx::Error> {
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
    let (cmp, direction) = if listing.descending {
        ("<", "desc")
    } else {
        (">", "asc")
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
    let rows = query.build().fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}
