//! What a webhook event means for Canopy. Only the few fields used are read, tolerantly
//! (an expandable reference may be an id or an object; `current_period_end` sits on the
//! subscription in older API versions and on its items in newer ones), so that a change of
//! Stripe API version elsewhere in the payload never breaks processing.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tenancy::TenantId;

use crate::{accounts::Subscription, inbox::InboundEvent};

/// What an event asks of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// `customer.subscription.created|updated|deleted`: the subscription's state.
    Subscription {
        /// The state.
        subscription: Subscription,
        /// The tenant named in its metadata, if any.
        tenant: Option<TenantId>,
    },
    /// `checkout.session.completed`: the customer now belongs to the tenant.
    CheckoutCompleted {
        /// `cus_…`.
        customer: Option<String>,
        /// The tenant named in the session (metadata or `client_reference_id`).
        tenant: Option<TenantId>,
    },
    /// `invoice.paid` / `invoice.payment_failed`.
    Invoice {
        /// `cus_…`.
        customer: Option<String>,
        /// Paid or failed.
        paid: bool,
    },
    /// A type Canopy does not act on.
    Unhandled,
}

/// An event of a handled type whose object lacks what it needs.
#[derive(Debug, thiserror::Error)]
#[error("{kind} event: {reason}")]
pub struct Malformed {
    kind: String,
    reason: String,
}

/// The id of an expandable reference (`"cus_1"` or `{"id": "cus_1", …}`).
fn reference(value: &Value) -> Option<String> {
    match value {
        Value::String(id) => Some(id.clone()),
        Value::Object(object) => object.get("id")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn tenant_in(object: &Value) -> Option<TenantId> {
    let id = object["metadata"]["tenant_id"]
        .as_str()
        .or_else(|| object["client_reference_id"].as_str())?;
    id.parse().ok().map(TenantId)
}

fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(value.as_i64()?, 0).single()
}

/// Reads what `event` means (see [`Meaning`]).
pub fn meaning(event: &InboundEvent) -> Result<Meaning, Malformed> {
    let object = event.object();
    let malformed = |reason: &str| Malformed {
        kind: event.kind.clone(),
        reason: reason.to_owned(),
    };
    match event.kind.as_str() {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let item = &object["items"]["data"][0];
            let subscription = Subscription {
                id: object["id"]
                    .as_str()
                    .ok_or_else(|| malformed("no subscription id"))?
                    .to_owned(),
                customer_id: reference(&object["customer"])
                    .ok_or_else(|| malformed("no customer"))?,
                status: object["status"]
                    .as_str()
                    .ok_or_else(|| malformed("no status"))?
                    .to_owned(),
                price_id: reference(&item["price"]).or_else(|| reference(&item["plan"])),
                current_period_end: timestamp(&item["current_period_end"])
                    .or_else(|| timestamp(&object["current_period_end"])),
            };
            Ok(Meaning::Subscription {
                subscription,
                tenant: tenant_in(object),
            })
        }
        "checkout.session.completed" => Ok(Meaning::CheckoutCompleted {
            customer: reference(&object["customer"]),
            tenant: tenant_in(object),
        }),
        "invoice.paid" | "invoice.payment_failed" => Ok(Meaning::Invoice {
            customer: reference(&object["customer"]),
            paid: event.kind == "invoice.paid",
        }),
        _ => Ok(Meaning::Unhandled),
    }
}

/// Why `event`, received at `received_at`, must not be applied whatever it says, when it
/// must not: an event whose `livemode` disagrees with the mode of the configured secret key
/// (`live`) belongs to the other Stripe mode (a test event signed with a secret shared
/// between modes must never touch a live tenant, nor the reverse), and an event created
/// after it arrived, beyond the signature's clock skew, is impossible from Stripe and would
/// make every later event look stale to the ordering guard of [`crate::accounts`].
pub fn refusal(event: &InboundEvent, received_at: DateTime<Utc>, live: bool) -> Option<String> {
    if event.livemode != live {
        let mode = |live| if live { "live" } else { "test" };
        return Some(format!(
            "a {} mode event, but the configured secret key is for {} mode",
            mode(event.livemode),
            mode(live)
        ));
    }
    let skew = chrono::Duration::seconds(crate::signature::FUTURE_SKEW);
    if event.created > received_at + skew {
        return Some(format!(
            "created at {}, after it was received ({received_at}) by more than {} s",
            event.created,
            crate::signature::FUTURE_SKEW
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, object: Value) -> InboundEvent {
        InboundEvent::from_value(json!({
            "id": "evt_1", "object": "event", "type": kind, "created": 1_800_000_000,
            "livemode": false, "data": {"object": object}
        }))
        .unwrap()
    }

    #[test]
    fn subscriptions_of_old_and_new_api_versions() {
        let tenant = "0199a1b2-0000-7000-8000-000000000001";
        let new = event(
            "customer.subscription.updated",
            json!({"id": "sub_1", "object": "subscription", "customer": "cus_1",
                   "status": "active", "metadata": {"tenant_id": tenant},
                   "items": {"data": [{"price": {"id": "price_pro"}, "current_period_end": 1_800_100_000}]}}),
        );
        let Meaning::Subscription {
            subscription,
            tenant: named,
        } = meaning(&new).unwrap()
        else {
            panic!("a subscription")
        };
        assert_eq!(subscription.customer_id, "cus_1");
        assert_eq!(subscription.price_id.as_deref(), Some("price_pro"));
        assert_eq!(
            subscription.current_period_end.map(|t| t.timestamp()),
            Some(1_800_100_000)
        );
        assert_eq!(named.map(|t| t.0.to_string()).as_deref(), Some(tenant));

        let old = event(
            "customer.subscription.deleted",
            json!({"id": "sub_1", "customer": {"id": "cus_2", "object": "customer"},
                   "status": "canceled", "current_period_end": 1_800_000_500,
                   "items": {"data": [{"price": "price_pro"}]}}),
        );
        let Meaning::Subscription { subscription, .. } = meaning(&old).unwrap() else {
            panic!("a subscription")
        };
        assert_eq!(subscription.customer_id, "cus_2");
        assert_eq!(subscription.status, "canceled");
        assert_eq!(
            subscription.current_period_end.map(|t| t.timestamp()),
            Some(1_800_000_500)
        );
    }

    #[test]
    fn invoices_checkouts_and_the_rest() {
        let paid = event("invoice.paid", json!({"id": "in_1", "customer": "cus_1"}));
        assert_eq!(
            meaning(&paid).unwrap(),
            Meaning::Invoice {
                customer: Some("cus_1".into()),
                paid: true
            }
        );
        let failed = event("invoice.payment_failed", json!({"id": "in_2"}));
        assert_eq!(
            meaning(&failed).unwrap(),
            Meaning::Invoice {
                customer: None,
                paid: false
            }
        );
        let checkout = event(
            "checkout.session.completed",
            json!({"id": "cs_1", "customer": "cus_9",
                   "client_reference_id": "0199a1b2-0000-7000-8000-000000000002"}),
        );
        let Meaning::CheckoutCompleted { customer, tenant } = meaning(&checkout).unwrap() else {
            panic!("a checkout")
        };
        assert_eq!(customer.as_deref(), Some("cus_9"));
        assert!(tenant.is_some());
        let other = event("charge.refunded", json!({"id": "ch_1"}));
        assert_eq!(meaning(&other).unwrap(), Meaning::Unhandled);
        let broken = event("customer.subscription.updated", json!({"id": "sub_1"}));
        assert!(meaning(&broken).is_err());
    }

    #[test]
    fn events_of_the_other_mode_or_from_the_future_are_refused() {
        let at = |secs| Utc.timestamp_opt(secs, 0).unwrap();
        let test_event = event("invoice.paid", json!({"id": "in_1"}));
        assert_eq!(refusal(&test_event, at(1_800_000_000), false), None);
        let refused = refusal(&test_event, at(1_800_000_000), true).unwrap();
        assert!(refused.contains("test mode event"), "{refused}");
        let mut live_event = test_event.clone();
        live_event.livemode = true;
        assert_eq!(refusal(&live_event, at(1_800_000_000), true), None);
        assert!(refusal(&live_event, at(1_800_000_000), false).is_some());

        // Created up to the signature's skew after arrival: fine; later: refused.
        assert_eq!(refusal(&test_event, at(1_800_000_000 - 60), false), None);
        let future = refusal(&test_event, at(1_800_000_000 - 61), false).unwrap();
        assert!(future.contains("after it was received"), "{future}");
    }
}
