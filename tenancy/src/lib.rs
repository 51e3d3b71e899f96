//! Canopy's tenancy layer: the control plane (the `public` schema) and, on top of it,
//! everything that keeps one tenant's data away from another's.
//!
//! This crate knows nothing about HTTP. The API crate turns its errors into responses.

mod control;
mod error;

pub use control::{ControlDb, PoolSettings, PoolStatus};
pub use error::TenancyError;
