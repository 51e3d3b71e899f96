//! Authentication and authorization of tenant users: the bearer-token security scheme
//! ([`UserAuth`]) and the steps behind it ([`authn`]), the permission checks built on it
//! ([`Authorized`], [`MaybeSignedIn`], in [`authz`]), the permission cache they read
//! ([`permissions`]), the revocation list authentication consults ([`revocation`]), and the
//! Redis throttles of login and recovery ([`throttle`]).
//!
//! The modules depend on each other in one direction only: `authz` builds on `authn`,
//! which reads `permissions` and `revocation`; this module only declares and re-exports.

pub mod authn;
pub mod authz;
pub mod permissions;
pub mod revocation;
pub mod throttle;

pub use authn::{Principal, UserAuth, client_info};
pub use authz::{Authorized, MaybeSignedIn, Requirement, missing, perm, require};
