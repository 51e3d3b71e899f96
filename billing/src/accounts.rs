//! Each tenant's billing account, on its control-plane row: the provider's customer, the
//! subscription's state, and the plan that state grants. Subscription events are applied
//! in the order the provider created them, whatever the order they arrive in: an event
//! older than the state already applied never overwrites it.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use tenancy::TenantId;

use crate::{FREE_PLAN, PlanCatalog};

/// A tenant's billing account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The plan in force (whose limits apply).
    pub plan: String,
    /// The provider's customer, once created.
    pub customer_id: Option<String>,
    /// The subscription, once there is one.
    pub subscription_id: Option<String>,
    /// Its status (`active`, `past_due`, `canceled`, …).
    pub status: Option<String>,
    /// The plan the subscription is for (in force only while the status allows).
    pub subscribed_plan: Option<String>,
    /// End of the paid period.
    pub current_period_end: Option<DateTime<Utc>>,
    /// Outcome of the last invoice.
    pub last_payment_status: Option<String>,
    /// When it came.
    pub last_payment_at: Option<DateTime<Utc>>,
}

/// The account of `tenant`, if the tenant exists.
pub async fn account(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<Account>, sqlx::Error> {
    let row = sqlx::query(
        "select plan, stripe_customer_id, subscription_id, subscription_status,
                subscription_plan, current_period_end, last_payment_status, last_payment_at
         from public.tenants where id = $1",
    )
    .bind(tenant.0)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Account {
            plan: row.try_get("plan")?,
            customer_id: row.try_get("stripe_customer_id")?,
            subscription_id: row.try_get("subscription_id")?,
            status: row.try_get("subscription_status")?,
            subscribed_plan: row.try_get("subscription_plan")?,
            current_period_end: row.try_get("current_period_end")?,
            last_payment_status: row.try_get("last_payment_status")?,
            last_payment_at: row.try_get("last_payment_at")?,
        })
    })
    .transpose()
}

/// Records `customer` as `tenant`'s unless it has one already; returns the one it has.
pub async fn set_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "update public.tenants set stripe_customer_id = coalesce(stripe_customer_id, $2)
         where id = $1 returning stripe_customer_id",
    )
    .bind(tenant.0)
    .bind(customer)
    .fetch_one(conn)
    .await
}

/// The tenant whose customer `customer` is.
pub async fn tenant_of_customer(
    conn: &mut PgConnection,
    customer: &str,
) -> Result<Option<TenantId>, sqlx::Error> {
    let id: Option<uuid::Uuid> =
        sqlx::query_scalar("select id from public.tenants where stripe_customer_id = $1")
            .bind(customer)
            .fetch_optional(conn)
            .await?;
    Ok(id.map(TenantId))
}

/// Whether a tenant with this id exists (for ids read from event metadata).
pub async fn tenant_exists(conn: &mut PgConnection, tenant: TenantId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from public.tenants where id = $1)")
        .bind(tenant.0)
        .fetch_one(conn)
        .await
}

/// A subscription as an event shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `sub_…`.
    pub id: String,
    /// `cus_…`.
    pub customer_id: String,
    /// `active`, `trialing`, `past_due`, `canceled`, `unpaid`, `incomplete`, …
    pub status: String,
    /// The price of its (first) item.
    pub price_id: Option<String>,
    /// End of the paid period.
    pub current_period_end: Option<DateTime<Utc>>,
}

/// Statuses that keep the subscribed plan in force. `past_due` keeps it while the provider
/// retries the payment; `canceled`, `unpaid`, `incomplete`, `incomplete_expired` and
/// `paused` fall back to the free plan (data is kept, the free limits apply).
pub fn grants_plan(status: &str) -> bool {
    matches!(status, "active" | "trialing" | "past_due")
}

/// What applying a subscription event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The state was written; the plan in force went from `from` to `to`.
    Updated {
        /// Plan before.
        from: String,
        /// Plan after.
        to: String,
    },
    /// The account already holds the state of a newer event, or the event ends a
    /// subscription other than the one in force: nothing was written.
    Stale,
}

/// Applies `subscription`, as of an event created at `event_at`, to `tenant`'s account,
/// unless a newer event's state is already there. The row is locked, so concurrent
/// events for one tenant apply one after the other.
pub async fn apply_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    subscription: &Subscription,
    event_at: DateTime<Utc>,
    catalog: &PlanCatalog,
) -> Result<Applied, sqlx::Error> {
    let row = sqlx::query(
        "select plan, subscription_event_at, subscription_id, subscription_status
         from public.tenants where id = $1 for update",
    )
    .bind(tenant.0)
    .fetch_one(&mut *conn)
    .await?;
    let from: String = row.try_get("plan")?;
    let applied_at: Option<DateTime<Utc>> = row.try_get("subscription_event_at")?;
    if applied_at.is_some_and(|at| event_at < at) {
        return Ok(Applied::Stale);
    }
    // The end of a replaced subscription must not end the one that replaced it.
    let current_id: Option<String> = row.try_get("subscription_id")?;
    let current_status: Option<String> = row.try_get("subscription_status")?;
    let replaced = current_id
        .as_deref()
        .is_some_and(|id| id != subscription.id)
        && current_status.as_deref().is_some_and(grants_plan)
        && !grants_plan(&subscription.status);
    if replaced {
        return Ok(Applied::Stale);
    }
    let subscribed = subscription
        .price_id
        .as_deref()
        .and_then(|price| catalog.by_price(price))
        .map(|plan| plan.name.clone());
    let to = match &subscribed {
        Some(plan) if grants_plan(&subscription.status) => plan.clone(),
        _ => FREE_PLAN.to_owned(),
    };
    sqlx::query(
        "update public.tenants
         set plan = $2, stripe_customer_id = coalesce(stripe_customer_id, $3),
             subscription_id = $4, subscription_status = $5, subscription_plan = $6,
             current_period_end = $7, subscription_event_at = $8, updated_at = now()
         where id = $1",
    )
    .bind(tenant.0)
    .bind(&to)
    .bind(&subscription.customer_id)
    .bind(&subscription.id)
    .bind(&subscription.status)
    .bind(&subscribed)
    .bind(subscription.current_period_end)
    .bind(event_at)
    .execute(conn)
    .await?;
    Ok(Applied::Updated { from, to })
}

/// Records an invoice's outcome, unless a newer one is recorded.
pub async fn record_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    paid: bool,
    event_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update public.tenants set last_payment_status = $2, last_payment_at = $3
         where id = $1 and (last_payment_at is null or last_payment_at <= $3)",
    )
    .bind(tenant.0)
    .bind(if paid { "paid" } else { "failed" })
    .bind(event_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
