//! Canopy's durable job queue: a `public.jobs` table in the control plane, claimed by
//! workers with `FOR UPDATE SKIP LOCKED` and a lease.
//!
//! * **Enqueue** with [`enqueue`] on any connection, inside the caller's transaction: a job
//!   enqueued by a transaction that rolls back never exists. Inside a tenant transaction the
//!   job belongs to that tenant (the database derives it from the tenant role; a tenant
//!   cannot enqueue for another).
//! * **Delivery** is at least once: a worker that dies loses its lease and the job runs
//!   again, so handlers are idempotent. Failures retry with exponential backoff and jitter
//!   until the kind's attempt limit, then the job is `dead`, keeping its last error, until an
//!   operator retries it.
//! * **Tenancy**: a job with a tenant runs its handler inside that tenant's `TenantDb`
//!   transaction; jobs of suspended or deleted tenants wait (and go with the tenant when it
//!   is purged).
//! * **Spares**: [`spares`] holds the platform job that keeps the pool of spare tenant
//!   schemas filled.

mod admin;
mod backoff;
pub mod retention;
pub mod spares;
mod typed;
mod worker;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use tenancy::{ControlDb, Tenant, TenantId, TenantTx};
use uuid::Uuid;

pub use admin::{
    JobFilter, JobRecord, QueueDepth, REDACTED, get_job, list_jobs, queue_depth, redact_payload,
    retry_job,
};
pub use backoff::backoff;
#[doc(hidden)]
pub use inventory;
#[doc(hidden)]
pub use typed::DeclaredKind;
pub use typed::{Job, JobKind, Registry, declared_kinds};
pub use worker::{JobOutcome, Worker, WorkerConfig};

/// What can go wrong with the queue itself (handler failures are job outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A tenancy operation failed.
    #[error("tenancy error")]
    Tenancy(#[from] tenancy::TenancyError),
    /// No job with that id.
    #[error("no such job")]
    NotFound,
    /// Only dead or failed jobs can be retried.
    #[error("a {0} job cannot be retried")]
    NotRetryable(String),
    /// A payload that does not serialize to JSON.
    #[error("the job's payload does not serialize")]
    Payload(#[source] serde_json::Error),
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    kind: String,
    payload: Value,
    tenant: Option<TenantId>,
    priority: i16,
    run_at: Option<DateTime<Utc>>,
    max_attempts: i32,
    unique_key: Option<String>,
}

impl NewJob {
    /// A job of `kind` with `payload`, due now, 5 attempts. Code enqueues typed jobs
    /// ([`Job::to_job`]); this untyped form is for tests and tools that must enqueue what
    /// no handler declares.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            tenant: None,
            priority: 0,
            run_at: None,
            max_attempts: 5,
            unique_key: None,
        }
    }

    /// Runs inside `tenant`'s schema. (Inside a tenant transaction this is implied.)
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Higher runs first.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Not before `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Attempts before the job is dead.
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// At most one pending job of this kind with this key: enqueueing another returns the
    /// pending one's id.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// Enqueues `job` on `conn`, inside whatever transaction `conn` is in.
pub async fn enqueue(conn: &mut PgConnection, job: NewJob) -> Result<Uuid, JobError> {
    let id: Uuid = sqlx::query_scalar("select shared.enqueue_job($1, $2, $3, $4, $5, $6, $7)")
        .bind(&job.kind)
        .bind(&job.payload)
        .bind(job.tenant.map(|t| t.0))
        .bind(job.priority)
        .bind(job.run_at)
        .bind(job.max_attempts)
        .bind(&job.unique_key)
        .fetch_one(conn)
        .await?;
    Ok(id)
}

/// Runs `work` every `period`, the first time at `first`, until `stop` completes. `stop`
/// is only heeded between runs: a run that has started finishes (its transaction commits
/// or rolls back on its own terms), so a shutdown never cuts one off halfway.
pub async fn every<F, Fut>(
    first: tokio::time::Instant,
    period: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(first, period);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = tick.tick() => work().await,
        }
    }
}

/// Enqueues the job `job_for` makes for each active tenant (a fan-out job's work: one
/// tenant job each, so no tenant's work waits on another's), 500 tenants a page, and
/// returns how many it enqueued.
pub async fn enqueue_per_active_tenant(
    control: &ControlDb,
    job_for: impl Fn(TenantId) -> Result<NewJob, JobError>,
) -> Result<usize, JobError> {
    let mut after: Option<String> = None;
    let mut enqueued = 0;
    loop {
        let tenants = control
            .list_tenants(Some(tenancy::TenantStatus::Active), after.as_deref(), 500)
            .await?;
        let Some(last) = tenants.last() else { break };
        after = Some(last.slug.to_string());
        let mut conn = control.pool().acquire().await?;
        for tenant in &tenants {
            enqueue(&mut conn, job_for(tenant.id)?).await?;
            enqueued += 1;
        }
    }
    Ok(enqueued)
}

/// Enqueues `job` every `interval`, the first time one `interval` from now, until `stop`
/// completes. Give the job a unique key: however many instances run this, at most one is
/// pending at a time.
pub async fn enqueue_every(
    control: ControlDb,
    interval: std::time::Duration,
    job: NewJob,
    stop: impl std::future::Future<Output = ()>,
) {
    let first = tokio::time::Instant::now() + interval;
    every(first, interval, stop, || async {
        let enqueued = async {
            let mut conn = control.pool().acquire().await?;
            enqueue(&mut conn, job.clone()).await
        };
        if let Err(error) = enqueued.await {
            tracing::warn!(kind = %job.kind, error = %tenancy::error_chain(&error), "cannot enqueue a scheduled job");
        }
    })
    .await;
}

/// What a handler gets: the job, its tenant and, for tenant jobs, the tenant transaction
/// the worker commits when the handler succeeds.
pub struct JobContext {
    /// Job id.
    pub id: Uuid,
    /// 1 on the first run.
    pub attempt: i32,
    /// The job's tenant, for tenant jobs.
    pub tenant: Option<Tenant>,
    /// The control plane, for platform jobs.
    pub control: ControlDb,
    tx: Option<TenantTx>,
}

impl JobContext {
    /// The tenant transaction (tenant jobs only).
    pub fn tenant_tx(&mut self) -> anyhow::Result<&mut TenantTx> {
        self.tx
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("this job has no tenant"))
    }

    /// Takes the tenant transaction out of the context, for a handler that works in short
    /// transactions of its own (a prune, batch by batch) instead of the worker's one: the
    /// worker then commits nothing, and the handler ends the taken transaction itself.
    pub fn take_tenant_tx(&mut self) -> Option<TenantTx> {
        self.tx.take()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use tokio::sync::{Notify, oneshot};

    use super::*;

    #[tokio::test]
    async fn a_stop_during_a_run_lets_the_run_finish_and_starts_no_other() {
        let (started, finished, runs) = (
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            Arc::new(AtomicU32::new(0)),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (started, finished, runs) = (started.clone(), finished.clone(), runs.clone());
            every(
                tokio::time::Instant::now(),
                std::time::Duration::from_millis(1),
                async move {
                    let _ = stopped.await;
                },
                move || {
                    let (started, finished, runs) =
                        (started.clone(), finished.clone(), runs.clone());
                    async move {
                        started.notify_one();
                        finished.notified().await;
                        runs.fetch_add(1, Ordering::SeqCst);
                    }
                },
            )
        });
        started.notified().await;
        stop.send(()).expect("the loop is running");
        // The run in progress is not cut off by the stop: it completes when let go.
        finished.notify_one();
        task.await.expect("the loop returns");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
