//! The later life of an account: the security-issue status and its way back, changing the
//! email address, and deletion.
//!
//! * **Security issue.** Setting the status is an ordinary status change
//!   ([`crate::store::update_user`], which voids every session from before now) that also
//!   puts a hold on the account (`users.security_issue_at`). Only a completed password
//!   reset lifts it, returning the user to `active` ([`clear_security_issue`]); until then
//!   a change to `active` (unbanning, reactivating) makes the status `security_issue`.
//! * **Email change.** The new address waits in `users.pending_email` until the link
//!   sent there is used. As with the other link emails, no job payload carries a secret:
//!   [`EmailChangeConfirmation`] names the user, and its handler mints the `email_change`
//!   token in the job's transaction (voiding earlier ones) and sends the link to the
//!   pending address. A request voids the earlier links at once, so a link always
//!   confirms the address it was sent to.
//! * **Deletion.** [`erase_personal_data`] keeps the user row as a tombstone (status
//!   `deleted`) so that audit events still point at an id, and erases everything else
//!   that says who the person was.

use std::time::Duration;

use email::{Mailer, Template};
use jobs::{Job, JobContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tenancy::ConstraintExt;
use url::Url;
use uuid::Uuid;

use crate::{
    Email, StoreError, UserStatus,
    secret::OpaqueToken,
    store::{TokenPurpose, consume_user_token, issue_user_token, user_by_id},
};

/// How long an email change link works.
pub const EMAIL_CHANGE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The display name of a deleted user's tombstone.
pub const DELETED_NAME: &str = "Deleted user";

/// How an audit view names a deleted actor: a pseudonym made of the start of their id
/// (the id itself is in the view already), never anything they were called.
pub fn deleted_label(user: Uuid) -> String {
    let hex = user.simple().to_string();
    format!("{DELETED_NAME} {}…", &hex[..8])
}

/// Lifts the security-issue hold of `user` after their password was reset, returning a
/// user in status `security_issue` to `active`; returns whether they were in it. Such a
/// user kept their seat, so nothing is activated. (A banned or deactivated user who
/// completes a reset with an earlier link stays so, without the hold.)
pub async fn clear_security_issue(conn: &mut PgConnection, user: Uuid) -> Result<bool, StoreError> {
    let recovered: Option<bool> = sqlx::query_scalar(
        "update users
         set status = case when status = 'security_issue' then 'active' else status end,
             security_issue_at = null, updated_at = now()
         where id = $1 and security_issue_at is not null
         returning (status = 'active')",
    )
    .bind(user)
    .fetch_optional(conn)
    .await?;
    Ok(recovered.unwrap_or(false))
}

/// Records that `user` asked to change their address to `new`, voiding every earlier
/// change link at once. When another user of the tenant has `new` (or it is the user's own
/// address already), nothing is stored and `false` is returned: the caller answers the
/// same either way and enqueues the [`EmailChangeConfirmation`] only on `true`.
pub async fn request_email_change(
    conn: &mut PgConnection,
    user: Uuid,
    new: &Email,
) -> Result<bool, StoreError> {
    sqlx::query(
        "update user_tokens set used_at = now()
         where user_id = $1 and purpose = 'email_change' and used_at is null",
    )
    .bind(user)
    .execute(&mut *conn)
    .await?;
    let stored = sqlx::query(
        "update users set pending_email = $2, updated_at = now()
         where id = $1 and status = 'active'
           and not exists (select 1 from users o where o.email_key = $3)",
    )
    .bind(user)
    .bind(new.as_str())
    .bind(new.key())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !stored {
        sqlx::query("update users set pending_email = null where id = $1")
            .bind(user)
            .execute(conn)
            .await?;
    }
    Ok(stored)
}

/// The address `user` asked to change to and has not confirmed yet, if any.
pub async fn pending_email(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar::<_, Option<String>>("select pending_email from users where id = $1")
            .bind(user)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

/// What [`confirm_email_change`] changed.
#[derive(Debug, Clone)]
pub struct EmailChanged {
    /// The address before.
    pub old_email: String,
    /// The address now (verified).
    pub new_email: String,
}

/// Uses up the email change `token` of `user`: their pending address becomes their
/// (verified) address. `None` for a token that is unknown, used, replaced, expired, or
/// another user's (the token is not spent then). [`StoreError::EmailTaken`] when another
/// user took the address meanwhile.
pub async fn confirm_email_change(
    conn: &mut PgConnection,
    token: &OpaqueToken,
    user: Uuid,
) -> Result<Option<EmailChanged>, StoreError> {
    let Some(owner) = consume_user_token(conn, token, TokenPurpose::EmailChange).await? else {
        return Ok(None);
    };
    if owner != user {
        return Ok(None);
    }
    let Some((old_email, pending)) = sqlx::query_as::<_, (String, Option<String>)>(
        "select email, pending_email from users where id = $1 and status = 'active' for update",
    )
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let Some(pending) = pending else {
        return Ok(None);
    };
    let new = Email::new(&pending);
    sqlx::query(
        "update users set email = $2, email_key = $3, pending_email = null,
                email_verified_at = now(), updated_at = now()
         where id = $1",
    )
    .bind(user)
    .bind(new.as_str())
    .bind(new.key())
    .execute(conn)
    .await
    .on_constraint("users_email_key_key", || StoreError::EmailTaken)?;
    Ok(Some(EmailChanged {
        old_email,
        new_email: new.as_str().to_owned(),
    }))
}

/// Emails `user` a link confirming their pending address (if they still have one): a
/// reference, never the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailChangeConfirmation {
    /// Whose pending address to write to.
    pub user_id: Uuid,
}

jobs::declare_job!(EmailChangeConfirmation = "auth.email_change_confirmation");

/// What [`EmailChangeConfirmation`] jobs send with.
pub struct EmailChangeMailer {
    mailer: Mailer,
    base: Url,
    ttl: Duration,
}

impl EmailChangeMailer {
    /// Links to `base/confirm-email-change?token=…`, working for [`EMAIL_CHANGE_TTL`], sent
    /// through `mailer`.
    pub fn new(mailer: Mailer, base: Url) -> Self {
        Self {
            mailer,
            base,
            ttl: EMAIL_CHANGE_TTL,
        }
    }
}

impl Job for EmailChangeConfirmation {
    const MAX_ATTEMPTS: i32 = 8;
    type Deps = EmailChangeMailer;

    async fn run(self, ctx: &mut JobContext, deps: &EmailChangeMailer) -> anyhow::Result<()> {
        let tx = ctx.tenant_tx()?;
        let pending: Option<Option<String>> = sqlx::query_scalar(
            "select pending_email from users where id = $1 and status = 'active'",
        )
        .bind(self.user_id)
        .fetch_optional(&mut **tx)
        .await?;
        let (Some(Some(to)), Some(user)) = (pending, user_by_id(tx, self.user_id).await?) else {
            tracing::info!("no pending email change; nothing sent");
            return Ok(());
        };
        let token = issue_user_token(tx, user.id, TokenPurpose::EmailChange, deps.ttl).await?;
        let mut vars = serde_json::Map::new();
        vars.insert("user_name".into(), Value::String(user.name.clone()));
        vars.insert(
            "link".into(),
            Value::String(token.link(&deps.base, "/confirm-email-change")),
        );
        vars.insert(
            "expires_in".into(),
            Value::String(humantime::format_duration(deps.ttl).to_string()),
        );
        // The verification template: the message asks to confirm this address, which is
        // what the link does. Sent before the worker commits the token (at least once).
        deps.mailer
            .send_from_job(ctx, &to, Template::Verification, vars)
            .await
    }
}

/// What [`erase_personal_data`] ended.
#[derive(Debug, Clone, Default)]
pub struct Erased {
    /// The sessions that were live (their tokens are dead now; announce them).
    pub sessions: Vec<Uuid>,
}

/// Deletes `user`: the row stays as a tombstone with status `deleted` and nothing that
/// says who the person was. Their address and its key become a placeholder unique to the
/// row (no `@`, so never anyone's address: the real one can be registered again), the
/// name becomes [`DELETED_NAME`], the password hash one no password matches; sessions
/// (with their refresh tokens, addresses and user agents), single-use tokens and role
/// assignments (so the seat is free) are deleted; accepted invitations forget the address;
/// audit events keep their ids (actor and subject point at the tombstone) but lose the
/// address where it was recorded. `None` when there is no such user (or it is deleted
/// already). Call under the roles lock, after the last-owner check; announce the returned
/// sessions and the blocked user to the revocation list after commit.
///
/// Other tables holding a user's secrets or personal data are cleared here too, in the
/// one transaction, and so are the control plane's records of mail to the user's
/// addresses (`shared.erase_email_records`: recipients replaced, unsent mail dropped).
pub async fn erase_personal_data(
    conn: &mut PgConnection,
    user: Uuid,
) -> Result<Option<Erased>, StoreError> {
    let Some((email, pending)) = sqlx::query_as::<_, (String, Option<String>)>(
        "select email, pending_email from users where id = $1 and status <> 'deleted' for update",
    )
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let placeholder = format!("deleted-{}", user.simple());
    sqlx::query(
        "update users set status = $2, email = $3, email_key = $3, name = $4,
                password_hash = '!deleted', pending_email = null, email_verified_at = null,
                security_issue_at = null,
                failed_logins = 0, failed_login_window_start = null, locked_until = null,
                last_login_at = null, security_changed_at = now(), updated_at = now()
         where id = $1",
    )
    .bind(user)
    .bind(UserStatus::Deleted.as_str())
    .bind(&placeholder)
    .bind(DELETED_NAME)
    .execute(&mut *conn)
    .await?;
    let sessions: Vec<Uuid> =
        sqlx::query_scalar("delete from sessions where user_id = $1 returning id")
            .bind(user)
            .fetch_all(&mut *conn)
            .await?;
    for statement in [
        "delete from user_tokens where user_id = $1",
        "delete from user_roles where user_id = $1",
        // The address the invitation was sent to is theirs.
        "update invitations set email = 'deleted-' || replace(id::text, '-', ''),
                email_key = 'deleted-' || replace(id::text, '-', ''), name = null
         where accepted_user_id = $1",
        "delete from user_totp where user_id = $1",
        "delete from recovery_codes where user_id = $1",
        "delete from mfa_challenges where user_id = $1",
        "delete from email_unsubscribes where user_id = $1",
        // Their keys are revoked, not deleted: the audit trail names the keys it shows as
        // actors (the user's block already refuses them on every instance).
        "update api_keys set revoked_at = coalesce(revoked_at, now()), last_used_ip = null
         where created_by = $1",
    ] {
        sqlx::query(statement)
            .bind(user)
            .execute(&mut *conn)
            .await?;
    }
    // Every address known to be theirs: the one they have, the one they were changing to,
    // and those recorded in events about them (whatever address it was then).
    let mut addresses: Vec<String> = sqlx::query_scalar(
        "select distinct details->>'email' from audit_events
         where subject_id = $1 and details ? 'email' and details->>'email' <> '(erased)'",
    )
    .bind(user)
    .fetch_all(&mut *conn)
    .await?;
    addresses.push(email.trim().to_owned());
    addresses.extend(pending.as_deref().map(|p| p.trim().to_owned()));
    // The control plane's records of mail to them, and the mail not sent yet
    // (`migrations/control/20261202000050_erase_email_records.sql`): the function takes the
    // tenant from the transaction's role, so it can reach this tenant's records only.
    sqlx::query("select shared.erase_email_records($1, $2)")
        .bind(user)
        .bind(&addresses)
        .execute(&mut *conn)
        .await?;
    // Those addresses in this tenant's events, and where their own events came from.
    sqlx::query(
        "update audit_events set details = jsonb_set(details, '{email}', '\"(erased)\"')
         where details ? 'email'
           and (subject_id = $1
                or lower(details->>'email') = any(select lower(a) from unnest($2::text[]) a))",
    )
    .bind(user)
    .bind(&addresses)
    .execute(&mut *conn)
    .await?;
    sqlx::query("update audit_events set ip = null, user_agent = null where actor_id = $1")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    Ok(Some(Erased { sessions }))
}
