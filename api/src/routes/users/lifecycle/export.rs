//! The export of one's own data (`GET /v1/me/export`): profile, live sessions, roles, the
//! audit events where one is the actor or the subject (the newest [`MAX_EVENTS`]), and the
//! invitations one sent (the newest [`MAX_INVITATIONS`]). Nothing about another person but
//! their id: an event another user caused shows that user's id only (not their session,
//! address or user agent), audit details lose any recorded `email`, and invitations leave
//! out the address invited.

use chrono::{DateTime, Utc};
use identity::{invitations, lifecycle, store};
use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use uuid::Uuid;

use crate::{
    AppState,
    auth::UserAuth,
    error::ApiResult,
    routes::{
        ApiTag,
        users::{RoleRef, UserStatusView, current_user, user_view},
        views::SessionView,
    },
};

/// Most audit events an export holds (the newest).
pub const MAX_EVENTS: i64 = 1000;

/// Most sent invitations an export holds (the newest).
pub const MAX_INVITATIONS: i64 = 1000;

/// Export endpoints.
pub struct ExportApi;

/// One's own profile.
#[derive(Debug, Object)]
pub struct ExportedProfile {
    /// User id.
    pub id: Uuid,
    /// Email address.
    pub email: String,
    /// An address asked for and not confirmed yet.
    pub pending_email: Option<String>,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: UserStatusView,
    /// Whether the address is verified.
    pub email_verified: bool,
    /// When the address was verified.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// Last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An audit event where one is the actor or the subject.
#[derive(Debug, Object)]
pub struct ExportedEvent {
    /// Position in the log.
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// What happened.
    pub event: String,
    /// Who acted (an id only, whoever it is).
    pub actor_id: Option<Uuid>,
    /// Whom it concerns (an id only).
    pub subject_id: Option<Uuid>,
    /// Your session, when you acted.
    pub session_id: Option<Uuid>,
    /// Your address, when you acted.
    pub ip: Option<String>,
    /// Your user agent, when you acted.
    pub user_agent: Option<String>,
    /// Event-specific details (any recorded `email` left out).
    pub details: serde_json::Value,
}

/// An invitation one sent.
#[derive(Debug, Object)]
pub struct ExportedInvitation {
    /// Invitation id.
    pub id: Uuid,
    /// Ids of the roles it grants.
    pub role_ids: Vec<Uuid>,
    /// First sent.
    pub created_at: DateTime<Utc>,
    /// Its link stops (or stopped) working then.
    pub expires_at: DateTime<Utc>,
}

/// Everything Canopy holds about the signed-in user that is theirs to see.
#[derive(Debug, Object)]
pub struct MyDataExport {
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// The profile.
    pub profile: ExportedProfile,
    /// The roles held.
    pub roles: Vec<RoleRef>,
    /// Live sessions, most recently used first (at most 1,000).
    pub sessions: Vec<SessionView>,
    /// Audit events where the user acted or is concerned, newest first (at most 1,000).
    pub audit_events: Vec<ExportedEvent>,
    /// Whether older audit events were left out.
    pub audit_events_truncated: bool,
    /// Invitations the user sent, newest first (at most 1,000).
    pub invitations_sent: Vec<ExportedInvitation>,
}

/// Answer to an export.
#[derive(ApiResponse)]
pub enum ExportResponse {
    /// The export, as a JSON attachment.
    #[oai(status = 200)]
    Exported(
        Json<MyDataExport>,
        #[oai(header = "Content-Disposition")] String,
    ),
}

#[OpenApi(tag = "ApiTag::Users")]
impl ExportApi {
    /// Export one's own data.
    ///
    /// A JSON document (sent as an attachment) with the signed-in user's profile, live
    /// sessions, roles, the newest 1,000 audit events where they acted or are concerned,
    /// and the newest 1,000 invitations they sent. It holds nothing about any other person
    /// but ids: an event another user caused names that user by id only.
    #[oai(
        path = "/v1/me/export",
        method = "get",
        operation_id = "export_my_data"
    )]
    async fn export(&self, state: Data<&AppState>, auth: UserAuth) -> ApiResult<ExportResponse> {
        let me = auth.0;
        let mut tx = me.begin(&state).await?;
        let user = current_user(&mut tx, &me).await?;
        let pending_email = lifecycle::pending_email(&mut tx, me.user_id).await?;
        let roles = user_view(&mut tx, &user).await?.roles;
        let sessions = store::list_sessions(&mut tx, me.user_id).await?;
        let mut events =
            store::list_audit(&mut tx, None, Some(me.user_id), None, MAX_EVENTS + 1).await?;
        let sent = invitations::sent_by(&mut tx, me.user_id, MAX_INVITATIONS).await?;
        tx.commit().await?;
        let truncated = events.len() as i64 > MAX_EVENTS;
        events.truncate(MAX_EVENTS as usize);
        let export = MyDataExport {
            exported_at: Utc::now(),
            profile: ExportedProfile {
                id: user.id,
                email: user.email.clone(),
                pending_email,
                name: user.name.clone(),
                status: user.status.into(),
                email_verified: user.email_verified_at.is_some(),
                email_verified_at: user.email_verified_at,
                last_login_at: user.last_login_at,
                created_at: user.created_at,
                updated_at: user.updated_at,
            },
            roles,
            sessions: sessions
                .into_iter()
                .map(|s| SessionView::of(s, me.session_id))
                .collect(),
            audit_events: events
                .into_iter()
                .map(|e| {
                    // Who acted in someone else's event is theirs, not ours, to export.
                    let mine = e.actor == Some(me.user_id);
                    let mut details = e.details;
                    if let Some(map) = details.as_object_mut() {
                        map.remove("email");
                    }
                    ExportedEvent {
                        id: e.id,
                        occurred_at: e.occurred_at,
                        event: e.event,
                        actor_id: e.actor,
                        subject_id: e.subject,
                        session_id: e.session.filter(|_| mine),
                        ip: e.ip.filter(|_| mine),
                        user_agent: e.user_agent.filter(|_| mine),
                        details,
                    }
                })
                .collect(),
            audit_events_truncated: truncated,
            invitations_sent: sent
                .into_iter()
                .map(|i| ExportedInvitation {
                    id: i.id,
                    role_ids: i.role_ids,
                    created_at: i.created_at,
                    expires_at: i.expires_at,
                })
                .collect(),
        };
        let disposition = format!("attachment; filename=\"canopy-export-{}.json\"", user.id);
        Ok(ExportResponse::Exported(Json(export), disposition))
    }
}
