//! Retention: what the prune jobs of every crate share, and the prune of the queue itself.
//!
//! A prune deletes rows past their retention in bounded batches: each batch is one
//! `delete … where <key> in (select <key> … where <dead> limit $batch)` in a short
//! transaction of its own, repeated until a batch takes fewer rows than the limit
//! ([`in_batches`]), so a prune never holds many row locks or one long transaction. The
//! SQL lives in the crate that owns each table (the queue's here, the webhook inbox's in
//! `billing`, the tenant tables' in `identity`); what was deleted is reported to a
//! [`PruneObserver`] (the binary's metrics, `canopy_pruned_total{what}`), so no domain
//! crate knows about metrics and `api` knows no SQL.
//!
//! [`PruneJobs`] (`jobs.prune`) deletes succeeded jobs once they finished longer ago than
//! the retention. Queued, running, failed (retrying) and dead jobs are never deleted: a dead
//! job stays until an operator retries it.

use std::{future::Future, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{Job, JobContext, JobError, JobKind, NewJob};

/// Told how many rows each prune deleted.
pub trait PruneObserver: Send + Sync {
    /// `rows` of `what` (`sessions`, `jobs`, …) were deleted.
    fn pruned(&self, what: &'static str, rows: u64);
}

/// An observer that is told nothing (tests and tools).
impl PruneObserver for () {
    fn pruned(&self, _: &'static str, _: u64) {}
}

/// What a prune of one table needs: how long its finished rows are kept, how many rows one
/// batch deletes, and whom to tell.
#[derive(Clone)]
pub struct Retention {
    /// Rows finished longer ago than this are deleted.
    pub retain: Duration,
    /// Rows one batch deletes at most (at least 1).
    pub batch: i64,
    /// Told what was deleted.
    pub observer: Arc<dyn PruneObserver>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("retain", &self.retain)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// `retain` as a PostgreSQL interval parameter (whole seconds).
pub fn interval_secs(retain: Duration) -> f64 {
    retain.as_secs() as f64
}

/// Runs `delete_batch(batch)` until it deletes fewer than `batch` rows, and returns how many
/// rows it deleted in all. Each call is expected to be one short transaction of its own.
pub async fn in_batches<F, Fut, E>(batch: i64, mut delete_batch: F) -> Result<u64, E>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<u64, E>>,
{
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let deleted = delete_batch(batch).await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}

/// Deletes one batch of at most `batch` succeeded jobs that finished more than `retain`
/// ago. Returns how many it deleted.
pub async fn prune_succeeded_batch(
    pool: &PgPool,
    retain: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "delete from public.jobs where id in (
             select id from public.jobs
             where status = 'succeeded'
               and finished_at < now() - make_interval(secs => $1)
             limit $2
             for update skip locked)",
    )
    .bind(interval_secs(retain))
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes every succeeded job that finished more than `retain` ago, `batch` at a time.
pub async fn prune_succeeded(
    pool: &PgPool,
    retain: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    in_batches(batch, |batch| prune_succeeded_batch(pool, retain, batch)).await
}

/// The prune of the queue (`jobs.prune`; payload `{}`), run with a [`Retention`] of
/// succeeded jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneJobs {}

crate::declare_job!(PruneJobs = "jobs.prune");

impl PruneJobs {
    /// The prune, at most one pending.
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self.to_job()?.unique(Self::KIND))
    }
}

impl Job for PruneJobs {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = Retention;

    async fn run(self, ctx: &mut JobContext, retention: &Retention) -> anyhow::Result<()> {
        let deleted =
            prune_succeeded(ctx.control.pool(), retention.retain, retention.batch).await?;
        retention.observer.pruned("jobs", deleted);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn batches_repeat_until_one_comes_up_short() {
        let calls = AtomicU32::new(0);
        let mut left = 5_u64;
        let total = in_batches(2, |batch| {
            calls.fetch_add(1, Ordering::SeqCst);
            let take = left.min(batch as u64);
            left -= take;
            async move { Ok::<_, ()>(take) }
        })
        .await
        .unwrap();
        assert_eq!(total, 5);
        // 2, 2, 1.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_exact_multiple_takes_one_empty_batch_more() {
        let mut left = 4_u64;
        let calls = AtomicU32::new(0);
        let total = in_batches(2, |batch| {
            calls.fetch_add(1, Ordering::SeqCst);
            let take = left.min(batch as u64);
            left -= take;
            async move { Ok::<_, ()>(take) }
        })
        .await
        .unwrap();
        assert_eq!((total, calls.load(Ordering::SeqCst)), (4, 3));
    }

    #[test]
    fn the_payload_and_key_are_stable() {
        assert_eq!(PruneJobs::KIND, "jobs.prune");
        assert_eq!(
            serde_json::to_value(PruneJobs {}).unwrap(),
            serde_json::json!({})
        );
        let job = PruneJobs {}.new_job().unwrap();
        assert_eq!(job.unique_key.as_deref(), Some("jobs.prune"));
    }
}
