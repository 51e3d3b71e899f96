//! Request admission: the state, shared by every instance, that decides whether a request
//! gets in. It owns
//!
//! - tenant resolution's cache and its coherence across instances ([`tenants`]: an
//!   in-process cache dropped everywhere on a Redis announcement),
//! - the revocation list of ended sessions, revoked API keys and blocked users
//!   ([`revocation`]), and the rows of tenant API keys, cached briefly ([`api_keys`]),
//! - the permission cache ([`permissions`]),
//! - the login, recovery and sign-up throttles ([`throttle`]),
//! - the general rate limits and their one-round-trip Lua script ([`rate_limit`]),
//!
//! over one Redis pool ([`redis`]), with how a client address is counted
//! ([`client_key`]).
//!
//! It lives apart from the HTTP crate because none of it is HTTP: `api` reads requests,
//! calls in here, and renders [`AdmissionError`] as problem+json. Redis is a cache here
//! and the database the truth, and each part has its own failure policy: revocations and
//! permissions fall back to PostgreSQL (503 only when both are down), the tenant cache's
//! TTL bounds staleness while Redis is away, the general rate limits fail open behind a
//! process-wide cap, and the throttles fail closed.

mod address;
pub mod api_keys;
mod error;
pub mod permissions;
pub mod rate_limit;
pub mod redis;
pub mod revocation;
pub mod tenants;
pub mod throttle;

pub use address::client_key;
pub use error::AdmissionError;
