//! The prune of the webhook inbox ([`PruneWebhookEvents`], `billing.prune_webhook_events`):
//! events processed or ignored longer ago than the retention are deleted in bounded
//! batches ([`jobs::retention::in_batches`] over [`crate::inbox::prune_processed_batch`]);
//! pending and failed events are kept, whatever their age.

use jobs::{
    Job, JobContext, JobError, JobKind, NewJob,
    retention::{Retention, in_batches},
};
use serde::{Deserialize, Serialize};

use crate::inbox::prune_processed_batch;

/// The prune of processed webhook events (payload `{}`), run with their [`Retention`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneWebhookEvents {}

jobs::declare_job!(PruneWebhookEvents = "billing.prune_webhook_events");

impl PruneWebhookEvents {
    /// The prune, at most one pending.
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self.to_job()?.unique(Self::KIND))
    }
}

impl Job for PruneWebhookEvents {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = Retention;

    async fn run(self, ctx: &mut JobContext, retention: &Retention) -> anyhow::Result<()> {
        let pool = ctx.control.pool();
        let deleted = in_batches(retention.batch, |batch| {
            prune_processed_batch(pool, retention.retain, batch)
        })
        .await?;
        retention.observer.pruned("webhook_events", deleted);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_and_payload_are_stable() {
        assert_eq!(PruneWebhookEvents::KIND, "billing.prune_webhook_events");
        assert_eq!(
            serde_json::to_value(PruneWebhookEvents {}).unwrap(),
            serde_json::json!({})
        );
    }
}
