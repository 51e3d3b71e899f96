//! Canopy's identity core, free of HTTP: password policy and hashing ([`password`]),
//! access tokens and their signing keys ([`jwt`]), opaque client secrets ([`secret`]),
//! email addresses and their one normalized key ([`email`]) and the per-tenant identity
//! tables ([`store`]). The API crate wires these into endpoints.

pub mod email;
pub mod jwt;
pub mod password;
pub mod secret;
pub mod store;

pub use email::Email;
pub use jwt::{AccessClaims, AccessTokens, KeyError, PublicJwk, TokenError};
pub use password::{HashCost, HashError, PasswordHasher, PolicyViolation, Verified, check_policy};
pub use secret::OpaqueToken;
pub use store::{Activated, ClientInfo, StoreError, User, UserStatus};
