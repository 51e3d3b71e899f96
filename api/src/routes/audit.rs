//! The tenant's security audit log (`/v1/audit-events`): sign-ups, logins, password and
//! session events, status, role and assignment changes, newest first; and `record`,
//! which every endpoint appending to it calls.

use chrono::{DateTime, Utc};
use identity::store::{self, AuditRecord};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use uuid::Uuid;

use crate::{
    AppState,
    auth::{Authorized, perm},
    error::{ApiError, ApiResult, ErrorCode},
    routes::{ApiTag, pagination::page},
};

/// Audit endpoints.
pub struct AuditApi;

/// One entry of the audit log.
#[derive(Debug, Object)]
pub struct AuditEventView {
    /// Position in the log (increasing).
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// What happened (`login.succeeded`, `user.roles_changed`, …).
    pub event: String,
    /// Who acted, when known.
    pub actor_id: Option<Uuid>,
    /// A deleted actor's pseudonym (`Deleted user 0193ab12…`); absent for anyone else.
    pub actor_label: Option<String>,
    /// Whom (or which role) it concerns.
    pub subject_id: Option<Uuid>,
    /// The actor's session (or the API key they acted with).
    pub session_id: Option<Uuid>,
    /// The API key the actor acted with, when they did (`actor_id` is its creator).
    pub actor_api_key: Option<AuditApiKeyView>,
    /// Client address.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Event-specific details.
    pub details: serde_json::Value,
}

impl From<AuditRecord> for AuditEventView {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            occurred_at: r.occurred_at,
            event: r.event,
            actor_id: r.actor,
            actor_label: r
                .actor
                .filter(|_| r.actor_deleted == Some(true))
                .map(identity::lifecycle::deleted_label),
            subject_id: r.subject,
            session_id: r.session,
            actor_api_key: r.actor_api_key_id.map(|id| AuditApiKeyView {
                kind: "api_key".to_owned(),
                id,
                name: r.actor_api_key_name.unwrap_or_default(),
            }),
            ip: r.ip,
            user_agent: r.user_agent,
            details: r.details,
        }
    }
}

/// The API key an event was done with.
#[derive(Debug, Object)]
pub struct AuditApiKeyView {
    /// Always `api_key`.
    #[oai(rename = "type")]
    pub kind: String,
    /// Key id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
}

/// A page of the audit log.
#[derive(Debug, Object)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditEventView>,
    /// Pass as `cursor` for older entries; absent on the last page.
    pub next_cursor: Option<String>,
}

fn default_limit() -> i64 {
    50
}

#[OpenApi(tag = "ApiTag::Audit")]
impl AuditApi {
    /// The tenant's audit log, newest first.
    #[oai(
        path = "/v1/audit-events",
        method = "get",
        operation_id = "list_audit_events"
    )]
    async fn list_audit_events(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::AuditRead>,
        /// Only this event.
        #[oai(validator(pattern = "^[a-z_.]{1,64}$"))]
        event: Query<Option<String>>,
        /// Only entries where this user acted or is concerned.
        user_id: Query<Option<Uuid>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<AuditPage>> {
        let before = cursor
            .0
            .as_deref()
            .map(|c| {
                c.parse::<i64>().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        "Parameter `cursor` is not a cursor this API issued.",
                    )
                })
            })
            .transpose()?;
        let mut tx = auth.begin(&state).await?;
        let records =
            store::list_audit(&mut tx, event.0.as_deref(), user_id.0, before, limit.0 + 1).await?;
        tx.commit().await?;
        let (records, next_cursor) = page(records, limit.0, |r| r.id.to_string());
        Ok(Json(AuditPage {
            items: records.into_iter().map(AuditEventView::from).collect(),
            next_cursor,
        }))
    }
}

/// Appends an audit event in `tx`.
pub(crate) async fn record(
    tx: &mut tenancy::TenantTx,
    event: &str,
    actor: Option<Uuid>,
    subject: Option<Uuid>,
    session: Option<Uuid>,
    client: &identity::ClientInfo,
    details: serde_json::Value,
) -> Result<(), identity::StoreError> {
    store::audit(
        tx,
        store::AuditEvent {
            event,
            actor,
            subject,
            session,
            client,
            details,
        },
    )
    .await
}
