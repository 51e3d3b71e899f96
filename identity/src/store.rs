//! The identity tables of a tenant schema: users, sessions, refresh tokens, single-use
//! email tokens and the audit log. Every function takes the connection of a tenant
//! transaction (a `TenantTx` dereferences to one), so it can only ever see one tenant.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row, postgres::PgRow};
use tenancy::ConstraintExt;
use uuid::Uuid;

use crate::{email::Email, secret::OpaqueToken};

/// Errors of the identity store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another user of this tenant has this email.
    #[error("the email address is already registered")]
    EmailTaken,
    /// Database failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

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
}

impl UserStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Deactivated => "deactivated",
            Self::Banned => "banned",
        }
    }

    /// Deactivated or banned: every session ends and no token is honoured.
    pub fn is_blocked(self) -> bool {
        matches!(self, Self::Deactivated | Self::Banned)
    }
}

impl fmt::Display for UserStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "deactivated" => Self::Deactivated,
            "banned" => Self::Banned,
            other => return Err(format!("unknown user status {other:?}")),
        })
    }
}

/// A user, as the API shows it.
#[derive(Debug, Clone)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Email as given.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Status.
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

const USER_COLUMNS: &str =
    "id, email, name, status, email_verified_at, last_login_at, created_at, updated_at";

fn user_from_row(row: &PgRow) -> Result<User, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::ColumnDecode {
                index: "status".into(),
                source: e.into(),
            })?,
        email_verified_at: row.try_get("email_verified_at")?,
        last_login_at: row.try_get("last_login_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Who is calling: recorded on sessions and audit events.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Client IP address.
    pub ip: Option<std::net::IpAddr>,
    /// `User-Agent`, truncated to 512 characters.
    pub user_agent: Option<String>,
}

impl ClientInfo {
    fn ip_text(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
}

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

    /// How many users became active.
    pub fn count(self) -> u64 {
        self.0
    }
}

/// Creates a user. Creating an active one takes a seat: see [`Activated`].
pub async fn insert_user(conn: &mut PgConnection, new: NewUser<'_>) -> Result<User, StoreError> {
    let row = sqlx::query(&format!(
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
    .on_constraint("users_email_key_key", || StoreError::EmailTaken)?;
    Ok(user_from_row(&row)?)
}

/// The user with this id.
pub async fn user_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!("select {USER_COLUMNS} from users where id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

/// The user with this email (any spelling with the same key).
pub async fn user_by_email(
    conn: &mut PgConnection,
    email: &Email,
) -> Result<Option<User>, StoreError> {
    let row = sqlx::query(&format!(
        "select {USER_COLUMNS} from users where email_key = $1"
    ))
    .bind(email.key())
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

/// What a login needs to know about an account.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    /// The user.
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
    let row = sqlx::query(&format!(
        "select {USER_COLUMNS}, password_hash, locked_until from users where email_key = $1"
    ))
    .bind(email.key())
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(LoginRecord {
            user: user_from_row(&row)?,
            password_hash: row.try_get("password_hash")?,
            locked_until: row.try_get("locked_until")?,
        })
    })
    .transpose()
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
    let row = sqlx::query(
        "select failed_logins, failed_login_window_start from users where id = $1 for update",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    let count: i32 = row.try_get("failed_logins")?;
    let start: Option<DateTime<Utc>> = row.try_get("failed_login_window_start")?;
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

/// A session (one login on one device).
#[derive(Debug, Clone)]
pub struct Session {
    /// Id (the `sid` claim).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// User agent at login.
    pub user_agent: Option<String>,
    /// IP address of the last use.
    pub ip: Option<String>,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
}

/// Starts a session for `user` and returns it with its first refresh token.
pub async fn create_session(
    conn: &mut PgConnection,
    user: Uuid,
    client: &ClientInfo,
    refresh_ttl: Duration,
) -> Result<(Session, OpaqueToken), StoreError> {
    let id = Uuid::new_v4();
    let row = sqlx::query(
        "insert into sessions (id, user_id, user_agent, ip) values ($1, $2, $3, $4::inet)
         returning id, user_id, user_agent, host(ip) as ip, created_at, last_used_at",
    )
    .bind(id)
    .bind(user)
    .bind(client.user_agent.as_deref())
    .bind(client.ip_text())
    .fetch_one(&mut *conn)
    .await?;
    let token = OpaqueToken::generate();
    insert_refresh_token(conn, id, &token, refresh_ttl).await?;
    Ok((session_from_row(&row)?, token))
}

fn session_from_row(row: &PgRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        user_agent: row.try_get("user_agent")?,
        ip: row.try_get("ip")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

async fn insert_refresh_token(
    conn: &mut PgConnection,
    session: Uuid,
    token: &OpaqueToken,
    ttl: Duration,
) -> Result<(), StoreError> {
    let expires = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    sqlx::query(
        "insert into refresh_tokens (token_hash, session_id, expires_at) values ($1, $2, $3)",
    )
    .bind(token.hash())
    .bind(session)
    .bind(expires)
    .execute(conn)
    .await?;
    Ok(())
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The token was live and is now rotated: `successor` replaces it.
    Rotated {
        /// The session.
        session: Uuid,
        /// Its user.
        user: Uuid,
        /// The new refresh token.
        successor: OpaqueToken,
    },
    /// The token was rotated moments ago (within the grace window) and its successor is
    /// still live: the same successor again, for a client that raced itself or lost the
    /// response.
    Replayed {
        /// The session.
        session: Uuid,
        /// Its user.
        user: Uuid,
        /// The successor issued the first time.
        successor: OpaqueToken,
    },
    /// An old token presented again after the grace window: the session is now revoked.
    Reused {
        /// The revoked session.
        session: Uuid,
        /// Its user.
        user: Uuid,
    },
    /// The user may not use the service (pending, deactivated or banned).
    UserBlocked {
        /// Their status.
        status: UserStatus,
    },
    /// Unknown, expired, or its session has ended.
    Invalid,
}

/// Rotates `presented`. Concurrent calls with the same token serialize on its row, so
/// exactly one rotates it and the others see the rotation (and get the same successor
/// within `grace`). Status, revocation and security changes are read from the database
/// every time.
pub async fn refresh(
    conn: &mut PgConnection,
    presented: &OpaqueToken,
    grace: Duration,
    ttl: Duration,
    client: &ClientInfo,
) -> Result<RefreshOutcome, StoreError> {
    let Some(row) = sqlx::query(
        "select session_id, expires_at, rotated_at, successor_hash, successor_sealed
         from refresh_tokens where token_hash = $1 for update",
    )
    .bind(presented.hash())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(RefreshOutcome::Invalid);
    };
    let session: Uuid = row.try_get("session_id")?;
    let expires_at: DateTime<Utc> = row.try_get("expires_at")?;
    let rotated_at: Option<DateTime<Utc>> = row.try_get("rotated_at")?;
    let successor_hash: Option<Vec<u8>> = row.try_get("successor_hash")?;
    let successor_sealed: Option<Vec<u8>> = row.try_get("successor_sealed")?;

    // A statement of its own, after the lock: it sees whatever the lock waited for.
    let state = sqlx::query(
        "select s.user_id, s.revoked_at is not null as revoked,
                s.created_at < u.security_changed_at as stale, u.status
         from sessions s join users u on u.id = s.user_id where s.id = $1",
    )
    .bind(session)
    .fetch_one(&mut *conn)
    .await?;
    let user: Uuid = state.try_get("user_id")?;
    if state.try_get::<bool, _>("revoked")? || state.try_get::<bool, _>("stale")? {
        return Ok(RefreshOutcome::Invalid);
    }
    let status: UserStatus = state
        .try_get::<String, _>("status")?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    if status != UserStatus::Active {
        return Ok(RefreshOutcome::UserBlocked { status });
    }
    let now = Utc::now();

    let Some(rotated_at) = rotated_at else {
        if expires_at <= now {
            return Ok(RefreshOutcome::Invalid);
        }
        let successor = OpaqueToken::generate();
        sqlx::query(
            "update refresh_tokens set rotated_at = now(), successor_hash = $2, successor_sealed = $3
             where token_hash = $1",
        )
        .bind(presented.hash())
        .bind(successor.hash())
        .bind(presented.seal(&successor))
        .execute(&mut *conn)
        .await?;
        insert_refresh_token(conn, session, &successor, ttl).await?;
        sqlx::query(
            "update sessions set last_used_at = now(), ip = coalesce($2::inet, ip) where id = $1",
        )
        .bind(session)
        .bind(client.ip_text())
        .execute(&mut *conn)
        .await?;
        return Ok(RefreshOutcome::Rotated {
            session,
            user,
            successor,
        });
    };

    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
    if now - rotated_at <= grace {
        let successor_live: Option<bool> = sqlx::query_scalar(
            "select rotated_at is null and expires_at > now() from refresh_tokens where token_hash = $1",
        )
        .bind(&successor_hash)
        .fetch_optional(&mut *conn)
        .await?;
        let successor = successor_sealed.and_then(|s| presented.unseal(&s));
        if let (Some(true), Some(successor)) = (successor_live, successor) {
            return Ok(RefreshOutcome::Replayed {
                session,
                user,
                successor,
            });
        }
    }
    revoke_session(conn, user, session, "refresh_token_reuse").await?;
    Ok(RefreshOutcome::Reused { session, user })
}

/// Ends one session of `user`. Returns whether it was live.
pub async fn revoke_session(
    conn: &mut PgConnection,
    user: Uuid,
    session: Uuid,
    reason: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update sessions set revoked_at = now(), revoked_reason = $3
         where id = $1 and user_id = $2 and revoked_at is null",
    )
    .bind(session)
    .bind(user)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends every live session of `user` but `except`. Returns the ended sessions' ids.
pub async fn revoke_user_sessions(
    conn: &mut PgConnection,
    user: Uuid,
    except: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "update sessions set revoked_at = now(), revoked_reason = $3
         where user_id = $1 and revoked_at is null and id is distinct from $2
         returning id",
    )
    .bind(user)
    .bind(except)
    .bind(reason)
    .fetch_all(conn)
    .await?)
}

/// The live sessions of `user`, most recently used first.
pub async fn list_sessions(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Vec<Session>, StoreError> {
    let rows = sqlx::query(
        "select id, user_id, user_agent, host(ip) as ip, created_at, last_used_at from sessions
         where user_id = $1 and revoked_at is null order by last_used_at desc, id limit 1000",
    )
    .bind(user)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(session_from_row)
        .collect::<Result<_, _>>()?)
}

/// Whether `session` of `user` may still be used, read from the database: the session is
/// live and postdates the user's last security change, and the user is active.
pub async fn session_is_valid(
    conn: &mut PgConnection,
    user: Uuid,
    session: Uuid,
) -> Result<bool, StoreError> {
    let valid: Option<bool> = sqlx::query_scalar(
        "select s.revoked_at is null and s.created_at >= u.security_changed_at
                and u.status = 'active'
         from sessions s join users u on u.id = s.user_id
         where s.id = $1 and s.user_id = $2",
    )
    .bind(session)
    .bind(user)
    .fetch_optional(conn)
    .await?;
    Ok(valid.unwrap_or(false))
}

/// What a single-use email token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Confirms an email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

/// Issues a single-use token for `user`, voiding earlier unused ones of the same purpose.
pub async fn issue_user_token(
    conn: &mut PgConnection,
    user: Uuid,
    purpose: TokenPurpose,
    ttl: Duration,
) -> Result<OpaqueToken, StoreError> {
    sqlx::query(
        "update user_tokens set used_at = now()
         where user_id = $1 and purpose = $2 and used_at is null",
    )
    .bind(user)
    .bind(purpose.as_str())
    .execute(&mut *conn)
    .await?;
    let token = OpaqueToken::generate();
    let expires = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    sqlx::query(
        "insert into user_tokens (token_hash, user_id, purpose, expires_at) values ($1, $2, $3, $4)",
    )
    .bind(token.hash())
    .bind(user)
    .bind(purpose.as_str())
    .bind(expires)
    .execute(conn)
    .await?;
    Ok(token)
}

/// Uses up a single-use token: the user it was issued to, or `None` when it is unknown,
/// used, expired or for another purpose.
pub async fn consume_user_token(
    conn: &mut PgConnection,
    token: &OpaqueToken,
    purpose: TokenPurpose,
) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "update user_tokens set used_at = now()
         where token_hash = $1 and purpose = $2 and used_at is null and expires_at > now()
         returning user_id",
    )
    .bind(token.hash())
    .bind(purpose.as_str())
    .fetch_optional(conn)
    .await?)
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
    /// Whether the user became active (and so now takes a seat).
    pub activated: Activated,
}

/// Changes a user's status (and display name). Blocking a user voids every session from
/// before now.
pub async fn update_user(
    conn: &mut PgConnection,
    user: Uuid,
    status: Option<UserStatus>,
    name: Option<&str>,
) -> Result<Option<UserUpdate>, StoreError> {
    let Some(before) = sqlx::query(&format!(
        "select {USER_COLUMNS} from users where id = $1 for update"
    ))
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let before = user_from_row(&before)?;
    let blocking = status.is_some_and(UserStatus::is_blocked) && !before.status.is_blocked();
    let row = sqlx::query(&format!(
        "update users set status = coalesce($2, status), name = coalesce($3, name),
                updated_at = now(),
                security_changed_at = case when $4 then now() else security_changed_at end
         where id = $1 returning {USER_COLUMNS}"
    ))
    .bind(user)
    .bind(status.map(UserStatus::as_str))
    .bind(name)
    .bind(blocking)
    .fetch_one(conn)
    .await?;
    let after = user_from_row(&row)?;
    let activated = Activated(u64::from(
        after.status == UserStatus::Active && before.status != UserStatus::Active,
    ));
    Ok(Some(UserUpdate {
        before,
        after,
        activated,
    }))
}

/// A page of users ordered by creation, after the keyset `after` (created_at, id).
pub async fn list_users(
    conn: &mut PgConnection,
    status: Option<UserStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query(&format!(
        "select {USER_COLUMNS} from users
         where ($1::text is null or status = $1)
           and ($2::timestamptz is null or (created_at, id) > ($2, $3))
         order by created_at, id limit $4"
    ))
    .bind(status.map(UserStatus::as_str))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
}

/// Blocked users and recently revoked sessions: what the revocation list in Redis must
/// hold. Sessions revoked before `since` are left out (their tokens have expired).
pub async fn revocations(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
    let users =
        sqlx::query_scalar("select id from users where status in ('deactivated', 'banned')")
            .fetch_all(&mut *conn)
            .await?;
    let sessions = sqlx::query_scalar("select id from sessions where revoked_at >= $1")
        .bind(since)
        .fetch_all(conn)
        .await?;
    Ok((users, sessions))
}

/// One security event for the audit log.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Stable name, e.g. `login.failed`.
    pub event: &'a str,
    /// Who acted.
    pub actor: Option<Uuid>,
    /// Whom it concerns.
    pub subject: Option<Uuid>,
    /// The session involved.
    pub session: Option<Uuid>,
    /// Where from.
    pub client: &'a ClientInfo,
    /// Anything else worth keeping.
    pub details: Value,
}

/// Appends `event` to the audit log (in the caller's transaction).
pub async fn audit(conn: &mut PgConnection, event: AuditEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "insert into audit_events (event, actor_id, subject_id, session_id, ip, user_agent, details)
         values ($1, $2, $3, $4, $5::inet, $6, $7)",
    )
    .bind(event.event)
    .bind(event.actor)
    .bind(event.subject)
    .bind(event.session)
    .bind(event.client.ip_text())
    .bind(event.client.user_agent.as_deref())
    .bind(event.details)
    .execute(conn)
    .await?;
    Ok(())
}

/// An entry of the audit log.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Position in the log (increasing).
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Stable name, e.g. `login.failed`.
    pub event: String,
    /// Who acted.
    pub actor: Option<Uuid>,
    /// Whom it concerns.
    pub subject: Option<Uuid>,
    /// The session involved.
    pub session: Option<Uuid>,
    /// Client address.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Anything else recorded.
    pub details: Value,
}

/// The newest audit entries first: those before entry `before` (when given), optionally
/// only one `event` or those concerning one user (as actor or subject).
pub async fn list_audit(
    conn: &mut PgConnection,
    event: Option<&str>,
    user: Option<Uuid>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(
        "select id, occurred_at, event, actor_id, subject_id, session_id, host(ip) as ip,
                user_agent, details
         from audit_events
         where ($1::text is null or event = $1)
           and ($2::uuid is null or actor_id = $2 or subject_id = $2)
           and ($3::bigint is null or id < $3)
         order by id desc
         limit $4",
    )
    .bind(event)
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditRecord {
                id: row.try_get("id")?,
                occurred_at: row.try_get("occurred_at")?,
                event: row.try_get("event")?,
                actor: row.try_get("actor_id")?,
                subject: row.try_get("subject_id")?,
                session: row.try_get("session_id")?,
                ip: row.try_get("ip")?,
                user_agent: row.try_get("user_agent")?,
                details: row.try_get("details")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
