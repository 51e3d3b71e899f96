//! Single-use email tokens (address verification, password reset, email change): only their hash is
//! stored, a new one voids the earlier unused ones of its purpose, and using one spends it.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::secret::OpaqueToken;

/// What a single-use email token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Confirms an email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
    /// Confirms a change of address (the user's `pending_email`).
    EmailChange,
}

tenancy::text_enum!(TokenPurpose, "token purpose" {
    VerifyEmail => "verify_email", ResetPassword => "reset_password", EmailChange => "email_change"
});

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
