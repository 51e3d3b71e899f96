//! Keeping the pool of spare tenant schemas filled (see `tenancy`'s `spares` module and
//! [`ControlDb::replenish_spares`]): the platform job [`ReplenishSpares`]
//! (`tenancy.replenish_spares`), enqueued by [`RefillAfterProvisioning`] in every
//! provisioning transaction and every minute by [`schedule_replenishment`], always under
//! one unique key, so however many provisionings and instances ask, at most one is pending.
//!
//! It lives here rather than in `tenancy` because `jobs` depends on `tenancy`, not the
//! other way round.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::{BoxFuture, ControlDb, ProvisionHook, TenancyError, TenantId};

use crate::{Job, JobContext, JobError, JobKind, NewJob};

/// How often [`schedule_replenishment`] enqueues a [`ReplenishSpares`].
pub const REPLENISH_INTERVAL: Duration = Duration::from_secs(60);

/// The job that builds spares until the pool holds its target (`tenancy.replenish_spares`;
/// its payload is `{}`, the target is the worker's `CANOPY_TENANT_SPARES`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplenishSpares {}

crate::declare_job!(ReplenishSpares = "tenancy.replenish_spares");

/// What [`ReplenishSpares`] jobs run with: the pool's target size.
#[derive(Debug, Clone, Copy)]
pub struct SparePool {
    /// Spares to keep (0: build none).
    pub target: usize,
}

impl Job for ReplenishSpares {
    const MAX_ATTEMPTS: i32 = 3;

    type Deps = SparePool;

    async fn run(self, ctx: &mut JobContext, pool: &SparePool) -> anyhow::Result<()> {
        let built = ctx.control.replenish_spares(pool.target).await?;
        if built > 0 {
            tracing::info!(
                built,
                target = pool.target,
                "replenished spare tenant schemas"
            );
        }
        Ok(())
    }
}

impl ReplenishSpares {
    /// The job to enqueue, under its unique key.
    pub fn new_job() -> NewJob {
        NewJob::new(Self::KIND, serde_json::json!({}))
            .max_attempts(Self::MAX_ATTEMPTS)
            .unique(Self::KIND)
    }
}

/// The [`ProvisionHook`] that enqueues a [`ReplenishSpares`] with every provisioning, so
/// the pool refills soon after a spare is claimed (or found empty).
pub struct RefillAfterProvisioning;

impl ProvisionHook for RefillAfterProvisioning {
    fn on_provision<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        _tenant: TenantId,
    ) -> BoxFuture<'a, Result<(), TenancyError>> {
        Box::pin(async move {
            crate::enqueue(conn, ReplenishSpares::new_job())
                .await
                .map_err(|e| match e {
                    JobError::Database(e) => TenancyError::Database(e),
                    JobError::Tenancy(e) => e,
                    other => TenancyError::Database(sqlx::Error::Protocol(other.to_string())),
                })?;
            Ok(())
        })
    }
}

/// Enqueues a [`ReplenishSpares`] every `interval` (the first one `interval` after
/// start-up) until `stop` completes: the pool refills even when no provisioning asked,
/// after start-up or a `canopy migrate` that dropped spares.
pub async fn schedule_replenishment(
    control: ControlDb,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    crate::enqueue_every(control, interval, ReplenishSpares::new_job(), stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_a_unique_platform_job_with_an_empty_payload() {
        let job = ReplenishSpares::new_job();
        assert_eq!(job.kind, "tenancy.replenish_spares");
        assert_eq!(job.payload, serde_json::json!({}));
        assert_eq!(job.unique_key.as_deref(), Some("tenancy.replenish_spares"));
        assert_eq!(job.tenant, None);
        assert_eq!(job.max_attempts, 3);
        assert_eq!(
            serde_json::to_value(ReplenishSpares {}).expect("serializes"),
            job.payload
        );
    }
}
