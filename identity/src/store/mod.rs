//! The identity tables of a tenant schema: users, sessions, refresh tokens, single-use
//! email tokens and the audit log. Every function takes the connection of a tenant
//! transaction (a `TenantTx` dereferences to one), so it can only ever see one tenant.
//!
//! One module per concern, all re-exported here (`identity::store::*` is the one path):
//! `users` (status, records, creation, changes, listing), `lockout` (failed logins),
//! `sessions`, `rotation` (refresh tokens), `tokens` (single-use email tokens), `audit`, `mfa` (two-factor authentication: its own
//! path, `identity::store::mfa::*`, its names being many), and `retention` (the prune statements of all of them and of invitations). Rows are
//! read with `sqlx::FromRow`; the users' email uniqueness is the database's
//! (`users_email_key_key`, named through `tenancy::ConstraintExt`).

mod audit;
mod lockout;
pub mod mfa;
pub mod retention;
mod rotation;
mod sessions;
mod tokens;
mod users;

pub use audit::{AuditEvent, AuditRecord, audit, list_audit};
pub use lockout::{
    LockoutPolicy, record_login_failure, record_login_success, store_rehashed_password,
};
pub use rotation::{RefreshOutcome, refresh};
pub use sessions::{
    Session, create_session, list_sessions, revocations, revoke_session, revoke_user_sessions,
    session_is_valid,
};
pub use tokens::{TokenPurpose, consume_user_token, issue_user_token};
pub use users::{
    Activated, LoginRecord, NewUser, User, UserStatus, UserUpdate, insert_user, list_users,
    login_record, mark_email_verified, password_hash, set_password, update_user, user_by_email,
    user_by_id,
};

/// Errors of the identity store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another user of this tenant has this email.
    #[error("the email address is already registered")]
    EmailTaken,
    /// A stored TOTP secret does not decrypt (another secrets key, a copied row).
    #[error(transparent)]
    Mfa(#[from] crate::mfa::MfaError),
    /// Database failure.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// Who is calling: recorded on sessions and audit events.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Client IP address.
    pub ip: Option<std::net::IpAddr>,
    /// `User-Agent`, truncated to 512 characters.
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The address as text, for an `inet` parameter.
    pub(crate) fn ip_text(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
}
