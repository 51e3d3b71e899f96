//! Authentication and authorization of tenant users: the bearer-token security scheme
//! ([`UserAuth`]) and the steps behind it ([`authn`]), and the permission checks built on
//! it ([`Authorized`], [`MaybeSignedIn`], in [`authz`]). The state they consult lives in
//! the `admission` crate and is re-exported here: the permission cache
//! ([`permissions`]), the revocation list ([`revocation`]), and the Redis throttles of
//! login, recovery and sign-up ([`throttle`]).
//!
//! The modules depend on each other in one direction only: `authz` builds on `authn`,
//! which reads `permissions` and `revocation`; this module only declares and re-exports.

pub mod authn;
pub mod authz;

pub use admission::{permissions, revocation, throttle};

pub use authn::{ApiKeyAuth, KeyActor, Principal, UserAuth, client_info};
pub use authz::{Authorized, MaybeSignedIn, Requirement, missing, perm, require};
