//! Delivery tracking: one row per message in `public.email_messages`, in the control
//! plane beside the queue that sends it (`migrations/control/20261202000031_…`).
//!
//! * A message enqueued as an `email.send` job is `queued` from its enqueueing transaction
//!   on (a trigger on `public.jobs` writes the row); a message whose job mints a link gets
//!   its row at its first attempt ([`begin_attempt`]).
//! * Each attempt counts and keeps its outcome: the SMTP server's answer when it is `sent`,
//!   or the error, bounded to [`RESPONSE_MAX`] characters ([`finish`], [`note_failure`]).
//! * When the job dies, the trigger marks the message `failed`; a non-essential message
//!   to a user who unsubscribed is `suppressed` (recorded, never sent).
//!
//! The rows are written on the pool, outside the job's tenant transaction, so a failed
//! attempt (which rolls that transaction back) still shows. Reads for a tenant are always
//! filtered by the id of the tenant the caller authenticated to ([`MessageFilter::tenant`]).
//! Settled rows are deleted after `CANOPY_RETAIN_EMAIL_MESSAGES` ([`PruneEmailMessages`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs::{Job, JobContext, JobError, JobKind as _, NewJob, retention::Retention};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tenancy::TenantId;
use uuid::Uuid;

use crate::Template;

/// Longest SMTP answer or error text kept (characters).
pub const RESPONSE_MAX: usize = 1000;

/// The recipient of a message whose address was erased with its user
/// (`shared.erase_email_records`): kept in the record, never sent to.
pub const ERASED_RECIPIENT: &str = "(erased)";

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Waiting for (another) attempt.
    Queued,
    /// Accepted by the SMTP server (or written to the outbox).
    Sent,
    /// Every attempt failed; its job is dead.
    Failed,
    /// Not sent: non-essential and its recipient unsubscribed, or its recipient's user
    /// was deleted.
    Suppressed,
}

tenancy::text_enum!(MessageStatus, "email status" {
    Queued => "queued",
    Sent => "sent",
    Failed => "failed",
    Suppressed => "suppressed",
});

/// A recorded message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailMessage {
    /// Id (its job's id; also the `X-Canopy-Message` header).
    pub id: Uuid,
    /// Whose message; absent for platform mail.
    pub tenant_id: Option<Uuid>,
    /// Which message (`verification`, `welcome`, …).
    pub template: String,
    /// To whom.
    pub recipient: String,
    /// Where it is.
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// The SMTP server's last answer, or the last error.
    pub last_response: Option<String>,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Accepted at.
    pub sent_at: Option<DateTime<Utc>>,
}

/// One attempt at a message.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The message (= job) id.
    pub id: Uuid,
    /// The job's tenant.
    pub tenant: Option<TenantId>,
    /// Which message.
    pub template: Template,
    /// To whom.
    pub recipient: &'a str,
    /// The job's attempt number (1 on the first).
    pub attempt: i32,
}

fn bounded(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Records that `attempt` starts: the row exists (created now when no trigger made it),
/// counts this attempt and is `queued` again (a dead job an operator retried). Returns
/// whether the message may be sent: not when its recipient is [`ERASED_RECIPIENT`], in the
/// job or already in the row (erased while the job was claimed), which is never
/// overwritten with an address again.
pub async fn begin_attempt(pool: &PgPool, attempt: &Attempt<'_>) -> Result<bool, sqlx::Error> {
    let recipient: String = sqlx::query_scalar(
        "insert into public.email_messages (id, tenant_id, template, recipient, attempts)
         values ($1, $2, $3, $4, $5)
         on conflict (id) do update
         set attempts = greatest(public.email_messages.attempts, excluded.attempts),
             template = excluded.template,
             recipient = case when public.email_messages.recipient = $6 then $6
                              else excluded.recipient end,
             status = 'queued', updated_at = now()
         returning recipient",
    )
    .bind(attempt.id)
    .bind(attempt.tenant.map(|t| t.0))
    .bind(attempt.template.as_str())
    .bind(bounded(attempt.recipient, 320))
    .bind(attempt.attempt)
    .bind(ERASED_RECIPIENT)
    .fetch_one(pool)
    .await?;
    Ok(recipient != ERASED_RECIPIENT)
}

/// Ends the message as `status` with the server's `answer` (or the reason).
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    status: MessageStatus,
    answer: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update public.email_messages
         set status = $2, last_response = $3, updated_at = now(),
             sent_at = case when $2 = 'sent' then now() else sent_at end
         where id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(bounded(answer, RESPONSE_MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps the error of a failed attempt (the message stays `queued` until its job dies).
pub async fn note_failure(pool: &PgPool, id: Uuid, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update public.email_messages set last_response = $2, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(bounded(error, RESPONSE_MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Which messages to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Only this tenant's (always set for a tenant's own listing).
    pub tenant: Option<TenantId>,
    /// Only in this state.
    pub status: Option<MessageStatus>,
    /// Only this message.
    pub template: Option<Template>,
    /// Only those older than this `(created_at, id)` (the cursor).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// At most this many.
    pub limit: i64,
}

/// The messages `filter` selects, newest first.
pub async fn list_messages(
    pool: &PgPool,
    filter: &MessageFilter,
) -> Result<Vec<EmailMessage>, sqlx::Error> {
    let (before_at, before_id) = filter.before.unzip();
    sqlx::query_as(
        "select id, tenant_id, template, recipient, status, attempts, last_response,
                created_at, updated_at, sent_at
         from public.email_messages
         where ($1::uuid is null or tenant_id = $1)
           and ($2::text is null or status = $2)
           and ($3::text is null or template = $3)
           and ($4::timestamptz is null or (created_at, id) < ($4, $5))
         order by created_at desc, id desc
         limit $6",
    )
    .bind(filter.tenant.map(|t| t.0))
    .bind(filter.status.map(MessageStatus::as_str))
    .bind(filter.template.map(Template::as_str))
    .bind(before_at)
    .bind(before_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Deletes one batch of at most `batch` settled messages (sent, failed or suppressed; a
/// queued one is still the queue's) queued more than `retain` ago; returns how many.
pub async fn prune_batch(pool: &PgPool, retain: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "delete from public.email_messages where id in (
             select id from public.email_messages
             where created_at < now() - make_interval(secs => $1) and status <> 'queued'
             limit $2
             for update skip locked)",
    )
    .bind(jobs::retention::interval_secs(retain))
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The prune of email records (`email.prune_messages`; payload `{}`), run with the
/// [`Retention`] of `CANOPY_RETAIN_EMAIL_MESSAGES`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneEmailMessages {}

jobs::declare_job!(PruneEmailMessages = "email.prune_messages");

impl PruneEmailMessages {
    /// The prune, at most one pending.
    pub fn new_job(&self) -> Result<NewJob, JobError> {
        Ok(self.to_job()?.unique(Self::KIND))
    }
}

impl Job for PruneEmailMessages {
    const MAX_ATTEMPTS: i32 = 3;
    type Deps = Retention;

    async fn run(self, ctx: &mut JobContext, retention: &Retention) -> anyhow::Result<()> {
        let pool = ctx.control.pool();
        let deleted = jobs::retention::in_batches(retention.batch, |batch| {
            prune_batch(pool, retention.retain, batch)
        })
        .await?;
        retention.observer.pruned("email_messages", deleted);
        Ok(())
    }
}
