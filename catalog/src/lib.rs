//! Canopy's product catalog, free of HTTP.
//!
//! It owns what a product is and the rules it obeys, so that the HTTP crate only parses,
//! renders and maps errors:
//!
//! * [`model`]: the product ([`Product`], read with `sqlx::FromRow`) and its enums
//!   ([`ProductStatus`], [`ProductType`], [`ProductSort`], [`SortOrder`]) as plain Rust
//!   enums, stored as text;
//! * [`input`]: a creation ([`ProductDraft`]) or a change ([`ProductPatch`]) as a client
//!   sends it, its checks ([`ProductFields::check`], [`check_bulk`], [`check_stock_delta`]
//!   giving every failing field as a [`FieldError`]), and its normalisation into what the
//!   store writes (generated SKUs, trimmed text, tags without duplicates);
//! * [`store`]: the SQL, over a connection of the tenant's `tenancy::TenantTx` (the only
//!   way into a tenant schema), with constraint violations named in [`ProductError`];
//! * [`cursor`]: the opaque keyset cursors of listings.

pub mod cursor;
pub mod error;
pub mod input;
pub mod model;
pub mod store;

pub use cursor::InvalidCursor;
pub use error::ProductError;
pub use input::{
    FieldCode, FieldError, InvalidInput, ProductDraft, ProductFields, ProductPatch, check_bulk,
    check_stock_delta,
};
pub use model::{
    MAX_AMOUNT, MAX_STOCK, Product, ProductSort, ProductStatus, ProductType, SortOrder,
    UnknownValue,
};
pub use store::{Changes, Listing, NewProduct, Outcome, SortValue, StockOutcome};
