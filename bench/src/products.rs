//! Product benchmarks against the real services, each with `pgbench` running the
//! equivalent SQL on the same database as its baseline:
//!
//! * `tenant_read`: `GET /v1/products?limit=20` (tenant resolution, token and revocation
//!   check, permission check, one tenant transaction) spread over many tenants, vs
//!   `pgbench -M prepared` running the listing's SELECT against those tenants' schemas;
//! * `tenant_write`: `POST /v1/products` then `PATCH` of the new product with `If-Match`,
//!   vs `pgbench -M prepared` running the INSERT then the version-checked UPDATE;
//! * `footprint`: the `canopy serve` process's memory idle and after a minute of
//!   `tenant_read`'s load, and its time from exec to ready.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use e2e::{TestApp, auth::Signup};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::json;

use crate::{external, load, tenancy::bench_app};

/// Options shared by both benchmarks.
pub struct Options {
    /// Tenants the load spreads over.
    pub tenants: usize,
    /// Concurrent connections (pgbench clients).
    pub connections: usize,
    /// Measured seconds per side.
    pub duration: Duration,
}

const WARMUP: Duration = Duration::from_secs(2);
const PRODUCTS_PER_TENANT: usize = 50;
/// The listing `tenant_read` and `footprint` load.
const LIST_PATH: &str = "/v1/products?limit=20";

const LIST_SQL: &str = "select id, sku, name, description, price, compare_at_price, currency, \
     status, type, stock_quantity, low_stock_threshold, attributes, tags, image_ids, version, \
     created_at, updated_at, deleted_at from {schema}.products where deleted_at is null \
     order by created_at, id limit 21;";

async fn tenants(app: &TestApp, count: usize, seed: bool) -> anyhow::Result<Vec<Signup>> {
    let mut orgs = Vec::with_capacity(count);
    for i in 0..count {
        let org = app.signup(&format!("bench-{i:04}")).await;
        if seed {
            let items: Vec<_> = (0..PRODUCTS_PER_TENANT)
                .map(|n| json!({"name": format!("Product {n}"), "price": 100 + n, "currency": "USD", "tags": ["bench"]}))
                .collect();
            let response = app.bulk_create(&org, &items).await;
            anyhow::ensure!(
                response.status() == 201,
                "seeding failed: {}",
                response.status()
            );
        }
        orgs.push(org);
    }
    Ok(orgs)
}

fn schema(org: &Signup) -> String {
    format!("\"{}\"", tenancy::TenantId(org.tenant_id).schema_name())
}

/// `tenant_read`.
pub async fn tenant_read(options: Options) -> anyhow::Result<()> {
    let app = bench_app(20).await?;
    let orgs = tenants(&app, options.tenants, true).await?;
    let addr: SocketAddr = ([127, 0, 0, 1], app.port).into();
    let headers = Arc::new(
        orgs.iter()
            .map(|o| {
                vec![
                    ("x-tenant", o.slug.clone()),
                    ("authorization", format!("Bearer {}", o.tokens.access)),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let canopy = load::run_with_headers(
        addr,
        LIST_PATH,
        headers,
        options.connections,
        WARMUP,
        options.duration,
    )
    .await?;

    let scripts = tempdir("read")?;
    let files: Vec<PathBuf> = orgs
        .iter()
        .enumerate()
        .map(|(i, org)| {
            let path = scripts.join(format!("read-{i}.sql"));
            std::fs::write(&path, LIST_SQL.replace("{schema}", &schema(org)))?;
            Ok(path)
        })
        .collect::<anyhow::Result<_>>()?;
    let tps = pgbench(&app.db.url, &files, options.connections, options.duration)?;

    let server = external::serve(&app.env, "read").await?;
    let external = listing_load(&server, &orgs, &scripts, &options)?;
    drop(server);

    canopy.print("tenant_read_canopy_in_process");
    println!(
        "tenant_read_in_process_ratio: {:.3}",
        canopy.requests_per_second() / tps
    );
    external.print("tenant_read_canopy");
    println!("tenant_read_pgbench_tps: {tps:.0}");
    println!("tenant_read_ratio: {:.3}", external.rps / tps);
    Ok(())
}

/// `wrk` loading `server` with `tenant_read`'s listing, each request as the next of
/// `orgs` (its script written into `scripts`).
fn listing_load(
    server: &external::Server,
    orgs: &[Signup],
    scripts: &Path,
    options: &Options,
) -> anyhow::Result<external::WrkReport> {
    let credentials: Vec<(String, String)> = orgs
        .iter()
        .map(|o| (o.slug.clone(), o.tokens.access.clone()))
        .collect();
    let script = external::rotating_get(scripts, LIST_PATH, &credentials);
    external::wrk(
        &format!("http://{}{LIST_PATH}", server.addr),
        Some(&script),
        options.connections,
        WARMUP,
        options.duration,
    )
}

/// `footprint`: time from exec to `/health/ready` = 200 (asked every 2 ms), RSS once
/// ready and idle for a second, then after `duration` of `tenant_read`'s load by `wrk`.
pub async fn footprint(options: Options) -> anyhow::Result<()> {
    let app = bench_app(20).await?;
    let orgs = tenants(&app, options.tenants, true).await?;
    let (server, ready) = external::start(
        &app.env,
        "footprint",
        "/health/ready",
        Duration::from_millis(2),
    )
    .await?;
    // Measuring, not synchronising: what an idle process holds once start-up has settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = server.rss_mib()?;
    let load = listing_load(&server, &orgs, &tempdir("footprint")?, &options)?;
    let (loaded, peak) = server.rss_mib()?;
    drop(server);

    load.print("footprint_load");
    println!("footprint_peak_rss_mib: {peak:.1}");
    println!("footprint_loaded_rss_mib: {loaded:.1}");
    println!("footprint_idle_rss_mib: {idle:.1}");
    println!("footprint_ready_ms: {:.0}", ready.as_secs_f64() * 1000.0);
    Ok(())
}

/// `tenant_write`: one unit is a create and a conditional change of the created product,
/// against the in-process server and then against `canopy serve` in its own process (the
/// same client for both: `wrk` cannot carry the created product's id and ETag from one
/// request to the next).
pub async fn tenant_write(options: Options) -> anyhow::Result<()> {
    let app = bench_app(20).await?;
    let orgs = tenants(&app, options.tenants, false).await?;
    let auth: Arc<Vec<(String, String)>> = Arc::new(
        orgs.iter()
            .map(|o| (o.slug.clone(), format!("Bearer {}", o.tokens.access)))
            .collect(),
    );
    let in_process = write_load(([127, 0, 0, 1], app.port).into(), auth.clone(), &options).await?;
    let server = external::serve(&app.env, "write").await?;
    let canopy = write_load(server.addr, auth, &options).await?;
    drop(server);

    let scripts = tempdir("write")?;
    let files: Vec<PathBuf> = orgs
        .iter()
        .enumerate()
        .map(|(i, org)| {
            let path = scripts.join(format!("write-{i}.sql"));
            let schema = schema(org);
            std::fs::write(
                &path,
                format!(
                    "insert into {schema}.products (id, sku, name, price, currency)
                     values (gen_random_uuid(), 'PG-' || substr(md5(random()::text), 1, 20), 'Bench product', 1999, 'USD')
                     returning id \\gset
                     update {schema}.products set name = 'Renamed', price = 2999, version = version + 1, updated_at = now()
                     where id = :id and deleted_at is null and version = 1;\n"
                ),
            )?;
            Ok(path)
        })
        .collect::<anyhow::Result<_>>()?;
    let tps = pgbench(&app.db.url, &files, options.connections, options.duration)?;

    in_process.print("tenant_write_canopy_in_process");
    println!(
        "tenant_write_in_process_ratio: {:.3}",
        in_process.requests_per_second() / tps
    );
    canopy.print("tenant_write_canopy");
    println!("tenant_write_pgbench_tps: {tps:.0}");
    println!(
        "tenant_write_ratio: {:.3}",
        canopy.requests_per_second() / tps
    );
    Ok(())
}

/// Creates a product and changes it with `If-Match` on every step, over `options`'
/// connections to `addr`, each step as the next tenant of `auth` (slug, bearer).
async fn write_load(
    addr: SocketAddr,
    auth: Arc<Vec<(String, String)>>,
    options: &Options,
) -> anyhow::Result<load::Report> {
    let create =
        Bytes::from(json!({"name": "Bench product", "price": 1999, "currency": "USD"}).to_string());
    let change = Bytes::from(json!({"name": "Renamed", "price": 2999}).to_string());
    load::closed_loop(
        addr,
        options.connections,
        WARMUP,
        options.duration,
        move |c, n, mut sender| {
            let (tenant, bearer) = auth[(c + n as usize) % auth.len()].clone();
            let (create, change) = (create.clone(), change.clone());
            async move {
                let request = |method: &str, path: &str, body: Bytes| {
                    Request::builder()
                        .method(method)
                        .uri(path)
                        .header("host", "localhost")
                        .header("x-tenant", tenant.as_str())
                        .header("authorization", bearer.as_str())
                        .header("content-type", "application/json")
                        .body(Full::new(body))
                };
                let response = sender
                    .send_request(request("POST", "/v1/products", create)?)
                    .await?;
                anyhow::ensure!(response.status() == 201, "create: {}", response.status());
                let etag = response.headers()["etag"].to_str()?.to_owned();
                let body = response.into_body().collect().await?.to_bytes();
                let created: serde_json::Value = serde_json::from_slice(&body)?;
                let id = created["id"].as_str().context("id")?;
                let mut patch = request("PATCH", &format!("/v1/products/{id}"), change)?;
                patch.headers_mut().insert("if-match", etag.parse()?);
                let response = sender.send_request(patch).await?;
                anyhow::ensure!(response.status() == 200, "change: {}", response.status());
                response.into_body().collect().await?;
                Ok(sender)
            }
        },
    )
    .await
}

fn tempdir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("canopy-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `pgbench` from `PATH`, else from the installed PostgreSQL's bin directory.
fn pgbench_binary() -> anyhow::Result<PathBuf> {
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pgbench"))
            .find(|p| p.is_file())
    }) {
        return Ok(found);
    }
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no pgbench on PATH and no /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/pgbench")))
        .filter(|p| p.is_file())
        .collect();
    installed.sort();
    installed.pop().context("pgbench not found")
}

/// Runs the scripts (chosen at random per transaction) after a warm-up; returns the tps.
fn pgbench(
    url: &str,
    scripts: &[PathBuf],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let binary = pgbench_binary()?;
    let run = |seconds: u64| -> anyhow::Result<String> {
        let mut command = Command::new(&binary);
        command.args(["-n", "-M", "prepared", "-j", "2"]).args([
            "-c",
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
        ]);
        for script in scripts {
            command.arg("-f").arg(script_arg(script));
        }
        let output = command.arg(url).output().context("running pgbench")?;
        anyhow::ensure!(
            output.status.success(),
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    run(WARMUP.as_secs())?;
    let out = run(duration.as_secs())?;
    out.lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no tps in pgbench's output:\n{out}"))
}

fn script_arg(path: &Path) -> String {
    format!("{}@1", path.display())
}
