//! Users: their status, the user record, creation, lookup, verification, password and
//! status changes, and listing.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tenancy::ConstraintExt;
use uuid::Uuid;

use super::StoreError;
use crate::email::Email;

/// Where a user stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserStatus {
    /// Registered, email not verified yet: cannot log in.
    Pending,
    /// May log in.
    Active,
    /// Switched off by an administrator (or themselves); may be reactivated.
    Deactivated,
    /// Banned by an administrator.
    Banned,
    /// Every session ended for a security reason: back to active only through a password
    /// reset. Still takes a seat.
    SecurityIssue,
    /// Deleted: a tombstone whose personal data is erased (see [`crate::lifecycle`]).
    Deleted,
}

tenancy::text_enum!(UserStatus, "user status" {
    Pending => "pending", Active => "active", Deactivated => "deactivated", Banned => "banned",
    SecurityIssue => "security_issue", Deleted => "deleted"
});

impl UserStatus {
    /// Deactivated, banned, security issue or deleted: every session ends and no token is
    /// honoured.
    pub fn is_blocked(self) -> bool {
        matches!(
            self,
            Self::Deactivated | Self::Banned | Self::SecurityIssue | Self::Deleted
        )
    }

    /// Active, or with a security issue: the user counts against the plan's seats.
    pub fn holds_seat(self) -> bool {
        matches!(self, Self::Active | Self::SecurityIssue)
    }

    /// Whether a password reset link may be sent: pending, active, or with a security issue
    /// (the reset is their way back); never deactivated, banned or deleted.
    pub fn may_reset_password(self) -> bool {
        matches!(self, Self::Pending | Self::Active | Self::SecurityIssue)
    }
}

/// A user, as the API shows it (a row of `users`, read through `USER_COLUMNS`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Email as given.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: UserStatus,
    /// When the email was verified.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// Last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

pub(super) const USER_COLUMNS: &str =
    "id, email, name, status, email_verified_at, last_login_at, created_at, updated_at";

/// A user to create.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// Email: stored as given, unique by its key.
    pub email: &'a Email,
    /// Display name.
    pub name: &'a str,
    /// PHC hash.
    pub password_hash: &'a str,
    /// Initial status.
    pub status: UserStatus,
}

/// How many users a change made active. Every active user takes a seat of the tenant's
/// plan, which this crate knows nothing of: whoever makes a change that returns one checks
/// the seat limit in the same transaction (`billing::limits::ensure_seats`). Returned
/// bare by the functions that activate (`#[must_use]`), so that dropping one is a warning.
#[must_use = "a user made active takes a seat: check the plan's seat limit in this transaction"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activated(u64);

impl Activated {
    /// Nobody.
    pub const NONE: Self = Self(0);

    /// How many users now take a seat that did not (became active, or came back from a
    /// ban with a security issue).
    pub fn count(self) -> u64 {
        self.0
    }
}

/// Creates a user. Creating an active one takes a seat: see [`Activated`].
pub async fn insert_user(conn: &mut PgConnection, new: NewUser<'_>) -> Result<User, StoreError> {
    sqlx::query_as(&format!(
        "insert into users (id, email, email_key, name, password_hash, status)
         values ($1, $2, $3, $4, $5, $6)
         returning {USER_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.email.as_str())
    .bind(new.email.key())
    .bind(new.name)
    .bind(new.password_hash)
    .bind(new.status.as_str())
    .fetch_one(conn)
    .await
    .on_constraint("users_email_key_key", || StoreError::EmailTaken)
}

/// The user with this id.
pub async fn user_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<User>, StoreError> {
    Ok(
        sqlx::query_as(&format!("select {USER_COLUMNS} from users where id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// The user with this email (any spelling with the same key).
pub async fn user_by_email(
    conn: &mut PgConnection,
    email: &Email,
) -> Result<Option<User>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {USER_COLUMNS} from users where email_key = $1"
    ))
    .bind(email.key())
    .fetch_optional(conn)
    .await?)
}

/// What a login needs to know about an account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoginRecord {
    /// The user.
    #[sqlx(flatten)]
    pub user: User,
    /// PHC hash.
    pub password_hash: String,
    /// Locked until then, if in the future.
    pub locked_until: Option<DateTime<Utc>>,
}

/// The login record of the user with this email (any spelling with the same key).
pub async fn login_record(
    conn: &mut PgConnection,
    email: &Email,
) -> Result<Option<LoginRecord>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {USER_COLUMNS}, password_hash, locked_until from users where email_key = $1"
    ))
    .bind(email.key())
    .fetch_optional(conn)
    .await?)
}

/// The PHC hash of a user's password.
pub async fn password_hash(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("select password_hash from users where id = $1")
            .bind(user)
            .fetch_optional(conn)
            .await?,
    )
}

/// Marks the email verified and a pending user active. The answer says whether the user
/// became active (and so now takes a seat).
pub async fn mark_email_verified(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Activated, StoreError> {
    let was_pending: Option<bool> = sqlx::query_scalar(
        "with before as (select id, status from users where id = $1 for update)
         update users u set email_verified_at = coalesce(u.email_verified_at, now()),
                status = case when before.status = 'pending' then 'active' else u.status end,
                updated_at = now()
         from before where u.id = before.id
         returning before.status = 'pending'",
    )
    .bind(user)
    .fetch_optional(conn)
    .await?;
    Ok(Activated(u64::from(was_pending.unwrap_or(false))))
}

/// Stores a new password hash. With `void_sessions`, every session from before now ends
/// too (the caller revokes them explicitly as well, to learn their ids).
pub async fn set_password(
    conn: &mut PgConnection,
    user: Uuid,
    hash: &str,
    void_sessions: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "update users set password_hash = $2, updated_at = now(),
                failed_logins = 0, failed_login_window_start = null, locked_until = null,
                security_changed_at = case when $3 then now() else security_changed_at end
         where id = $1",
    )
    .bind(user)
    .bind(hash)
    .bind(void_sessions)
    .execute(conn)
    .await?;
    Ok(())
}

/// What [`update_user`] changed.
#[derive(Debug)]
pub struct UserUpdate {
    /// The user before.
    pub before: User,
    /// The user after.
    pub after: User,
    /// Whether the user now takes a seat and did not before (became active, or returned
    /// from a ban with a security issue).
    pub activated: Activated,
}

/// Changes a user's status (and display name). Blocking a user voids every session from
/// before now. `security_issue` also puts a hold on the account that only a password reset
/// lifts ([`crate::lifecycle::clear_security_issue`]); while it lasts, `active` is stored
/// as `security_issue`.
pub async fn update_user(
    conn: &mut PgConnection,
    user: Uuid,
    status: Option<UserStatus>,
    name: Option<&str>,
) -> Result<Option<UserUpdate>, StoreError> {
    let Some(before) = sqlx::query_as::<_, User>(&format!(
        "select {USER_COLUMNS} from users where id = $1 for update"
    ))
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let blocking = status.is_some_and(UserStatus::is_blocked) && !before.status.is_blocked();
    let after: User = sqlx::query_as(&format!(
        "update users set
                status = case when $2 = 'active' and security_issue_at is not null
                              then 'security_issue' else coalesce($2, status) end,
                security_issue_at = case when $2 = 'security_issue'
                                         then coalesce(security_issue_at, now())
                                         else security_issue_at end,
                name = coalesce($3, name), updated_at = now(),
                security_changed_at = case when $4 then now() else security_changed_at end
         where id = $1 returning {USER_COLUMNS}"
    ))
    .bind(user)
    .bind(status.map(UserStatus::as_str))
    .bind(name)
    .bind(blocking)
    .fetch_one(conn)
    .await?;
    let activated = Activated(u64::from(
        after.status.holds_seat() && !before.status.holds_seat(),
    ));
    Ok(Some(UserUpdate {
        before,
        after,
        activated,
    }))
}

/// A page of users ordered by creation, after the keyset `after` (created_at, id). Deleted
/// users (tombstones) are left out unless `status` asks for them.
pub async fn list_users(
    conn: &mut PgConnection,
    status: Option<UserStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<User>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {USER_COLUMNS} from users
         where (status = $1 or ($1::text is null and status <> 'deleted'))
           and ($2::timestamptz is null or (created_at, id) > ($2, $3))
         order by created_at, id limit $4"
    ))
    .bind(status.map(UserStatus::as_str))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
