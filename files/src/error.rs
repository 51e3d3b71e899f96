//! [`FileError`], the one error of the files domain. Constraint violations become
//! [`FileError::Constraint`] through [`tenancy::ConstraintExt`], as in every store.

use uuid::Uuid;

/// What can go wrong with a file operation.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No live file has this id (in the tenant whose transaction ran the query).
    #[error("no file has id {0}")]
    NotFound(Uuid),
    /// A row broke one of the table's checks: input the domain should have refused, so a
    /// bug rather than a client error.
    #[error("a file row breaks the `{constraint}` check")]
    Constraint {
        /// The constraint's name.
        constraint: String,
    },
    /// The object store failed or could not be reached.
    #[error("object storage failed")]
    Storage(#[from] storage::StorageError),
    /// The database failed (a job's `last_error` and the logs show its cause after
    /// "database error", written with `{:#}`).
    // Not `transparent`: the `sqlx::Error` itself stays in the chain of causes, where the
    // edge looks for a database that cannot be reached (`tenancy::unavailable_cause`).
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Opening or committing the tenant's transaction failed.
    #[error("tenancy error")]
    Tenancy(#[from] tenancy::TenancyError),
    /// Enqueueing a job failed.
    #[error("cannot enqueue a files job")]
    Job(#[from] jobs::JobError),
}
