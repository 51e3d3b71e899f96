//! Invitations: how members join an `invite_only` tenant (or any tenant, with chosen
//! roles). An invitation names an address and the roles its user will hold; its email
//! carries a single-use link whose token only the email job ever sees.
//!
//! No job payload carries a usable secret: the invitation email job names the invitation
//! alone, and the job mints a fresh token when it runs, storing only its SHA-256 on the
//! invitation (replacing any earlier one, so only the newest link works), renders the
//! message and sends it itself. A resend voids the current link at once and enqueues the
//! job again; a retried job simply mints another token. Accepting uses the token up.
//!
//! At most one invitation per address is open (neither accepted nor revoked); inviting an
//! open address again refreshes that invitation (new roles, new lifetime, new link).

use std::time::Duration;

use chrono::{DateTime, Utc};
use email::{Mailer, Template};
use jobs::{Job, JobContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use url::Url;
use uuid::Uuid;

use crate::{StoreError, email::email_key, secret::OpaqueToken, store::user_by_id};

/// Most roles one invitation may grant.
pub const MAX_ROLES: usize = 20;

/// An open invitation (a row of `invitations`, read through `COLUMNS`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Invitation {
    /// Id.
    pub id: Uuid,
    /// The address invited, as typed (trimmed).
    pub email: String,
    /// The roles its user will hold.
    pub role_ids: Vec<Uuid>,
    /// Who invited (last).
    pub invited_by: Option<Uuid>,
    /// First invited.
    pub created_at: DateTime<Utc>,
    /// Last invited, resent or emailed.
    pub updated_at: DateTime<Utc>,
    /// The link stops working then.
    pub expires_at: DateTime<Utc>,
    /// When the current link was emailed (`None`: its email is still queued).
    pub sent_at: Option<DateTime<Utc>>,
    /// The display name an administrator gave the user (`POST /v1/users`), if any.
    pub name: Option<String>,
    /// Whether it holds a seat while open and unexpired (a user an administrator created).
    pub reserves_seat: bool,
}

const COLUMNS: &str = "id, email, role_ids, invited_by, created_at, updated_at, expires_at, \
                       sent_at, name, reserves_seat";

/// Open: neither accepted nor revoked (expired ones included: they can be resent).
const OPEN: &str = "accepted_at is null and revoked_at is null";

fn expiry(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)
}

/// An invitation to make.
#[derive(Debug)]
pub struct NewInvitation<'a> {
    /// The address (trimmed by the caller).
    pub email: &'a str,
    /// Roles of the tenant (checked by the caller), 1 to [`MAX_ROLES`].
    pub role_ids: &'a [Uuid],
    /// The inviter.
    pub invited_by: Uuid,
    /// The new user's display name, when the inviter gives it (acceptance may keep it).
    pub name: Option<&'a str>,
    /// Whether the invitation holds a seat until it is accepted, revoked or expires (a
    /// user created by an administrator). Refreshing keeps a reservation made before.
    pub reserves_seat: bool,
}

/// Invites `new.email`, or refreshes the open invitation of that address (its roles,
/// inviter and lifetime are replaced, and its current link is void). Returns the
/// invitation and whether it is new. Enqueue an [`InvitationEmail`] after it.
pub async fn invite(
    conn: &mut PgConnection,
    new: NewInvitation<'_>,
    ttl: Duration,
) -> Result<(Invitation, bool), StoreError> {
    let id = Uuid::now_v7();
    let invitation: Invitation = sqlx::query_as(&format!(
        "insert into invitations
             (id, email, email_key, role_ids, invited_by, expires_at, name, reserves_seat)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (email_key) where {OPEN}
         do update set email = excluded.email, role_ids = excluded.role_ids,
                       invited_by = excluded.invited_by, expires_at = excluded.expires_at,
                       name = coalesce(excluded.name, invitations.name),
                       reserves_seat = invitations.reserves_seat or excluded.reserves_seat,
                       token_hash = null, sent_at = null, updated_at = now()
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(new.email)
    .bind(email_key(new.email))
    .bind(new.role_ids)
    .bind(new.invited_by)
    .bind(expiry(ttl))
    .bind(new.name)
    .bind(new.reserves_seat)
    .fetch_one(conn)
    .await?;
    let created = invitation.id == id;
    Ok((invitation, created))
}

/// The open invitation of `email` (any spelling), locked for the rest of the transaction.
pub async fn open_for_email(
    conn: &mut PgConnection,
    email: &str,
) -> Result<Option<Invitation>, StoreError> {
    let row: Option<Invitation> = sqlx::query_as(&format!(
        "select {COLUMNS} from invitations where email_key = $1 and {OPEN} for update"
    ))
    .bind(email_key(email))
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// A page of open invitations, oldest first, after the keyset `after` (created_at, id).
pub async fn list_open(
    conn: &mut PgConnection,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Invitation>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from invitations
         where {OPEN} and ($1::timestamptz is null or (created_at, id) > ($1, $2))
         order by created_at, id limit $3"
    ))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The invitations `user` sent (last), newest first, at most `limit`: for the export of
/// their own data.
pub async fn sent_by(
    conn: &mut PgConnection,
    user: Uuid,
    limit: i64,
) -> Result<Vec<Invitation>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from invitations where invited_by = $1
         order by created_at desc, id desc limit $2"
    ))
    .bind(user)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Revokes the open invitation `id`: its link stops working. `None` if there is none.
pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<Option<Invitation>, StoreError> {
    let row: Option<Invitation> = sqlx::query_as(&format!(
        "update invitations set revoked_at = now(), token_hash = null, updated_at = now()
         where id = $1 and {OPEN} returning {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Prepares a resend of the open invitation `id`: its current link is void at once and its
/// lifetime starts again. Enqueue an [`InvitationEmail`] after it. `None` if there is
/// no such open invitation.
pub async fn renew(
    conn: &mut PgConnection,
    id: Uuid,
    ttl: Duration,
) -> Result<Option<Invitation>, StoreError> {
    let row: Option<Invitation> = sqlx::query_as(&format!(
        "update invitations set token_hash = null, sent_at = null, expires_at = $2,
                updated_at = now()
         where id = $1 and {OPEN} returning {COLUMNS}"
    ))
    .bind(id)
    .bind(expiry(ttl))
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Mints the link token of the open, unexpired invitation `id`, replacing the previous
/// one (only its hash is stored). `None` when the invitation is no longer open or has
/// expired: there is nothing to send.
pub async fn mint_token(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(Invitation, OpaqueToken)>, StoreError> {
    let token = OpaqueToken::generate();
    let row: Option<Invitation> = sqlx::query_as(&format!(
        "update invitations set token_hash = $2, sent_at = now(), updated_at = now()
         where id = $1 and {OPEN} and expires_at > now() returning {COLUMNS}"
    ))
    .bind(id)
    .bind(token.hash())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|invitation| (invitation, token)))
}

/// Uses up `token`: the open, unexpired invitation it is the current link of, now
/// accepted; `None` for a token that is unknown, replaced, used, revoked or expired.
/// Record the user made with [`record_acceptance`] in the same transaction.
pub async fn accept(
    conn: &mut PgConnection,
    token: &OpaqueToken,
) -> Result<Option<Invitation>, StoreError> {
    let row: Option<Invitation> = sqlx::query_as(&format!(
        "update invitations set accepted_at = now(), token_hash = null, updated_at = now()
         where token_hash = $1 and {OPEN} and expires_at > now() returning {COLUMNS}"
    ))
    .bind(token.hash())
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Notes which user accepting invitation `id` made.
pub async fn record_acceptance(
    conn: &mut PgConnection,
    id: Uuid,
    user: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("update invitations set accepted_user_id = $2 where id = $1")
        .bind(id)
        .bind(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// The job that emails an invitation a fresh link (enqueue it in the tenant's transaction):
/// it mints the token, renders the invitation and sends it. Its payload names the
/// invitation, nothing secret (the job's tenant is the job row's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationEmail {
    /// The invitation to email.
    pub invitation_id: Uuid,
}

jobs::declare_job!(InvitationEmail = "auth.invitation_email");

/// What [`InvitationEmail`] jobs send with.
pub struct InvitationEmails {
    mailer: Mailer,
    public_url: Url,
}

impl InvitationEmails {
    /// Sends through `mailer`, with links to `public_url/accept-invitation?token=…`.
    pub fn new(mailer: Mailer, public_url: Url) -> Self {
        Self { mailer, public_url }
    }
}

impl Job for InvitationEmail {
    const MAX_ATTEMPTS: i32 = 8;
    type Deps = InvitationEmails;

    async fn run(self, ctx: &mut JobContext, deps: &InvitationEmails) -> anyhow::Result<()> {
        let tx = ctx.tenant_tx()?;
        let Some((invitation, token)) = mint_token(tx, self.invitation_id).await? else {
            tracing::info!("invitation no longer open; nothing sent");
            return Ok(());
        };
        let inviter = match invitation.invited_by {
            Some(id) => user_by_id(tx, id).await?.map(|u| u.name),
            None => None,
        };
        let left = (invitation.expires_at - Utc::now())
            .to_std()
            .unwrap_or_default();
        // Whole minutes: "6days 23h 59m 59s 870ms" reads badly in an email.
        let left = Duration::from_secs(left.as_secs().div_ceil(60) * 60);
        let mut vars = serde_json::Map::new();
        vars.insert("inviter_name".into(), serde_json::json!(inviter));
        vars.insert(
            "link".into(),
            Value::String(token.link(&deps.public_url, "/accept-invitation")),
        );
        vars.insert(
            "expires_in".into(),
            Value::String(humantime::format_duration(left).to_string()),
        );
        // Sent before the worker commits the token's hash: should that commit fail, this
        // link never works and the retry mints and sends another (at least once).
        deps.mailer
            .send_from_job(ctx, &invitation.email, Template::Invitation, vars)
            .await?;
        tracing::info!(invitation_id = %invitation.id, "invitation sent");
        Ok(())
    }
}
