//! The tenancy crate's error type.

/// What can go wrong in the tenancy layer.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The database could not be reached or a query failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// Applying migrations failed.
    #[error("migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),

    /// The database is behind the migrations this binary carries.
    #[error(
        "the database is behind this binary: {pending} control-plane migration(s) pending, \
         starting with {first}; run `canopy migrate`"
    )]
    MigrationsPending {
        /// How many are missing.
        pending: usize,
        /// Version and description of the first missing one.
        first: String,
    },
}
