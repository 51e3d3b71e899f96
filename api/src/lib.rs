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
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tenant;

/// The configuration lives in its own crate; `api::settings::…` paths keep working.
pub use ::settings;
/// The Redis pool and its helpers live in the `admission` crate; `crate::redis::…` paths
/// keep working.
pub use admission::redis;
pub use settings::Settings;
pub use startup::Application;
pub use state::AppState;

// A dev-dependency of the CLI tests (`tests/cli.rs`), which the unit tests do not use.
#[cfg(test)]
use url as _;

/// mimalloc instead of the system allocator, for every process running Canopy (`canopy`,
/// the benchmarks, the end-to-end tests). A request allocates and frees many small buffers
/// across the runtime's threads; with glibc's malloc that was a tenth of a product
/// listing's CPU, and throughput fell by a quarter after sustained load (fragmented
/// arenas). With mimalloc the listing ran 1.3× as fast and an empty route stayed fast.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
