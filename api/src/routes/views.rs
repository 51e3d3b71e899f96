//! Views several route modules show alike, kept below them (as `pagination` and `checks`
//! are), so that neither has to reach into the other.

use chrono::{DateTime, Utc};
use identity::store::Session;
use poem_openapi::Object;
use uuid::Uuid;

/// A session of the current user.
#[derive(Debug, Object)]
pub struct SessionView {
    /// Session id.
    pub id: Uuid,
    /// User agent at login.
    pub user_agent: Option<String>,
    /// IP address of the last use.
    pub ip: Option<String>,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// Whether this request comes from this session.
    pub current: bool,
}

impl SessionView {
    /// `session`, as seen from a request of the session `current`.
    pub fn of(session: Session, current: Uuid) -> Self {
        Self {
            current: session.id == current,
            id: session.id,
            user_agent: session.user_agent,
            ip: session.ip,
            created_at: session.created_at,
            last_used_at: session.last_used_at,
        }
    }
}
