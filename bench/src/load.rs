//! A closed-loop HTTP/1.1 load generator: a fixed number of keep-alive connections, each
//! sending its next request as soon as the previous answer arrives.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Barrier};

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

/// Loads `path` on `addr` from `connections` connections: `warmup` unmeasured, then
/// `duration` measured. Every answer must be 200.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Report> {
    run_with_header(addr, path, None, connections, warmup, duration).await
}

/// [`run`], each request carrying header `name` with the next of `values` (connection `c`
/// starts at value `c` and walks the list, so requests spread over all values).
pub async fn run_with_header(
    addr: SocketAddr,
    path: &str,
    header: Option<(&'static str, Arc<Vec<String>>)>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Report> {
    let start_line = Arc::new(Barrier::new(connections));
    let mut tasks = Vec::with_capacity(connections);
    for connection in 0..connections {
        let path = path.to_owned();
        let header = header.clone();
        let start_line = start_line.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            start_line.wait().await;
            let begin = Instant::now();
            let measure_from = begin + warmup;
            let end = measure_from + duration;
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut count = 0u64;
            let mut next = connection;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let mut request = Request::get(path.as_str()).header("host", "localhost");
                if let Some((name, values)) = &header {
                    request = request.header(*name, values[next % values.len()].as_str());
                    next += 1;
                }
                let request = request.body(Empty::<Bytes>::new())?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "unexpected status {}",
                    response.status()
                );
                response.into_body().collect().await?;
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
