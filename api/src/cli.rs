//! The `canopy` command line: parsing and dispatch. `main.rs` only calls [`main`].

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tenancy::{Tenant, TenantId, TenantSlug, TenantStatus};

use crate::{AppState, Application, Settings, routes, startup, telemetry, tenant};

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
    /// /docs, the OpenAPI document at /openapi.json and health probes; /metrics is served on
    /// its own listener, CANOPY_METRICS_BIND (default 127.0.0.1:9090). Refuses to
    /// start while the database is behind this binary's migrations. On SIGTERM/SIGINT it
    /// stops accepting connections and lets in-flight requests finish (up to
    /// CANOPY_SHUTDOWN_TIMEOUT).
    Serve,
    /// Bring the database up to date with this binary.
    ///
    /// Applies pending control-plane migrations (migrations/control), then every tenant
    /// schema's pending migrations (migrations/tenant), CANOPY_MIGRATE_CONCURRENCY tenants at
    /// a time, one transaction per tenant. Idempotent and resumable: an interrupted run
    /// keeps what it committed and the next run finishes the rest. One failing tenant does
    /// not stop the others; the exit status is 1 when any failed.
    Migrate,
    /// Run background job workers only (no HTTP), until SIGTERM or SIGINT.
    ///
    /// Runs CANOPY_WORKERS jobs at once and serves /metrics on CANOPY_METRICS_BIND (give
    /// each process on a host its own port, or `off`). Several `canopy worker` processes,
    /// on one machine or many, share the queue safely. On SIGTERM it stops claiming, lets running jobs
    /// finish within CANOPY_SHUTDOWN_TIMEOUT and puts the rest back in the queue.
    Worker,
    /// Create, inspect and change tenants (the same operations as /v1/admin/tenants).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Platform administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the OpenAPI document (JSON) this binary serves.
    ///
    /// Needs no configuration and no running services. `canopy openapi > openapi/openapi.json`
    /// refreshes the checked-in copy.
    Openapi,
}

/// `canopy tenant …`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Provision a tenant: record, role, schema, migrations and seed data in one transaction.
    Create {
        /// Lowercase DNS label, 3 to 63 characters; names the tenant's subdomain.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List tenants (all states), ordered by slug.
    List,
    /// Show one tenant.
    Show {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Suspend a tenant: its requests get 403 `tenant_suspended`; data is kept.
    Suspend {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Resume a suspended tenant.
    Resume {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Delete a tenant: unreachable at once, schema and role dropped after
    /// CANOPY_TENANT_DELETION_GRACE.
    Delete {
        /// Tenant id or slug.
        tenant: String,
    },
    /// Drop the schemas and roles of deleted tenants whose grace period is over, now.
    Purge,
}

/// `canopy admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a platform API key for /v1/admin/*; prints the key (shown once) as the last
    /// line of output.
    CreateKey {
        /// What the key is for (shown in listings and logs).
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Manage the Ed25519 keys signing users' access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `canopy admin keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys, newest first (the newest active one signs).
    List,
    /// Create a new signing key. It signs new tokens from now on (servers pick it up within
    /// a minute); tokens signed by older keys keep verifying until those are retired.
    /// Prints the new key id as the last line.
    Rotate,
    /// Retire a key: tokens it signed stop verifying (within a minute on every server).
    /// Retire a key once its tokens have expired (CANOPY_JWT_ACCESS_TTL after a rotation),
    /// or at once when it may have leaked.
    Retire {
        /// The key id (`kid`).
        kid: String,
    },
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
    // Held to the end: dropping it writes out the log lines still queued.
    let long_running = matches!(cli.command, Command::Serve | Command::Worker);
    let _log_writer = match telemetry::init(&settings.log, long_running) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("canopy: configuration error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
            tracing::info!(%url, docs = %format!("{url}/docs"), metrics_port = app.metrics_port(), "listening");
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let state = startup::build_state(settings)?;
            let outcome = migrate(&state).await;
            state.db.close().await;
            outcome
        }
        Command::Worker => {
            let worker = startup::WorkerProcess::build(settings).await?;
            if let Some(port) = worker.metrics_port() {
                tracing::info!(port, "serving /metrics");
            }
            worker.run_until(startup::shutdown_signal()).await
        }
        Command::Tenant(command) => {
            let state = startup::build_state(settings)?;
            let outcome = tenant_command(&state, command).await;
            state.db.close().await;
            outcome
        }
        Command::Admin(AdminCommand::CreateKey { name }) => {
            let state = startup::build_state(settings)?;
            state.db.ensure_migrated().await?;
            let key = state.db.create_api_key(&name).await?;
            state.db.close().await;
            eprintln!(
                "Platform API key `{name}` ({}) created. It is shown only once:",
                key.id
            );
            println!("{}", key.key);
            Ok(())
        }
        Command::Admin(AdminCommand::Keys(command)) => {
            let state = startup::build_state(settings)?;
            state.db.ensure_migrated().await?;
            let outcome = keys_command(&state, command).await;
            state.db.close().await;
            outcome
        }
        Command::Openapi => unreachable!("handled before settings are loaded"),
    }
}

async fn keys_command(state: &AppState, command: KeysCommand) -> anyhow::Result<()> {
    let pool = state.db.pool();
    match command {
        KeysCommand::List => {
            state.tokens.initialize().await?;
            for key in identity::jwt::list_keys(pool).await? {
                let status = match key.retired_at {
                    Some(at) => format!("retired {}", at.to_rfc3339()),
                    None => "active".to_owned(),
                };
                println!(
                    "{}  created {}  {status}",
                    key.kid,
                    key.created_at.to_rfc3339()
                );
            }
        }
        KeysCommand::Rotate => {
            let kid = identity::jwt::rotate_key(pool).await?;
            eprintln!("New signing key created; servers sign with it within a minute:");
            println!("{kid}");
        }
        KeysCommand::Retire { kid } => {
            if !identity::jwt::retire_key(pool, &kid).await? {
                anyhow::bail!("no active key has id {kid:?}");
            }
            println!("Retired {kid}; tokens it signed stop verifying within a minute.");
        }
    }
    Ok(())
}

async fn migrate(state: &AppState) -> anyhow::Result<()> {
    state
        .db
        .migrate()
        .await
        .context("control-plane migrations failed")?;
    tracing::info!("control plane is current");
    let migrations = tenancy::migrate::embedded_migrations();
    let tenants = state.db.list_tenants(None, None, i64::MAX).await?;
    let live = tenants
        .iter()
        .filter(|t| t.status != TenantStatus::Deleted)
        .count() as u64;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(live)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} migrating tenants [{bar:40}] {pos}/{len} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = state
        .db
        .migrate_tenants(
            &migrations,
            state.settings.tenancy.migrate_concurrency,
            |outcome| {
                bar.inc(1);
                if let Err(reason) = &outcome.result {
                    bar.println(format!(
                        "tenant {} ({}) failed: {reason}",
                        outcome.slug, outcome.tenant
                    ));
                }
            },
        )
        .await?;
    bar.finish_and_clear();
    eprintln!(
        "tenant migrations: {} migrated, {} already current, {} failed",
        summary.migrated,
        summary.current,
        summary.failed.len()
    );
    // Spares hold no data: one that cannot be brought current is dropped, and the
    // workers' replenisher builds a new one.
    let spares = state
        .db
        .migrate_spares(&migrations)
        .await
        .context("migrating spare tenant schemas failed")?;
    eprintln!(
        "spare schemas: {} migrated, {} already current, {} dropped",
        spares.migrated, spares.current, spares.dropped
    );
    if summary.failed.is_empty() {
        return Ok(());
    }
    for (slug, reason) in &summary.failed {
        eprintln!("  {slug}: {reason}");
    }
    anyhow::bail!(
        "{} tenant(s) could not be migrated; fix them and run `canopy migrate` again",
        summary.failed.len()
    )
}

async fn find_tenant(state: &AppState, reference: &str) -> anyhow::Result<Tenant> {
    let found = match uuid::Uuid::parse_str(reference) {
        Ok(id) => state.db.tenant_by_id(TenantId(id)).await?,
        Err(_) => match TenantSlug::parse(reference) {
            Ok(slug) => state.db.tenant_by_slug(&slug).await?,
            Err(_) => None,
        },
    };
    found.ok_or_else(|| anyhow::anyhow!("no tenant `{reference}`"))
}

async fn tenant_command(state: &AppState, command: TenantCommand) -> anyhow::Result<()> {
    state.db.ensure_migrated().await?;
    let grace = state.settings.tenancy.deletion_grace;
    let changed = match command {
        TenantCommand::Create { slug, name } => {
            let slug = TenantSlug::parse(&slug).map_err(|e| anyhow::anyhow!("slug {e}"))?;
            state.db.create_tenant(&slug, &name).await?
        }
        TenantCommand::List => {
            for t in state.db.list_tenants(None, None, i64::MAX).await? {
                println!("{}\t{}\t{}\t{}", t.id, t.slug, t.status, t.name);
            }
            return Ok(());
        }
        TenantCommand::Show { tenant } => {
            print_tenant(&find_tenant(state, &tenant).await?);
            return Ok(());
        }
        TenantCommand::Suspend { tenant } => {
            let id = find_tenant(state, &tenant).await?.id;
            state
                .db
                .set_tenant_status(id, TenantStatus::Suspended)
                .await?
        }
        TenantCommand::Resume { tenant } => {
            let id = find_tenant(state, &tenant).await?.id;
            state.db.set_tenant_status(id, TenantStatus::Active).await?
        }
        TenantCommand::Delete { tenant } => {
            let id = find_tenant(state, &tenant).await?.id;
            state.db.delete_tenant(id, grace).await?
        }
        TenantCommand::Purge => {
            let purged = state.db.purge_deleted_tenants(chrono::Utc::now()).await?;
            println!("purged {} tenant(s)", purged.len());
            return Ok(());
        }
    };
    print_tenant(&changed);
    tenant::publish_change(state, changed.id).await;
    Ok(())
}

fn print_tenant(tenant: &Tenant) {
    println!("id:      {}", tenant.id);
    println!("slug:    {}", tenant.slug);
    println!("name:    {}", tenant.name);
    println!("status:  {}", tenant.status);
    println!("plan:    {}", tenant.plan);
    println!("schema:  {}", tenant.schema_name());
    println!("created: {}", tenant.created_at.to_rfc3339());
    if let Some(purge_after) = tenant.purge_after {
        println!("purge after: {}", purge_after.to_rfc3339());
    }
}
