//! The SQL of files and of the tenant's storage usage, over a connection of the tenant's
//! `TenantDb` transaction. Usage changes in the same transaction as the rows it counts.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tenancy::ConstraintExt;
use uuid::Uuid;

use crate::error::FileError;

/// Lifecycle of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Stored; thumbnails are being made.
    Processing,
    /// Stored and processed.
    Ready,
    /// Stored, but it could not be processed (`failure` says why); still downloadable.
    Failed,
}

impl FileStatus {
    /// As stored.
    pub fn as_db(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    /// From its stored form; `None` for anything else.
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "processing" => Some(Self::Processing),
            "ready" => Some(Self::Ready),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A stored status that is none of [`FileStatus`]'s (the `files_status_valid` check makes
/// this a schema mismatch).
#[derive(Debug, thiserror::Error)]
#[error("unexpected file status {0:?}")]
pub struct UnknownStatus(String);

impl TryFrom<String> for FileStatus {
    type Error = UnknownStatus;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::from_db(&value).ok_or(UnknownStatus(value))
    }
}

/// A file row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRecord {
    /// Id (also in its object keys).
    pub id: Uuid,
    /// Display name, sanitized.
    pub name: String,
    /// Media type, from the bytes.
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// SHA-256 of the bytes.
    pub sha256: Vec<u8>,
    /// Width of an image, upright.
    pub width: Option<i32>,
    /// Height of an image, upright.
    pub height: Option<i32>,
    /// Lifecycle.
    #[sqlx(try_from = "String")]
    pub status: FileStatus,
    /// Why processing failed.
    pub failure: Option<String>,
    /// Sizes whose thumbnails exist.
    pub thumbnails: Vec<i32>,
    /// Who uploaded it.
    pub uploaded_by: Option<Uuid>,
    /// Uploaded at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, content_type, size, sha256, width, height, status, failure, \
     thumbnails, uploaded_by, created_at, updated_at";

/// The checks of `files` a row that got past the domain's validation could still break
/// (a bug, not a client error): named, so the failure says which.
const ROW_CHECKS: &[&str] = &[
    "files_name_length",
    "files_content_type_known",
    "files_size_positive",
    "files_sha256_length",
    "files_dimensions_positive",
    "files_status_valid",
    "storage_usage_non_negative",
];

/// [`FileError::Constraint`] for a violation of one of [`ROW_CHECKS`].
fn row_check(constraint: &str) -> Option<FileError> {
    ROW_CHECKS
        .contains(&constraint)
        .then(|| FileError::Constraint {
            constraint: constraint.to_owned(),
        })
}

/// A file to record.
#[derive(Debug)]
pub struct NewFile<'a> {
    /// Its id, the one its object was stored under.
    pub id: Uuid,
    /// Display name.
    pub name: &'a str,
    /// Media type.
    pub content_type: &'a str,
    /// Bytes.
    pub size: i64,
    /// SHA-256.
    pub sha256: &'a [u8],
    /// Initial status.
    pub status: FileStatus,
    /// Uploader.
    pub uploaded_by: Uuid,
}

/// What recording a new upload did.
#[derive(Debug)]
pub enum Recorded {
    /// A new file, counted in the usage.
    Created(FileRecord),
    /// A live file with the same bytes existed; it is returned and nothing was added.
    Existing(FileRecord),
    /// Recording it would pass the quota (`used` bytes are in use); nothing was written.
    OverQuota {
        /// Bytes in use.
        used: i64,
    },
}

/// Records an uploaded file and counts it, unless the same bytes are already live (then
/// the existing file) or the tenant would pass `quota` bytes (then nothing is written).
/// The usage is counted before the row is written, in the caller's transaction, so no
/// outcome leaves a row that is not counted.
pub async fn record(
    conn: &mut PgConnection,
    new: &NewFile<'_>,
    quota: i64,
) -> Result<Recorded, FileError> {
    // Twice at most: a live duplicate deleted between the insert and the lookup frees its
    // hash, and the second insert then succeeds.
    for _ in 0..2 {
        if let Some(existing) = live_with_hash(conn, new.sha256).await? {
            return Ok(Recorded::Existing(existing));
        }
        let counted = sqlx::query(
            "update storage_usage set bytes = bytes + $1, files = files + 1
             where bytes + $1 <= $2 returning bytes",
        )
        .bind(new.size)
        .bind(quota)
        .fetch_optional(&mut *conn)
        .await?;
        if counted.is_none() {
            return Ok(Recorded::OverQuota {
                used: usage(conn).await?.0,
            });
        }
        let inserted = sqlx::query_as::<_, FileRecord>(&format!(
            "insert into files (id, name, content_type, size, sha256, status, uploaded_by)
             values ($1, $2, $3, $4, $5, $6, $7)
             on conflict (sha256) where deleted_at is null do nothing
             returning {COLUMNS}"
        ))
        .bind(new.id)
        .bind(new.name)
        .bind(new.content_type)
        .bind(new.size)
        .bind(new.sha256)
        .bind(new.status.as_db())
        .bind(new.uploaded_by)
        .fetch_optional(&mut *conn)
        .await
        .on_constraints(row_check)?;
        if let Some(file) = inserted {
            return Ok(Recorded::Created(file));
        }
        // A concurrent upload of the same bytes won: uncount ours and return theirs.
        sqlx::query("update storage_usage set bytes = bytes - $1, files = files - 1")
            .bind(new.size)
            .execute(&mut *conn)
            .await
            .on_constraints(row_check)?;
    }
    Err(sqlx::Error::RowNotFound.into())
}

async fn live_with_hash(
    conn: &mut PgConnection,
    sha256: &[u8],
) -> Result<Option<FileRecord>, FileError> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from files where sha256 = $1 and deleted_at is null"
    ))
    .bind(sha256)
    .fetch_optional(conn)
    .await
    .map_err(FileError::from)
}

/// Bytes and files in use.
pub async fn usage(conn: &mut PgConnection) -> Result<(i64, i64), FileError> {
    sqlx::query_as("select bytes, files from storage_usage")
        .fetch_one(conn)
        .await
        .map_err(FileError::from)
}

/// A live file.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<FileRecord>, FileError> {
    live(conn, id, "").await
}

/// A live file, locked for the rest of the transaction.
pub async fn get_for_update(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<FileRecord>, FileError> {
    live(conn, id, "for update").await
}

async fn live(
    conn: &mut PgConnection,
    id: Uuid,
    locking: &'static str,
) -> Result<Option<FileRecord>, FileError> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from files where id = $1 and deleted_at is null {locking}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(FileError::from)
}

/// Filters of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Only this status.
    pub status: Option<FileStatus>,
    /// Only this media type, or (ending in `/`) this family (`image/`).
    pub content_type: Option<String>,
    /// Ids below this one (newest first).
    pub before: Option<Uuid>,
    /// Rows to fetch.
    pub limit: i64,
}

/// Live files, newest first.
pub async fn list(
    conn: &mut PgConnection,
    listing: &Listing,
) -> Result<Vec<FileRecord>, FileError> {
    let (exact, family) = match listing.content_type.as_deref() {
        Some(family) if family.ends_with('/') => (None, Some(format!("{family}%"))),
        Some(exact) => (Some(exact), None),
        None => (None, None),
    };
    sqlx::query_as(&format!(
        "select {COLUMNS} from files
         where deleted_at is null
           and ($1::text is null or status = $1)
           and ($2::text is null or content_type = $2)
           and ($3::text is null or content_type like $3)
           and ($4::uuid is null or id < $4)
         order by id desc limit $5"
    ))
    .bind(listing.status.map(FileStatus::as_db))
    .bind(exact)
    .bind(family)
    .bind(listing.before)
    .bind(listing.limit)
    .fetch_all(conn)
    .await
    .map_err(FileError::from)
}

/// Soft-deletes a live file and stops counting it; false when there was none.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<bool, FileError> {
    let size: Option<i64> = sqlx::query_scalar(
        "update files set deleted_at = now(), updated_at = now()
         where id = $1 and deleted_at is null returning size",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(size) = size else {
        return Ok(false);
    };
    sqlx::query("update storage_usage set bytes = bytes - $1, files = files - 1")
        .bind(size)
        .execute(conn)
        .await
        .on_constraints(row_check)?;
    Ok(true)
}

/// Marks a file processed: `ready` with its dimensions and thumbnails, or `failed`.
pub async fn finish_processing(
    conn: &mut PgConnection,
    id: Uuid,
    outcome: Result<(u32, u32, &[u32]), &str>,
) -> Result<(), FileError> {
    let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let (status, dims, thumbs, failure) = match outcome {
        Ok((w, h, sizes)) => (
            FileStatus::Ready,
            Some((to_i32(w), to_i32(h))),
            sizes.iter().copied().map(to_i32).collect(),
            None,
        ),
        Err(reason) => (FileStatus::Failed, None, Vec::new(), Some(reason)),
    };
    sqlx::query(
        "update files set status = $2, width = $3, height = $4, thumbnails = $5, failure = $6,
                updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(status.as_db())
    .bind(dims.map(|d| d.0))
    .bind(dims.map(|d| d.1))
    .bind(thumbs)
    .bind(failure)
    .execute(conn)
    .await
    .on_constraints(row_check)?;
    Ok(())
}

/// Which of `ids` name live files (any state). For the orphan sweeper.
pub async fn existing(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Uuid>, FileError> {
    sqlx::query_scalar("select id from files where id = any($1) and deleted_at is null")
        .bind(ids)
        .fetch_all(conn)
        .await
        .map_err(FileError::from)
}

/// Of `ids`, those that are not ready images of this tenant (for products' `image_ids`).
pub async fn not_ready_images(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, FileError> {
    sqlx::query_scalar(
        "select wanted from unnest($1::uuid[]) as wanted
         where not exists (
             select 1 from files f
             where f.id = wanted and f.deleted_at is null and f.status = 'ready'
               and f.content_type like 'image/%')",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
    .map_err(FileError::from)
}
