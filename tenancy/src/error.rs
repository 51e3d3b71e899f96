//! The tenancy crate's error type.

use crate::model::SlugError;

/// What can go wrong in the tenancy layer.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// The database could not be reached or a query failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// Applying control-plane migrations failed.
    #[error("migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),

    /// The database is behind the control-plane migrations this binary carries.
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

    /// Some tenant schemas lack migrations this binary carries.
    #[error(
        "{behind} tenant schema(s) are behind this binary's tenant migrations (latest {latest}); \
         run `canopy migrate`"
    )]
    TenantsBehind {
        /// How many tenants lag.
        behind: i64,
        /// The newest migration version.
        latest: i64,
    },

    /// An applied tenant migration differs from the file this binary carries.
    #[error(
        "tenant migration {version} was applied with a different checksum; migration files must not change once applied"
    )]
    ChecksumMismatch {
        /// The migration version.
        version: i64,
    },

    /// The slug is not acceptable.
    #[error("slug {0}")]
    InvalidSlug(#[from] SlugError),

    /// The display name is empty or too long.
    #[error("name must be 1 to 200 characters")]
    InvalidName,

    /// Another tenant has this slug.
    #[error("a tenant with slug `{0}` already exists")]
    SlugTaken(String),

    /// No such tenant.
    #[error("no such tenant")]
    TenantNotFound,

    /// The requested status change is not allowed from the current status.
    #[error("a {from} tenant cannot become {to}")]
    InvalidTransition {
        /// Current status.
        from: crate::TenantStatus,
        /// Requested status.
        to: crate::TenantStatus,
    },

    /// A seed (registered or given at provisioning) failed for a reason of its own.
    #[error("seed {seed} failed")]
    Seed {
        /// The seed's name.
        seed: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Constraint violations as domain errors, by constraint name (realworld's
/// `ResultExt::on_constraint`): stores insert and let the database judge uniqueness and
/// checks, instead of looking first and racing.
pub trait ConstraintExt<T> {
    /// A violation of `constraint` becomes `err()`; every other error converts with `From`.
    fn on_constraint<E: From<sqlx::Error>>(
        self,
        constraint: &str,
        err: impl FnOnce() -> E,
    ) -> Result<T, E>;

    /// A violation of a constraint `map` names becomes what it returns; every other error
    /// (and a constraint `map` answers `None` for) converts with `From`.
    fn on_constraints<E: From<sqlx::Error>>(
        self,
        map: impl FnOnce(&str) -> Option<E>,
    ) -> Result<T, E>;
}

impl<T> ConstraintExt<T> for Result<T, sqlx::Error> {
    fn on_constraint<E: From<sqlx::Error>>(
        self,
        constraint: &str,
        err: impl FnOnce() -> E,
    ) -> Result<T, E> {
        self.on_constraints(|violated| (violated == constraint).then(err))
    }

    fn on_constraints<E: From<sqlx::Error>>(
        self,
        map: impl FnOnce(&str) -> Option<E>,
    ) -> Result<T, E> {
        self.map_err(|error| {
            match &error {
                sqlx::Error::Database(db) => db.constraint().and_then(map),
                _ => None,
            }
            .unwrap_or_else(|| E::from(error))
        })
    }
}

/// Whether `err` means the database could not be used right now (unreachable, shutting
/// down, out of connections, read-only after a failover), as opposed to a bug, a setting
/// that can never work or bad input: the pool timed out or is closed, the connection failed
/// or broke (sqlx reports a broken connection as I/O), or the server said so (SQLSTATE
/// class 08 connection exception but 08P01 protocol violation, 25006 read-only
/// transaction, 53300 too many connections, 57P01–57P03 shutdown and start-up). TLS errors
/// are left out: most are a configuration that will not start working. The edge answers
/// these 503 `dependency_unavailable`, never 500.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            (code.starts_with("08") && code != "08P01")
                || matches!(&*code, "25006" | "53300" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The first [`sqlx::Error`] among `err`'s causes (itself included) for which
/// [`is_unavailable`] holds.
pub fn unavailable_cause<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a sqlx::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(db) = e.downcast_ref::<sqlx::Error>()
            && is_unavailable(db)
        {
            return Some(db);
        }
        current = e.source();
    }
    None
}

/// An error and its causes on one line (`outer: cause: root cause`), for logs and reports.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_told_apart_from_a_failed_query() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for unavailable in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            assert!(is_unavailable(&unavailable), "{unavailable}");
        }
        for failed in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("id".to_owned()),
            sqlx::Error::Protocol("unexpected message".to_owned()),
        ] {
            assert!(!is_unavailable(&failed), "{failed}");
        }
        // Found through the causes of a domain error that keeps it as its source.
        let wrapped = TenancyError::Database(sqlx::Error::PoolTimedOut);
        assert!(unavailable_cause(&wrapped).is_some());
        assert!(unavailable_cause(&TenancyError::TenantNotFound).is_none());
    }
}
