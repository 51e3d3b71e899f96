//! Reconciliation: the job that lists recent events from Stripe's API to catch deliveries
//! that never arrived ([`Reconcile`], `billing.reconcile`, run by a [`Reconciler`] and
//! scheduled by [`schedule_reconciliation`]). What it finds is stored and processed like a
//! delivered event ([`crate::processing::accept`]).

use std::time::Duration;

use anyhow::Context;
use jobs::{Job, JobContext, JobKind};
use serde::{Deserialize, Serialize};
use tenancy::ControlDb;

use crate::{inbox::Source, processing::accept, stripe_api::StripeApi};

/// How far back reconciliation looks.
pub const RECONCILE_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

/// The job of one reconciliation pass (`billing.reconcile`; its payload is `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {}

jobs::declare_job!(Reconcile = "billing.reconcile");

impl Job for Reconcile {
    const MAX_ATTEMPTS: i32 = 3;

    type Deps = Reconciler;

    async fn run(self, _ctx: &mut JobContext, reconciler: &Reconciler) -> anyhow::Result<()> {
        let missing = reconciler.reconcile().await?;
        if missing > 0 {
            tracing::warn!(
                missing,
                "reconciliation found events that were never delivered"
            );
        }
        Ok(())
    }
}

/// Lists recent events from Stripe and accepts those never delivered; see the module docs.
/// What [`Reconcile`] jobs run with.
pub struct Reconciler {
    control: ControlDb,
    stripe: StripeApi,
}

impl Reconciler {
    /// Storing events on the control plane `control`, listing them with `stripe`.
    pub fn new(control: ControlDb, stripe: StripeApi) -> Self {
        Self { control, stripe }
    }

    /// One pass; returns how many events were missing.
    pub async fn reconcile(&self) -> anyhow::Result<usize> {
        let since = chrono::Utc::now().timestamp() - RECONCILE_WINDOW.as_secs() as i64;
        let events = self
            .stripe
            .events_since(since)
            .await
            .context("listing events")?;
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let known = crate::inbox::known(self.control.pool(), &ids).await?;
        let mut missing = 0;
        for event in events.iter().filter(|e| !known.contains(&e.id)) {
            // One event that cannot be stored must not hide the others.
            let accepted = async {
                let mut tx = self.control.pool().begin().await?;
                let new = accept(&mut tx, event, Source::Reconciliation).await?;
                tx.commit().await?;
                Ok::<_, anyhow::Error>(new)
            };
            match accepted.await {
                Ok(true) => missing += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(event_id = %event.id, error = format!("{error:#}"), "cannot store a reconciled event")
                }
            }
        }
        Ok(missing)
    }
}

/// Enqueues a reconciliation every `interval`, the first one `interval` after start-up (at
/// most one pending at a time, however many instances run this), until `stop` completes.
pub async fn schedule_reconciliation(
    control: ControlDb,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let job = Reconcile {}
        .to_job()
        .expect("an empty struct always serializes")
        .unique(Reconcile::KIND);
    jobs::enqueue_every(control, interval, job, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_keeps_the_shape_queued_jobs_have() {
        let payload = serde_json::json!({});
        assert_eq!(
            serde_json::to_value(Reconcile {}).expect("serializes"),
            payload
        );
        assert_eq!(
            serde_json::from_value::<Reconcile>(payload).expect("deserializes"),
            Reconcile {}
        );
        assert_eq!(Reconcile::KIND, "billing.reconcile");
        assert_eq!(Reconcile::MAX_ATTEMPTS, 3);
    }
}
