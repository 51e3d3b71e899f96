//! HTTP/1.1 load generators over keep-alive connections: closed-loop ([`run`]: each
//! connection sends its next request as soon as the previous answer arrives) and open-loop
//! ([`fixed_rate`]: requests leave on a fixed schedule whatever the server's pace).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Barrier};

/// Opens a keep-alive HTTP/1.1 connection to `addr` (Nagle off) and drives it in the
/// background.
pub async fn connect<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Figures of one run.
pub struct Report {
    requests: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Report {
    /// Completed requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// 99th percentile latency in milliseconds.
    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    /// Prints `<prefix>_rps`, `_p50_ms` and `_p99_ms`.
    pub fn print(&self, prefix: &str) {
        println!("{prefix}_rps: {:.0}", self.requests_per_second());
        println!(
            "{prefix}_p50_ms: {:.3}",
            self.latency_us.value_at_quantile(0.50) as f64 / 1000.0
        );
        println!(
            "{prefix}_p99_ms: {:.3}",
            self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
}

/// One connection of a closed-loop run.
pub type Sender = SendRequest<Full<Bytes>>;

/// Loads `path` on `addr` from `connections` connections: `warmup` unmeasured, then
/// `duration` measured. Every answer must be 200.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Report> {
    run_with_headers(
        addr,
        path,
        Arc::new(vec![Vec::new()]),
        connections,
        warmup,
        duration,
    )
    .await
}

/// [`run`], each request carrying one of `header_sets` (connection `c` starts at set `c` and
/// walks the list, so requests spread over all sets).
pub async fn run_with_headers(
    addr: SocketAddr,
    path: &str,
    header_sets: Arc<Vec<Vec<(&'static str, String)>>>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!header_sets.is_empty(), "no header set");
    let path: Arc<str> = path.into();
    closed_loop(
        addr,
        connections,
        warmup,
        duration,
        move |connection, n, mut sender| {
            let path = path.clone();
            let headers = header_sets.clone();
            async move {
                let mut request = Request::get(&*path).header("host", "localhost");
                for (name, value) in &headers[(connection + n as usize) % headers.len()] {
                    request = request.header(*name, value.as_str());
                }
                let response = sender.send_request(request.body(Full::default())?).await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "unexpected status {}",
                    response.status()
                );
                response.into_body().collect().await?;
                Ok(sender)
            }
        },
    )
    .await
}

/// Runs `step` over and over on each of `connections` keep-alive connections (a step is
/// one unit of work: a request, or several in a row): `warmup` unmeasured, then `duration`
/// measured. `step(connection, n, sender)` gets the connection's index and step number and
/// hands the sender back; any error ends the run.
pub async fn closed_loop<F, Fut>(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    step: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize, u64, Sender) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Sender>> + Send,
{
    let step = Arc::new(step);
    let start_line = Arc::new(Barrier::new(connections));
    let mut tasks = Vec::with_capacity(connections);
    for connection in 0..connections {
        let step = step.clone();
        let start_line = start_line.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect::<Full<Bytes>>(addr).await?;
            start_line.wait().await;
            let begin = Instant::now();
            let measure_from = begin + warmup;
            let end = measure_from + duration;
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut count = 0u64;
            for n in 0.. {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                sender = step(connection, n, sender).await?;
                if sent >= measure_from {
                    count += 1;
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                }
            }
            anyhow::Ok((count, latency))
        }));
    }
    let mut requests = 0;
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        let (count, latency) = task.await.context("load task panicked")??;
        requests += count;
        latency_us.add(latency)?;
    }
    Ok(Report {
        requests,
        elapsed: duration,
        latency_us,
    })
}

/// Figures of one [`fixed_rate`] run.
pub struct RateReport {
    /// Requests sent (all answered).
    pub sent: u64,
    /// Answers other than 200, by status.
    pub failures: BTreeMap<u16, u64>,
    /// Latency of the 200 answers, from each request's scheduled send time.
    latency_us: Histogram<u64>,
}

impl RateReport {
    /// Answers other than 200.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// 99th percentile latency of the 200 answers in milliseconds.
    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    /// Prints `<prefix>_requests`, `_failures` (and `_failures_<status>` for each status
    /// seen), then the latency's `_p50_ms`, `_p90_ms`, `_p99_ms`, `_p999_ms` and `_max_ms`.
    pub fn print(&self, prefix: &str) {
        println!("{prefix}_requests: {}", self.sent);
        println!("{prefix}_failures: {}", self.failed());
        for (status, count) in &self.failures {
            println!("{prefix}_failures_{status}: {count}");
        }
        for (name, quantile) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            println!(
                "{prefix}_{name}_ms: {:.3}",
                self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
            );
        }
        println!(
            "{prefix}_max_ms: {:.3}",
            self.latency_us.max() as f64 / 1000.0
        );
    }
}

/// Sends `GET path` to `addr` at `rate` requests per second for `duration`, whatever the
/// server's pace (open loop), over up to `connections` keep-alive connections. Request `i`
/// carries the headers `header_sets[i % len]`.
///
/// Latency is measured from each request's scheduled send time, so a stalled server is
/// charged for the requests that could not leave while it stalled (no coordinated
/// omission). A connection that takes up its slot early sleeps until the slot and starts
/// the clock when it wakes, so that the timer's millisecond granularity is not counted;
/// one that takes it up late was busy with earlier answers, and the wait is counted.
pub async fn fixed_rate(
    addr: SocketAddr,
    path: &str,
    header_sets: Arc<Vec<Vec<(&'static str, String)>>>,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<RateReport> {
    anyhow::ensure!(
        rate > 0.0 && connections > 0 && !header_sets.is_empty(),
        "fixed_rate needs a positive rate, connections and header sets"
    );
    let slots = (duration.as_secs_f64() * rate).round() as u64;
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect::<Empty<Bytes>>(addr).await?);
    }
    let next_slot = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::with_capacity(connections);
    for mut sender in senders {
        let path = path.to_owned();
        let header_sets = header_sets.clone();
        let next_slot = next_slot.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut failures = BTreeMap::<u16, u64>::new();
            let mut sent = 0u64;
            loop {
                let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                if slot >= slots {
                    break;
                }
                let scheduled = start + Duration::from_secs_f64(slot as f64 / rate);
                let clock_start = if Instant::now() < scheduled {
                    tokio::time::sleep_until(scheduled.into()).await;
                    Instant::now()
                } else {
                    scheduled
                };
                let mut request = Request::get(path.as_str()).header("host", "localhost");
                for (name, value) in &header_sets[slot as usize % header_sets.len()] {
                    request = request.header(*name, value.as_str());
                }
                let response = sender
                    .send_request(request.body(Empty::<Bytes>::new())?)
                    .await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                sent += 1;
                if status == 200 {
                    latency.saturating_record(clock_start.elapsed().as_micros() as u64);
                } else {
                    *failures.entry(status).or_default() += 1;
                }
            }
            anyhow::Ok((sent, failures, latency))
        }));
    }
    let mut report = RateReport {
        sent: 0,
        failures: BTreeMap::new(),
        latency_us: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    };
    for task in tasks {
        let (sent, failures, latency) = task.await.context("load task panicked")??;
        report.sent += sent;
        for (status, count) in failures {
            *report.failures.entry(status).or_default() += count;
        }
        report.latency_us.add(latency)?;
    }
    Ok(report)
}
