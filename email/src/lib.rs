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
//! Every message carries `X-Canopy-Template` (which message) and `X-Canopy-Job` (the job
//! that sent it), for support and for tests reading the outbox.

use std::{path::PathBuf, sync::Arc};

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

/// The messages Canopy sends.
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
}

impl Template {
    /// The stable name (also the `X-Canopy-Template` header).
    pub fn name(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::PasswordReset => "password_reset",
            Self::SecurityNotice => "security_notice",
            Self::Invitation => "invitation",
        }
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

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // `.html` templates escape their values; `.txt` ones do not need to.
    for (name, source) in [
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
    ] {
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

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

/// Sends messages through SMTP or into the development outbox.
#[derive(Clone)]
pub struct Mailer {
    transport: Arc<Transport>,
    from: Mailbox,
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
        })
    }

    /// Renders `template` with `vars` for the tenant of the job `ctx` runs (its display
    /// name is added as `tenant_name` and shows as the sender) and sends it to `to` now.
    /// For handlers whose message carries a secret they minted in the job's transaction:
    /// see the crate docs.
    pub async fn send_from_job(
        &self,
        ctx: &JobContext,
        to: &str,
        template: Template,
        mut vars: serde_json::Map<String, Value>,
    ) -> anyhow::Result<()> {
        let tenant_name = ctx.tenant.as_ref().map(|t| t.name.clone());
        vars.insert(
            "tenant_name".to_owned(),
            Value::String(tenant_name.clone().unwrap_or_else(|| "Canopy".to_owned())),
        );
        let rendered = render(template, &Value::Object(vars))?;
        let tags = Tags {
            template,
            job: ctx.id.to_string(),
        };
        self.send_tagged(to, &rendered, tenant_name.as_deref(), Some(tags))
            .await?;
        tracing::info!(template = template.name(), "email sent");
        Ok(())
    }

    /// Builds and sends one message.
    pub async fn send(
        &self,
        to: &str,
        rendered: &Rendered,
        from_name: Option<&str>,
    ) -> anyhow::Result<()> {
        self.send_tagged(to, rendered, from_name, None).await
    }

    async fn send_tagged(
        &self,
        to: &str,
        rendered: &Rendered,
        from_name: Option<&str>,
        tags: Option<Tags>,
    ) -> anyhow::Result<()> {
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
                .header(JobHeader(tags.job));
        }
        let message =
            message
                .subject(&rendered.subject)
                .multipart(MultiPart::alternative_plain_html(
                    rendered.text.clone(),
                    rendered.html.clone(),
                ))?;
        match &*self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message).await?;
            }
            Transport::Outbox(outbox) => {
                outbox.send(message).await?;
            }
        }
        Ok(())
    }
}

/// What a message says about where it came from.
struct Tags {
    template: Template,
    job: String,
}

/// `X-Canopy-Template`: which message this is.
#[derive(Debug, Clone)]
struct TemplateHeader(String);

/// `X-Canopy-Job`: the id of the job that sent it.
#[derive(Debug, Clone)]
struct JobHeader(String);

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
}

jobs::declare_job!(SendEmail = "email.send");

impl Job for SendEmail {
    const MAX_ATTEMPTS: i32 = 8;
    type Deps = Mailer;

    async fn run(self, ctx: &mut JobContext, mailer: &Mailer) -> anyhow::Result<()> {
        mailer
            .send_from_job(ctx, &self.to, self.template, self.vars)
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
