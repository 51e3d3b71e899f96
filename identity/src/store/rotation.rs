//! Refresh tokens: rotation on every use, with a grace window for a client that raced
//! itself, and reuse detection (an old token presented again ends its session).
//!
//! A session is a family of refresh tokens: each use rotates the presented token to a
//! successor, and only the newest is live.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ClientInfo, StoreError, UserStatus, revoke_session, sessions::insert_refresh_token};
use crate::secret::OpaqueToken;

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
///
/// The steps: lock the presented token (`lock_presented`), judge its session and user
/// (`session_state`), then rotate a live token (`rotate`) or answer one presented
/// again (`replay_or_revoke`).
pub async fn refresh(
    conn: &mut PgConnection,
    presented: &OpaqueToken,
    grace: Duration,
    ttl: Duration,
    client: &ClientInfo,
) -> Result<RefreshOutcome, StoreError> {
    let Some(token) = lock_presented(conn, presented).await? else {
        return Ok(RefreshOutcome::Invalid);
    };
    let state = session_state(conn, token.session_id).await?;
    if state.revoked || state.stale {
        return Ok(RefreshOutcome::Invalid);
    }
    if state.status != UserStatus::Active {
        return Ok(RefreshOutcome::UserBlocked {
            status: state.status,
        });
    }
    let now = Utc::now();
    match token.rotated_at {
        None if token.expires_at <= now => Ok(RefreshOutcome::Invalid),
        None => rotate(conn, presented, &token, state.user_id, ttl, client).await,
        Some(rotated_at) => {
            let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
            let within_grace = now - rotated_at <= grace;
            replay_or_revoke(conn, presented, token, state.user_id, within_grace).await
        }
    }
}

/// The presented refresh token's row.
#[derive(sqlx::FromRow)]
struct PresentedToken {
    session_id: Uuid,
    expires_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
    successor_hash: Option<Vec<u8>>,
    successor_sealed: Option<Vec<u8>>,
}

/// Step 1: the presented token, locked, so that concurrent presentations serialize.
async fn lock_presented(
    conn: &mut PgConnection,
    presented: &OpaqueToken,
) -> Result<Option<PresentedToken>, StoreError> {
    Ok(sqlx::query_as(
        "select session_id, expires_at, rotated_at, successor_hash, successor_sealed
         from refresh_tokens where token_hash = $1 for update",
    )
    .bind(presented.hash())
    .fetch_optional(conn)
    .await?)
}

/// Where the token's session and its user stand.
#[derive(sqlx::FromRow)]
struct SessionState {
    user_id: Uuid,
    revoked: bool,
    stale: bool,
    #[sqlx(try_from = "String")]
    status: UserStatus,
}

/// Step 2: the session and its user. A statement of its own, after the lock: it sees
/// whatever the lock waited for.
async fn session_state(conn: &mut PgConnection, session: Uuid) -> Result<SessionState, StoreError> {
    Ok(sqlx::query_as(
        "select s.user_id, s.revoked_at is not null as revoked,
                s.created_at < u.security_changed_at as stale, u.status
         from sessions s join users u on u.id = s.user_id where s.id = $1",
    )
    .bind(session)
    .fetch_one(conn)
    .await?)
}

/// Step 3a: a live token is rotated: its successor is stored (and sealed under the
/// presented token, for a replay within the grace window) and the session marked used.
async fn rotate(
    conn: &mut PgConnection,
    presented: &OpaqueToken,
    token: &PresentedToken,
    user: Uuid,
    ttl: Duration,
    client: &ClientInfo,
) -> Result<RefreshOutcome, StoreError> {
    let session = token.session_id;
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
    Ok(RefreshOutcome::Rotated {
        session,
        user,
        successor,
    })
}

/// Step 3b: a token rotated already. Within the grace window, with its successor still
/// live, the same successor again; otherwise it is a reuse, and the session ends.
async fn replay_or_revoke(
    conn: &mut PgConnection,
    presented: &OpaqueToken,
    token: PresentedToken,
    user: Uuid,
    within_grace: bool,
) -> Result<RefreshOutcome, StoreError> {
    let session = token.session_id;
    if within_grace {
        let successor_live: Option<bool> = sqlx::query_scalar(
            "select rotated_at is null and expires_at > now() from refresh_tokens where token_hash = $1",
        )
        .bind(&token.successor_hash)
        .fetch_optional(&mut *conn)
        .await?;
        let successor = token.successor_sealed.and_then(|s| presented.unseal(&s));
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
