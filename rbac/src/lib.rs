//! Canopy's access control, free of HTTP: the permission catalog and the built-in system
//! roles ([`catalog`]), and the per-tenant roles, their single-parent hierarchy and the
//! role assignments ([`store`]). The API crate enforces permissions per endpoint and caches
//! effective permissions in Redis.

pub mod catalog;
pub mod store;

pub use catalog::{Permission, PermissionSet, SystemRole};
pub use store::{Role, RoleError};
