//! Tenancy benchmarks against the real PostgreSQL and Redis, each in a database of its
//! own (made and dropped by the test harness's `TestDatabase`).

use std::{borrow::Cow, sync::Arc, time::Duration, time::Instant};

use anyhow::Context;
use e2e::TestApp;
use hdrhistogram::Histogram;
use tenancy::migrate::{TenantMigration, embedded_migrations};

use crate::{external, load};

pub async fn bench_app(pool_size: usize) -> anyhow::Result<TestApp> {
    Ok(TestApp::builder()
        .env("database_max_connections", &pool_size.to_string())
        .env("redis_pool_size", "16")
        .spawn()
        .await)
}

async fn create_tenants(
    app: &TestApp,
    from: usize,
    to: usize,
    timings: Option<&mut Histogram<u64>>,
) -> anyhow::Result<Vec<String>> {
    let mut slugs = Vec::with_capacity(to - from);
    let mut timings = timings;
    for i in from..to {
        let slug = tenancy::TenantSlug::parse(&format!("bench-{i:05}")).context("slug")?;
        let start = Instant::now();
        app.state.db.create_tenant(&slug, "Bench tenant").await?;
        if let Some(h) = timings.as_deref_mut() {
            h.saturating_record(start.elapsed().as_micros() as u64);
        }
        slugs.push(slug.to_string());
    }
    Ok(slugs)
}

fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// `provision`: create-tenant latency with a spare schema ready (the pool pre-filled to
/// `timed`, as the workers' replenisher keeps it) and without one (built from scratch), the
/// time to build a spare, then one new migration over `tenants` tenants.
pub async fn provision(timed: usize, tenants: usize, concurrency: usize) -> anyhow::Result<()> {
    // A pool target, so that provisioning enqueues its refill job as in production; no
    // worker runs here, so nothing refills the pool behind the benchmark's back.
    let app = TestApp::builder()
        .env(
            "database_max_connections",
            &(concurrency.max(4) + 2).to_string(),
        )
        .env("redis_pool_size", "16")
        .env("tenant_spares", &timed.clamp(1, 64).to_string())
        .spawn()
        .await;
    let db = &app.state.db;
    anyhow::ensure!(db.spare_count().await? == 0, "the pool starts empty");
    let mut cold = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    create_tenants(&app, 0, timed, Some(&mut cold)).await?;

    let mut builds = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for filled in 1..=timed {
        let start = Instant::now();
        let built = db.replenish_spares(filled).await?;
        builds.saturating_record(start.elapsed().as_micros() as u64);
        anyhow::ensure!(built == 1, "built {built} spares instead of one");
    }
    let mut warm = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    create_tenants(&app, timed, 2 * timed, Some(&mut warm)).await?;
    let left = db.spare_count().await?;
    anyhow::ensure!(left == 0, "{left} spares were not claimed");
    let total = tenants.max(2 * timed);
    create_tenants(&app, 2 * timed, total, None).await?;

    let mut migrations = embedded_migrations();
    migrations.push(TenantMigration {
        version: 99_990_000_000_000,
        description: Cow::Borrowed("bench"),
        sql: Cow::Borrowed(
            "create table bench_notes (id bigint generated always as identity primary key, body text not null);
             create index bench_notes_body_idx on bench_notes (body);",
        ),
        checksum: Cow::Borrowed(b"bench"),
    });
    let start = Instant::now();
    let summary = db.migrate_tenants(&migrations, concurrency, |_| {}).await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        summary.failed.is_empty(),
        "migration failures: {:?}",
        summary.failed
    );
    anyhow::ensure!(
        summary.migrated == total,
        "migrated {} of {total}",
        summary.migrated,
    );

    println!("provision_tenants_timed: {timed}");
    println!("provision_cold_p50_ms: {:.1}", ms(&cold, 0.50));
    println!("provision_cold_p99_ms: {:.1}", ms(&cold, 0.99));
    println!("spare_build_p50_ms: {:.1}", ms(&builds, 0.50));
    println!("spare_build_p99_ms: {:.1}", ms(&builds, 0.99));
    println!("migrate_tenants: {}", summary.migrated);
    println!("migrate_concurrency: {concurrency}");
    println!("migrate_one_migration_s: {:.2}", elapsed.as_secs_f64());
    println!("provision_p99_ms: {:.2}", ms(&warm, 0.99));
    // The judged figure: creating a tenant with a spare ready.
    println!("provision_p50_ms: {:.2}", ms(&warm, 0.50));
    Ok(())
}

/// `tenant_scale`: `GET /v1/tenant` (tenant resolution plus one tenant-schema query) spread
/// over `tenants` tenants vs always the same one; then what the pooled connections' backends
/// hold in private memory (their catalog caches grow with every schema they touch).
pub async fn tenant_scale(
    tenants: usize,
    connections: usize,
    duration: Duration,
    max_lifetime: Option<&str>,
) -> anyhow::Result<()> {
    let mut builder = TestApp::builder()
        .env("database_max_connections", "20")
        .env("redis_pool_size", "16");
    if let Some(lifetime) = max_lifetime {
        builder = builder.env("database_max_lifetime", lifetime);
    }
    let app = builder.spawn().await;
    let started = Instant::now();
    let slugs = create_tenants_concurrently(&app, tenants, 4).await?;
    let provisioned = started.elapsed();
    // A marker for whoever quiets the machine for the measured part.
    println!(
        "tenant_scale_provisioned_s: {:.0}",
        provisioned.as_secs_f64()
    );
    let stall = membership_stall(&app, &slugs[0]).await?;
    let addr = ([127, 0, 0, 1], app.port).into();
    let warmup = Duration::from_secs(2);

    let one = Arc::new(vec![vec![("x-tenant", slugs[0].clone())]]);
    let many: Arc<Vec<_>> = Arc::new(slugs.into_iter().map(|s| vec![("x-tenant", s)]).collect());
    let single = load::run_with_headers(
        addr,
        "/v1/tenant",
        one.clone(),
        connections,
        warmup,
        duration,
    )
    .await?;
    let (backends_single, memory_single) = backend_memory(&app).await?;
    let spread = load::run_with_headers(
        addr,
        "/v1/tenant",
        many.clone(),
        connections,
        warmup,
        duration,
    )
    .await?;
    let (backends, memory) = backend_memory(&app).await?;
    let server = external::serve(&app.env, "scale").await?;
    let ext_single = load::run_with_headers(
        server.addr,
        "/v1/tenant",
        one,
        connections,
        warmup,
        duration,
    )
    .await?;
    let ext_spread = load::run_with_headers(
        server.addr,
        "/v1/tenant",
        many,
        connections,
        warmup,
        duration,
    )
    .await?;
    drop(server);

    single.print("tenant_scale_in_process_1");
    spread.print(&format!("tenant_scale_in_process_{tenants}"));
    println!(
        "tenant_scale_in_process_ratio: {:.3}",
        spread.requests_per_second() / single.requests_per_second()
    );
    println!(
        "tenant_scale_membership_stall_ms: {:.1}",
        stall.as_secs_f64() * 1000.0
    );
    ext_single.print("tenant_scale_1");
    ext_spread.print(&format!("tenant_scale_{tenants}"));
    if let Some(lifetime) = max_lifetime {
        println!("tenant_scale_max_lifetime: {lifetime}");
    }
    println!("tenant_scale_backends: {backends_single} then {backends}");
    println!("tenant_scale_backend_private_mib_after_1: {memory_single:.1}");
    println!("tenant_scale_backend_private_mib_after_{tenants}: {memory:.1}");
    println!(
        "tenant_scale_p99_ratio: {:.3}",
        ext_spread.p99_ms() / ext_single.p99_ms()
    );
    println!(
        "tenant_scale_ratio: {:.3}",
        ext_spread.requests_per_second() / ext_single.requests_per_second()
    );
    Ok(())
}

/// What the next `set role` to a tenant costs a connection once any role in the cluster
/// changed: PostgreSQL recomputes the login role's memberships (one per tenant role) after
/// every change to roles, on every connection, at its next `set role`.
async fn membership_stall(app: &TestApp, slug: &str) -> anyhow::Result<Duration> {
    let role: String = sqlx::query_scalar("select role_name from public.tenants where slug = $1")
        .bind(slug)
        .fetch_one(app.state.db.pool())
        .await?;
    let set_role = format!("begin; set local role \"{role}\"; rollback");
    let mut connection = app.state.db.pool().acquire().await?;
    sqlx::raw_sql(&set_role).execute(&mut *connection).await?;
    // Committed (a rolled-back change invalidates only its own connection's caches).
    sqlx::raw_sql("create role canopy_bench_probe nologin; drop role canopy_bench_probe")
        .execute(app.state.db.pool())
        .await?;
    let started = Instant::now();
    sqlx::raw_sql(&set_role).execute(&mut *connection).await?;
    Ok(started.elapsed())
}

/// `count` tenants, `concurrency` provisioned at a time, each claiming a spare schema built
/// ahead in batches of [`SPARE_BATCH`] (one transaction each, as the replenishing job does):
/// built one by one, every new role would make each connection recompute the login
/// role's memberships, and creating 10,000 tenants would take hours.
async fn create_tenants_concurrently(
    app: &TestApp,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    use futures_util::{StreamExt, TryStreamExt, stream};
    let mut slugs = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(SPARE_BATCH) {
        app.state.db.replenish_spares(batch.len()).await?;
        let made: Vec<String> = stream::iter(batch.iter().copied())
            .map(|i| async move {
                let slug = tenancy::TenantSlug::parse(&format!("bench-{i:05}")).context("slug")?;
                app.state.db.create_tenant(&slug, "Bench tenant").await?;
                anyhow::Ok(slug.to_string())
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        slugs.extend(made);
    }
    Ok(slugs)
}

/// Spares built per transaction by [`create_tenants_concurrently`]: each commit costs every
/// connection one rebuild of the login role's memberships, but a spare costs more the later
/// it comes in its transaction (six in a row at 3,750 tenant roles: 194 ms rising to 376 ms),
/// so batches stay small.
const SPARE_BATCH: usize = 25;

/// How many backends serve the app's database, and the private (anonymous, proportional)
/// memory they hold together in MiB, from `/proc/<pid>/smaps_rollup` (`Pss_Anon`), which
/// leaves out the shared buffers every backend maps.
async fn backend_memory(app: &TestApp) -> anyhow::Result<(usize, f64)> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity
         where datname = current_database() and backend_type = 'client backend'
           and pid <> pg_backend_pid()",
    )
    .fetch_all(app.state.db.pool())
    .await?;
    let mut kib = 0.0;
    for pid in &pids {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("reading backend {pid}'s memory (run as root or postgres)"))?;
        let line = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss_Anon:"))
            .context("no Pss_Anon in smaps_rollup")?;
        kib += line.trim().trim_end_matches("kB").trim().parse::<f64>()?;
    }
    Ok((pids.len(), kib / 1024.0))
}
