//! The plan limits enforced where they apply: products and seats here (counted inside the
//! tenant transaction that would pass them, under a per-tenant advisory lock so that
//! concurrent requests cannot both take the last unit); storage and upload size live with
//! the files. Passing a limit is a [`LimitError::LimitReached`] naming it, which the API
//! answers with a 402 `plan_limit_reached`.
//!
//! A seat is an active user (or one with a security issue, or an open invitation of a user
//! an administrator created: `POST /v1/users` reserves the seat until it is accepted). Whatever makes a user active (email verification, a password
//! reset that verifies a pending user, reactivation, any later path such as accepting an
//! invitation) goes through [`ensure_seats`] with the [`identity::Activated`] its store
//! call returned, in the same transaction: that one function is where seats are judged.

use identity::Activated;
use sqlx::PgConnection;
use tenancy::Tenant;

use crate::PlanCatalog;

/// What is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Live products.
    Products,
    /// Active users.
    Seats,
}

impl Limited {
    /// The limit's name, as plans and refusals spell it (`products`, `seats`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Seats => "seats",
        }
    }

    fn count_sql(self) -> &'static str {
        match self {
            Self::Products => "select count(*) from products where deleted_at is null",
            // Users with a security issue keep their seat (a reset brings them back), and
            // so do open, unexpired invitations of users an administrator created.
            Self::Seats => {
                "select (select count(*) from users where status in ('active', 'security_issue'))
                      + (select count(*) from invitations
                         where reserves_seat and accepted_at is null and revoked_at is null
                           and expires_at > now())"
            }
        }
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The change would pass what the tenant's plan allows of `limit`.
    #[error("the tenant's plan allows {allowed} {}; {used} are in use", limit.name())]
    LimitReached {
        /// What is limited.
        limit: Limited,
        /// What the plan allows.
        allowed: u64,
        /// How many are in use (without the refused change).
        used: u64,
    },
    /// The database failed.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// How many of `limit` are in use, in the tenant transaction `conn` is in.
pub async fn used(conn: &mut PgConnection, limit: Limited) -> Result<u64, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(limit.count_sql())
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Refuses adding `adding` of `limit` past what `tenant`'s plan in `plans` allows. Takes a
/// per-tenant lock held until the transaction ends, so check and insert are one step.
pub async fn ensure_room(
    plans: &PlanCatalog,
    conn: &mut PgConnection,
    tenant: &Tenant,
    limit: Limited,
    adding: u64,
) -> Result<(), LimitError> {
    if let Some((allowed, used)) = allowed_and_used(plans, conn, tenant, limit).await?
        && used + adding > allowed
    {
        return Err(LimitError::LimitReached {
            limit,
            allowed,
            used,
        });
    }
    Ok(())
}

/// The seat check of every activation: when `activated` made anyone active in the
/// transaction `conn` is in, refuses (the transaction to be rolled back) if the active
/// users now exceed `tenant`'s plan. Call it after the change, before committing.
pub async fn ensure_seats(
    plans: &PlanCatalog,
    conn: &mut PgConnection,
    tenant: &Tenant,
    activated: Activated,
) -> Result<(), LimitError> {
    if activated.count() == 0 {
        return Ok(());
    }
    if let Some((allowed, used)) = allowed_and_used(plans, conn, tenant, Limited::Seats).await?
        && used > allowed
    {
        // Counted after the change: the refusal reports the seats in use without it.
        let before = used.saturating_sub(activated.count());
        return Err(LimitError::LimitReached {
            limit: Limited::Seats,
            allowed,
            used: before,
        });
    }
    Ok(())
}

/// What `tenant`'s plan allows of `limit` and how many are in use, under the per-tenant
/// lock of that limit (held until the transaction ends); `None` when the plan sets no
/// limit.
async fn allowed_and_used(
    plans: &PlanCatalog,
    conn: &mut PgConnection,
    tenant: &Tenant,
    limit: Limited,
) -> Result<Option<(u64, u64)>, sqlx::Error> {
    let limits = plans.limits(&tenant.plan);
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
pub async fn lock(
    conn: &mut PgConnection,
    tenant: &Tenant,
    limit: Limited,
) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("canopy:{}:{}", tenant.id.0, limit.name()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}
