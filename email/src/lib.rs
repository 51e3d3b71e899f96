//! Email: a [`Mailer`] over lettre (SMTP in production, an outbox directory of `.eml` files
//! in development), templates rendered with the tenant's display name, and the
//! [`SendEmail`] job handler. Email is always sent from a job, never on the request path.
//!
//! * A message whose values are not secret is enqueued as a [`SendEmail`] job: its
//!   recipient and values are the job's payload, which operators can read.
//! * A message that carries a secret (a verification, reset or invitation link) is never
//!   a payload. Its job names only whom and what (a user id, a purpose); the handler mints
//!   the secret in the job's tenant transaction and sends at once with
//!   [`Mailer::send_from_job`], and the worker commits after. A send that succeeds before a
//!   failed commit delivers a link that does not work; the retry sends a working one.
//!
//! Every message carries `X-Canopy-Template` (which message), `X-Canopy-Job` (the job
//! that sent it) and `X-Canopy-Message` (its row in [`messages`]), for support and for
//! tests reading the outbox.
//!
//! Around each send ([`Mailer::send_from_job`]):
//! * [`messages`] records the message per tenant (`public.email_messages`): `queued`, each
//!   attempt and its SMTP answer or error, `sent`, `failed` when its job dies, `suppressed`.
//! * A non-essential message ([`Category::NonEssential`]) is not sent to a user who
//!   unsubscribed ([`unsubscribe`]), and carries `List-Unsubscribe` with a signed one-click
//!   link (RFC 8058) otherwise. Essential mail is never suppressed.
//! * The tenant's own subject and bodies ([`overrides`]) replace the built-in template.

pub mod messages;
pub mod overrides;
pub mod unsubscribe;

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;

use jobs::{Job, JobContext};
use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart,
        header::{Header, HeaderName, HeaderValue},
    },
};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{messages::MessageStatus, unsubscribe::UnsubscribeLinks};

/// What can go wrong building a mailer or a message.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// The SMTP URL is not one lettre understands.
    #[error("invalid SMTP URL: {0}")]
    SmtpUrl(String),
    /// An address does not parse.
    #[error("invalid email address `{0}`")]
    Address(String),
    /// A template failed to render.
    #[error("template `{0}` failed to render")]
    Template(String, #[source] minijinja::Error),
    /// The message could not be built.
    #[error("message could not be built")]
    Message(#[from] lettre::error::Error),
}

/// The messages Canopy sends (a closed set: tenants override these, they add none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Confirm an email address (`link`, `expires_in`).
    Verification,
    /// Reset a password (`link`, `expires_in`).
    PasswordReset,
    /// Something changed on the account (`event`).
    SecurityNotice,
    /// An invitation to join the tenant (`link`, `expires_in`, optional `inviter_name`).
    Invitation,
    /// Welcome after the address is verified or an invitation accepted (non-essential).
    Welcome,
}

tenancy::text_enum!(Template, "email template" {
    Verification => "verification",
    PasswordReset => "password_reset",
    SecurityNotice => "security_notice",
    Invitation => "invitation",
    Welcome => "welcome",
});

/// Whether a recipient may decline a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Mail the account cannot work without (verification, reset, invitation, security
    /// notices): never suppressed, no `List-Unsubscribe`.
    Essential,
    /// Notices a user may decline (onboarding): carry `List-Unsubscribe`, and are not sent
    /// to a user who unsubscribed.
    NonEssential,
}

tenancy::text_enum!(Category, "email category" {
    Essential => "essential",
    NonEssential => "non_essential",
});

impl Template {
    /// The stable name (also the `X-Canopy-Template` header).
    pub fn name(self) -> &'static str {
        self.as_str()
    }

    /// Whether the recipient may decline it.
    pub fn category(self) -> Category {
        match self {
            Self::Verification | Self::PasswordReset | Self::SecurityNotice | Self::Invitation => {
                Category::Essential
            }
            Self::Welcome => Category::NonEssential,
        }
    }

    /// The variables its subject and bodies may use, each with the sample value a tenant's
    /// override is rendered with when it is saved. `tenant_name` is in every one.
    pub fn variables(self) -> &'static [(&'static str, &'static str)] {
        const TENANT: (&str, &str) = ("tenant_name", "Acme");
        const USER: (&str, &str) = ("user_name", "Ada Lovelace");
        const LINK: (&str, &str) = ("link", "https://app.example/verify-email?token=sample");
        const EXPIRES: (&str, &str) = ("expires_in", "1day");
        match self {
            Self::Verification | Self::PasswordReset => &[TENANT, USER, LINK, EXPIRES],
            Self::SecurityNotice => &[TENANT, USER, ("event", "Your password was changed.")],
            Self::Invitation => &[TENANT, LINK, EXPIRES, ("inviter_name", "Grace Hopper")],
            Self::Welcome => &[TENANT, USER],
        }
    }

    /// Whether the platform adds its own block to a tenant's override of it: the secret
    /// link of a verification, reset or invitation, the event of a security notice. An
    /// override controls the subject and the text around it, never the block itself.
    pub fn has_platform_block(self) -> bool {
        !matches!(self, Self::Welcome)
    }

    /// The variables a tenant's override may use (see [`Template::variables`]): all but a
    /// secret `link`, which only the platform's block renders.
    pub fn override_variables(self) -> Vec<(&'static str, &'static str)> {
        self.variables()
            .iter()
            .copied()
            .filter(|(name, _)| !(*name == "link" && self.has_platform_block()))
            .collect()
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body (values escaped).
    pub html: String,
}

/// The built-in templates, by file name (`<template>.subject.txt`, `.txt`, `.html`).
const BUILT_IN: &[(&str, &str)] = &[
    (
        "verification.subject.txt",
        include_str!("../templates/verification.subject.txt"),
    ),
    (
        "verification.txt",
        include_str!("../templates/verification.txt"),
    ),
    (
        "verification.html",
        include_str!("../templates/verification.html"),
    ),
    (
        "password_reset.subject.txt",
        include_str!("../templates/password_reset.subject.txt"),
    ),
    (
        "password_reset.txt",
        include_str!("../templates/password_reset.txt"),
    ),
    (
        "password_reset.html",
        include_str!("../templates/password_reset.html"),
    ),
    (
        "security_notice.subject.txt",
        include_str!("../templates/security_notice.subject.txt"),
    ),
    (
        "security_notice.txt",
        include_str!("../templates/security_notice.txt"),
    ),
    (
        "security_notice.html",
        include_str!("../templates/security_notice.html"),
    ),
    (
        "invitation.subject.txt",
        include_str!("../templates/invitation.subject.txt"),
    ),
    (
        "invitation.txt",
        include_str!("../templates/invitation.txt"),
    ),
    (
        "invitation.html",
        include_str!("../templates/invitation.html"),
    ),
    (
        "welcome.subject.txt",
        include_str!("../templates/welcome.subject.txt"),
    ),
    ("welcome.txt", include_str!("../templates/welcome.txt")),
    ("welcome.html", include_str!("../templates/welcome.html")),
    (
        "verification.block.txt",
        include_str!("../templates/verification.block.txt"),
    ),
    (
        "verification.block.html",
        include_str!("../templates/verification.block.html"),
    ),
    (
        "password_reset.block.txt",
        include_str!("../templates/password_reset.block.txt"),
    ),
    (
        "password_reset.block.html",
        include_str!("../templates/password_reset.block.html"),
    ),
    (
        "invitation.block.txt",
        include_str!("../templates/invitation.block.txt"),
    ),
    (
        "invitation.block.html",
        include_str!("../templates/invitation.block.html"),
    ),
    (
        "security_notice.block.txt",
        include_str!("../templates/security_notice.block.txt"),
    ),
    (
        "security_notice.block.html",
        include_str!("../templates/security_notice.block.html"),
    ),
];

/// The built-in source of `template`'s `part` (`subject.txt`, `txt` or `html`).
pub fn built_in_source(template: Template, part: &str) -> Option<&'static str> {
    let name = format!("{}.{part}", template.name());
    BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, source)| *source)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // `.html` templates escape their values; `.txt` ones do not need to.
    for (name, source) in BUILT_IN.iter().copied() {
        // The sources are compiled in; a syntax error is caught by the tests.
        if let Err(error) = env.add_template(name, source) {
            tracing::error!(template = name, %error, "email template does not compile");
        }
    }
    env
}

/// Renders `template` with `vars` (an object; `tenant_name` is expected by every template).
pub fn render(template: Template, vars: &Value) -> Result<Rendered, EmailError> {
    let env = environment();
    let render = |suffix: &str| {
        let name = format!("{}.{suffix}", template.name());
        env.get_template(&name)
            .and_then(|t| t.render(vars))
            .map_err(|e| EmailError::Template(name, e))
    };
    Ok(Rendered {
        subject: render("subject.txt")?.trim().to_owned(),
        text: render("txt")?,
        html: render("html")?,
    })
}

/// The platform's own block of `template` (text, HTML) added after a tenant's override
/// (see [`Template::has_platform_block`]), rendered with the message's real `vars`.
pub fn render_block(
    template: Template,
    vars: &Value,
) -> Result<Option<(String, String)>, EmailError> {
    if !template.has_platform_block() {
        return Ok(None);
    }
    let env = environment();
    let render = |suffix: &str| {
        let name = format!("{}.block.{suffix}", template.name());
        env.get_template(&name)
            .and_then(|t| t.render(vars))
            .map_err(|e| EmailError::Template(name, e))
    };
    Ok(Some((render("txt")?, render("html")?)))
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

/// Sends messages through SMTP or into the development outbox.
#[derive(Clone)]
pub struct Mailer {
    transport: Arc<Transport>,
    from: Mailbox,
    unsubscribe: Option<Arc<UnsubscribeLinks>>,
}

/// One message a job sends: to whom, which, with what values, and the recipient's user
/// (needed for a non-essential message, whose unsubscribe link names them).
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Recipient address.
    pub to: &'a str,
    /// Which message.
    pub template: Template,
    /// Template values (`tenant_name` is added).
    pub vars: serde_json::Map<String, Value>,
    /// The recipient's user id, when they have an account.
    pub user: Option<Uuid>,
}

/// Why a message to a deleted user is not sent.
const DELETED_USER: &str = "not sent: the recipient's user was deleted";

/// Records message `id` as `suppressed` for `reason`: it is not sent, and its job succeeds.
async fn suppress(
    pool: &sqlx::PgPool,
    id: Uuid,
    template: Template,
    reason: &str,
) -> anyhow::Result<()> {
    messages::finish(pool, id, MessageStatus::Suppressed, reason).await?;
    tracing::info!(template = template.name(), "email suppressed");
    Ok(())
}

impl Mailer {
    /// SMTP at `url` (`smtp://user:pass@host:587?tls=required`, `smtps://host:465`, or
    /// plain `smtp://host:25` for a local relay).
    pub fn smtp(url: &str, from: &str) -> Result<Self, EmailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| EmailError::SmtpUrl(e.to_string()))?
            .build();
        Ok(Self {
            transport: Arc::new(Transport::Smtp(transport)),
            from: from
                .parse()
                .map_err(|_| EmailError::Address(from.to_owned()))?,
            unsubscribe: None,
        })
    }

    /// Writes each message as an `.eml` file into `dir` (created if missing).
    pub fn outbox(dir: PathBuf, from: &str) -> Result<Self, EmailError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| EmailError::SmtpUrl(format!("outbox {}: {e}", dir.display())))?;
        Ok(Self {
            transport: Arc::new(Transport::Outbox(AsyncFileTransport::new(dir))),
            from: from
                .parse()
                .map_err(|_| EmailError::Address(from.to_owned()))?,
            unsubscribe: None,
        })
    }

    /// Non-essential messages carry one-click unsubscribe links made by `links`. Without
    /// it, a non-essential message cannot be sent (its job fails, saying so).
    pub fn with_unsubscribe(mut self, links: UnsubscribeLinks) -> Self {
        self.unsubscribe = Some(Arc::new(links));
        self
    }

    /// Renders `template` with `vars` for the tenant of the job `ctx` runs (its display
    /// name is added as `tenant_name` and shows as the sender) and sends it to `to` now.
    /// For handlers whose message carries a secret they minted in the job's transaction:
    /// see the crate docs. The message is essential or has no user: see [`Self::deliver`].
    pub async fn send_from_job(
        &self,
        ctx: &mut JobContext,
        to: &str,
        template: Template,
        vars: serde_json::Map<String, Value>,
    ) -> anyhow::Result<()> {
        self.deliver(
            ctx,
            Outgoing {
                to,
                template,
                vars,
                user: None,
            },
        )
        .await
    }

    /// Sends `message` from the job `ctx` runs, recording it in [`messages`] (its id is the
    /// job's): the attempt, then `sent` with the server's answer, `suppressed` when it is
    /// non-essential and its user unsubscribed, or the error (the job then fails and
    /// retries; `failed` once it dies). A tenant's override of the template is used when
    /// it has one ([`overrides`]).
    ///
    /// The row is written on the control plane outside the job's tenant transaction, so an
    /// attempt that fails (and rolls that transaction back) still shows.
    pub async fn deliver(&self, ctx: &mut JobContext, message: Outgoing<'_>) -> anyhow::Result<()> {
        let Outgoing {
            to,
            template,
            mut vars,
            user,
        } = message;
        let tenant = ctx.tenant.clone();
        let pool = ctx.control.pool().clone();
        let tracked = messages::Attempt {
            id: ctx.id,
            tenant: tenant.as_ref().map(|t| t.id),
            template,
            recipient: to,
            attempt: ctx.attempt,
        };
        let sendable = messages::begin_attempt(&pool, &tracked)
            .await
            .context("failed to record the email attempt")?;
        // Its user was deleted and the address erased (while the job ran, or before a retry).
        if !sendable {
            return suppress(&pool, ctx.id, template, DELETED_USER).await;
        }
        // A message queued for a user deleted since is not sent.
        if let (Some(user), Ok(tx)) = (user, ctx.tenant_tx()) {
            let deleted: bool = sqlx::query_scalar(
                "select exists (select 1 from users where id = $1 and status = 'deleted')",
            )
            .bind(user)
            .fetch_one(&mut **tx)
            .await?;
            if deleted {
                return suppress(&pool, ctx.id, template, DELETED_USER).await;
            }
        }
        let unsubscribe = match template.category() {
            Category::Essential => None,
            Category::NonEssential => {
                let (Some(tenant), Some(user)) = (tenant.as_ref(), user) else {
                    let error = anyhow::anyhow!(
                        "a non-essential message needs a tenant and the recipient's user"
                    );
                    return self.failed(&pool, ctx.id, error).await;
                };
                if unsubscribe::is_unsubscribed(ctx.tenant_tx()?, user, Category::NonEssential)
                    .await?
                {
                    return suppress(
                        &pool,
                        ctx.id,
                        template,
                        "not sent: the recipient unsubscribed",
                    )
                    .await;
                }
                let Some(links) = &self.unsubscribe else {
                    let error = anyhow::anyhow!("no unsubscribe links are configured");
                    return self.failed(&pool, ctx.id, error).await;
                };
                Some(links.header_for(tenant.id, user, Category::NonEssential))
            }
        };
        let tenant_name = tenant.as_ref().map(|t| t.name.clone());
        vars.insert(
            "tenant_name".to_owned(),
            Value::String(tenant_name.clone().unwrap_or_else(|| "Canopy".to_owned())),
        );
        let vars = Value::Object(vars);
        let custom = match ctx.tenant_tx() {
            Ok(tx) => overrides::find(tx, template).await?,
            Err(_) => None,
        };
        let rendered = match custom.map(|c| overrides::render(template, &c, &vars)) {
            Some(Ok(rendered)) => rendered,
            Some(Err(error)) => {
                // Checked when saved; a value unlike the sample (an absent inviter) can
                // still fail: the built-in message goes out instead of none.
                tracing::warn!(template = template.name(), error = %error, "the tenant's template does not render; sending the built-in one");
                render(template, &vars)?
            }
            None => render(template, &vars)?,
        };
        let tags = Tags {
            template,
            job: ctx.id.to_string(),
            unsubscribe,
        };
        match self
            .send_tagged(to, &rendered, tenant_name.as_deref(), Some(tags))
            .await
        {
            Ok(answer) => {
                messages::finish(&pool, ctx.id, MessageStatus::Sent, &answer).await?;
                tracing::info!(template = template.name(), "email sent");
                Ok(())
            }
            Err(error) => self.failed(&pool, ctx.id, error).await,
        }
    }

    /// Records `error` as the attempt's answer and fails the attempt with it.
    async fn failed(
        &self,
        pool: &sqlx::PgPool,
        id: Uuid,
        error: anyhow::Error,
    ) -> anyhow::Result<()> {
        let text = format!("{error:#}");
        if let Err(record) = messages::note_failure(pool, id, &text).await {
            tracing::warn!(error = %record, "recording the failed email attempt failed");
        }
        Err(error)
    }

    /// Builds and sends one message; returns the server's answer.
    pub async fn send(
        &self,
        to: &str,
        rendered: &Rendered,
        from_name: Option<&str>,
    ) -> anyhow::Result<String> {
        self.send_tagged(to, rendered, from_name, None).await
    }

    async fn send_tagged(
        &self,
        to: &str,
        rendered: &Rendered,
        from_name: Option<&str>,
        tags: Option<Tags>,
    ) -> anyhow::Result<String> {
        let to: Mailbox = to.parse().map_err(|_| EmailError::Address(to.to_owned()))?;
        // The tenant's name shows as the sender; the address stays the platform's.
        let from = Mailbox::new(
            from_name.map(str::to_owned).or(self.from.name.clone()),
            self.from.email.clone(),
        );
        let mut message = Message::builder().from(from).to(to);
        if let Some(tags) = tags {
            message = message
                .header(TemplateHeader(tags.template.name().to_owned()))
                .header(MessageHeader(tags.job.clone()))
                .header(JobHeader(tags.job));
            if let Some(unsubscribe) = tags.unsubscribe {
                message = message
                    .header(ListUnsubscribe(unsubscribe))
                    .header(ListUnsubscribePost);
            }
        }
        let message =
            message
                .subject(&rendered.subject)
                .multipart(MultiPart::alternative_plain_html(
                    rendered.text.clone(),
                    rendered.html.clone(),
                ))?;
        let answer = match &*self.transport {
            Transport::Smtp(smtp) => {
                let response = smtp.send(message).await?;
                let text: Vec<&str> = response.message().collect();
                format!("{} {}", response.code(), text.join(" "))
            }
            Transport::Outbox(outbox) => {
                let id = outbox.send(message).await?;
                format!("written to the outbox as {id}.eml")
            }
        };
        Ok(answer)
    }
}

/// What a message says about where it came from.
struct Tags {
    template: Template,
    job: String,
    /// The `List-Unsubscribe` value of a non-essential message.
    unsubscribe: Option<String>,
}

/// `X-Canopy-Template`: which message this is.
#[derive(Debug, Clone)]
struct TemplateHeader(String);

/// `X-Canopy-Job`: the id of the job that sent it.
#[derive(Debug, Clone)]
struct JobHeader(String);

/// `X-Canopy-Message`: the id of its row in `email_messages` (the job's id: one job sends
/// at most one message).
#[derive(Debug, Clone)]
struct MessageHeader(String);

/// `List-Unsubscribe: <https://…>` (RFC 2369).
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

type HeaderError = Box<dyn std::error::Error + Send + Sync>;

impl Header for TemplateHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Canopy-Template")
    }

    fn parse(s: &str) -> Result<Self, HeaderError> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Header for JobHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Canopy-Job")
    }

    fn parse(s: &str) -> Result<Self, HeaderError> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Header for MessageHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Canopy-Message")
    }

    fn parse(s: &str) -> Result<Self, HeaderError> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, HeaderError> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, HeaderError> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

/// Whether `address` is a deliverable mailbox address (`local@domain`, as lettre parses
/// it: no display name, no angle brackets).
pub fn is_valid_address(address: &str) -> bool {
    address.len() <= 254 && address.parse::<lettre::Address>().is_ok()
}

/// A job that sends `template` to `to` (for the tenant of the transaction it is enqueued
/// in). The payload is visible to operators: never put a secret in `vars` (mint it in a job
/// of your own and use [`Mailer::send_from_job`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendEmail {
    /// Recipient address.
    pub to: String,
    /// Which message.
    pub template: Template,
    /// Template values (the tenant's name is added by the job).
    #[serde(default)]
    pub vars: serde_json::Map<String, Value>,
    /// The recipient's user, when they have an account (required for a non-essential
    /// message: its unsubscribe link and the preference checked name them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
}

jobs::declare_job!(SendEmail = "email.send");

impl Job for SendEmail {
    const MAX_ATTEMPTS: i32 = 8;
    type Deps = Mailer;

    async fn run(self, ctx: &mut JobContext, mailer: &Mailer) -> anyhow::Result<()> {
        mailer
            .deliver(
                ctx,
                Outgoing {
                    to: &self.to,
                    template: self.template,
                    vars: self.vars,
                    user: self.user_id,
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_template_renders_with_the_tenant_name_and_escapes_html() {
        let vars = json!({
            "tenant_name": "Acme <Tools>",
            "user_name": "Ada",
            "link": "https://acme.example/verify?token=abc",
            "expires_in": "24 hours",
            "event": "Your password was changed.",
        });
        for template in [
            Template::Verification,
            Template::PasswordReset,
            Template::SecurityNotice,
        ] {
            let rendered = render(template, &vars).expect("renders");
            assert!(rendered.subject.contains("Acme <Tools>"), "{rendered:?}");
            assert!(rendered.text.contains("Hello Ada") && rendered.text.contains("Acme <Tools>"));
            assert!(
                rendered.html.contains("Acme &lt;Tools&gt;") && !rendered.html.contains("<Tools>")
            );
        }
        let verification = render(Template::Verification, &vars).expect("renders");
        assert!(
            verification
                .text
                .contains("https://acme.example/verify?token=abc")
        );
        let invitation = render(
            Template::Invitation,
            &json!({
                "tenant_name": "Acme",
                "inviter_name": "Grace <Admin>",
                "link": "https://acme.example/accept-invitation?token=abc",
                "expires_in": "7days",
            }),
        )
        .expect("renders");
        assert!(invitation.subject.contains("Acme"), "{invitation:?}");
        assert!(invitation.text.contains("Grace <Admin> invites you"));
        assert!(invitation.html.contains("Grace &lt;Admin&gt; invites you"));
        assert!(invitation.text.contains("accept-invitation?token=abc"));
        let anonymous = render(
            Template::Invitation,
            &json!({"tenant_name": "Acme", "inviter_name": null, "link": "x", "expires_in": "1h"}),
        )
        .expect("renders");
        assert!(anonymous.text.contains("You are invited to join Acme"));
    }
}
