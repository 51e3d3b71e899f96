//! Two-factor authentication's tables: each user's encrypted TOTP secret and the last step
//! accepted (`user_totp`), their recovery codes (`recovery_codes`, SHA-256 only), the MFA
//! tokens of logins waiting for their second factor (`mfa_challenges`), and the tenant's
//! `mfa_required_for` roles (a column of `settings`).
//!
//! Every acceptance is one conditional `update` that must touch one row (a step later
//! than the last accepted, an unused recovery code, an unspent token), so two concurrent
//! requests presenting the same code or token cannot both pass.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{StoreError, UserStatus};
use crate::secret::OpaqueToken;

/// What an MFA token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// Complete a login with a TOTP or recovery code (`POST /v1/auth/mfa`).
    Verify,
    /// Enroll in TOTP, which the tenant requires, then log in (`/v1/auth/mfa/enroll…`).
    Enroll,
}

tenancy::text_enum!(ChallengePurpose, "MFA challenge purpose" {
    Verify => "verify", Enroll => "enroll"
});

/// A user's TOTP enrollment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TotpRecord {
    /// The secret, as `mfa::SecretsCipher::seal` wrote it.
    pub secret_ciphertext: Vec<u8>,
    /// When the first code confirmed it; `None` while pending.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// The last accepted step.
    pub last_used_step: i64,
}

/// The user's TOTP enrollment, confirmed or pending.
pub async fn totp(conn: &mut PgConnection, user: Uuid) -> Result<Option<TotpRecord>, StoreError> {
    Ok(sqlx::query_as(
        "select secret_ciphertext, confirmed_at, last_used_step from user_totp where user_id = $1",
    )
    .bind(user)
    .fetch_optional(conn)
    .await?)
}

/// Whether the user has a confirmed TOTP.
pub async fn has_confirmed_totp(conn: &mut PgConnection, user: Uuid) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from user_totp where user_id = $1 and confirmed_at is not null)",
    )
    .bind(user)
    .fetch_one(conn)
    .await?)
}

/// Stores a pending enrollment (replacing an earlier pending one); `false`, storing
/// nothing, when the user already has a confirmed TOTP.
pub async fn begin_totp_enrollment(
    conn: &mut PgConnection,
    user: Uuid,
    secret_ciphertext: &[u8],
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "insert into user_totp (user_id, secret_ciphertext) values ($1, $2)
         on conflict (user_id) do update
            set secret_ciphertext = excluded.secret_ciphertext, created_at = now(),
                last_used_step = 0
            where user_totp.confirmed_at is null",
    )
    .bind(user)
    .bind(secret_ciphertext)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Confirms the pending enrollment with the code of `step` (which counts as used), storing
/// the recovery codes; `false` when there is no pending enrollment (never started,
/// already confirmed, or confirmed concurrently).
pub async fn confirm_totp_enrollment(
    conn: &mut PgConnection,
    user: Uuid,
    step: u64,
    recovery_hashes: &[Vec<u8>],
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update user_totp set confirmed_at = now(), last_used_step = $2
         where user_id = $1 and confirmed_at is null",
    )
    .bind(user)
    .bind(step_value(step))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    replace_recovery_codes(conn, user, recovery_hashes).await?;
    Ok(true)
}

/// Accepts the code of `step`: `true` when it moved the user's last accepted step forward,
/// `false` when a code of this or a later step was already accepted (a replay) or the
/// user has no confirmed TOTP.
pub async fn accept_totp_step(
    conn: &mut PgConnection,
    user: Uuid,
    step: u64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update user_totp set last_used_step = $2
         where user_id = $1 and confirmed_at is not null and last_used_step < $2",
    )
    .bind(user)
    .bind(step_value(step))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn step_value(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

/// Removes the user's TOTP and recovery codes; whether there was a TOTP.
pub async fn remove_totp(conn: &mut PgConnection, user: Uuid) -> Result<bool, StoreError> {
    sqlx::query("delete from recovery_codes where user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("delete from user_totp where user_id = $1")
        .bind(user)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the user's recovery codes with these hashes (the old ones stop working).
pub async fn replace_recovery_codes(
    conn: &mut PgConnection,
    user: Uuid,
    hashes: &[Vec<u8>],
) -> Result<(), StoreError> {
    sqlx::query("delete from recovery_codes where user_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "insert into recovery_codes (code_hash, user_id) select h, $1 from unnest($2::bytea[]) h",
    )
    .bind(user)
    .bind(hashes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses up the user's recovery code of this hash: the unused codes left, or `None` when
/// it is not an unused code of this user.
pub async fn use_recovery_code(
    conn: &mut PgConnection,
    user: Uuid,
    hash: &[u8],
) -> Result<Option<i64>, StoreError> {
    let done = sqlx::query(
        "update recovery_codes set used_at = now()
         where user_id = $1 and code_hash = $2 and used_at is null",
    )
    .bind(user)
    .bind(hash)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    Ok(Some(recovery_codes_left(conn, user).await?))
}

/// How many unused recovery codes the user has.
pub async fn recovery_codes_left(conn: &mut PgConnection, user: Uuid) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "select count(*) from recovery_codes where user_id = $1 and used_at is null",
    )
    .bind(user)
    .fetch_one(conn)
    .await?)
}

/// A live MFA token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    /// The user who passed the password step.
    pub user_id: Uuid,
    /// Wrong codes presented with it so far.
    pub failures: i32,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Issues an MFA token for `user`, working for `ttl`; the user's spent and expired
/// tokens are deleted on the way, so their rows stay few.
pub async fn issue_challenge(
    conn: &mut PgConnection,
    user: Uuid,
    purpose: ChallengePurpose,
    ttl: Duration,
) -> Result<(OpaqueToken, DateTime<Utc>), StoreError> {
    sqlx::query(
        "delete from mfa_challenges
         where user_id = $1 and (used_at is not null or expires_at <= now())",
    )
    .bind(user)
    .execute(&mut *conn)
    .await?;
    let token = OpaqueToken::generate();
    let expires = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    sqlx::query(
        "insert into mfa_challenges (token_hash, user_id, purpose, expires_at)
         values ($1, $2, $3, $4)",
    )
    .bind(token.hash())
    .bind(user)
    .bind(purpose.as_str())
    .bind(expires)
    .execute(conn)
    .await?;
    Ok((token, expires))
}

/// The live token `token` for `purpose`, locked for the rest of the transaction; `None`
/// when it is unknown here (another tenant's included), spent, expired or for another
/// purpose.
pub async fn live_challenge(
    conn: &mut PgConnection,
    token: &OpaqueToken,
    purpose: ChallengePurpose,
) -> Result<Option<Challenge>, StoreError> {
    Ok(sqlx::query_as(
        "select user_id, failures, expires_at from mfa_challenges
         where token_hash = $1 and purpose = $2 and used_at is null and expires_at > now()
         for update",
    )
    .bind(token.hash())
    .bind(purpose.as_str())
    .fetch_optional(conn)
    .await?)
}

/// Spends the token (its login is complete); `false` when it was already spent.
pub async fn spend_challenge(
    conn: &mut PgConnection,
    token: &OpaqueToken,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "update mfa_challenges set used_at = now() where token_hash = $1 and used_at is null",
    )
    .bind(token.hash())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts a wrong code presented with the token; the `max_failures`th spends it. Whether
/// it is spent now.
pub async fn record_challenge_failure(
    conn: &mut PgConnection,
    token: &OpaqueToken,
    max_failures: u32,
) -> Result<bool, StoreError> {
    let spent: Option<bool> = sqlx::query_scalar(
        "update mfa_challenges
         set failures = failures + 1,
             used_at = case when failures + 1 >= $2 then now() else used_at end
         where token_hash = $1
         returning used_at is not null",
    )
    .bind(token.hash())
    .bind(i32::try_from(max_failures).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await?;
    Ok(spent.unwrap_or(true))
}

/// Where a user stands for a second factor: their status and how long they are locked.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FactorState {
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: UserStatus,
    /// Locked until (failed logins, wrong codes included).
    pub locked_until: Option<DateTime<Utc>>,
}

/// The user's status and lock.
pub async fn factor_state(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Option<FactorState>, StoreError> {
    Ok(
        sqlx::query_as("select status, locked_until from users where id = $1")
            .bind(user)
            .fetch_optional(conn)
            .await?,
    )
}

/// Whether the tenant's policy makes `user` use two-factor authentication: they hold a
/// role of `mfa_required_for`.
pub async fn required_by_policy(conn: &mut PgConnection, user: Uuid) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "select exists (
            select 1 from user_roles ur, settings s
            where ur.user_id = $1 and ur.role_id = any (s.mfa_required_for)
         )",
    )
    .bind(user)
    .fetch_one(conn)
    .await?)
}

/// The roles whose holders must use two-factor authentication (deleted roles left out).
pub async fn mfa_required_for(conn: &mut PgConnection) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "select r.id from settings s, unnest(s.mfa_required_for) with ordinality as m(id, n)
         join roles r on r.id = m.id
         order by m.n",
    )
    .fetch_all(conn)
    .await?)
}

/// Replaces the roles whose holders must use two-factor authentication (the caller has
/// checked that they are roles of the tenant).
pub async fn set_mfa_required_for(
    conn: &mut PgConnection,
    roles: &[Uuid],
) -> Result<(), StoreError> {
    sqlx::query("update settings set mfa_required_for = $1, updated_at = now()")
        .bind(roles)
        .execute(conn)
        .await?;
    Ok(())
}

/// What checking a second factor found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorOutcome {
    /// A TOTP code of a step later than the last accepted one (now the last accepted).
    TotpAccepted,
    /// An unused recovery code, now used; this many are left.
    RecoveryCodeUsed {
        /// Unused codes left.
        left: i64,
    },
    /// A wrong, replayed or malformed code, or the user has no confirmed TOTP.
    Refused,
}

/// Checks (and on success spends) `factor` of `user` in `tenant` at `now`: a TOTP code
/// within ±1 step whose step is later than the last accepted (moved forward atomically),
/// or an unused recovery code (used up atomically).
pub async fn check_second_factor(
    conn: &mut PgConnection,
    cipher: &crate::mfa::SecretsCipher,
    tenant: Uuid,
    user: Uuid,
    factor: crate::mfa::SecondFactor<'_>,
    now: DateTime<Utc>,
) -> Result<FactorOutcome, StoreError> {
    use crate::mfa::{SecondFactor, recovery_code_hash, step_at};
    match factor {
        SecondFactor::Totp(code) => {
            let Some(record) = totp(conn, user).await? else {
                return Ok(FactorOutcome::Refused);
            };
            if record.confirmed_at.is_none() {
                return Ok(FactorOutcome::Refused);
            }
            let secret = cipher.open(tenant, user, &record.secret_ciphertext)?;
            let Some(step) = secret.matching_step(code, step_at(now)) else {
                return Ok(FactorOutcome::Refused);
            };
            Ok(if accept_totp_step(conn, user, step).await? {
                FactorOutcome::TotpAccepted
            } else {
                FactorOutcome::Refused
            })
        }
        SecondFactor::RecoveryCode(typed) => {
            if !has_confirmed_totp(conn, user).await? {
                return Ok(FactorOutcome::Refused);
            }
            let Some(hash) = recovery_code_hash(typed) else {
                return Ok(FactorOutcome::Refused);
            };
            Ok(match use_recovery_code(conn, user, &hash).await? {
                Some(left) => FactorOutcome::RecoveryCodeUsed { left },
                None => FactorOutcome::Refused,
            })
        }
    }
}
