//! Sessions (one login on one device): starting one with its first refresh token, ending
//! one or all of a user's, listing them, judging one, and what the revocation list holds.
//! Rotating refresh tokens is [`super::rotation`]'s.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ClientInfo, StoreError};
use crate::secret::OpaqueToken;

/// A session (one login on one device).
#[derive(Debug, Clone, sqlx::FromRow)]
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
    let session: Session = sqlx::query_as(
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
    Ok((session, token))
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
    Ok(sqlx::query_as(
        "select id, user_id, user_agent, host(ip) as ip, created_at, last_used_at from sessions
         where user_id = $1 and revoked_at is null order by last_used_at desc, id limit 1000",
    )
    .bind(user)
    .fetch_all(conn)
    .await?)
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

/// Blocked users and recently revoked sessions: what the revocation list in Redis must
/// hold. Sessions revoked before `since` are left out (their tokens have expired).
pub async fn revocations(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<(Vec<Uuid>, Vec<Uuid>), StoreError> {
    let users = sqlx::query_scalar(
        "select id from users
             where status in ('deactivated', 'banned', 'security_issue', 'deleted')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let sessions = sqlx::query_scalar("select id from sessions where revoked_at >= $1")
        .bind(since)
        .fetch_all(conn)
        .await?;
    Ok((users, sessions))
}

/// Stores a new refresh token of `session`, live for `ttl`.
pub(super) async fn insert_refresh_token(
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
