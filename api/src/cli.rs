//! The `canopy` command line: parsing and dispatch. `main.rs` only calls [`main`].

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{Application, Settings, routes, startup, telemetry};

/// Exit status for configuration errors (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// Canopy: a multi-tenant SaaS backend (schema-per-tenant PostgreSQL, REST + OpenAPI).
///
/// Settings come from `CANOPY_*` environment variables and, optionally, a TOML file
/// (`--config`); with none at all, Canopy talks to the local services started by
/// `deploy/local/up.sh`. See the README for every setting.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, propagate_version = true)]
pub struct Cli {
    /// TOML file with settings (keys as in the README, lower case); environment wins.
    #[arg(long, global = true, env = "CANOPY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API server until SIGTERM or SIGINT.
    ///
    /// Listens on CANOPY_BIND (default 127.0.0.1:8080) and serves the API, Swagger UI at
    /// /docs, the OpenAPI document at /openapi.json, health probes and /metrics. Refuses to
    /// start while the database is behind this binary's migrations. On SIGTERM/SIGINT it
    /// stops accepting connections and lets in-flight requests finish (up to
    /// CANOPY_SHUTDOWN_TIMEOUT).
    Serve,
    /// Bring the database up to date with this binary.
    ///
    /// Applies pending control-plane migrations (migrations/control). Idempotent: running
    /// it on a current database changes nothing.
    Migrate,
    /// Print the OpenAPI document (JSON) this binary serves.
    ///
    /// Needs no configuration and no running services. `canopy openapi > openapi/openapi.json`
    /// refreshes the checked-in copy.
    Openapi,
}

/// Parses the command line, runs the command and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", routes::openapi_json());
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("canopy: configuration error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(err) = telemetry::init(&settings.log) {
        eprintln!("canopy: configuration error: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("canopy: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "command failed");
            eprintln!("canopy: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            let url = format!(
                "http://{}:{}",
                app.state().settings.http.bind.ip(),
                app.port()
            );
            tracing::info!(%url, docs = %format!("{url}/docs"), "listening");
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let state = startup::build_state(settings)?;
            state
                .db
                .migrate()
                .await
                .context("control-plane migrations failed")?;
            tracing::info!("control plane is current");
            state.db.close().await;
            Ok(())
        }
        Command::Openapi => unreachable!("handled before settings are loaded"),
    }
}
