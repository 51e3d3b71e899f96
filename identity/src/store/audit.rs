//! The security audit log: appending an event in the caller's transaction, and reading
//! the log newest first.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ClientInfo, StoreError};

/// One security event for the audit log.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Stable name, e.g. `login.failed`.
    pub event: &'a str,
    /// Who acted.
    pub actor: Option<Uuid>,
    /// Whom it concerns.
    pub subject: Option<Uuid>,
    /// The session involved; for an act done with an API key, the key's id (it stands
    /// where a session id stands), which the insert recognises and records as the event's
    /// `actor_api_key_id`.
    pub session: Option<Uuid>,
    /// Where from.
    pub client: &'a ClientInfo,
    /// Anything else worth keeping.
    pub details: Value,
}

/// Appends `event` to the audit log (in the caller's transaction).
pub async fn audit(conn: &mut PgConnection, event: AuditEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "insert into audit_events
             (event, actor_id, subject_id, session_id, ip, user_agent, details, actor_api_key_id)
         values ($1, $2, $3, $4, $5::inet, $6, $7,
                 (select k.id from api_keys k where k.id = $4 and k.created_by = $2))",
    )
    .bind(event.event)
    .bind(event.actor)
    .bind(event.subject)
    .bind(event.session)
    .bind(event.client.ip_text())
    .bind(event.client.user_agent.as_deref())
    .bind(event.details)
    .execute(conn)
    .await?;
    Ok(())
}

/// An entry of the audit log.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRecord {
    /// Position in the log (increasing).
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Stable name, e.g. `login.failed`.
    pub event: String,
    /// Who acted.
    #[sqlx(rename = "actor_id")]
    pub actor: Option<Uuid>,
    /// Whom it concerns.
    #[sqlx(rename = "subject_id")]
    pub subject: Option<Uuid>,
    /// The session involved (or the API key).
    #[sqlx(rename = "session_id")]
    pub session: Option<Uuid>,
    /// The API key the actor acted with, if any.
    pub actor_api_key_id: Option<Uuid>,
    /// That key's name.
    pub actor_api_key_name: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Anything else recorded.
    pub details: Value,
    /// Whether the actor has been deleted since (show them pseudonymously).
    #[sqlx(default)]
    pub actor_deleted: Option<bool>,
}

/// The newest audit entries first: those before entry `before` (when given), optionally
/// only one `event` or those concerning one user (as actor or subject).
pub async fn list_audit(
    conn: &mut PgConnection,
    event: Option<&str>,
    user: Option<Uuid>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    Ok(sqlx::query_as(
        "select e.id, e.occurred_at, e.event, e.actor_id, e.subject_id, e.session_id,
                host(e.ip) as ip, e.user_agent, e.details, e.actor_api_key_id,
                k.name as actor_api_key_name,
                (select u.status = 'deleted' from users u where u.id = e.actor_id) as actor_deleted
         from audit_events e left join api_keys k on k.id = e.actor_api_key_id
         where ($1::text is null or e.event = $1)
           and ($2::uuid is null or e.actor_id = $2 or e.subject_id = $2)
           and ($3::bigint is null or e.id < $3)
         order by e.id desc
         limit $4",
    )
    .bind(event)
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
