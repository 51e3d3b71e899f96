//! Stripe events, after the webhook endpoint stored them: the job that applies each one
//! ([`ProcessEvent`], `billing.process_event`), and the reconciliation job that lists recent
//! events from Stripe's API to catch deliveries that never arrived ([`Reconcile`],
//! `billing.reconcile`, scheduled by [`schedule_reconciliation`]).
//!
//! Events map to a tenant through its Stripe customer, or through the tenant id Canopy put
//! in the checkout session's and the subscription's metadata. Subscription events set the
//! tenant's subscription state and plan in the order Stripe created them, whatever order
//! they arrive in (see `billing::accounts`). Every step is idempotent: an event processed
//! twice (a replay, a job run again after a crash) changes nothing the second time.

use std::time::Duration;

use anyhow::Context;
use billing::{
    accounts::{self, Applied},
    events::{Meaning, meaning, refusal},
    inbox::{self, EventStatus, InboundEvent, Source},
};
use jobs::{JobContext, JobHandler, NewJob};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tenancy::{BoxFuture, ControlDb, TenantId};

use crate::{AppState, tenant::publish_change};

/// Job kind: apply one stored event.
pub const PROCESS_EVENT: &str = "billing.process_event";
/// Job kind: list recent events from Stripe and store those missing.
pub const RECONCILE: &str = "billing.reconcile";

/// How far back reconciliation looks.
pub const RECONCILE_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct EventJob {
    event_id: String,
}

/// The job applying stored event `id` (enqueue it in the transaction that stores it).
pub fn process_event_job(id: &str) -> NewJob {
    replay_event_job(id).unique(format!("{PROCESS_EVENT}:{id}"))
}

/// A job applying stored event `id` again, whatever job of it is pending or running (an
/// operator's replay: a running one may have read the event before it was reset).
pub fn replay_event_job(id: &str) -> NewJob {
    NewJob::new(
        PROCESS_EVENT,
        json!(EventJob {
            event_id: id.to_owned()
        }),
    )
    .priority(10)
    .max_attempts(10)
}

/// Stores `event` unless it is known, enqueueing its processing in the same transaction;
/// true when it is new.
pub async fn accept(
    conn: &mut PgConnection,
    event: &InboundEvent,
    source: Source,
) -> anyhow::Result<bool> {
    let new = inbox::record(conn, event, source).await?;
    if new {
        jobs::enqueue(conn, process_event_job(&event.id)).await?;
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

/// Applies stored events; see the module docs.
pub struct ProcessEvent {
    state: AppState,
    /// The mode of the configured secret key: events of the other mode are never applied.
    live: bool,
}

impl ProcessEvent {
    /// With the app's state (settings, and the tenant cache to refresh on plan changes).
    pub fn new(state: AppState) -> Self {
        let live =
            billing::stripe_api::is_live_key(state.settings.billing.secret_key.expose_secret());
        Self { state, live }
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
                    &self.state.settings.plans,
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
        let pool = self.state.db.pool();
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
                    publish_change(&self.state, tenant).await;
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

impl JobHandler for ProcessEvent {
    fn kind(&self) -> &'static str {
        PROCESS_EVENT
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let job: EventJob = serde_json::from_value(payload)?;
            self.process(&job.event_id).await
        })
    }
}

/// Lists recent events from Stripe and accepts those never delivered; see the module docs.
pub struct Reconcile {
    state: AppState,
}

impl Reconcile {
    /// With the app's state (the Stripe client, the control plane).
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// One pass; returns how many events were missing.
    pub async fn reconcile(&self) -> anyhow::Result<usize> {
        let since = chrono::Utc::now().timestamp() - RECONCILE_WINDOW.as_secs() as i64;
        let events = self
            .state
            .stripe
            .events_since(since)
            .await
            .context("listing events")?;
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let known = inbox::known(self.state.db.pool(), &ids).await?;
        let mut missing = 0;
        for event in events.iter().filter(|e| !known.contains(&e.id)) {
            // One event that cannot be stored must not hide the others.
            let accepted = async {
                let mut tx = self.state.db.pool().begin().await?;
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

impl JobHandler for Reconcile {
    fn kind(&self) -> &'static str {
        RECONCILE
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a mut JobContext,
        _payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let missing = self.reconcile().await?;
            if missing > 0 {
                tracing::warn!(
                    missing,
                    "reconciliation found events that were never delivered"
                );
            }
            Ok(())
        })
    }
}

/// Enqueues a reconciliation every `interval`, the first one `interval` after start-up (at
/// most one pending at a time, however many instances run this).
pub async fn schedule_reconciliation(control: ControlDb, interval: Duration) {
    let job = NewJob::new(RECONCILE, json!({}))
        .unique(RECONCILE)
        .max_attempts(3);
    jobs::enqueue_every(control, interval, job).await;
}
