//! The calls Canopy makes to Stripe's API, through async-stripe's client: customers,
//! subscription Checkout Sessions, billing-portal sessions, and the event listing that
//! reconciliation reads. The base URL is configuration (tests point it at a local server).

use std::{collections::HashMap, time::Duration};

use stripe::{Client, ClientBuilder};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::{
    CheckoutSessionMode,
    checkout_session::{
        CreateCheckoutSession, CreateCheckoutSessionLineItems,
        CreateCheckoutSessionSubscriptionData,
    },
};
use stripe_core::{customer::CreateCustomer, event::ListEvent};
use stripe_types::RangeQueryTs;
use tenancy::TenantId;

use crate::inbox::InboundEvent;

/// A Stripe call that failed.
#[derive(Debug, thiserror::Error)]
#[error("Stripe: {0}")]
pub struct StripeError(String);

/// Whether a Stripe secret (`sk_…`) or restricted (`rk_…`) key is a live-mode key: events
/// Canopy acts on must be of the same mode (see [`crate::events::refusal`]). Anything but a
/// `…_live_…` key, the development placeholder included, is test mode.
pub fn is_live_key(key: &str) -> bool {
    key.starts_with("sk_live_") || key.starts_with("rk_live_")
}

/// Where to reach Stripe, and as whom.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi").finish_non_exhaustive()
    }
}

/// A checkout to start.
#[derive(Debug)]
pub struct Checkout<'a> {
    /// The tenant's customer.
    pub customer: &'a str,
    /// The plan's price.
    pub price: &'a str,
    /// The tenant (in the session's and the subscription's metadata).
    pub tenant: TenantId,
    /// After paying.
    pub success_url: &'a str,
    /// After giving up.
    pub cancel_url: &'a str,
}

fn tenant_metadata(tenant: TenantId) -> HashMap<String, String> {
    HashMap::from([("tenant_id".to_owned(), tenant.0.to_string())])
}

impl StripeApi {
    /// A client for `base_url` (`https://api.stripe.com` in production) with `secret_key`.
    pub fn new(base_url: &str, secret_key: &str) -> Result<Self, StripeError> {
        // Several crypto back-ends are compiled in (through other crates); rustls needs
        // to be told which one the process uses. A second call is a no-op.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // The client appends `v1/…` to the base as given.
        let base = format!("{}/", base_url.trim_end_matches('/'));
        let client = ClientBuilder::new(secret_key)
            .url(base)
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| StripeError(e.to_string()))?;
        Ok(Self { client })
    }

    /// Creates the customer of `tenant`; returns its id.
    pub async fn create_customer(
        &self,
        tenant: TenantId,
        name: &str,
        email: &str,
    ) -> Result<String, StripeError> {
        let customer = CreateCustomer::new()
            .email(email)
            .name(name)
            .metadata(tenant_metadata(tenant))
            .send(&self.client)
            .await
            .map_err(|e| StripeError(e.to_string()))?;
        Ok(customer.id.to_string())
    }

    /// Starts a subscription Checkout Session; returns its URL.
    pub async fn create_checkout(&self, checkout: &Checkout<'_>) -> Result<String, StripeError> {
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(checkout.price.to_owned());
        item.quantity = Some(1);
        let mut subscription = CreateCheckoutSessionSubscriptionData::new();
        subscription.metadata = Some(tenant_metadata(checkout.tenant));
        let session = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Subscription)
            .customer(checkout.customer)
            .line_items(vec![item])
            .success_url(checkout.success_url)
            .cancel_url(checkout.cancel_url)
            .client_reference_id(checkout.tenant.0.to_string())
            .metadata(tenant_metadata(checkout.tenant))
            .subscription_data(subscription)
            .send(&self.client)
            .await
            .map_err(|e| StripeError(e.to_string()))?;
        session
            .url
            .ok_or_else(|| StripeError("the checkout session has no URL".to_owned()))
    }

    /// Opens a billing-portal session for `customer`; returns its URL.
    pub async fn create_portal(
        &self,
        customer: &str,
        return_url: &str,
    ) -> Result<String, StripeError> {
        let session = CreateBillingPortalSession::new()
            .customer(customer)
            .return_url(return_url)
            .send(&self.client)
            .await
            .map_err(|e| StripeError(e.to_string()))?;
        Ok(session.url)
    }

    /// Every event created at or after `since` (unix seconds), oldest pages last.
    pub async fn events_since(&self, since: i64) -> Result<Vec<InboundEvent>, StripeError> {
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListEvent::new()
                .created(RangeQueryTs::gte(since))
                .limit(100);
            if let Some(after) = &after {
                request = request.starting_after(after.clone());
            }
            let page = request
                .send(&self.client)
                .await
                .map_err(|e| StripeError(e.to_string()))?;
            for event in &page.data {
                let object: serde_json::Value =
                    serde_json::from_str(&miniserde::json::to_string(&event.data.object))
                        .map_err(|e| StripeError(e.to_string()))?;
                let payload = serde_json::json!({
                    "id": event.id.as_str(),
                    "object": "event",
                    "type": event.type_.as_str(),
                    "created": event.created,
                    "livemode": event.livemode,
                    "data": {"object": object},
                });
                events.push(
                    InboundEvent::from_value(payload).map_err(|e| StripeError(e.to_string()))?,
                );
            }
            match page.data.last() {
                Some(last) if page.has_more => after = Some(last.id.to_string()),
                _ => break,
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::is_live_key;

    #[test]
    fn the_mode_of_a_key() {
        assert!(is_live_key("sk_live_51Habc"));
        assert!(is_live_key("rk_live_51Habc"));
        assert!(!is_live_key("sk_test_51Habc"));
        assert!(!is_live_key("rk_test_51Habc"));
        assert!(!is_live_key("sk_test_canopy_development"));
        assert!(!is_live_key("pk_live_51Habc"));
    }
}
