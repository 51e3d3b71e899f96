//! Canopy's identity core, free of HTTP: password policy and hashing ([`password`]),
//! access tokens and their signing keys ([`jwt`]), opaque client secrets ([`secret`]) and
//! the per-tenant identity tables ([`store`]). The API crate wires these into endpoints.

pub mod jwt;
pub mod password;
pub mod secret;
pub mod store;

pub use jwt::{AccessClaims, AccessTokens, KeyError, PublicJwk, TokenError};
pub use password::{HashCost, HashError, PasswordHasher, PolicyViolation, Verified, check_policy};
pub use secret::OpaqueToken;
pub use store::{ClientInfo, StoreError, User, UserStatus};
