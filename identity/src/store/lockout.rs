//! Failed logins: counting them in a window, locking the account, and clearing the count
//! after a successful login.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;

/// How failed logins lock an account.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Failures within `window` that lock the account.
    pub max_failures: u32,
    /// The counting window, from the first failure.
    pub window: Duration,
    /// How long the account stays locked.
    pub lockout: Duration,
}

/// Counts a failed login; returns when the account is locked until, if this failure
/// locked it.
pub async fn record_login_failure(
    conn: &mut PgConnection,
    user: Uuid,
    policy: LockoutPolicy,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (count, start): (i32, Option<DateTime<Utc>>) = sqlx::query_as(
        "select failed_logins, failed_login_window_start from users where id = $1 for update",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    let now = Utc::now();
    let window = chrono::Duration::from_std(policy.window).unwrap_or(chrono::Duration::MAX);
    let (count, start) = match start {
        Some(start) if now - start <= window => (count.saturating_add(1), start),
        _ => (1, now),
    };
    let locked_until = (u32::try_from(count).unwrap_or(0) >= policy.max_failures)
        .then(|| now + chrono::Duration::from_std(policy.lockout).unwrap_or(chrono::Duration::MAX));
    // Locking starts a fresh count for after the lock.
    let (count, start) = if locked_until.is_some() {
        (0, None)
    } else {
        (count, Some(start))
    };
    sqlx::query(
        "update users set failed_logins = $2, failed_login_window_start = $3,
                locked_until = coalesce($4, locked_until)
         where id = $1",
    )
    .bind(user)
    .bind(count)
    .bind(start)
    .bind(locked_until)
    .execute(conn)
    .await?;
    Ok(locked_until)
}

/// Clears the failure count after a successful login, storing `rehashed` when given.
pub async fn record_login_success(
    conn: &mut PgConnection,
    user: Uuid,
    rehashed: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "update users set failed_logins = 0, failed_login_window_start = null,
                locked_until = null, last_login_at = now(),
                password_hash = coalesce($2, password_hash)
         where id = $1",
    )
    .bind(user)
    .bind(rehashed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores `rehashed`, a stronger hash of a password just verified against `previous`,
/// when a login answers a second step instead of a session (and so never reaches
/// [`record_login_success`]). Leaves the failure count alone (the login is not complete)
/// and any hash but `previous` (the password changed meanwhile). Whether it was stored.
pub async fn store_rehashed_password(
    conn: &mut PgConnection,
    user: Uuid,
    previous: &str,
    rehashed: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update users set password_hash = $3
         where id = $1 and password_hash = $2",
    )
    .bind(user)
    .bind(previous)
    .bind(rehashed)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
