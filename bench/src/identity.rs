//! Identity benchmarks: `login_storm`, many concurrent logins (each an argon2id verification
//! on the app's low-priority hashing pool) while ordinary reads keep arriving at a fixed rate.
//!
//! The read is `tenant_read`'s: an authenticated `GET /v1/products?limit=20` (`X-Tenant` plus
//! a bearer token) of a tenant holding 20 products, which resolves the tenant, checks the
//! access token, its session and permissions, and runs one query in the tenant's schema.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use e2e::{TestApp, auth::PASSWORD};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use identity::{HashCost, password::hash_now};
use tokio::sync::Barrier;

use crate::load;

/// The path the fixed-rate reads ask for.
const READ_PATH: &str = "/v1/products?limit=20";
/// Unmeasured hashes before the timed ones (page faults, CPU frequency).
const HASH_WARMUP: usize = 3;
/// Timed hashes; the baseline is their median.
const HASH_TIMED: usize = 20;
/// Unmeasured storm-with-reads before the measured phases.
const WARMUP: Duration = Duration::from_secs(2);

/// Options of [`login_storm`].
pub struct LoginStorm {
    /// Concurrent login loops, each on its own keep-alive connection.
    pub logins: usize,
    /// Measured storm length.
    pub duration: Duration,
    /// Length of the read-only phase giving the idle p99.
    pub idle: Duration,
    /// Reads per second, in both phases.
    pub read_rate: f64,
    /// Connections the reads may use at once.
    pub read_connections: usize,
    /// The app's hashing threads (`CANOPY_PASSWORD_HASH_THREADS`; 0 is one per core).
    pub hash_threads: usize,
}

/// `login_storm`: login throughput against the hash-time bound, and read p99 under the
/// storm against the idle read p99, both baselines measured in this run.
pub async fn login_storm(options: LoginStorm) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.logins > 0 && options.read_rate > 0.0 && options.read_connections > 0,
        "--logins, --read-rate and --read-connections must be positive"
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let app = TestApp::builder()
        // By default one hashing thread per core, as in production (the harness's default
        // is two).
        .env("password_hash_threads", &options.hash_threads.to_string())
        // Every login here succeeds; this only keeps a stray failure from throttling.
        .env("login_ip_max_failures", "100000")
        .env("database_max_connections", "20")
        .env("redis_pool_size", "16")
        .spawn()
        .await;
    let addr: SocketAddr = ([127, 0, 0, 1], app.port).into();

    // One tenant and owner per login loop, so logins do not all update the same user row.
    let mut accounts = Vec::with_capacity(options.logins);
    let products: Vec<_> = (0..20)
        .map(|n| serde_json::json!({"name": format!("Product {n}"), "price": 100 + n, "currency": "USD"}))
        .collect();
    for i in 0..options.logins {
        let account = app.signup(&format!("storm-{i:03}")).await;
        let seeded = app.bulk_create(&account, &products).await;
        anyhow::ensure!(
            seeded.status() == 201,
            "seeding failed: {}",
            seeded.status()
        );
        accounts.push(account);
    }
    let logins: Arc<Vec<(String, Bytes)>> = Arc::new(
        accounts
            .iter()
            .map(|a| {
                let body = serde_json::json!({ "email": a.owner_email, "password": PASSWORD });
                (a.slug.clone(), Bytes::from(body.to_string()))
            })
            .collect(),
    );
    let reads = Arc::new(
        accounts
            .iter()
            .map(|a| {
                vec![
                    ("x-tenant", a.slug.clone()),
                    ("authorization", format!("Bearer {}", a.tokens.access)),
                ]
            })
            .collect::<Vec<_>>(),
    );

    // Baseline 1: one hash with the app's parameters, on an ordinary thread of this process
    // while nothing else runs. A login's verification is one such hash.
    let hash = tokio::task::spawn_blocking(median_hash_time)
        .await
        .context("hash timing panicked")??;
    let hash_s = hash.as_secs_f64();
    // Not a baseline, a diagnosis: the same hash on every core at once, as in the storm
    // (memory bandwidth and shared caches can make each one slower).
    let parallel_hash = tokio::task::spawn_blocking(move || parallel_hash_time(cores))
        .await
        .context("hash timing panicked")??;

    // Warm-up: connections, prepared statements, token keys, the hashing threads.
    let (warm_logins, warm_reads) = tokio::join!(
        storm(addr, logins.clone(), options.logins, WARMUP),
        load::fixed_rate(
            addr,
            READ_PATH,
            reads.clone(),
            options.read_rate,
            options.read_connections,
            WARMUP,
        ),
    );
    let warm_logins = warm_logins?;
    warm_reads?;
    anyhow::ensure!(
        warm_logins.ok > 0,
        "no login succeeded during warm-up: {:?}",
        warm_logins.failures
    );

    // Baseline 2: the reads alone.
    let idle_cpu = CpuSample::now();
    let idle = load::fixed_rate(
        addr,
        READ_PATH,
        reads.clone(),
        options.read_rate,
        options.read_connections,
        options.idle,
    )
    .await?;

    // The storm, with the same reads alongside.
    let storm_cpu = CpuSample::now();
    let (stormed, storm_reads) = tokio::join!(
        storm(addr, logins.clone(), options.logins, options.duration),
        load::fixed_rate(
            addr,
            READ_PATH,
            reads.clone(),
            options.read_rate,
            options.read_connections,
            options.duration,
        ),
    );
    let end_cpu = CpuSample::now();
    let stormed = stormed?;
    let storm_reads = storm_reads?;
    // The baseline again, to show how far the machine drifted during the run (the machines
    // are shared; the figure before the storm remains the baseline).
    let hash_after = tokio::task::spawn_blocking(median_hash_time)
        .await
        .context("hash timing panicked")??;

    let logins_per_s = stormed.ok as f64 / options.duration.as_secs_f64();
    let bound_per_s = cores as f64 / hash_s;
    eprintln!(
        "login_storm: reads are authenticated GET {READ_PATH} at {} req/s; {} concurrent \
         logins for {} s",
        options.read_rate,
        options.logins,
        options.duration.as_secs_f64()
    );
    if let Some((nice, policy)) = hash_threads_scheduling() {
        println!("login_storm_hash_thread_nice: {nice}");
        // 0 is SCHED_OTHER, 5 SCHED_IDLE (sched(7)).
        println!("login_storm_hash_thread_policy: {policy}");
    }
    let idle_shares = idle_cpu.shares_until(&storm_cpu, cores);
    let storm_shares = storm_cpu.shares_until(&end_cpu, cores);
    if let Some(shares) = &idle_shares {
        shares.print("login_storm_idle");
    }
    if let Some(shares) = &storm_shares {
        shares.print("login_storm_storm");
    }
    if let (Some(idle), Some(storm)) = (&idle_shares, &storm_shares)
        && let Some(hashing) = storm.hashing
        && stormed.ok > 0
    {
        // Everything the storm's CPU did besides hashing and what the reads alone did:
        // the rest of each login (HTTP, PostgreSQL, Redis, token signing, the client).
        let other = (storm.busy - hashing - idle.busy).max(0.0);
        let per_login_s = other * cores as f64 * options.duration.as_secs_f64() / stormed.ok as f64;
        println!(
            "login_storm_login_other_cpu_ms: {:.2}",
            per_login_s * 1000.0
        );
    }
    println!("login_storm_logins: {}", stormed.ok);
    println!("login_storm_login_failures: {}", stormed.failed());
    for (status, count) in &stormed.failures {
        println!("login_storm_login_failures_{status}: {count}");
    }
    println!(
        "login_storm_login_p50_ms: {:.1}",
        stormed.latency_us.value_at_quantile(0.50) as f64 / 1000.0
    );
    println!(
        "login_storm_login_p99_ms: {:.1}",
        stormed.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!("login_storm_read_rate: {}", options.read_rate);
    idle.print("login_storm_idle_read");
    storm_reads.print("login_storm_storm_read");
    println!("login_storm_cores: {cores}");
    println!("login_storm_hash_ms: {:.2}", hash_s * 1000.0);
    println!(
        "login_storm_hash_after_ms: {:.2}",
        hash_after.as_secs_f64() * 1000.0
    );
    println!(
        "login_storm_hash_parallel_ms: {:.2}",
        parallel_hash.as_secs_f64() * 1000.0
    );
    println!("login_storm_logins_per_s: {logins_per_s:.2}");
    println!("login_storm_login_target_per_s: {:.2}", 0.9 * bound_per_s);
    println!("login_storm_idle_read_p99_ms: {:.3}", idle.p99_ms());
    println!("login_storm_storm_read_p99_ms: {:.3}", storm_reads.p99_ms());
    println!("login_storm_login_ratio: {:.3}", logins_per_s / bound_per_s);
    println!(
        "login_storm_read_p99_ratio: {:.3}",
        storm_reads.p99_ms() / idle.p99_ms()
    );
    Ok(())
}

/// Median wall time of [`HASH_TIMED`] argon2id hashes with the app's cost, after
/// [`HASH_WARMUP`] unmeasured ones.
fn median_hash_time() -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(HASH_TIMED);
    for i in 0..HASH_WARMUP + HASH_TIMED {
        let start = Instant::now();
        hash_now(HashCost::OWASP, PASSWORD).context("hashing failed")?;
        if i >= HASH_WARMUP {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Median wall time of a hash while `threads` threads each hash [`HASH_WARMUP`] +
/// [`HASH_TIMED`] times at once (the warm-up ones not counted).
fn parallel_hash_time(threads: usize) -> anyhow::Result<Duration> {
    let mut times = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut times = Vec::with_capacity(HASH_TIMED);
                    for i in 0..HASH_WARMUP + HASH_TIMED {
                        let start = Instant::now();
                        hash_now(HashCost::OWASP, PASSWORD).context("hashing failed")?;
                        if i >= HASH_WARMUP {
                            times.push(start.elapsed());
                        }
                    }
                    anyhow::Ok(times)
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            let times = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))??;
            all.extend(times);
        }
        anyhow::Ok(all)
    })?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// Logins of one storm.
struct Storm {
    /// 200 answers received within the storm.
    ok: u64,
    /// Other answers received within the storm, by status.
    failures: BTreeMap<u16, u64>,
    /// Latency of the 200 answers.
    latency_us: Histogram<u64>,
}

impl Storm {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// `loops` closed loops of `POST /v1/auth/login`, loop `i` as account `i % len`, each on its
/// own keep-alive connection, for `duration`. Answers arriving after the end are not counted.
async fn storm(
    addr: SocketAddr,
    accounts: Arc<Vec<(String, Bytes)>>,
    loops: usize,
    duration: Duration,
) -> anyhow::Result<Storm> {
    let start_line = Arc::new(Barrier::new(loops));
    let mut tasks = Vec::with_capacity(loops);
    for i in 0..loops {
        let accounts = accounts.clone();
        let start_line = start_line.clone();
        tasks.push(tokio::spawn(async move {
            let (slug, body) = &accounts[i % accounts.len()];
            let mut sender = load::connect::<Full<Bytes>>(addr).await?;
            let mut result = Storm {
                ok: 0,
                failures: BTreeMap::new(),
                latency_us: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?,
            };
            start_line.wait().await;
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let request = Request::post("/v1/auth/login")
                    .header("host", "localhost")
                    .header("x-tenant", slug.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let sent = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                if Instant::now() >= end {
                    break;
                }
                if status == 200 {
                    result.ok += 1;
                    result
                        .latency_us
                        .saturating_record(sent.elapsed().as_micros() as u64);
                } else {
                    *result.failures.entry(status).or_default() += 1;
                }
            }
            anyhow::Ok(result)
        }));
    }
    let mut total = Storm {
        ok: 0,
        failures: BTreeMap::new(),
        latency_us: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?,
    };
    for task in tasks {
        let one = task.await.context("login task panicked")??;
        total.ok += one.ok;
        for (status, count) in one.failures {
            *total.failures.entry(status).or_default() += count;
        }
        total.latency_us.add(one.latency_us)?;
    }
    Ok(total)
}

/// The app's hashing threads (named `password-hash-N`, shortened by the kernel to 15 bytes)
/// as `/proc/self/task/<tid>` directories. Linux only; empty elsewhere.
fn hash_thread_dirs() -> Vec<std::path::PathBuf> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| t.path())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("comm"))
                .is_ok_and(|name| name.starts_with("password-hash"))
        })
        .collect()
}

/// The nice value of the hashing threads (the pool asks for the lowest priority; some
/// sandboxes refuse), or `None` when they cannot be found.
fn hash_threads_scheduling() -> Option<(i64, i64)> {
    let stat = std::fs::read_to_string(hash_thread_dirs().first()?.join("stat")).ok()?;
    // Fields after the parenthesised name start at field 3 (state); nice is field 19,
    // policy field 41.
    let (_, rest) = stat.rsplit_once(')')?;
    let field = |n: usize| rest.split_whitespace().nth(n - 3)?.parse().ok();
    Some((field(19)?, field(41)?))
}

/// CPU counters at one instant, to tell where a phase's CPU went (Linux only; the
/// counters that cannot be read are `None`).
struct CpuSample {
    /// Machine-wide `(busy, total)` ticks over all cores, from `/proc/stat`: every process,
    /// PostgreSQL, Redis and anything else running on the machine included.
    machine: Option<(u64, u64)>,
    /// Ticks this process has used (user + system), from `/proc/self/stat`.
    process: Option<u64>,
    /// Time the hashing threads have spent on a CPU, from their `schedstat`.
    hashing: Option<Duration>,
    /// When the counters were read.
    at: Instant,
}

impl CpuSample {
    fn now() -> Self {
        Self {
            machine: machine_cpu(),
            process: process_cpu(),
            hashing: hash_threads_cpu(),
            at: Instant::now(),
        }
    }

    /// Shares of the machine's CPU (1.0 = every core busy) between `self` and `later`, or
    /// `None` when `/proc/stat` could not be read.
    fn shares_until(&self, later: &Self, cores: usize) -> Option<CpuShares> {
        let (busy0, total0) = self.machine?;
        let (busy1, total1) = later.machine?;
        let ticks = total1.saturating_sub(total0).max(1) as f64;
        let wall_s = later.at.duration_since(self.at).as_secs_f64();
        Some(CpuShares {
            busy: busy1.saturating_sub(busy0) as f64 / ticks,
            process: self
                .process
                .zip(later.process)
                .map(|(p0, p1)| p1.saturating_sub(p0) as f64 / ticks),
            hashing: self
                .hashing
                .zip(later.hashing)
                .map(|(h0, h1)| h1.saturating_sub(h0).as_secs_f64() / (cores as f64 * wall_s)),
        })
    }
}

/// Where one phase's CPU went, as shares of all cores.
struct CpuShares {
    /// Every process on the machine.
    busy: f64,
    /// This process: the app, the load generator and the hashing threads.
    process: Option<f64>,
    /// The hashing threads.
    hashing: Option<f64>,
}

impl CpuShares {
    /// Prints `<prefix>_cpu_busy`, `_cpu_process` and `_cpu_hashing`.
    fn print(&self, prefix: &str) {
        println!("{prefix}_cpu_busy: {:.3}", self.busy);
        if let Some(process) = self.process {
            println!("{prefix}_cpu_process: {process:.3}");
        }
        if let Some(hashing) = self.hashing {
            println!("{prefix}_cpu_hashing: {hashing:.3}");
        }
    }
}

/// Ticks (user + system) this process has used, from `/proc/self/stat`.
fn process_cpu() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// CPU time the hashing threads have used so far (`schedstat`, nanoseconds on CPU).
fn hash_threads_cpu() -> Option<Duration> {
    let dirs = hash_thread_dirs();
    if dirs.is_empty() {
        return None;
    }
    let mut total = 0u64;
    for dir in dirs {
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Machine-wide `(busy, total)` CPU ticks from `/proc/stat` (all processes, PostgreSQL and
/// Redis included).
fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = ticks.get(3)? + ticks.get(4)?;
    let total: u64 = ticks.iter().sum();
    Some((total - idle, total))
}
