//! Files: streaming multipart upload into the bucket, listing, deletion, and downloads and
//! thumbnails by redirect to short-lived presigned URLs. This module is the HTTP of it
//! (handlers, the form in `form`, its framing in `framing`, the view types in
//! `views`); the records, the steps of an upload and the jobs are the `files` crate's.
//!
//! `POST /v1/files` is exempt from the global body limit and request timeout: its limit is
//! the tenant plan's upload size, which every byte of the body counts against (framing
//! and form fields included), enforced at once from `Content-Length` and as the body
//! streams; the form's framing is bounded before the parser sees it (`framing`), and a
//! slow client is cut off when no byte arrives for [`IDLE_READ_TIMEOUT`].

mod form;
mod framing;
mod views;

use std::time::Duration;

use files::{FileRecord, FileStatus, Listing, Recorded, UploadBy};
use poem::{Request, http::Method, web::Data};
use poem_openapi::{
    OpenApi,
    param::{Path, Query},
    payload::Json,
};
use storage::{
    ObjectKey, UploadError,
    images::{ImageError, ImageLimits},
    sniff::{FileType, TypeError},
};
use uuid::Uuid;

pub use self::{
    form::FileUpload,
    views::{
        FileDeleted, FilePage, FileStatusView, FileUploaded, FileView, Redirect, ThumbnailView,
    },
};
use crate::{
    AppState,
    auth::{Authorized, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError},
    routes::{ApiTag, pagination::page},
};

/// The upload endpoint, exempt from the global body limit and timeout.
pub const UPLOAD_PATH: &str = "/v1/files";

/// Whether `req` is an upload (see the module docs).
pub fn is_upload(req: &Request) -> bool {
    req.method() == Method::POST && req.uri().path() == UPLOAD_PATH
}

/// An upload whose body stalls this long is abandoned.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Room for the multipart framing and the `name` field around the file's bytes, when a
/// `Content-Length` is judged against the storage quota (which counts the file's bytes
/// only; the upload size counts every byte of the body).
const FORM_OVERHEAD: u64 = 64 * 1024;

/// Longest `name` field, in bytes.
const MAX_NAME_BYTES: usize = 1024;

/// Longest preamble, and longest header section of each part, in bytes.
const MAX_PART_HEADER_BYTES: u64 = 8 * 1024;

/// Most parts a form may have (`file`, `name`, and room for a mistake to be named).
const MAX_PARTS: usize = 4;

/// Bytes read from the client at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Files.
pub struct FilesApi;
fn default_limit() -> i64 {
    20
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("No file has id {id}."))
}

fn storage_unavailable(error: storage::StorageError) -> ApiError {
    tracing::warn!(%error, "object storage failed");
    ApiError::retry_after(
        ErrorCode::DependencyUnavailable,
        "File storage is unreachable; retry shortly.",
        5,
    )
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "The upload is larger than the {limit} bytes the tenant's plan allows per upload \
             (the whole form counts)."
        ),
    )
    .with_extension("limit", limit.into())
}

fn over_quota(used: u64, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::QuotaExceeded,
        format!(
            "Storing this file would pass the {limit} bytes of storage the tenant's plan allows \
             ({used} in use)."
        ),
    )
    .with_extension("used", used.into())
    .with_extension("limit", limit.into())
}

/// What one upload may be, from the tenant's plan and usage.
struct Allowance {
    upload_limit: u64,
    quota: u64,
    used: u64,
    types: Vec<FileType>,
}

impl Allowance {
    /// What `tenant` may upload now, from its plan and its storage in use.
    async fn of(state: &AppState, tenant: &tenancy::Tenant) -> ApiResult<Self> {
        let limits = state.settings.plans.limits(&tenant.plan);
        let (used, _) = files::usage(&state.tenant_db, tenant.id).await?;
        Ok(Self {
            upload_limit: limits.upload_bytes.as_u64(),
            quota: limits.storage_bytes.as_u64(),
            used: u64::try_from(used).unwrap_or(0),
            types: FileType::ALL
                .into_iter()
                .filter(|t| limits.file_types.iter().any(|m| m == t.mime()))
                .collect(),
        })
    }

    fn remaining(&self) -> u64 {
        self.quota.saturating_sub(self.used)
    }

    fn refusal(&self, error: UploadError) -> ApiError {
        match error {
            UploadError::Type(TypeError::Empty) => ApiError::validation(vec![FieldError::new(
                "file",
                FieldCode::Empty,
                "The file is empty.",
            )]),
            UploadError::Type(refused) => {
                ApiError::new(ErrorCode::UnsupportedMediaType, format!("{refused}."))
            }
            UploadError::NotAllowed(kind) => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("The tenant's plan does not allow {kind} files."),
            )
            .with_extension(
                "allowed",
                self.types
                    .iter()
                    .map(|t| t.mime())
                    .collect::<Vec<_>>()
                    .into(),
            ),
            UploadError::TooLarge { limit } if limit < self.upload_limit => {
                over_quota(self.used, self.quota)
            }
            UploadError::TooLarge { .. } => too_large(self.upload_limit),
            UploadError::Image(ImageError::TooLarge { width, height }) => {
                let limits = ImageLimits::default();
                ApiError::new(
                    ErrorCode::ImageTooLarge,
                    format!(
                        "The image declares {width}×{height} pixels; at most {}×{} are accepted.",
                        limits.max_width, limits.max_height
                    ),
                )
                .with_extension("max_width", limits.max_width.into())
                .with_extension("max_height", limits.max_height.into())
            }
            UploadError::Image(refused @ ImageError::OverBudget { .. }) => {
                ApiError::new(ErrorCode::ImageTooLarge, format!("{refused}."))
            }
            UploadError::Image(ImageError::Corrupt(reason)) => {
                ApiError::validation(vec![FieldError::new("file", FieldCode::Corrupt, reason)])
            }
            UploadError::Body(reason) => ApiError::new(
                ErrorCode::BadRequest,
                format!("The upload could not be read: {reason}."),
            ),
            UploadError::Storage(error) => storage_unavailable(error),
        }
    }
}

#[OpenApi(tag = "ApiTag::Files")]
impl FilesApi {
    /// Upload a file.
    ///
    /// `multipart/form-data` with a `file` field and an optional `name`. The body streams
    /// to object storage as it arrives. Refusals: 413 `payload_too_large` past the plan's
    /// upload size, which the whole body counts against (at once when `Content-Length`
    /// says so), 400 `bad_request` for a form whose preamble or a part's headers pass 8 KiB
    /// or with more than 4 parts, 402 `quota_exceeded` past its
    /// storage, 415 `unsupported_media_type` for SVG, HTML, types the plan does not allow,
    /// and bytes contradicting the declared type or the extension, 422 for empty files and
    /// images declaring more pixels than accepted, 503 when storage is unreachable (nothing
    /// is kept). Identical bytes already stored in the tenant return that file (200).
    #[oai(path = "/v1/files", method = "post", operation_id = "upload_file")]
    async fn upload_file(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesWrite>,
        mut upload: FileUpload,
    ) -> ApiResult<FileUploaded> {
        let tenant = &auth.principal.tenant;
        let allowance = Allowance::of(&state, tenant).await?;
        if let Some(length) = upload.content_length() {
            if length > allowance.upload_limit {
                return Err(too_large(allowance.upload_limit));
            }
            if length > allowance.remaining() + FORM_OVERHEAD {
                return Err(over_quota(allowance.used, allowance.quota));
            }
        }
        let received = upload.read(&state.storage, tenant.id, &allowance).await?;
        let by = UploadBy {
            name: &received.name,
            user: auth.principal.user_id,
            quota: allowance.quota,
        };
        let recorded = files::record_upload(
            &state.tenant_db,
            &state.storage,
            tenant.id,
            received.stored,
            by,
        )
        .await?;
        match recorded {
            Recorded::Created(file) => {
                let location = format!("/v1/files/{}", file.id);
                Ok(FileUploaded::Created(Json(file.into()), location))
            }
            Recorded::Existing(file) => {
                let location = format!("/v1/files/{}", file.id);
                Ok(FileUploaded::Existing(Json(file.into()), location))
            }
            Recorded::OverQuota { used } => Err(over_quota(
                u64::try_from(used).unwrap_or(0),
                allowance.quota,
            )),
        }
    }

    /// List files.
    ///
    /// Newest first, keyset-paginated: pass `next_cursor` back as `cursor`.
    #[oai(path = "/v1/files", method = "get", operation_id = "list_files")]
    async fn list_files(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesRead>,
        /// Only files in this state.
        status: Query<Option<FileStatusView>>,
        /// Only this media type (`image/png`), or this family when it ends in `/` (`image/`).
        #[oai(validator(max_length = 100, pattern = "^[a-z]+/([a-z0-9.+-]+)?$"))]
        content_type: Query<Option<String>>,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// `next_cursor` of the previous page.
        #[oai(validator(max_length = 100))]
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<FilePage>> {
        let before = cursor
            .0
            .as_deref()
            .map(|c| {
                c.parse::<Uuid>().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        "Parameter `cursor` is invalid.",
                    )
                })
            })
            .transpose()?;
        let listing = Listing {
            status: status.0.map(FileStatus::from),
            content_type: content_type.0,
            before,
            limit: limit.0 + 1,
        };
        let files = files::list_files(&state.tenant_db, auth.principal.tenant.id, &listing).await?;
        let (files, next_cursor) = page(files, limit.0, |f| f.id.to_string());
        Ok(Json(FilePage {
            items: files.into_iter().map(FileView::from).collect(),
            next_cursor,
        }))
    }

    /// Get a file.
    #[oai(path = "/v1/files/:id", method = "get", operation_id = "get_file")]
    async fn get_file(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesRead>,
        /// File id.
        id: Path<Uuid>,
    ) -> ApiResult<Json<FileView>> {
        let file = live_file(&state, &auth.principal.tenant, id.0).await?;
        Ok(Json(file.into()))
    }

    /// Delete a file.
    ///
    /// The file disappears at once and stops counting against the storage quota; its
    /// objects (original and thumbnails) are removed by a background job.
    #[oai(
        path = "/v1/files/:id",
        method = "delete",
        operation_id = "delete_file"
    )]
    async fn delete_file(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesWrite>,
        /// File id.
        id: Path<Uuid>,
    ) -> ApiResult<FileDeleted> {
        files::delete_file(&state.tenant_db, auth.principal.tenant.id, id.0).await?;
        Ok(FileDeleted::Deleted)
    }

    /// Download a file.
    ///
    /// Redirects (302) to a presigned URL of the bytes, valid for a few minutes, which
    /// answers with `Content-Disposition: attachment` and the file's name (its extension
    /// that of the type read from the bytes), and the file's type as `Content-Type`.
    #[oai(
        path = "/v1/files/:id/download",
        method = "get",
        operation_id = "download_file"
    )]
    async fn download_file(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesRead>,
        /// File id.
        id: Path<Uuid>,
    ) -> ApiResult<Redirect> {
        let tenant = &auth.principal.tenant;
        let file = live_file(&state, tenant, id.0).await?;
        let key = ObjectKey::original(tenant.id, file.id);
        let kind = FileType::from_mime(&file.content_type);
        redirect(&state, &key, &file.name, kind).await
    }

    /// Get a thumbnail of an image.
    ///
    /// Redirects (302) to a presigned URL of the JPEG thumbnail, valid for a few minutes.
    /// 409 `file_not_ready` while thumbnails are being made; 404 when the file has no
    /// thumbnail of this size (not an image, not processable, or a size not configured).
    #[oai(
        path = "/v1/files/:id/thumbnails/:size",
        method = "get",
        operation_id = "get_file_thumbnail"
    )]
    async fn get_thumbnail(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesRead>,
        /// File id.
        id: Path<Uuid>,
        /// Longest edge in pixels, one of the configured sizes (128 and 512 by default).
        size: Path<u32>,
    ) -> ApiResult<Redirect> {
        let tenant = &auth.principal.tenant;
        let file = live_file(&state, tenant, id.0).await?;
        let has = i32::try_from(size.0).is_ok_and(|s| file.thumbnails.contains(&s));
        if !has {
            if file.status == FileStatus::Processing {
                return Err(ApiError::retry_after(
                    ErrorCode::FileNotReady,
                    "The file's thumbnails are still being made.",
                    2,
                ));
            }
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("File {} has no thumbnail of size {}.", file.id, size.0),
            )
            .with_extension("sizes", file.thumbnails.clone().into()));
        }
        let key = ObjectKey::thumbnail(tenant.id, file.id, size.0, storage::ThumbnailFormat::Jpeg);
        let stem = file
            .name
            .rsplit_once('.')
            .map_or(file.name.as_str(), |(stem, _)| stem);
        let name = format!("{stem}-{}.jpg", size.0);
        redirect(&state, &key, &name, Some(FileType::Jpeg)).await
    }
}

async fn live_file(state: &AppState, tenant: &tenancy::Tenant, id: Uuid) -> ApiResult<FileRecord> {
    Ok(files::get_file(&state.tenant_db, tenant.id, id).await?)
}

/// A redirect to `key`, downloaded as `name` of type `kind` (see
/// [`storage::ObjectStore::presigned_get`]).
async fn redirect(
    state: &AppState,
    key: &ObjectKey,
    name: &str,
    kind: Option<FileType>,
) -> ApiResult<Redirect> {
    let url = state
        .storage
        .presigned_get(key, state.settings.files.url_ttl, name, kind)
        .await
        .map_err(storage_unavailable)?;
    Ok(Redirect::Found(url, "no-store".to_owned()))
}

/// Checks that each list of ids (products' `image_ids`, named by their field) names ready
/// images of the tenant whose transaction `conn` is in; the 422 lists every id that does
/// not, as `<field>[<index>]`.
pub async fn check_image_ids(
    conn: &mut sqlx::PgConnection,
    lists: &[(String, &[Uuid])],
) -> ApiResult<()> {
    let all: Vec<Uuid> = lists
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let missing = files::store::not_ready_images(conn, &all).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let errors = lists
        .iter()
        .flat_map(|(field, ids)| {
            ids.iter()
                .enumerate()
                .filter(|(_, id)| missing.contains(id))
                .map(move |(i, id)| {
                    FieldError::new(
                        format!("{field}[{i}]"),
                        FieldCode::NotAReadyImage,
                        format!("{id} is not a ready image file of this tenant."),
                    )
                })
        })
        .collect();
    Err(ApiError::validation(errors))
}

impl From<files::FileError> for ApiError {
    fn from(err: files::FileError) -> Self {
        use files::FileError as E;
        match err {
            E::NotFound(id) => not_found(id),
            E::Storage(error) => storage_unavailable(error),
            E::Database(error) => error.into(),
            E::Tenancy(error) => error.into(),
            E::Job(error) => ApiError::internal(error),
            other @ E::Constraint { .. } => ApiError::internal(other),
        }
    }
}
