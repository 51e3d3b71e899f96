//! The emails that carry a link: verification and password reset. `forgot-password` and
//! `resend-verification` only enqueue a job naming the email address, whether or not an
//! account has it: the answer and its timing are the same either way, and the job (inside
//! the tenant's transaction) finds out whether there is anyone to write to.
//!
//! No job payload carries a usable secret (operators read payloads in `/v1/admin/jobs`):
//! the jobs name an address, or a user and a purpose ([`LinkEmail`], enqueued by
//! registration and sign-up), and their handler mints the verification or reset token in
//! the job's tenant transaction and sends the link at once through the mailer
//! ([`email::Mailer::send_from_job`]); the worker commits after. Security notices carry no
//! secret and go through the ordinary [`email::SendEmail`] job ([`notice`]), and so does
//! the welcome message ([`welcome`]), the one non-essential message: it names its user, so
//! that the mailer can offer a one-click unsubscribe and honour it.

use std::time::Duration;

use email::{Mailer, SendEmail, Template};
use jobs::{Job, JobContext, JobKind, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;
use uuid::Uuid;

use crate::{
    Email, User, UserStatus,
    store::{self, TokenPurpose},
};

/// Send a password reset link to this address if an account has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordResetRequested {
    /// The address asked for.
    pub email: String,
}

jobs::declare_job!(PasswordResetRequested = "auth.password_reset_requested");

/// Send a new verification link to this address if a pending account has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerificationRequested {
    /// The address asked for.
    pub email: String,
}

jobs::declare_job!(VerificationRequested = "auth.verification_requested");

/// Send this user a fresh link for this purpose (if they are still eligible): a reference,
/// never the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkEmail {
    /// Whom to write to.
    pub user_id: Uuid,
    /// Which link.
    pub purpose: LinkPurpose,
}

jobs::declare_job!(LinkEmail = "auth.link_email");

/// What a link lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkPurpose {
    /// Confirm the email address (a pending user becomes active).
    VerifyEmail,
    /// Set a new password.
    ResetPassword,
}

/// What the link jobs send with: where links point, how long they work, the mailer.
#[derive(Clone)]
pub struct LinkMailer {
    base: Url,
    verification_ttl: Duration,
    reset_ttl: Duration,
    mailer: Mailer,
}

impl LinkMailer {
    /// Links to `base/verify-email?token=…` and `base/reset-password?token=…`, working for
    /// the given times, sent through `mailer`.
    pub fn new(base: Url, verification_ttl: Duration, reset_ttl: Duration, mailer: Mailer) -> Self {
        Self {
            base,
            verification_ttl,
            reset_ttl,
            mailer,
        }
    }

    /// Mints a `purpose` token for `user` in the job's transaction (voiding earlier unused
    /// ones) and emails the link now, if `eligible` says the account may still have it.
    async fn send(
        &self,
        ctx: &mut JobContext,
        kind: &'static str,
        user: Option<User>,
        purpose: LinkPurpose,
        eligible: impl FnOnce(&User) -> bool,
    ) -> anyhow::Result<()> {
        let Some(user) = user else {
            tracing::info!(kind, "no such account; nothing sent");
            return Ok(());
        };
        if !eligible(&user) {
            tracing::info!(kind, status = %user.status, "account not eligible; nothing sent");
            return Ok(());
        }
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
        let vars = vars(&user, Some(token.link(&self.base, path)), ttl);
        self.mailer
            .send_from_job(ctx, &user.email, template, vars)
            .await
    }
}

impl Job for PasswordResetRequested {
    type Deps = LinkMailer;

    async fn run(self, ctx: &mut JobContext, deps: &LinkMailer) -> anyhow::Result<()> {
        let user = store::user_by_email(ctx.tenant_tx()?, &Email::new(&self.email)).await?;
        deps.send(ctx, Self::KIND, user, LinkPurpose::ResetPassword, |user| {
            user.status.may_reset_password()
        })
        .await
    }
}

impl Job for VerificationRequested {
    type Deps = LinkMailer;

    async fn run(self, ctx: &mut JobContext, deps: &LinkMailer) -> anyhow::Result<()> {
        let user = store::user_by_email(ctx.tenant_tx()?, &Email::new(&self.email)).await?;
        // Asked for by address: only a pending account gets a new link.
        deps.send(ctx, Self::KIND, user, LinkPurpose::VerifyEmail, |user| {
            user.status == UserStatus::Pending
        })
        .await
    }
}

impl Job for LinkEmail {
    const MAX_ATTEMPTS: i32 = 8;
    type Deps = LinkMailer;

    async fn run(self, ctx: &mut JobContext, deps: &LinkMailer) -> anyhow::Result<()> {
        let user = store::user_by_id(ctx.tenant_tx()?, self.user_id).await?;
        let purpose = self.purpose;
        deps.send(ctx, Self::KIND, user, purpose, |user| match purpose {
            LinkPurpose::ResetPassword => user.status.may_reset_password(),
            // Enqueued at registration or sign-up: until the address is verified.
            LinkPurpose::VerifyEmail => {
                user.email_verified_at.is_none() && !user.status.is_blocked()
            }
        })
        .await
    }
}

/// The job that sends `user` a security notice ("your password was changed", …); enqueue
/// it in the tenant's transaction.
pub fn notice(user: &User, event: &str) -> Result<NewJob, jobs::JobError> {
    let mut vars = vars(user, None, Duration::ZERO);
    vars.insert("event".into(), Value::String(event.to_owned()));
    SendEmail {
        to: user.email.clone(),
        template: Template::SecurityNotice,
        vars,
        user_id: Some(user.id),
    }
    .to_job()
}

/// The job that welcomes `user` once their address is verified or their invitation
/// accepted (non-essential: not sent to a user who unsubscribed); enqueue it in the
/// tenant's transaction.
pub fn welcome(user: &User) -> Result<NewJob, jobs::JobError> {
    SendEmail {
        to: user.email.clone(),
        template: Template::Welcome,
        vars: vars(user, None, Duration::ZERO),
        user_id: Some(user.id),
    }
    .to_job()
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
