//! Identity jobs and emails. `forgot-password` and `resend-verification` only enqueue a job
//! naming the email address, whether or not an account has it: the answer and its timing
//! are the same either way, and the job (inside the tenant's transaction) finds out
//! whether there is anyone to write to.
//!
//! No job payload carries a usable secret (operators read payloads in `/v1/admin/jobs`):
//! the jobs name an address, or a user and a purpose ([`LINK_EMAIL`], enqueued by
//! registration and sign-up), and their handler mints the verification or reset token in
//! the job's tenant transaction and sends the link at once through the mailer
//! ([`email::Mailer::send_from_job`]); the worker commits after. Security notices carry no
//! secret and go through the ordinary `email.send` job.

use std::time::Duration;

use email::{Mailer, Template};
use identity::{
    Email, User, UserStatus,
    store::{self, TokenPurpose},
};
use jobs::{JobContext, JobHandler, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tenancy::BoxFuture;
use url::Url;
use uuid::Uuid;

use crate::settings::Settings;

/// Job kind: send a password reset link to this address if an account has it.
pub const PASSWORD_RESET_REQUESTED: &str = "auth.password_reset_requested";
/// Job kind: send a new verification link to this address if a pending account has it.
pub const VERIFICATION_REQUESTED: &str = "auth.verification_requested";
/// Job kind: send this user a fresh link for this purpose (if they are still eligible).
pub const LINK_EMAIL: &str = "auth.link_email";

/// Payload of [`PASSWORD_RESET_REQUESTED`] and [`VERIFICATION_REQUESTED`].
#[derive(Debug, Serialize, Deserialize)]
struct EmailRequest {
    email: String,
}

/// What a link lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkPurpose {
    /// Confirm the email address (a pending user becomes active).
    VerifyEmail,
    /// Set a new password.
    ResetPassword,
}

/// Payload of [`LINK_EMAIL`]: a reference, never the link.
#[derive(Debug, Serialize, Deserialize)]
struct LinkRequest {
    user_id: Uuid,
    purpose: LinkPurpose,
}

/// A job of `kind` for `email` (enqueue it in the tenant's transaction).
pub fn request_job(kind: &'static str, email: &str) -> NewJob {
    NewJob::new(
        kind,
        json!(EmailRequest {
            email: email.to_owned()
        }),
    )
    .max_attempts(5)
}

/// A job emailing `user` a fresh `purpose` link (enqueue it in the tenant's transaction).
pub fn link_job(user: Uuid, purpose: LinkPurpose) -> NewJob {
    NewJob::new(
        LINK_EMAIL,
        json!(LinkRequest {
            user_id: user,
            purpose
        }),
    )
    .max_attempts(8)
}

/// Where email links point and how long they work.
#[derive(Debug, Clone)]
pub struct Links {
    base: Url,
    verification_ttl: Duration,
    reset_ttl: Duration,
}

impl Links {
    /// From the settings.
    pub fn new(settings: &Settings) -> Self {
        Self {
            base: settings.auth.public_url.clone(),
            verification_ttl: settings.auth.verification_ttl,
            reset_ttl: settings.auth.password_reset_ttl,
        }
    }

    /// Mints a `purpose` token for `user` in the job's transaction (voiding earlier unused
    /// ones) and emails the link now.
    async fn send(
        &self,
        ctx: &mut JobContext,
        mailer: &Mailer,
        user: &User,
        purpose: LinkPurpose,
    ) -> anyhow::Result<()> {
        let (token_purpose, ttl, path, template) = match purpose {
            LinkPurpose::VerifyEmail => (
                TokenPurpose::VerifyEmail,
                self.verification_ttl,
                "/verify-email",
                Template::Verification,
            ),
            LinkPurpose::ResetPassword => (
                TokenPurpose::ResetPassword,
                self.reset_ttl,
                "/reset-password",
                Template::PasswordReset,
            ),
        };
        let token = store::issue_user_token(ctx.tenant_tx()?, user.id, token_purpose, ttl).await?;
        let vars = vars(user, Some(token.link(&self.base, path)), ttl);
        mailer.send_from_job(ctx, &user.email, template, vars).await
    }
}

/// Enqueues a security notice ("your password was changed", …) to `user`.
pub async fn send_notice(conn: &mut PgConnection, user: &User, event: &str) -> anyhow::Result<()> {
    let mut vars = vars(user, None, Duration::ZERO);
    vars.insert("event".into(), Value::String(event.to_owned()));
    jobs::enqueue(
        conn,
        email::send_email_job(&user.email, Template::SecurityNotice, vars),
    )
    .await?;
    Ok(())
}

fn vars(user: &User, link: Option<String>, ttl: Duration) -> serde_json::Map<String, Value> {
    let mut vars = serde_json::Map::new();
    vars.insert("user_name".into(), Value::String(user.name.clone()));
    if let Some(link) = link {
        vars.insert("link".into(), Value::String(link));
        vars.insert(
            "expires_in".into(),
            Value::String(humantime::format_duration(ttl).to_string()),
        );
    }
    vars
}

/// Handles [`PASSWORD_RESET_REQUESTED`], [`VERIFICATION_REQUESTED`] and [`LINK_EMAIL`].
pub struct EmailRequests {
    kind: &'static str,
    links: Links,
    mailer: Mailer,
}

impl EmailRequests {
    /// Handlers for the three kinds, sending through `mailer`.
    pub fn handlers(settings: &Settings, mailer: &Mailer) -> [Self; 3] {
        let links = Links::new(settings);
        [PASSWORD_RESET_REQUESTED, VERIFICATION_REQUESTED, LINK_EMAIL].map(|kind| Self {
            kind,
            links: links.clone(),
            mailer: mailer.clone(),
        })
    }

    /// The user a job is about and the link to send them, if they are eligible for it.
    async fn recipient(
        &self,
        ctx: &mut JobContext,
        payload: Value,
    ) -> anyhow::Result<Option<(User, LinkPurpose)>> {
        let tx = ctx.tenant_tx()?;
        let (user, purpose) = if self.kind == LINK_EMAIL {
            let request: LinkRequest = serde_json::from_value(payload)?;
            (
                store::user_by_id(tx, request.user_id).await?,
                request.purpose,
            )
        } else {
            let request: EmailRequest = serde_json::from_value(payload)?;
            let purpose = if self.kind == PASSWORD_RESET_REQUESTED {
                LinkPurpose::ResetPassword
            } else {
                LinkPurpose::VerifyEmail
            };
            (
                store::user_by_email(tx, &Email::new(&request.email)).await?,
                purpose,
            )
        };
        let Some(user) = user else {
            tracing::info!(kind = self.kind, "no such account; nothing sent");
            return Ok(None);
        };
        let eligible = match (self.kind, purpose) {
            (_, LinkPurpose::ResetPassword) => !user.status.is_blocked(),
            // Asked for by address: only a pending account gets a new link.
            (VERIFICATION_REQUESTED, LinkPurpose::VerifyEmail) => {
                user.status == UserStatus::Pending
            }
            // Enqueued at registration or sign-up: until the address is verified.
            (_, LinkPurpose::VerifyEmail) => {
                user.email_verified_at.is_none() && !user.status.is_blocked()
            }
        };
        if !eligible {
            tracing::info!(kind = self.kind, status = %user.status, "account not eligible; nothing sent");
            return Ok(None);
        }
        Ok(Some((user, purpose)))
    }
}

impl JobHandler for EmailRequests {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn run<'a>(
        &'a self,
        ctx: &'a mut JobContext,
        payload: Value,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            match self.recipient(ctx, payload).await? {
                Some((user, purpose)) => self.links.send(ctx, &self.mailer, &user, purpose).await,
                None => Ok(()),
            }
        })
    }
}
