//! Canopy's identity core, free of HTTP: password policy and hashing ([`password`]),
//! access tokens and their signing keys ([`jwt`]), opaque client secrets ([`secret`]),
//! email addresses and their one normalized key ([`email`]), the per-tenant identity
//! tables ([`store`]), tenant API keys ([`api_keys`]), who may join a tenant ([`membership`]), invitations with their
//! email job ([`invitations`]), two-factor authentication ([`mfa`]), the later life of an account: security issues, email
//! changes and deletion ([`lifecycle`]), the verification and reset emails ([`link_emails`]) and the prune of the identity tables ([`retention`]). The API crate wires these into endpoints.

pub mod api_keys;
pub mod email;
pub mod invitations;
pub mod jwt;
pub mod lifecycle;
pub mod link_emails;
pub mod membership;
pub mod mfa;
pub mod password;
pub mod retention;
pub mod secret;
pub mod store;

pub use email::Email;
pub use invitations::Invitation;
pub use jwt::{AccessClaims, AccessTokens, KeyError, PublicJwk, TokenError};
pub use membership::{Registration, RegistrationPolicy};
pub use password::{HashCost, HashError, PasswordHasher, PolicyViolation, Verified, check_policy};
pub use secret::OpaqueToken;
pub use store::{Activated, ClientInfo, StoreError, User, UserStatus};
