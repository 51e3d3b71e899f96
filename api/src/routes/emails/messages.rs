//! Delivery records: the tenant's (`GET /v1/emails`) and every tenant's for the operator
//! (`GET /v1/admin/emails`). Both read `public.email_messages` on the control plane; the
//! tenant's listing is always filtered by the id of the tenant the caller authenticated
//! to, never by an id from the request.

use chrono::{DateTime, Utc};
use email::messages::{self, EmailMessage, MessageFilter, MessageStatus};
use poem::web::Data;
use poem_openapi::{Enum, Object, OpenApi, param::Query, payload::Json};
use rbac::Permission;
use uuid::Uuid;

use super::TemplateName;
use crate::{
    AppState,
    admin_auth::PlatformAdmin,
    auth::{Authorized, perm},
    error::{ApiError, ApiResult},
    routes::{
        ApiTag,
        pagination::{created_cursor, decode_created_cursor, page},
    },
};

/// Delivery records.
pub struct MessagesApi;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EmailStatus {
    /// Waiting for its first or next attempt (`attempts` and `last_response` tell how
    /// earlier ones went).
    Queued,
    /// Accepted by the SMTP server (`last_response` is its answer).
    Sent,
    /// Every attempt failed; `last_response` is the last error.
    Failed,
    /// Not sent: a non-essential message to a user who unsubscribed.
    Suppressed,
}

impl From<MessageStatus> for EmailStatus {
    fn from(status: MessageStatus) -> Self {
        match status {
            MessageStatus::Queued => Self::Queued,
            MessageStatus::Sent => Self::Sent,
            MessageStatus::Failed => Self::Failed,
            MessageStatus::Suppressed => Self::Suppressed,
        }
    }
}

impl From<EmailStatus> for MessageStatus {
    fn from(status: EmailStatus) -> Self {
        match status {
            EmailStatus::Queued => Self::Queued,
            EmailStatus::Sent => Self::Sent,
            EmailStatus::Failed => Self::Failed,
            EmailStatus::Suppressed => Self::Suppressed,
        }
    }
}

/// One message.
#[derive(Debug, Object)]
pub struct EmailMessageView {
    /// Id; also the message's `X-Canopy-Message` header (and the id of the job that sends
    /// it).
    pub id: Uuid,
    /// The tenant (operators' listing only).
    #[oai(skip_serializing_if_is_none)]
    pub tenant_id: Option<Uuid>,
    /// Which message (`verification`, `welcome`, …).
    pub template: String,
    /// The recipient. In the tenant's listing, shown in full only to callers who also hold
    /// `users:read`; to others masked to its first character and domain
    /// (`j•••@example.com`).
    pub recipient: String,
    /// Where it is.
    pub status: EmailStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// The SMTP server's answer when sent (the development outbox: the file written), or
    /// the error of the last failed attempt; at most 1000 characters.
    pub last_response: Option<String>,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Accepted by the server at.
    pub sent_at: Option<DateTime<Utc>>,
}

/// `j•••@example.com` for `jane@example.com`.
fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}•••@{domain}")
        }
        None => "•••".to_owned(),
    }
}

/// `response` with every occurrence of `recipient` (any case) replaced by `masked`: an SMTP
/// answer or an address error may quote the address a caller may not see.
fn mask_in(response: &str, recipient: &str, masked: &str) -> String {
    if recipient.is_empty() {
        return response.to_owned();
    }
    let lower = response.to_lowercase();
    let needle = recipient.to_lowercase();
    if lower.len() != response.len() {
        // Case folding changed the byte offsets: drop rather than risk leaving it.
        return if lower.contains(&needle) {
            "(hidden: it quotes the recipient)".to_owned()
        } else {
            response.to_owned()
        };
    }
    let mut out = String::with_capacity(response.len());
    let mut rest = 0;
    while let Some(at) = lower[rest..].find(&needle) {
        out.push_str(&response[rest..rest + at]);
        out.push_str(masked);
        rest += at + needle.len();
    }
    out.push_str(&response[rest..]);
    out
}

impl EmailMessageView {
    fn new(m: EmailMessage, show_tenant: bool, show_recipient: bool) -> Self {
        Self {
            id: m.id,
            tenant_id: if show_tenant { m.tenant_id } else { None },
            template: m.template,
            last_response: if show_recipient {
                m.last_response
            } else {
                let masked = mask(&m.recipient);
                m.last_response.map(|r| mask_in(&r, &m.recipient, &masked))
            },
            recipient: if show_recipient {
                m.recipient
            } else {
                mask(&m.recipient)
            },
            status: m.status.into(),
            attempts: m.attempts,
            created_at: m.created_at,
            updated_at: m.updated_at,
            sent_at: m.sent_at,
        }
    }
}

/// A page of messages, newest first.
#[derive(Debug, Object)]
pub struct EmailMessagePage {
    /// Newest first.
    pub items: Vec<EmailMessageView>,
    /// Pass as `cursor` for older messages; absent on the last page.
    pub next_cursor: Option<String>,
}

fn default_limit() -> i64 {
    50
}

async fn list(
    state: &AppState,
    filter: MessageFilter,
    cursor: Option<&str>,
    limit: i64,
    view: impl Fn(EmailMessage) -> EmailMessageView,
) -> ApiResult<Json<EmailMessagePage>> {
    let filter = MessageFilter {
        before: cursor.map(decode_created_cursor).transpose()?,
        limit: limit + 1,
        ..filter
    };
    let rows = messages::list_messages(state.db.pool(), &filter)
        .await
        .map_err(ApiError::from)?;
    let (rows, next_cursor) = page(rows, limit, |m| created_cursor(m.created_at, m.id));
    Ok(Json(EmailMessagePage {
        items: rows.into_iter().map(view).collect(),
        next_cursor,
    }))
}

#[OpenApi(tag = "ApiTag::Email")]
impl MessagesApi {
    /// The tenant's email, newest first: every message, its status, attempts and the SMTP
    /// server's answer.
    #[oai(path = "/v1/emails", method = "get", operation_id = "list_emails")]
    async fn list_emails(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::AuditRead>,
        /// Only messages in this state.
        status: Query<Option<EmailStatus>>,
        /// Only this message.
        template: Query<Option<TemplateName>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        #[oai(validator(max_length = 64))]
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<EmailMessagePage>> {
        let show_recipient = auth.granted.contains(Permission::UsersRead);
        let filter = MessageFilter {
            tenant: Some(auth.principal.tenant.id),
            status: status.0.map(Into::into),
            template: template.0.map(Into::into),
            ..MessageFilter::default()
        };
        list(&state, filter, cursor.0.as_deref(), limit.0, |m| {
            EmailMessageView::new(m, false, show_recipient)
        })
        .await
    }

    /// Every tenant's email, newest first (platform operators).
    #[oai(
        path = "/v1/admin/emails",
        method = "get",
        operation_id = "list_all_emails"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "poem-openapi takes each query parameter as an argument"
    )]
    async fn list_all_emails(
        &self,
        state: Data<&AppState>,
        _admin: PlatformAdmin,
        /// Only this tenant's messages.
        tenant_id: Query<Option<Uuid>>,
        /// Only messages in this state.
        status: Query<Option<EmailStatus>>,
        /// Only this message.
        template: Query<Option<TemplateName>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        #[oai(validator(max_length = 64))]
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<EmailMessagePage>> {
        let filter = MessageFilter {
            tenant: tenant_id.0.map(tenancy::TenantId),
            status: status.0.map(Into::into),
            template: template.0.map(Into::into),
            ..MessageFilter::default()
        };
        list(&state, filter, cursor.0.as_deref(), limit.0, |m| {
            EmailMessageView::new(m, true, true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_masked_address_keeps_its_first_character_and_domain() {
        assert_eq!(super::mask("jane@example.com"), "j•••@example.com");
        assert_eq!(super::mask("é@x.example"), "é•••@x.example");
        assert_eq!(super::mask("nonsense"), "•••");
    }

    #[test]
    fn a_masked_recipient_is_masked_in_the_last_response_too() {
        let recipient = "ada@example.com";
        let masked = super::mask(recipient);
        let response = "550 5.1.1 <Ada@Example.com>: no such user (ada@example.com)";
        let shown = super::mask_in(response, recipient, &masked);
        assert!(!shown.to_lowercase().contains(recipient), "{shown}");
        assert_eq!(
            shown,
            format!("550 5.1.1 <{masked}>: no such user ({masked})")
        );
        assert_eq!(super::mask_in("250 OK", recipient, &masked), "250 OK");
    }
}
