//! End-to-end tests of the running server: one binary, one module per area.

mod auth;
mod billing;
mod errors;
mod files;
mod health;
mod invitations;
mod isolation;
mod jobs;
mod metrics;
mod migrations;
mod openapi;
mod pipeline;
mod products;
mod rate_limits;
mod rbac;
mod storage;
mod tenants;
mod tokens;
mod users;
