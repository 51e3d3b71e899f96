//! The prune statements of the identity tables: each deletes one batch of at most `batch`
//! rows past their retention, in the caller's (short) tenant transaction, and returns how
//! many it deleted. [`crate::retention`] repeats them, one transaction per batch.
//!
//! `cutoff` below is `now() - retain`. What each deletes, and so what it never touches:
//!
//! * refresh tokens that expired before the cutoff (a rotated token is kept until it
//!   expires, so reuse detection still recognises it), and every token of a session revoked
//!   before the cutoff;
//! * sessions revoked before the cutoff, and unrevoked sessions unused since the cutoff with
//!   no refresh token expiring after it (a session a live token can still refresh stays);
//! * email tokens used, or expired, before the cutoff (unused unexpired ones stay);
//! * invitations accepted, revoked, or (still open) expired before the cutoff;
//! * audit events that occurred before the cutoff.
//!
//! Rows another transaction holds locked are skipped (`skip locked`) and left for the next
//! pass, so a prune never waits on, or blocks, a refresh or a login.

use std::time::Duration;

use sqlx::PgConnection;

use super::StoreError;

fn secs(retain: Duration) -> f64 {
    jobs::retention::interval_secs(retain)
}

async fn delete(
    conn: &mut PgConnection,
    sql: &'static str,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(sql)
        .bind(secs(retain))
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// One batch of refresh tokens that expired more than `retain` ago.
pub async fn prune_expired_refresh_tokens(
    conn: &mut PgConnection,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    delete(
        conn,
        "delete from refresh_tokens where token_hash in (
             select token_hash from refresh_tokens
             where expires_at < now() - make_interval(secs => $1)
             limit $2
             for update skip locked)",
        retain,
        batch,
    )
    .await
}

/// One batch of the refresh tokens of sessions revoked more than `retain` ago.
pub async fn prune_revoked_refresh_tokens(
    conn: &mut PgConnection,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    delete(
        conn,
        "delete from refresh_tokens where token_hash in (
             select r.token_hash from sessions s join refresh_tokens r on r.session_id = s.id
             where s.revoked_at < now() - make_interval(secs => $1)
             limit $2
             for update of r skip locked)",
        retain,
        batch,
    )
    .await
}

/// One batch of sessions revoked, or expired, more than `retain` ago (with their
/// remaining refresh tokens).
pub async fn prune_sessions(
    conn: &mut PgConnection,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    delete(
        conn,
        "delete from sessions where id in (
             select s.id from sessions s
             where s.revoked_at < now() - make_interval(secs => $1)
                or (s.revoked_at is null
                    and s.last_used_at < now() - make_interval(secs => $1)
                    and not exists (
                        select 1 from refresh_tokens r
                        where r.session_id = s.id
                          and r.expires_at >= now() - make_interval(secs => $1)))
             limit $2
             for update of s skip locked)",
        retain,
        batch,
    )
    .await
}

/// One batch of email tokens used, or expired, more than `retain` ago.
pub async fn prune_email_tokens(
    conn: &mut PgConnection,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    delete(
        conn,
        "delete from user_tokens where token_hash in (
             select token_hash from user_tokens
             where used_at < now() - make_interval(secs => $1)
                or expires_at < now() - make_interval(secs => $1)
             limit $2
             for update skip locked)",
        retain,
        batch,
    )
    .await
}

/// One batch of invitations accepted, revoked or expired more than `retain` ago.
pub async fn prune_invitations(
    conn: &mut PgConnection,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    delete(
        conn,
        "delete from invitations where id in (
             select id from invitations
             where accepted_at < now() - make_interval(secs => $1)
                or revoked_at < now() - make_interval(secs => $1)
                or (accepted_at is null and revoked_at is null
                    and expires_at < now() - make_interval(secs => $1))
             limit $2
             for update skip locked)",
        retain,
        batch,
    )
    .await
}

/// One batch of audit events older than `retain`, oldest first.
pub async fn prune_audit_events(
    conn: &mut PgConnection,
    retain: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    delete(
        conn,
        "delete from audit_events where id in (
             select id from audit_events
             where occurred_at < now() - make_interval(secs => $1)
             order by occurred_at, id
             limit $2)",
        retain,
        batch,
    )
    .await
}
