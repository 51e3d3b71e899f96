//! The worker: claims due jobs, runs them with a lease kept alive by a heartbeat, records
//! outcomes, and shuts down gracefully.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use sqlx::{PgPool, postgres::PgListener};
use tenancy::{ControlDb, TenantId, TenantStatus, error_chain};
use tokio::{sync::broadcast, task::JoinSet};
use uuid::Uuid;

use crate::{JobContext, JobError, Registry, backoff};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once.
    pub concurrency: usize,
    /// A claimed job is the worker's for this long, renewed while it runs.
    pub lease: Duration,
    /// Poll for due jobs this often when no notification arrives.
    pub poll_interval: Duration,
    /// On shutdown, how long running jobs may take before they are released.
    pub shutdown_deadline: Duration,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            shutdown_deadline: Duration::from_secs(30),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(3600),
        }
    }
}

/// What happened to one run of a job (broadcast to observers such as metrics and tests).
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// Job id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// `succeeded`, `failed` (will retry), `dead` or `released`.
    pub status: &'static str,
}

#[derive(Debug)]
struct Claimed {
    id: Uuid,
    kind: String,
    payload: Value,
    tenant: Option<TenantId>,
    attempts: i32,
    max_attempts: i32,
}

/// A queue worker. Several may run in one process or on several machines.
pub struct Worker {
    control: ControlDb,
    registry: Arc<Registry>,
    config: WorkerConfig,
    name: String,
    outcomes: broadcast::Sender<JobOutcome>,
}

impl Worker {
    /// A worker running `registry`'s handlers.
    pub fn new(control: ControlDb, registry: Registry, config: WorkerConfig) -> Self {
        let (outcomes, _) = broadcast::channel(1024);
        Self {
            control,
            registry: Arc::new(registry),
            config,
            name: format!("{}-{}", hostname(), Uuid::now_v7().simple()),
            outcomes,
        }
    }

    /// This worker's name in `locked_by`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every outcome this worker records, from now on.
    pub fn outcomes(&self) -> broadcast::Receiver<JobOutcome> {
        self.outcomes.subscribe()
    }

    /// Works until `shutdown` completes; then claims nothing more, gives running jobs the
    /// shutdown deadline to finish, and releases the rest back to the queue.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), JobError> {
        let pool = self.control.pool().clone();
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen("canopy_jobs").await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for new jobs; polling only");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for new jobs; polling only");
                None
            }
        };
        let in_flight: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let mut running = JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!(worker = %self.name, concurrency = self.config.concurrency, "worker started");

        loop {
            while running.try_join_next().is_some() {}
            let free = self.config.concurrency.saturating_sub(running.len());
            let mut claimed_all = false;
            if free > 0 {
                match self.claim(&pool, free).await {
                    Ok(jobs) => {
                        claimed_all = jobs.len() == free;
                        for job in jobs {
                            in_flight
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(job.id);
                            running.spawn(self.execute(job, in_flight.clone()));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "claiming jobs failed")
                    }
                }
            }
            if claimed_all {
                // All slots filled: wait for one to free up (or shutdown).
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = running.join_next() => {}
                }
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                notified = next_notification(&mut listener) => {
                    if notified.is_err() {
                        listener = None;
                    }
                }
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }

        tracing::info!(worker = %self.name, running = running.len(), "worker stopping: no new claims");
        let deadline = tokio::time::sleep(self.config.shutdown_deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = running.join_next() => if next.is_none() { break },
                () = &mut deadline => {
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    let abandoned: Vec<Uuid> = in_flight.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
                    self.release(&pool, &abandoned).await?;
                    break;
                }
            }
        }
        tracing::info!(worker = %self.name, "worker stopped");
        Ok(())
    }

    /// Claims up to `limit` due jobs: queued or failed ones whose time has come, and running
    /// ones whose lease lapsed (their worker died), of platform or active tenants only.
    async fn claim(&self, pool: &PgPool, limit: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        // Jobs whose lease lapsed on their last allowed attempt are dead, not retried.
        sqlx::query(
            "update public.jobs
             set status = 'dead', last_error = coalesce(last_error, 'lease expired on the last attempt'),
                 lease_expires_at = null, locked_by = null, finished_at = now(), updated_at = now()
             where status = 'running' and lease_expires_at < now() and attempts >= max_attempts",
        )
        .execute(pool)
        .await?;
        let rows: Vec<(Uuid, String, Value, Option<Uuid>, i32, i32)> = sqlx::query_as(
            "with next as (
                 select j.id
                 from public.jobs j
                 left join public.tenants t on t.id = j.tenant_id
                 where ((j.status in ('queued', 'failed') and j.run_at <= now())
                        or (j.status = 'running' and j.lease_expires_at < now()))
                   and (j.tenant_id is null or t.status = 'active')
                 order by j.priority desc, j.run_at
                 limit $1
                 for update of j skip locked
             )
             update public.jobs j
             set status = 'running', attempts = j.attempts + 1, lease_expires_at = now() + $2,
                 locked_by = $3, updated_at = now()
             from next
             where j.id = next.id
             returning j.id, j.kind, j.payload, j.tenant_id, j.attempts, j.max_attempts",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(self.config.lease)
        .bind(&self.name)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, kind, payload, tenant, attempts, max_attempts)| Claimed {
                    id,
                    kind,
                    payload,
                    tenant: tenant.map(TenantId),
                    attempts,
                    max_attempts,
                },
            )
            .collect())
    }

    fn execute(
        &self,
        job: Claimed,
        in_flight: Arc<Mutex<HashSet<Uuid>>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let control = self.control.clone();
        let registry = self.registry.clone();
        let config = self.config.clone();
        let name = self.name.clone();
        let outcomes = self.outcomes.clone();
        async move {
            let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind, tenant_id = tracing::field::Empty, attempt = job.attempts);
            if let Some(tenant) = job.tenant {
                span.record("tenant_id", tracing::field::display(tenant));
            }
            let pool = control.pool().clone();
            let result = tracing::Instrument::instrument(
                with_heartbeat(
                    &pool,
                    &job,
                    &name,
                    config.lease,
                    run_handler(&control, &registry, &job),
                ),
                span.clone(),
            )
            .await;
            let status = match record(&pool, &job, &name, &config, result).await {
                Ok(status) => status,
                Err(error) => {
                    tracing::error!(parent: &span, error = %error_chain(&error), "recording the job outcome failed; its lease will lapse and it will run again");
                    "unrecorded"
                }
            };
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&job.id);
            let _ = outcomes.send(JobOutcome {
                id: job.id,
                kind: job.kind.clone(),
                status,
            });
        }
    }

    /// Puts abandoned jobs back in the queue without spending an attempt.
    async fn release(&self, pool: &PgPool, ids: &[Uuid]) -> Result<(), JobError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "update public.jobs
             set status = 'queued', attempts = greatest(attempts - 1, 0), lease_expires_at = null,
                 locked_by = null, updated_at = now()
             where id = any($1) and locked_by = $2 and status = 'running'",
        )
        .bind(ids)
        .bind(&self.name)
        .execute(pool)
        .await?;
        for id in ids {
            tracing::warn!(job_id = %id, "job did not finish before the shutdown deadline; released");
        }
        Ok(())
    }
}

/// The handler's outcome, or a reason to put the job back without spending the attempt.
enum RunResult {
    Done(anyhow::Result<()>),
    Wait(&'static str),
}

async fn run_handler(control: &ControlDb, registry: &Registry, job: &Claimed) -> RunResult {
    let Some(handler) = registry.get(&job.kind) else {
        return RunResult::Done(Err(anyhow::anyhow!(
            "no handler for job kind `{}`",
            job.kind
        )));
    };
    let (tenant, tx) = match job.tenant {
        None => (None, None),
        Some(id) => {
            let tenant = match control.tenant_by_id(id).await {
                Ok(Some(tenant)) => tenant,
                Ok(None) => return RunResult::Wait("tenant is gone"),
                Err(e) => return RunResult::Done(Err(e.into())),
            };
            if tenant.status != TenantStatus::Active {
                return RunResult::Wait("tenant is not active");
            }
            match control.tenant_db().begin(id).await {
                Ok(tx) => (Some(tenant), Some(tx)),
                Err(e) => return RunResult::Done(Err(e.into())),
            }
        }
    };
    let mut ctx = JobContext {
        id: job.id,
        attempt: job.attempts,
        tenant,
        control: control.clone(),
        tx,
    };
    let result = handler.run(&mut ctx, job.payload.clone()).await;
    let result = match (result, ctx.tx.take()) {
        (Ok(()), Some(tx)) => tx.commit().await.map_err(anyhow::Error::from),
        (Ok(()), None) => Ok(()),
        // Dropping the transaction rolls the attempt's writes back.
        (Err(e), _) => Err(e),
    };
    RunResult::Done(result)
}

/// Runs `work` while renewing the job's lease every third of its length.
async fn with_heartbeat<T>(
    pool: &PgPool,
    job: &Claimed,
    worker: &str,
    lease: Duration,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(lease / 3);
    beat.tick().await;
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = beat.tick() => {
                let renewed = sqlx::query(
                    "update public.jobs set lease_expires_at = now() + $3
                     where id = $1 and locked_by = $2 and status = 'running'",
                )
                .bind(job.id)
                .bind(worker)
                .bind(lease)
                .execute(pool)
                .await;
                if let Err(error) = renewed {
                    tracing::warn!(%error, "renewing the job lease failed");
                }
            }
        }
    }
}

/// Records the outcome, guarded by `locked_by` and the attempt number so a worker whose
/// lease lapsed cannot overwrite a newer run.
async fn record(
    pool: &PgPool,
    job: &Claimed,
    worker: &str,
    config: &WorkerConfig,
    result: RunResult,
) -> Result<&'static str, sqlx::Error> {
    let (status, error, delay) = match result {
        RunResult::Wait(reason) => {
            sqlx::query(
                "update public.jobs
                 set status = 'queued', attempts = greatest(attempts - 1, 0), run_at = now() + interval '30 seconds',
                     lease_expires_at = null, locked_by = null, updated_at = now()
                 where id = $1 and locked_by = $2 and attempts = $3 and status = 'running'",
            )
            .bind(job.id)
            .bind(worker)
            .bind(job.attempts)
            .execute(pool)
            .await?;
            tracing::info!(reason, "job postponed");
            return Ok("released");
        }
        RunResult::Done(Ok(())) => ("succeeded", None, Duration::ZERO),
        RunResult::Done(Err(error)) => {
            let message = format!("{error:#}");
            if job.attempts >= job.max_attempts {
                tracing::error!(error = %message, "job failed for the last time; dead");
                ("dead", Some(message), Duration::ZERO)
            } else {
                let delay = backoff(job.attempts, config.backoff_base, config.backoff_max);
                tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                ("failed", Some(message), delay)
            }
        }
    };
    sqlx::query(
        "update public.jobs
         set status = $4, last_error = coalesce($5, last_error), run_at = now() + $6,
             lease_expires_at = null, locked_by = null, updated_at = now(),
             finished_at = case when $4 in ('succeeded', 'dead') then now() end
         where id = $1 and locked_by = $2 and attempts = $3 and status = 'running'",
    )
    .bind(job.id)
    .bind(worker)
    .bind(job.attempts)
    .bind(status)
    .bind(error)
    .bind(delay)
    .execute(pool)
    .await?;
    if status == "succeeded" {
        tracing::info!("job succeeded");
    }
    Ok(status)
}

async fn next_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(drop),
        None => std::future::pending().await,
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}
