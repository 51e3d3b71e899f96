//! Stripe events, after the webhook endpoint (or [`crate::reconcile`]) stored them: the job
//! that applies each one ([`ProcessEvent`], `billing.process_event`, run by an
//! [`EventProcessor`]).
//!
//! Events map to a tenant through its Stripe customer, or through the tenant id Canopy put
//! in the checkout session's and the subscription's metadata. Subscription events set the
//! tenant's subscription state and plan in the order Stripe created them, whatever order
//! they arrive in (see [`crate::accounts`]). Every step is idempotent: an event processed
//! twice (a replay, a job run again after a crash) changes nothing the second time.
//!
//! A plan change must reach the tenant caches of every instance, which billing knows
//! nothing of: the processor announces it through [`TenantChanges`], which the API
//! implements.

use std::sync::Arc;

use jobs::{Job, JobContext, JobError, JobKind, NewJob};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use tenancy::{BoxFuture, ControlDb, TenantId};

use crate::{
    PlanCatalog,
    accounts::{self, Applied},
    events::{Meaning, meaning, refusal},
    inbox::{self, EventStatus, InboundEvent, Source},
    stripe_api::is_live_key,
};

/// Told when processing an event changed a tenant's plan (after the change is committed),
/// so that whoever caches tenants can drop their copies.
pub trait TenantChanges: Send + Sync {
    /// `tenant` changed. Best effort: it cannot fail the event.
    fn changed(&self, tenant: TenantId) -> BoxFuture<'_, ()>;
}

/// The job applying one stored event (`billing.process_event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    /// Stripe's event id.
    pub event_id: String,
}

jobs::declare_job!(ProcessEvent = "billing.process_event");

impl ProcessEvent {
    /// The job applying stored event `event_id`.
    pub fn new(event_id: impl Into<String>) -> Self {
        Self {
            event_id: event_id.into(),
        }
    }

    /// The job to enqueue in the transaction that stores the event: at most one pending
    /// per event.
    pub fn first_run(&self) -> Result<NewJob, JobError> {
        Ok(self
            .replay()?
            .unique(format!("{}:{}", Self::KIND, self.event_id)))
    }

    /// The job applying the event again, whatever job of it is pending or running (an
    /// operator's replay: a running one may have read the event before it was reset).
    pub fn replay(&self) -> Result<NewJob, JobError> {
        Ok(self.to_job()?.priority(10))
    }
}

impl Job for ProcessEvent {
    const MAX_ATTEMPTS: i32 = 10;

    type Deps = EventProcessor;

    async fn run(self, _ctx: &mut JobContext, processor: &EventProcessor) -> anyhow::Result<()> {
        processor.process(&self.event_id).await
    }
}

/// Why an event could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Storing the event failed.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Store(#[from] sqlx::Error),
    /// Enqueueing its processing failed.
    #[error(transparent)]
    Enqueue(#[from] JobError),
}

/// Stores `event` unless it is known, enqueueing its processing in the same transaction;
/// true when it is new.
pub async fn accept(
    conn: &mut PgConnection,
    event: &InboundEvent,
    source: Source,
) -> Result<bool, AcceptError> {
    let new = inbox::record(conn, event, source).await?;
    if new {
        jobs::enqueue(conn, ProcessEvent::new(&event.id).first_run()?).await?;
    }
    Ok(new)
}

/// What processing an event came to.
enum Outcome {
    Processed {
        tenant: TenantId,
        plan_changed: bool,
    },
    Ignored {
        tenant: Option<TenantId>,
        why: String,
    },
}

/// Applies stored events; see the module docs. What [`ProcessEvent`] jobs run with.
pub struct EventProcessor {
    control: ControlDb,
    plans: PlanCatalog,
    /// The mode of the configured secret key: events of the other mode are never applied.
    live: bool,
    changes: Arc<dyn TenantChanges>,
}

impl EventProcessor {
    /// Applies events on the control plane `control`, with the plans of `plans`, refusing
    /// events of the other mode than `secret_key`'s (Stripe's secret key), and telling
    /// `changes` of every plan change.
    pub fn new(
        control: ControlDb,
        plans: PlanCatalog,
        secret_key: &str,
        changes: Arc<dyn TenantChanges>,
    ) -> Self {
        Self {
            control,
            plans,
            live: is_live_key(secret_key),
            changes,
        }
    }

    async fn tenant_for(
        conn: &mut PgConnection,
        customer: Option<&str>,
        named: Option<TenantId>,
    ) -> anyhow::Result<Option<TenantId>> {
        if let Some(customer) = customer
            && let Some(tenant) = accounts::tenant_of_customer(conn, customer).await?
        {
            return Ok(Some(tenant));
        }
        match named {
            Some(tenant) if accounts::tenant_exists(conn, tenant).await? => Ok(Some(tenant)),
            _ => Ok(None),
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &InboundEvent,
    ) -> anyhow::Result<Outcome> {
        let unknown = |what: String| Outcome::Ignored {
            tenant: None,
            why: format!("no tenant has {what}"),
        };
        match meaning(event)? {
            Meaning::Subscription {
                subscription,
                tenant,
            } => {
                let Some(tenant) =
                    Self::tenant_for(conn, Some(&subscription.customer_id), tenant).await?
                else {
                    return Ok(unknown(format!("customer {}", subscription.customer_id)));
                };
                let applied = accounts::apply_subscription(
                    conn,
                    tenant,
                    &subscription,
                    event.created,
                    &self.plans,
                )
                .await?;
                Ok(match applied {
                    Applied::Updated { from, to } => Outcome::Processed {
                        tenant,
                        plan_changed: from != to,
                    },
                    Applied::Stale => Outcome::Ignored {
                        tenant: Some(tenant),
                        why: "a newer subscription event is applied, or this one ends a \
                              subscription other than the one in force"
                            .to_owned(),
                    },
                })
            }
            Meaning::CheckoutCompleted { customer, tenant } => {
                let Some(tenant) = Self::tenant_for(conn, customer.as_deref(), tenant).await?
                else {
                    return Ok(unknown("this checkout session".to_owned()));
                };
                if let Some(customer) = &customer {
                    accounts::set_customer(conn, tenant, customer).await?;
                }
                Ok(Outcome::Processed {
                    tenant,
                    plan_changed: false,
                })
            }
            Meaning::Invoice { customer, paid } => {
                let Some(tenant) = Self::tenant_for(conn, customer.as_deref(), None).await? else {
                    return Ok(unknown(format!(
                        "customer {}",
                        customer.unwrap_or_default()
                    )));
                };
                if accounts::record_payment(conn, tenant, paid, event.created).await? {
                    Ok(Outcome::Processed {
                        tenant,
                        plan_changed: false,
                    })
                } else {
                    Ok(Outcome::Ignored {
                        tenant: Some(tenant),
                        why: "a newer invoice outcome is already recorded".to_owned(),
                    })
                }
            }
            Meaning::Unhandled => Ok(Outcome::Ignored {
                tenant: None,
                why: format!("events of type {} are not used", event.kind),
            }),
        }
    }

    /// Processes stored event `id` (a no-op when it is already processed or ignored).
    pub async fn process(&self, id: &str) -> anyhow::Result<()> {
        let pool = self.control.pool();
        let mut tx = pool.begin().await?;
        let Some(stored) = inbox::lock(&mut tx, id).await? else {
            return Ok(());
        };
        if matches!(stored.status, EventStatus::Processed | EventStatus::Ignored) {
            return Ok(());
        }
        let applied = match InboundEvent::from_value(stored.payload) {
            Ok(event) => match refusal(&event, stored.received_at, self.live) {
                Some(why) => Ok(Outcome::Ignored { tenant: None, why }),
                None => self.apply(&mut tx, &event).await,
            },
            Err(e) => Err(e.into()),
        };
        match applied {
            Ok(Outcome::Processed {
                tenant,
                plan_changed,
            }) => {
                inbox::finish(&mut tx, id, EventStatus::Processed, Some(tenant.0), None).await?;
                tx.commit().await?;
                if plan_changed {
                    self.changes.changed(tenant).await;
                }
                Ok(())
            }
            Ok(Outcome::Ignored { tenant, why }) => {
                let tenant = tenant.map(|t| t.0);
                inbox::finish(&mut tx, id, EventStatus::Ignored, tenant, Some(&why)).await?;
                tx.commit().await?;
                Ok(())
            }
            Err(error) => {
                drop(tx);
                let message = format!("{error:#}");
                let mut conn = pool.acquire().await?;
                inbox::finish(&mut conn, id, EventStatus::Failed, None, Some(&message)).await?;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_keeps_the_shape_queued_jobs_have() {
        let job = ProcessEvent::new("evt_1");
        let payload = serde_json::json!({ "event_id": "evt_1" });
        assert_eq!(serde_json::to_value(&job).expect("serializes"), payload);
        assert_eq!(
            serde_json::from_value::<ProcessEvent>(payload).expect("deserializes"),
            job
        );
        assert_eq!(ProcessEvent::KIND, "billing.process_event");
        assert_eq!(ProcessEvent::MAX_ATTEMPTS, 10);
    }
}
