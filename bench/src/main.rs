//! Canopy's benchmarks. Each one measures its baseline in the same run and prints its
//! figures as `name: value` lines, the ratio last (see `shared/BENCHMARKS.md`).
//!
//! ```text
//! cargo run -p bench --release -- http_overhead [--connections 32] [--seconds 5]
//! cargo run -p bench --release -- provision [--timed 200] [--tenants 1000]
//! cargo run -p bench --release -- tenant_scale [--tenants 1000] [--connections 64]
//! cargo run -p bench --release -- login_storm [--logins 32] [--seconds 20] [--read-rate 200]
//! cargo run -p bench --release -- tenant_read [--tenants 100] [--connections 64] [--seconds 10]
//! cargo run -p bench --release -- tenant_write [--tenants 100] [--connections 32] [--seconds 10]
//! cargo run -p bench --release -- thumbnail [--runs 5]
//! cargo run -p bench --release -- decode_peak [--images 4]
//! cargo run -p bench --release -- upload [--mib 1024]
//! cargo run -p bench --release -- webhooks [--events 5000] [--copies 5] [--connections 64]
//! ```
//!
//! `tenant_read` and `tenant_write` compare against `pgbench` (Debian's `postgresql`
//! package ships it). Every benchmark needs the local services (`deploy/local/up.sh`).
//! `http_overhead` and `tenant_read` report two runs: in this process (the load and the
//! server share one runtime), then the real `canopy serve` binary, built beside this one
//! (`cargo build --release -p api -p bench`), in its own process under `wrk` (Debian's
//! `wrk` package); their ratio, the last line, is the external one. `login_storm`'s reads are an authenticated `GET /v1/me` until
//! products exist.

mod decode;
mod external;
mod files;
mod identity;
mod load;
mod products;
mod tenancy;
mod upload;
mod webhooks;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(about = "Canopy benchmarks (release builds only give meaningful figures)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// An empty route (`GET /health/live`) through Canopy's full middleware stack vs a plain
    /// hyper hello-world: both in this process, then `canopy serve` and the hyper server
    /// loaded by `wrk`.
    #[command(name = "http_overhead")]
    HttpOverhead {
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Measured seconds per target (after one second of warm-up).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Time to provision a tenant (p50/p99), then `canopy migrate`'s tenant pass applying
    /// one new migration over `--tenants` tenants.
    #[command(name = "provision")]
    Provision {
        /// Tenants whose creation is timed.
        #[arg(long, default_value_t = 200)]
        timed: usize,
        /// Tenants the migration runs over.
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        /// Tenants migrated at once (CANOPY_MIGRATE_CONCURRENCY's default).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// `GET /v1/tenant` spread over `--tenants` tenants vs always one tenant.
    #[command(name = "tenant_scale")]
    TenantScale {
        /// Tenants the spread run cycles through.
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Measured seconds per run (after two seconds of warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// `CANOPY_DATABASE_MAX_LIFETIME` for the run (e.g. `30s`): pooled connections
        /// older than this are replaced, which bounds what each one caches.
        #[arg(long)]
        max_lifetime: Option<String>,
    },
    /// `--logins` concurrent login loops while authenticated reads (`tenant_read`'s
    /// `GET /v1/products?limit=20`) arrive at a fixed rate: login/s against
    /// cores ÷ one argon2id hash's time, and read p99 against the idle read p99.
    #[command(name = "login_storm")]
    LoginStorm {
        /// Concurrent login loops (one tenant and owner each).
        #[arg(long, default_value_t = 32)]
        logins: usize,
        /// Measured storm seconds (after two seconds of warm-up).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Reads per second, sent on schedule whatever the answers' pace.
        #[arg(long, default_value_t = 200.0)]
        read_rate: f64,
        /// Seconds of reads alone, for the idle p99.
        #[arg(long, default_value_t = 5)]
        idle_seconds: u64,
        /// Connections the reads may use at once.
        #[arg(long, default_value_t = 32)]
        read_connections: usize,
        /// The app's password hashing threads; 0 is one per core, the production default.
        #[arg(long, default_value_t = 0)]
        hash_threads: usize,
    },
    /// `GET /v1/products?limit=20` spread over `--tenants` tenants vs pgbench running the
    /// same SELECT against their schemas.
    #[command(name = "tenant_read")]
    TenantRead {
        /// Tenants (50 products each).
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        /// Concurrent keep-alive connections, and pgbench clients.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Measured seconds per side (after two seconds of warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Thumbnails of a 4000×3000 JPEG and PNG at the default sizes vs `vipsthumbnail`.
    #[command(name = "thumbnail")]
    Thumbnail {
        /// Timed runs per side (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Several 16384×16384 1-bit PNGs thumbnailed at once under the decode budget: peak
    /// resident-memory growth against the stated bound (and without the budget).
    #[command(name = "decode_peak")]
    DecodePeak {
        /// Images decoded at once.
        #[arg(long, default_value_t = 4)]
        images: usize,
    },
    /// A large file through `POST /v1/files` vs a direct `PutObject` of it to the same S3
    /// server, with the process's resident-memory growth during the upload.
    #[command(name = "upload")]
    Upload {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
    /// Signed Stripe events, each delivered several times concurrently, vs HMAC
    /// verification alone; checks one effect per event.
    #[command(name = "webhooks")]
    Webhooks {
        /// Distinct events.
        #[arg(long, default_value_t = 5000)]
        events: usize,
        /// Deliveries of each, sent at once.
        #[arg(long, default_value_t = 5)]
        copies: usize,
        /// Concurrent requests.
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// `canopy serve`'s footprint: time from exec to ready, RSS idle, RSS after a minute of
    /// `tenant_read`'s load by `wrk`.
    #[command(name = "footprint")]
    Footprint {
        /// Tenants the load spreads over.
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds of load (after two seconds of warm-up).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// `POST /v1/products` then `PATCH` with `If-Match`, vs pgbench running the INSERT and
    /// the version-checked UPDATE.
    #[command(name = "tenant_write")]
    TenantWrite {
        /// Tenants the writes spread over.
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        /// Concurrent keep-alive connections, and pgbench clients.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Measured seconds per side (after two seconds of warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::HttpOverhead {
            connections,
            seconds,
        } => http_overhead(connections, Duration::from_secs(seconds)).await,
        Bench::Provision {
            timed,
            tenants,
            concurrency,
        } => tenancy::provision(timed, tenants, concurrency).await,
        Bench::TenantScale {
            tenants,
            connections,
            seconds,
            max_lifetime,
        } => {
            tenancy::tenant_scale(
                tenants,
                connections,
                Duration::from_secs(seconds),
                max_lifetime.as_deref(),
            )
            .await
        }
        Bench::Thumbnail { runs } => files::thumbnail(runs.max(1)),
        Bench::Upload { mib } => upload::upload(mib.max(1)).await,
        Bench::DecodePeak { images } => decode::decode_peak(images.max(1)).await,
        Bench::Webhooks {
            events,
            copies,
            connections,
        } => webhooks::webhooks(events.max(1), copies.max(1), connections.max(1)).await,
        Bench::TenantRead {
            tenants,
            connections,
            seconds,
        } => {
            products::tenant_read(products::Options {
                tenants,
                connections,
                duration: Duration::from_secs(seconds),
            })
            .await
        }
        Bench::Footprint {
            tenants,
            connections,
            seconds,
        } => {
            products::footprint(products::Options {
                tenants,
                connections,
                duration: Duration::from_secs(seconds),
            })
            .await
        }
        Bench::TenantWrite {
            tenants,
            connections,
            seconds,
        } => {
            products::tenant_write(products::Options {
                tenants,
                connections,
                duration: Duration::from_secs(seconds),
            })
            .await
        }
        Bench::LoginStorm {
            logins,
            seconds,
            read_rate,
            idle_seconds,
            read_connections,
            hash_threads,
        } => {
            identity::login_storm(identity::LoginStorm {
                logins,
                duration: Duration::from_secs(seconds),
                idle: Duration::from_secs(idle_seconds),
                read_rate,
                read_connections,
                hash_threads,
            })
            .await
        }
    }
}

async fn http_overhead(connections: usize, duration: Duration) -> anyhow::Result<()> {
    let baseline_addr = spawn_hyper_hello().await?;
    let canopy_addr = spawn_canopy().await?;
    let warmup = Duration::from_secs(1);

    let baseline = load::run(baseline_addr, "/", connections, warmup, duration).await?;
    let canopy = load::run(canopy_addr, "/health/live", connections, warmup, duration).await?;

    // The same two, loaded by wrk from outside: the real binary against the hyper server.
    let app = crate::tenancy::bench_app(4).await?;
    let server = external::serve(&app.env, "live").await?;
    let external_baseline = external::wrk(
        &format!("http://{baseline_addr}/"),
        None,
        connections,
        warmup,
        duration,
    )?;
    let external = external::wrk(
        &format!("http://{}/health/live", server.addr),
        None,
        connections,
        warmup,
        duration,
    )?;
    drop(server);

    baseline.print("http_overhead_baseline_in_process");
    canopy.print("http_overhead_canopy_in_process");
    println!(
        "http_overhead_in_process_ratio: {:.3}",
        canopy.requests_per_second() / baseline.requests_per_second()
    );
    external_baseline.print("http_overhead_baseline");
    external.print("http_overhead_canopy");
    println!(
        "http_overhead_ratio: {:.3}",
        external.rps / external_baseline.rps
    );
    Ok(())
}

/// The baseline: the least a hyper server can do per request.
async fn spawn_hyper_hello() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"status\":\"ok\"}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Canopy's real router and middleware with default settings. `/health/live` touches no
/// dependency, so no service needs to run; no log subscriber is installed.
async fn spawn_canopy() -> anyhow::Result<SocketAddr> {
    let settings = api::Settings::from_env_map(&Default::default()).context("default settings")?;
    let state = api::startup::build_state(settings)?;
    let app = api::startup::router(state, None);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    Ok(addr)
}
