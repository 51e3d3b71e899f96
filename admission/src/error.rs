//! [`AdmissionError`]: why a request cannot be admitted, or why admission could not decide.
//! `api` renders each variant as its problem (status, code, message, `Retry-After`).

/// Why admission refused a request, or could not decide.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// Neither Redis nor PostgreSQL could check a session (a 503 with `Retry-After`).
    #[error("the session cannot be checked right now")]
    SessionUncheckable,
    /// The session has ended or its user is blocked.
    #[error("the session has ended or the account is blocked")]
    Revoked,
    /// A throttle's counter cannot be read (they fail closed: a 503 with `Retry-After`).
    #[error("the throttle is unavailable")]
    ThrottleUnavailable,
    /// A throttle's counter is full.
    #[error("too many attempts; retry in {retry_after} s")]
    Throttled {
        /// Seconds until the counter's window ends.
        retry_after: u64,
    },
    /// No tenant by that slug or id (or it was deleted).
    #[error("no tenant by that name")]
    TenantNotFound,
    /// The control plane or a tenant transaction failed.
    #[error(transparent)]
    Tenancy(#[from] tenancy::TenancyError),
    /// A query failed.
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[from] sqlx::Error),
}
