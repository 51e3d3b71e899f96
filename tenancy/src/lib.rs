//! Canopy's tenancy layer: the control plane (the `public` schema) and everything that
//! keeps one tenant's data away from another's.
//!
//! * [`ControlDb`] owns the one shared pool and the platform-wide SQL: the tenant registry
//!   and provisioning (from a pool of spare schemas built ahead of time, when it holds
//!   one), platform API keys, control-plane and tenant migrations.
//! * [`TenantDb`] is the only way to run tenant-scoped SQL: transactions that act as the
//!   tenant's own role inside its own schema.
//! * [`profile`]: what a tenant says about itself (name, locale, time zone).
//! * [`text_enum!`] and [`UnknownValue`]: the one way every domain crate converts an enum
//!   stored as `text` to and from its text.
//!
//! Nothing here knows about HTTP; the API crate turns [`TenancyError`] into responses.

mod control;
mod error;
mod keys;
pub mod migrate;
mod model;
pub mod profile;
mod schema;
mod spares;
mod tenant_db;
mod tenants;
mod text_enum;

pub use control::{ControlDb, PoolSettings, PoolStatus};
pub use error::{ConstraintExt, TenancyError, error_chain, is_unavailable, unavailable_cause};
pub use keys::{ApiKey, KEY_PREFIX, NewApiKey};
pub use model::{SlugError, Tenant, TenantId, TenantSlug, TenantStatus};
pub use spares::SpareSummary;
pub use tenant_db::{TenantDb, TenantTx};
pub use tenants::{BoxFuture, ProvisionHook, PurgeHook, TenantSeed, validate_name};
pub use text_enum::UnknownValue;
