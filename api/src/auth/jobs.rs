//! Identity jobs and emails. `forgot-password` and `resend-verification` only enqueue a job
//! naming the email address, whether or not an account has it: the answer and its timing
//! are the same either way, and the job (inside the tenant's transaction) finds out
//! whether there is anyone to write to.

use std::time::Duration;

use email::Template;
use identity::{
    User, UserStatus,
    store::{self, TokenPurpose},
};
use jobs::{JobContext, JobHandler, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tenancy::BoxFuture;
use url::Url;

use crate::settings::Settings;

/// Job kind: send a password reset link to this address if an account has it.
pub const PASSWORD_RESET_REQUESTED: &str = "auth.password_reset_requested";
/// Job kind: send a new verification link to this address if a pending account has it.
pub const VERIFICATION_REQUESTED: &str = "auth.verification_requested";

/// Payload of both jobs.
#[derive(Debug, Serialize, Deserialize)]
struct EmailRequest {
    email: String,
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

    fn link(&self, path: &str, token: &identity::OpaqueToken) -> String {
        let mut url = self.base.clone();
        url.set_path(path);
        url.query_pairs_mut()
            .clear()
            .append_pair("token", &token.encode());
        url.to_string()
    }

    /// Issues a verification token for `user` and enqueues the email carrying it.
    pub async fn send_verification(
        &self,
        conn: &mut PgConnection,
        user: &User,
    ) -> anyhow::Result<()> {
        let token = store::issue_user_token(
            conn,
            user.id,
            TokenPurpose::VerifyEmail,
            self.verification_ttl,
        )
        .await?;
        let vars = vars(
            user,
            Some(self.link("/verify-email", &token)),
            self.verification_ttl,
        );
        jobs::enqueue(
            conn,
            email::send_email_job(&user.email, Template::Verification, vars),
        )
        .await?;
        Ok(())
    }

    /// Issues a reset token for `user` and enqueues the email carrying it.
    pub async fn send_reset(&self, conn: &mut PgConnection, user: &User) -> anyhow::Result<()> {
        let token =
            store::issue_user_token(conn, user.id, TokenPurpose::ResetPassword, self.reset_ttl)
                .await?;
        let vars = vars(
            user,
            Some(self.link("/reset-password", &token)),
            self.reset_ttl,
        );
        jobs::enqueue(
            conn,
            email::send_email_job(&user.email, Template::PasswordReset, vars),
        )
        .await?;
        Ok(())
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

/// Handles [`PASSWORD_RESET_REQUESTED`] and [`VERIFICATION_REQUESTED`].
pub struct EmailRequests {
    kind: &'static str,
    links: Links,
}

impl EmailRequests {
    /// Handlers for both kinds.
    pub fn handlers(settings: &Settings) -> [Self; 2] {
        let links = Links::new(settings);
        [
            Self {
                kind: PASSWORD_RESET_REQUESTED,
                links: links.clone(),
            },
            Self {
                kind: VERIFICATION_REQUESTED,
                links,
            },
        ]
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
            let request: EmailRequest = serde_json::from_value(payload)?;
            let tx = ctx.tenant_tx()?;
            let Some(user) = store::user_by_email(tx, &request.email).await? else {
                tracing::info!(
                    kind = self.kind,
                    "no account has this address; nothing sent"
                );
                return Ok(());
            };
            match (self.kind, user.status) {
                (PASSWORD_RESET_REQUESTED, status) if !status.is_blocked() => {
                    self.links.send_reset(tx, &user).await
                }
                (VERIFICATION_REQUESTED, UserStatus::Pending) => {
                    self.links.send_verification(tx, &user).await
                }
                _ => {
                    tracing::info!(kind = self.kind, status = %user.status, "account not eligible; nothing sent");
                    Ok(())
                }
            }
        })
    }
}
