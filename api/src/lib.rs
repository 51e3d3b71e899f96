//! Canopy's HTTP API and the library behind the `canopy` binary: settings, the poem app
//! and its request pipeline, route modules per tag, and problem+json errors.

pub mod admin_auth;
pub mod auth;
pub mod cli;
pub mod client_ip;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod payload;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod subscriptions;
pub mod telemetry;
pub mod tenant;

pub use settings::Settings;
pub use startup::Application;
pub use state::AppState;
