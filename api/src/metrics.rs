//! Prometheus metrics: one registry per [`crate::AppState`] (no process globals, so several
//! apps in one test process never mix their figures).

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram, fn() -> Histogram>,
    db_connections: Family<PoolLabels, Gauge>,
    db_max_connections: Gauge,
    redis_connections: Family<PoolLabels, Gauge>,
    job_outcomes: Family<JobLabels, Counter>,
    jobs_by_status: Family<StatusLabels, Gauge>,
    jobs_observed: tokio::sync::watch::Sender<u64>,
    rate_limited: Family<LimitLabels, Counter>,
    rate_limit_fallbacks: Counter,
    pruned: Family<PrunedLabels, Counter>,
    realtime_open: Gauge,
    realtime_closed: Family<ReasonLabels, Counter>,
    realtime_messages: Family<DirectionLabels, Counter>,
    realtime_fanout: Histogram,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrunedLabels {
    what: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// A pool's occupancy at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauge {
    /// Open connections.
    pub open: u32,
    /// Open and idle.
    pub idle: u32,
}

/// The rate limiter counts its refusals and fallbacks here.
impl admission::rate_limit::Observer for Metrics {
    fn observe_rate_limited(&self, limit: &'static str) {
        Metrics::observe_rate_limited(self, limit);
    }

    fn observe_rate_limit_fallback(&self) {
        Metrics::observe_rate_limit_fallback(self);
    }
}

/// The prune jobs count what they deleted here (`canopy_pruned_total{what}`).
impl jobs::retention::PruneObserver for Metrics {
    fn pruned(&self, what: &'static str, rows: u64) {
        self.pruned
            .get_or_create(&PrunedLabels { what })
            .inc_by(rows);
    }
}

/// The realtime hub reports its connections and fan-out here.
impl realtime::Observer for Metrics {
    fn connection_opened(&self) {
        self.realtime_open.inc();
    }

    fn connection_closed(&self, reason: &'static str) {
        self.realtime_open.dec();
        self.realtime_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn fanned_out(&self, latency: Duration) {
        self.realtime_fanout.observe(latency.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("canopy");
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        let latency = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            latency.clone(),
        );
        let db_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "PostgreSQL pool connections by state (idle, busy)",
            db_connections.clone(),
        );
        let db_max_connections = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "Configured size of the PostgreSQL pool",
            db_max_connections.clone(),
        );
        let redis_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "redis_pool_connections",
            "Redis pool connections by state (idle, busy)",
            redis_connections.clone(),
        );
        let job_outcomes = Family::<JobLabels, Counter>::default();
        registry.register(
            "job_runs",
            "Job runs finished by this process's workers, by kind and outcome (succeeded, failed, dead, released)",
            job_outcomes.clone(),
        );
        let jobs_by_status = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the queue by status (queue depth: queued + failed)",
            jobs_by_status.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused for a rate limit, by limit (ip_per_second, …, requests_per_minute, process)",
            rate_limited.clone(),
        );
        let rate_limit_fallbacks = Counter::default();
        registry.register(
            "rate_limit_fallbacks",
            "Requests whose rate limits Redis could not judge (the process-wide cap applied instead)",
            rate_limit_fallbacks.clone(),
        );
        let pruned = Family::<PrunedLabels, Counter>::default();
        registry.register(
            "pruned",
            "Rows deleted by the retention prune jobs of this process's workers, by what (sessions, refresh_tokens, email_tokens, invitations, audit_events, jobs, webhook_events)",
            pruned.clone(),
        );
        let realtime_open = Gauge::default();
        registry.register(
            "realtime_connections",
            "Open realtime connections (WebSocket and SSE) on this instance",
            realtime_open.clone(),
        );
        let realtime_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "realtime_closed",
            "Realtime connections ended, by reason (the close code's name, or client_closed)",
            realtime_closed.clone(),
        );
        let realtime_messages = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "realtime_messages",
            "Realtime messages by direction (in: from clients, out: events to clients)",
            realtime_messages.clone(),
        );
        // 0.1 ms … ~1.6 s.
        let realtime_fanout = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
        );
        registry.register(
            "realtime_fanout_seconds",
            "Time from an event's publication to its enqueueing on this instance's connections",
            realtime_fanout.clone(),
        );
        Self {
            realtime_open,
            realtime_closed,
            realtime_messages,
            realtime_fanout,
            pruned,
            registry,
            rate_limited,
            rate_limit_fallbacks,
            requests,
            job_outcomes,
            jobs_by_status,
            jobs_observed: tokio::sync::watch::Sender::new(0),
            latency,
            db_connections,
            db_max_connections,
            redis_connections,
        }
    }

    /// Counts one message received on a realtime connection.
    pub fn observe_realtime_in(&self) {
        self.realtime_messages
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc();
    }

    /// Counts `count` events sent on a realtime connection.
    pub fn observe_realtime_out(&self, count: usize) {
        self.realtime_messages
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc_by(count as u64);
    }

    /// Counts one finished request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = HttpLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one request refused for `limit`.
    pub fn observe_rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Counts one request judged by the process-wide cap instead of Redis.
    pub fn observe_rate_limit_fallback(&self) {
        self.rate_limit_fallbacks.inc();
    }

    /// Counts one finished job run.
    pub fn observe_job(&self, kind: &str, outcome: &'static str) {
        self.job_outcomes
            .get_or_create(&JobLabels {
                kind: kind.to_owned(),
                outcome,
            })
            .inc();
        self.jobs_observed.send_modify(|n| *n += 1);
    }

    /// How many job runs [`Self::observe_job`] has counted so far, as it changes (lets a
    /// caller wait until a run it saw finish is in the figures).
    pub fn jobs_observed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.jobs_observed.subscribe()
    }

    /// Sets the queue gauges (read from the database at scrape time).
    pub fn set_queue_depth(&self, by_status: &[(String, i64)]) {
        for status in ["queued", "running", "succeeded", "failed", "dead"] {
            let count = by_status
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.jobs_by_status
                .get_or_create(&StatusLabels {
                    status: status.to_owned(),
                })
                .set(count);
        }
    }

    /// Text exposition, with the pool gauges read just now.
    pub fn render(&self, db: PoolGauge, db_max: u32, redis: PoolGauge) -> String {
        set_pool(&self.db_connections, db);
        self.db_max_connections.set(i64::from(db_max));
        set_pool(&self.redis_connections, redis);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn set_pool(family: &Family<PoolLabels, Gauge>, gauge: PoolGauge) {
    family
        .get_or_create(&PoolLabels { state: "idle" })
        .set(i64::from(gauge.idle));
    family
        .get_or_create(&PoolLabels { state: "busy" })
        .set(i64::from(gauge.open.saturating_sub(gauge.idle)));
}
