//! The plan limits enforced where they apply: products and seats here (counted inside the
//! tenant transaction that would pass them, under a per-tenant advisory lock so that
//! concurrent requests cannot both take the last unit), storage and upload size in
//! `routes::files`. A request over a limit is a 402 `plan_limit_reached` naming it.
//!
//! A seat is an active user. Whatever makes a user active (email verification, a password
//! reset that verifies a pending user, reactivation, any later path such as accepting an
//! invitation) goes through [`ensure_seats`] with the [`identity::Activated`] its store
//! call returned, in the same transaction: that one function is where seats are judged.

use identity::Activated;
use sqlx::PgConnection;
use tenancy::Tenant;

use crate::{
    AppState,
    error::{ApiError, ApiResult, ErrorCode},
};

/// What is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Live products.
    Products,
    /// Active users.
    Seats,
}

impl Limited {
    fn name(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Seats => "seats",
        }
    }

    fn count_sql(self) -> &'static str {
        match self {
            Self::Products => "select count(*) from products where deleted_at is null",
            Self::Seats => "select count(*) from users where status = 'active'",
        }
    }
}

/// The 402 for passing `limit`.
pub fn limit_reached(limit: Limited, allowed: u64, used: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PlanLimitReached,
        format!(
            "The tenant's plan allows {allowed} {}; {used} are in use.",
            limit.name()
        ),
    )
    .with_extension("limit", limit.name().into())
    .with_extension("allowed", allowed.into())
    .with_extension("used", used.into())
}

/// How many of `limit` are in use, in the tenant transaction `conn` is in.
pub async fn used(conn: &mut PgConnection, limit: Limited) -> ApiResult<u64> {
    let count: i64 = sqlx::query_scalar(limit.count_sql())
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Refuses adding `adding` of `limit` past what `tenant`'s plan allows. Takes a
/// per-tenant lock held until the transaction ends, so check and insert are one step.
pub async fn ensure_room(
    state: &AppState,
    conn: &mut PgConnection,
    tenant: &Tenant,
    limit: Limited,
    adding: u64,
) -> ApiResult<()> {
    if let Some((allowed, used)) = allowed_and_used(state, conn, tenant, limit).await?
        && used + adding > allowed
    {
        return Err(limit_reached(limit, allowed, used));
    }
    Ok(())
}

/// The seat check of every activation: when `activated` made anyone active in the
/// transaction `conn` is in, refuses (402, the transaction to be rolled back) if the active
/// users now exceed `tenant`'s plan. Call it after the change, before committing.
pub async fn ensure_seats(
    state: &AppState,
    conn: &mut PgConnection,
    tenant: &Tenant,
    activated: Activated,
) -> ApiResult<()> {
    if activated.count() == 0 {
        return Ok(());
    }
    if let Some((allowed, used)) = allowed_and_used(state, conn, tenant, Limited::Seats).await?
        && used > allowed
    {
        // Counted after the change: the refusal reports the seats in use without it.
        let before = used.saturating_sub(activated.count());
        return Err(limit_reached(Limited::Seats, allowed, before));
    }
    Ok(())
}

/// What `tenant`'s plan allows of `limit` and how many are in use, under the per-tenant
/// lock of that limit (held until the transaction ends); `None` when the plan sets no
/// limit.
async fn allowed_and_used(
    state: &AppState,
    conn: &mut PgConnection,
    tenant: &Tenant,
    limit: Limited,
) -> ApiResult<Option<(u64, u64)>> {
    let limits = state.settings.plans.limits(&tenant.plan);
    let allowed = match limit {
        Limited::Products => limits.products,
        Limited::Seats => limits.seats,
    };
    let Some(allowed) = allowed else {
        return Ok(None);
    };
    lock(conn, tenant, limit).await?;
    Ok(Some((allowed, used(conn, limit).await?)))
}

/// Takes `tenant`'s lock of `limit` until the transaction ends (the checks above take it
/// too; taking it again is a no-op). A path that must write before it can count, such as
/// accepting an invitation, takes it first, so that every path takes the locks of a
/// registration in the same order: roles, then seats, then the users' unique index.
pub async fn lock(conn: &mut PgConnection, tenant: &Tenant, limit: Limited) -> ApiResult<()> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("canopy:{}:{}", tenant.id.0, limit.name()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}
