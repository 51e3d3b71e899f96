//! Billing: the Stripe webhook inbox (`POST /webhooks/stripe`), subscriptions through
//! Stripe Checkout and the billing portal, the tenant's plan, limits and usage, and the
//! platform operator's view of webhook events. See `billing::processing` for what happens
//! to an event once stored.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use billing::{
    accounts,
    inbox::{self, EventFilter, EventStatus, InboundEvent, Source, StoredEvent},
    processing::{ProcessEvent, accept},
    signature,
    stripe_api::{Checkout, StripeError},
};
use chrono::{DateTime, Utc};
use files::store as file_store;
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::{
    AppState,
    admin_auth::PlatformAdmin,
    auth::{Authorized, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    limits::{self, Limited},
    payload::{JsonBody, RawJson, Validate},
    routes::{ApiTag, pagination::page},
};

/// Billing operations.
pub struct BillingApi;

/// A webhook delivery was accepted.
#[derive(Debug, Object)]
pub struct WebhookReceipt {
    /// The event's id.
    pub id: String,
    /// True when the event had been received before (nothing more was done).
    pub duplicate: bool,
}

/// Subscribe to a plan.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// A plan of the catalog that has a price (`pro`, `business` by default).
    pub plan: String,
}

impl Validate for CheckoutRequest {}

/// Where to send the customer.
#[derive(Debug, Object)]
pub struct SessionUrl {
    /// Stripe's page (Checkout or the billing portal).
    pub url: String,
}

/// A plan's limits (absent: unlimited).
#[derive(Debug, Object)]
pub struct LimitsView {
    /// Live products.
    pub products: Option<u64>,
    /// Active users.
    pub seats: Option<u64>,
    /// Bytes of stored files.
    pub storage_bytes: u64,
    /// Largest single upload, in bytes.
    pub upload_bytes: u64,
    /// Media types that may be uploaded.
    pub file_types: Vec<String>,
    /// Authenticated API requests per minute, all users together.
    pub requests_per_minute: Option<u64>,
}

/// What the tenant uses of its limits.
#[derive(Debug, Object)]
pub struct UsageView {
    /// Live products.
    pub products: u64,
    /// Active users.
    pub seats: u64,
    /// Bytes of stored files.
    pub storage_bytes: i64,
}

/// The tenant's subscription.
#[derive(Debug, Object)]
pub struct SubscriptionView {
    /// The plan in force (its limits apply).
    pub plan: String,
    /// Stripe's subscription status (`active`, `past_due`, `canceled`, …); absent before
    /// the first subscription. A canceled or unpaid subscription leaves the `free` plan in
    /// force.
    pub status: Option<String>,
    /// The plan subscribed to.
    pub subscribed_plan: Option<String>,
    /// End of the paid period.
    pub current_period_end: Option<DateTime<Utc>>,
    /// Outcome of the last invoice (`paid`, `failed`).
    pub last_payment_status: Option<String>,
    /// The plan's limits.
    pub limits: LimitsView,
    /// Current usage.
    pub usage: UsageView,
}

/// Processing state of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EventStatusView {
    /// Waiting for its job.
    Pending,
    /// Applied.
    Processed,
    /// Nothing to do (`last_error` says why).
    Ignored,
    /// Processing failed; it is retried (or replay it).
    Failed,
}

impl From<EventStatus> for EventStatusView {
    fn from(status: EventStatus) -> Self {
        match status {
            EventStatus::Pending => Self::Pending,
            EventStatus::Processed => Self::Processed,
            EventStatus::Ignored => Self::Ignored,
            EventStatus::Failed => Self::Failed,
        }
    }
}

impl From<EventStatusView> for EventStatus {
    fn from(status: EventStatusView) -> Self {
        match status {
            EventStatusView::Pending => Self::Pending,
            EventStatusView::Processed => Self::Processed,
            EventStatusView::Ignored => Self::Ignored,
            EventStatusView::Failed => Self::Failed,
        }
    }
}

/// A stored webhook event.
#[derive(Debug, Object)]
pub struct WebhookEvent {
    /// Stripe's event id.
    pub id: String,
    /// Event type.
    #[oai(rename = "type")]
    pub kind: String,
    /// When Stripe created it.
    pub created_at: DateTime<Utc>,
    /// Live or test mode.
    pub livemode: bool,
    /// Processing state.
    pub status: EventStatusView,
    /// The tenant it concerned, once known.
    pub tenant_id: Option<Uuid>,
    /// Processing attempts.
    pub attempts: i32,
    /// Why it failed or was ignored.
    pub last_error: Option<String>,
    /// `webhook` or `reconciliation`.
    pub source: String,
    /// When Canopy stored it.
    pub received_at: DateTime<Utc>,
    /// When processing ended.
    pub processed_at: Option<DateTime<Utc>>,
}

impl From<StoredEvent> for WebhookEvent {
    fn from(e: StoredEvent) -> Self {
        Self {
            id: e.id,
            kind: e.kind,
            created_at: e.created_at,
            livemode: e.livemode,
            status: e.status.into(),
            tenant_id: e.tenant_id,
            attempts: e.attempts,
            last_error: e.last_error,
            source: e.source,
            received_at: e.received_at,
            processed_at: e.processed_at,
        }
    }
}

/// A page of webhook events, newest first.
#[derive(Debug, Object)]
pub struct WebhookEventPage {
    /// The events.
    pub items: Vec<WebhookEvent>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// An event queued for processing again.
#[derive(ApiResponse)]
pub enum Replayed {
    /// Queued; its job runs shortly.
    #[oai(status = 202)]
    Accepted(Json<WebhookEvent>),
}

fn stripe_unavailable(error: StripeError) -> ApiError {
    tracing::warn!(%error, "Stripe call failed");
    ApiError::retry_after(
        ErrorCode::DependencyUnavailable,
        "Stripe could not be reached or refused the request; retry shortly.",
        5,
    )
}

fn encode_cursor(event: &StoredEvent) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", event.received_at.to_rfc3339(), event.id))
}

fn decode_cursor(cursor: &str) -> ApiResult<(DateTime<Utc>, String)> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidParameter,
            "Parameter `cursor` is invalid.",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (at, id) = raw.split_once('|').ok_or_else(invalid)?;
    if !inbox::is_event_id(id) {
        return Err(invalid());
    }
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| invalid())?;
    Ok((at.with_timezone(&Utc), id.to_owned()))
}

fn default_limit() -> i64 {
    50
}

#[OpenApi(tag = "ApiTag::Billing")]
impl BillingApi {
    /// Receive a Stripe event (webhook).
    ///
    /// Called by Stripe, not by clients. The `Stripe-Signature` header must carry a `v1`
    /// HMAC-SHA256 of `"{t}.{body}"` under one of the configured secrets, with `t` at most
    /// 300 s old and at most 60 s ahead; otherwise 400 `invalid_signature`. A genuine event is
    /// stored once by its id and processed by a job: the answer does not wait for the
    /// processing, and a repeated delivery is acknowledged without a second effect.
    #[oai(
        path = "/webhooks/stripe",
        method = "post",
        operation_id = "stripe_webhook"
    )]
    async fn stripe_webhook(
        &self,
        state: Data<&AppState>,
        /// `t=<unix seconds>,v1=<hex signature>[,v1=…]`.
        #[oai(name = "Stripe-Signature")]
        stripe_signature: Header<Option<String>>,
        body: RawJson,
    ) -> ApiResult<Json<WebhookReceipt>> {
        let secrets: Vec<&str> = state
            .settings
            .billing
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret())
            .collect();
        signature::verify(
            stripe_signature.0.as_deref(),
            &body.0,
            &secrets,
            Utc::now().timestamp(),
        )
        .map_err(|e| ApiError::new(ErrorCode::InvalidSignature, format!("{e}.")))?;
        let event = InboundEvent::parse(&body.0)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("The body is {e}.")))?;
        // Deliveries of one event to this instance share one store-and-enqueue: the first
        // runs it, concurrent ones wait for its outcome, later ones reuse it. Another
        // instance's copy meets the database's unique key instead.
        let mut stored_here = false;
        let new = state
            .recent_webhooks
            .try_get_with(event.id.clone(), async {
                let mut tx = state.db.pool().begin().await?;
                let new = accept(&mut tx, &event, Source::Webhook).await?;
                tx.commit().await?;
                stored_here = true;
                Ok::<_, anyhow::Error>(new)
            })
            .await
            .map_err(|e| {
                // Shared between waiters, so flattened to text: classified before that.
                let flat = anyhow::anyhow!("{e:#}");
                match tenancy::unavailable_cause(&**e) {
                    Some(_) => ApiError::database_unavailable(flat),
                    None => ApiError::internal(flat),
                }
            })?;
        Ok(Json(WebhookReceipt {
            id: event.id,
            duplicate: !(new && stored_here),
        }))
    }

    /// Start a subscription.
    ///
    /// Creates the tenant's Stripe customer when it has none, then a Checkout Session in
    /// subscription mode for the plan's price; send the user to the returned URL. The plan
    /// changes when Stripe reports the subscription (by webhook). While a subscription is in
    /// force this is 409 `conflict`: plans change in the billing portal.
    #[oai(
        path = "/v1/billing/checkout",
        method = "post",
        operation_id = "create_checkout_session"
    )]
    async fn checkout(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::BillingManage>,
        body: JsonBody<CheckoutRequest>,
    ) -> ApiResult<Json<SessionUrl>> {
        let tenant = auth.principal.tenant.clone();
        let plan = state.settings.plans.get(body.0.plan.trim());
        let Some(price) = plan.and_then(|p| p.price_ids.first()) else {
            let sellable: Vec<&str> = state
                .settings
                .plans
                .plans()
                .iter()
                .filter(|p| !p.price_ids.is_empty())
                .map(|p| p.name.as_str())
                .collect();
            return Err(ApiError::validation(vec![FieldError::new(
                "plan",
                FieldCode::Invalid,
                format!("Choose one of: {}.", sellable.join(", ")),
            )]));
        };
        let mut conn = state.db.pool().acquire().await?;
        let account = accounts::account(&mut conn, tenant.id)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("tenant row missing")))?;
        if account.status.as_deref().is_some_and(accounts::grants_plan) {
            // A second subscription would bill the tenant twice.
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "The tenant already has a subscription; change plans in the billing portal \
                 (`POST /v1/billing/portal`).",
            ));
        }
        let customer = match account.customer_id {
            Some(customer) => customer,
            None => {
                let email = {
                    let mut tx = auth.begin(&state).await?;
                    let user = identity::store::user_by_id(&mut tx, auth.principal.user_id)
                        .await?
                        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("caller missing")))?;
                    tx.commit().await?;
                    user.email
                };
                let created = state
                    .stripe
                    .create_customer(tenant.id, &tenant.name, &email)
                    .await
                    .map_err(stripe_unavailable)?;
                // Another request may have won the race: use the customer recorded.
                accounts::set_customer(&mut conn, tenant.id, &created).await?
            }
        };
        drop(conn);
        let billing = &state.settings.billing;
        let url = state
            .stripe
            .create_checkout(&Checkout {
                customer: &customer,
                price,
                tenant: tenant.id,
                success_url: &billing.success_url,
                cancel_url: &billing.cancel_url,
            })
            .await
            .map_err(stripe_unavailable)?;
        Ok(Json(SessionUrl { url }))
    }

    /// Open the billing portal.
    ///
    /// Stripe's page where the tenant changes or cancels its subscription, updates its card
    /// and downloads invoices. 409 `no_billing_account` before the first checkout.
    #[oai(
        path = "/v1/billing/portal",
        method = "post",
        operation_id = "create_billing_portal_session"
    )]
    async fn portal(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::BillingManage>,
    ) -> ApiResult<Json<SessionUrl>> {
        let mut conn = state.db.pool().acquire().await?;
        let account = accounts::account(&mut conn, auth.principal.tenant.id).await?;
        drop(conn);
        let Some(customer) = account.and_then(|a| a.customer_id) else {
            return Err(ApiError::new(
                ErrorCode::NoBillingAccount,
                "The tenant has no billing account yet; subscribe first.",
            ));
        };
        let url = state
            .stripe
            .create_portal(&customer, &state.settings.billing.return_url)
            .await
            .map_err(stripe_unavailable)?;
        Ok(Json(SessionUrl { url }))
    }

    /// The tenant's subscription, limits and usage.
    #[oai(
        path = "/v1/billing/subscription",
        method = "get",
        operation_id = "get_subscription"
    )]
    async fn subscription(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::BillingRead>,
    ) -> ApiResult<Json<SubscriptionView>> {
        let tenant = auth.principal.tenant.clone();
        let mut conn = state.db.pool().acquire().await?;
        let account = accounts::account(&mut conn, tenant.id)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("tenant row missing")))?;
        drop(conn);
        let mut tx = auth.begin(&state).await?;
        let products = limits::used(&mut tx, Limited::Products).await?;
        let seats = limits::used(&mut tx, Limited::Seats).await?;
        let (storage_bytes, _) = file_store::usage(&mut tx).await?;
        tx.commit().await?;
        let limits = state.settings.plans.limits(&account.plan);
        Ok(Json(SubscriptionView {
            plan: account.plan.clone(),
            status: account.status,
            subscribed_plan: account.subscribed_plan,
            current_period_end: account.current_period_end,
            last_payment_status: account.last_payment_status,
            limits: LimitsView {
                products: limits.products,
                seats: limits.seats,
                storage_bytes: limits.storage_bytes.as_u64(),
                upload_bytes: limits.upload_bytes.as_u64(),
                file_types: limits.file_types.clone(),
                requests_per_minute: limits.requests_per_minute,
            },
            usage: UsageView {
                products,
                seats,
                storage_bytes,
            },
        }))
    }

    /// List received webhook events.
    ///
    /// Newest first, keyset-paginated: pass `next_cursor` back as `cursor`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per documented query parameter"
    )]
    #[oai(
        path = "/v1/admin/webhook-events",
        method = "get",
        operation_id = "list_webhook_events"
    )]
    async fn list_webhook_events(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        /// Only events in this state.
        status: Query<Option<EventStatusView>>,
        /// Only events of this type.
        #[oai(name = "type", validator(max_length = 200))]
        kind: Query<Option<String>>,
        /// Only events concerning this tenant.
        tenant_id: Query<Option<Uuid>>,
        /// Page size, 1 to 200.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        #[oai(validator(max_length = 400))]
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<WebhookEventPage>> {
        if kind
            .0
            .as_deref()
            .is_some_and(|k| k.chars().any(char::is_control))
        {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "Parameter `type` cannot contain control characters.",
            ));
        }
        let before = cursor.0.as_deref().map(decode_cursor).transpose()?;
        let filter = EventFilter {
            status: status.0.map(EventStatus::from),
            kind: kind.0,
            tenant: tenant_id.0,
            before,
            limit: limit.0 + 1,
        };
        let events = inbox::list(state.db.pool(), &filter).await?;
        let (events, next_cursor) = page(events, limit.0, encode_cursor);
        Ok(Json(WebhookEventPage {
            items: events.into_iter().map(WebhookEvent::from).collect(),
            next_cursor,
        }))
    }

    /// Process a webhook event again.
    ///
    /// Puts the event back to `pending` and queues its processing. Processing is
    /// idempotent: an event whose state is already applied, or older than the state
    /// applied, changes nothing.
    #[oai(
        path = "/v1/admin/webhook-events/:id/replay",
        method = "post",
        operation_id = "replay_webhook_event"
    )]
    async fn replay_webhook_event(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        /// Stripe's event id.
        #[oai(validator(max_length = 255))]
        id: Path<String>,
    ) -> ApiResult<Replayed> {
        let not_found = || {
            ApiError::new(
                ErrorCode::NotFound,
                format!("No webhook event has id {}.", id.0.escape_debug()),
            )
        };
        if !inbox::is_event_id(&id.0) {
            return Err(not_found());
        }
        let mut tx = state.db.pool().begin().await?;
        if !inbox::reset(&mut tx, &id.0).await? {
            return Err(not_found());
        }
        let replay = ProcessEvent::new(&id.0)
            .replay()
            .map_err(ApiError::internal)?;
        jobs::enqueue(&mut tx, replay)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
        let event = inbox::get(state.db.pool(), &id.0)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("replayed event vanished")))?;
        tracing::info!(event_id = %event.id, "webhook event replayed by an operator");
        Ok(Replayed::Accepted(Json(event.into())))
    }
}
