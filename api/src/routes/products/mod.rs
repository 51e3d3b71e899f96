//! The tenant's product catalog (`/v1/products`): CRUD with optimistic concurrency
//! (`ETag` from `version`, `If-Match` → 412, `If-None-Match` → 304), soft delete and
//! restore, atomic stock adjustments that never go below zero, all-or-nothing bulk
//! creation, and keyset-paginated listing with filters, sorts and full-text search.
//!
//! Only the HTTP side lives here: the handlers, the entity-tag headers and the mapping of
//! `catalog`'s errors and outcomes to problems. The request and response types are in
//! `views.rs`; the model, the rules of product input, the SQL and the cursors are the
//! `catalog` crate's.

mod views;

use catalog::{
    InvalidCursor, Listing, MAX_STOCK, NewProduct, Outcome, Product, ProductDraft, ProductError,
    StockOutcome, cursor, store,
};
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    OpenApi,
    param::{Header, Path, Query},
};
use realtime::{Envelope, EventKind};
use uuid::Uuid;

pub use self::views::{
    BulkCreate, BulkCreated, BulkResponse, CreateProduct, ProductCreated, ProductDeleted,
    ProductOrNotModified, ProductPage, ProductResponse, ProductSort, ProductStatus, ProductType,
    ProductView, SortOrder, StockAdjustment, UpdateProduct,
};
use crate::{
    AppState,
    auth::{Authorized, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    limits::{self, Limited},
    payload::{JsonBody, JsonReply},
    routes::{ApiTag, files::check_image_ids, pagination::page},
};

/// Products endpoints.
pub struct ProductsApi;

impl From<ProductError> for ApiError {
    fn from(err: ProductError) -> Self {
        match err {
            ProductError::SkuTaken => ApiError::new(
                ErrorCode::SkuTaken,
                "Another product of this tenant has this SKU.",
            ),
            ProductError::CompareAtBelowPrice => ApiError::validation(vec![FieldError::new(
                "compare_at_price",
                FieldCode::BelowPrice,
                "must be at least `price`",
            )]),
            // Text PostgreSQL cannot store (a NUL character that got past validation) is
            // the client's 400, anything else a 500.
            ProductError::UnstorableText(_) => ApiError::new(
                ErrorCode::BadRequest,
                "The request holds characters that cannot be stored (NUL).",
            ),
            ProductError::Database(e) => ApiError::internal(e),
        }
    }
}

impl From<InvalidCursor> for ApiError {
    fn from(_: InvalidCursor) -> Self {
        ApiError::new(
            ErrorCode::InvalidParameter,
            "Parameter `cursor` is not a cursor this API issued for this `sort` and `order`.",
        )
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
    ) -> ApiResult<JsonReply<ProductPage>> {
        plain_parameter("q", q.0.as_deref())?;
        plain_parameter("tag", tag.0.as_deref())?;
        let (sort, order) = (
            catalog::ProductSort::from(sort.0),
            catalog::SortOrder::from(order.0),
        );
        let after = cursor
            .0
            .as_deref()
            .map(|c| cursor::decode(c, sort, order))
            .transpose()?;
        let listing = Listing {
            status: status.0.map(Into::into),
            kind: kind.0.map(Into::into),
            tag: tag.0.map(|t| t.trim().to_owned()),
            min_price: min_price.0,
            max_price: max_price.0,
            currency: currency.0,
            low_stock: low_stock.0,
            updated_since: updated_since.0,
            search: q.0,
            include_deleted: include_deleted.0,
            sort,
            order,
            after,
            limit: limit.0 + 1,
        };
        let mut tx = auth.begin(&state).await?;
        let products = store::list(&mut tx, listing).await?;
        tx.commit().await?;
        let (products, next_cursor) = page(products, limit.0, |p| cursor::encode(sort, order, p));
        Ok(JsonReply(ProductPage {
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
        body: JsonBody<CreateProduct>,
    ) -> ApiResult<ProductCreated> {
        let new = ProductDraft::from(body.0).into_new();
        let mut tx = auth.begin(&state).await?;
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
        announce(
            &state,
            &auth,
            EventKind::ProductCreated,
            std::slice::from_ref(&product),
        );
        let tag = etag(product.version);
        let location = format!("/v1/products/{}", product.id);
        Ok(ProductCreated::Created(
            JsonReply(product.into()),
            tag,
            location,
        ))
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
        body: JsonBody<BulkCreate>,
    ) -> ApiResult<BulkResponse> {
        let new: Vec<NewProduct> = body
            .0
            .items
            .into_iter()
            .map(|item| ProductDraft::from(item).into_new())
            .collect();
        let skus: Vec<String> = new.iter().map(|p| p.sku.clone()).collect();
        let mut tx = auth.begin(&state).await?;
        let adding = u64::try_from(new.len()).unwrap_or(u64::MAX);
        limits::ensure_room(
            &state,
            &mut tx,
            &auth.principal.tenant,
            Limited::Products,
            adding,
        )
        .await?;
        let taken = store::taken_skus(&mut tx, &skus).await?;
        if !taken.is_empty() {
            let errors: Vec<FieldError> = skus
                .iter()
                .enumerate()
                .filter(|(_, sku)| taken.contains(&sku.to_lowercase()))
                .map(|(i, _)| {
                    FieldError::new(
                        format!("items[{i}].sku"),
                        FieldCode::Taken,
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
        announce(&state, &auth, EventKind::ProductCreated, &created);
        Ok(BulkResponse::Created(JsonReply(BulkCreated {
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
        let mut tx = auth.begin(&state).await?;
        let product = store::get(&mut tx, id.0, include_deleted.0)
            .await?
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
        Ok(ProductOrNotModified::Ok(JsonReply(product.into()), tag))
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
        /// Product id.
        id: Path<Uuid>,
        /// The `ETag` the change is based on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<UpdateProduct>,
    ) -> ApiResult<ProductResponse> {
        let expected = if_match.0.as_deref().and_then(parse_etags);
        let changes = catalog::ProductPatch::from(body.0).into_changes();
        let mut tx = auth.begin(&state).await?;
        if let Some(ids) = &changes.image_ids {
            check_image_ids(&mut tx, &[("image_ids".to_owned(), ids)]).await?;
        }
        let product = outcome(store::update(&mut tx, id.0, expected.as_deref(), changes).await?)?;
        tx.commit().await?;
        announce(
            &state,
            &auth,
            EventKind::ProductUpdated,
            std::slice::from_ref(&product),
        );
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
        /// Product id.
        id: Path<Uuid>,
        /// The `ETag` the deletion is based on.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
    ) -> ApiResult<ProductDeleted> {
        let expected = if_match.0.as_deref().and_then(parse_etags);
        let mut tx = auth.begin(&state).await?;
        let deleted = store::soft_delete(&mut tx, id.0, expected.as_deref()).await?;
        let product = outcome(deleted)?;
        tx.commit().await?;
        announce(
            &state,
            &auth,
            EventKind::ProductDeleted,
            std::slice::from_ref(&product),
        );
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
        /// Product id.
        id: Path<Uuid>,
    ) -> ApiResult<ProductResponse> {
        let mut tx = auth.begin(&state).await?;
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
        announce(
            &state,
            &auth,
            EventKind::ProductUpdated,
            std::slice::from_ref(&product),
        );
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
        /// Product id.
        id: Path<Uuid>,
        body: JsonBody<StockAdjustment>,
    ) -> ApiResult<ProductResponse> {
        let mut tx = auth.begin(&state).await?;
        let adjusted = store::adjust_stock(&mut tx, id.0, body.0.delta, MAX_STOCK).await?;
        let product = match adjusted {
            StockOutcome::Adjusted(product) => *product,
            StockOutcome::NotFound => return Err(not_found()),
            StockOutcome::AboveMax(current) => {
                return Err(ApiError::validation(vec![FieldError::new(
                    "delta",
                    FieldCode::OutOfRange,
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
        announce(
            &state,
            &auth,
            EventKind::ProductUpdated,
            std::slice::from_ref(&product),
        );
        Ok(ProductResponse::of(product))
    }
}

/// Publishes a live event of `kind` for each of `products` of the caller's tenant, after
/// their transaction committed (never before: a rolled-back change announces nothing). Ids
/// and versions only; sent after the answer, in one round trip.
fn announce<P: crate::auth::Requirement>(
    state: &AppState,
    auth: &Authorized<P>,
    kind: EventKind,
    products: &[Product],
) {
    let tenant = auth.principal.tenant.id;
    let events = products
        .iter()
        .map(|p| Envelope::new(kind, tenant, p.id, Some(p.version)))
        .collect();
    realtime::events::announce(&state.redis, events);
}
