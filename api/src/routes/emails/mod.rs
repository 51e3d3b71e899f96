//! Email (`ApiTag::Email`): the tenant's delivery records and the operator's view of every
//! tenant's (`messages.rs`), one-click unsubscribe (`unsubscribe.rs`) and the tenant's
//! overrides of the templates (`templates.rs`), one `#[OpenApi]` struct each, combined as
//! the tuple [`EmailApi`]. The SQL and the rules live in the `email` crate.

mod messages;
mod templates;
mod unsubscribe;

use poem_openapi::Enum;

/// The email operations.
pub type EmailApi = (
    messages::MessagesApi,
    unsubscribe::UnsubscribeApi,
    templates::TemplatesApi,
);

/// All of them, for the service.
pub const EMAIL_API: EmailApi = (
    messages::MessagesApi,
    unsubscribe::UnsubscribeApi,
    templates::TemplatesApi,
);

/// Which message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TemplateName {
    /// Confirm an email address (essential).
    Verification,
    /// Reset a password (essential).
    PasswordReset,
    /// Something changed on the account (essential).
    SecurityNotice,
    /// An invitation to join the tenant (essential).
    Invitation,
    /// Welcome after verification or an accepted invitation (non-essential: carries
    /// `List-Unsubscribe`, not sent to a user who unsubscribed).
    Welcome,
}

impl From<TemplateName> for email::Template {
    fn from(name: TemplateName) -> Self {
        match name {
            TemplateName::Verification => Self::Verification,
            TemplateName::PasswordReset => Self::PasswordReset,
            TemplateName::SecurityNotice => Self::SecurityNotice,
            TemplateName::Invitation => Self::Invitation,
            TemplateName::Welcome => Self::Welcome,
        }
    }
}

impl From<email::Template> for TemplateName {
    fn from(template: email::Template) -> Self {
        match template {
            email::Template::Verification => Self::Verification,
            email::Template::PasswordReset => Self::PasswordReset,
            email::Template::SecurityNotice => Self::SecurityNotice,
            email::Template::Invitation => Self::Invitation,
            email::Template::Welcome => Self::Welcome,
        }
    }
}
