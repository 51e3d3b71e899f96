//! End-to-end tests of the running server: one binary, one module per area.

#![expect(
    unused_crate_dependencies,
    reason = "a test target sees all of the package's dependencies; the harness library is checked"
)]

mod api_keys;
mod auth;
mod billing;
mod email_delivery;
mod errors;
mod faults;
mod files;
mod health;
mod invitations;
mod isolation;
mod jobs;
mod lifecycle;
mod metrics;
mod mfa;
mod migrations;
mod openapi;
mod pipeline;
mod products;
mod rate_limits;
mod rbac;
mod realtime;
mod retention;
mod spares;
mod storage;
mod tenants;
mod tokens;
mod users;
