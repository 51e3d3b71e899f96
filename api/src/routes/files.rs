//! Files: streaming multipart upload into the bucket, listing, deletion, and downloads and
//! thumbnails by redirect to short-lived presigned URLs. See `crate::files` for the
//! records and jobs.
//!
//! `POST /v1/files` is exempt from the global body limit and request timeout: its limit is
//! the tenant plan's upload size, which every byte of the body counts against (framing
//! and form fields included), enforced at once from `Content-Length` and as the body
//! streams; the form's framing is bounded before the parser sees it (`framing`), and a
//! slow client is cut off when no byte arrives for [`IDLE_READ_TIMEOUT`].

mod framing;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use poem::{
    Request, RequestBody,
    http::{Method, header},
    web::Data,
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, Enum, ExtractParamOptions, Multipart, Object,
    OpenApi,
    param::{Path, Query},
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, Registry},
    types::multipart::Upload,
};
use storage::{
    ObjectKey, UploadError, UploadRules, Uploaded,
    images::{ImageError, ImageLimits},
    names::display_name,
    sniff::{FileType, TypeError},
};
use uuid::Uuid;

use crate::{
    AppState,
    auth::permissions::{Authorized, perm},
    error::{ApiError, ApiResult, ErrorCode, FieldError},
    files::{
        jobs::{delete_objects_job, thumbnails_job},
        store::{self, FileRecord, FileStatus, Listing, NewFile, Recorded},
    },
    routes::{ApiTag, page},
    tenant::CurrentTenant,
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

/// Where a file is in its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum FileStatusView {
    /// Stored; thumbnails are being made (images only).
    Processing,
    /// Stored and processed.
    Ready,
    /// Stored, but it could not be processed (`failure` says why); still downloadable.
    Failed,
}

impl From<FileStatus> for FileStatusView {
    fn from(status: FileStatus) -> Self {
        match status {
            FileStatus::Processing => Self::Processing,
            FileStatus::Ready => Self::Ready,
            FileStatus::Failed => Self::Failed,
        }
    }
}

impl From<FileStatusView> for FileStatus {
    fn from(status: FileStatusView) -> Self {
        match status {
            FileStatusView::Processing => Self::Processing,
            FileStatusView::Ready => Self::Ready,
            FileStatusView::Failed => Self::Failed,
        }
    }
}

/// A thumbnail of an image.
#[derive(Debug, Clone, Object)]
pub struct ThumbnailView {
    /// Longest edge, in pixels (at most; smaller images are not enlarged).
    pub size: u32,
    /// Redirects to the JPEG (`GET`).
    pub url: String,
}

/// A stored file.
#[derive(Debug, Clone, Object)]
pub struct FileView {
    /// Id.
    pub id: Uuid,
    /// Display name (cleaned of paths and control characters; its extension is that of
    /// the type read from the bytes).
    pub name: String,
    /// Media type, read from the bytes.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// Width in pixels of an image (upright), once processed.
    pub width: Option<i32>,
    /// Height in pixels of an image (upright), once processed.
    pub height: Option<i32>,
    /// Processing state.
    pub status: FileStatusView,
    /// Why processing failed.
    #[oai(skip_serializing_if_is_none)]
    pub failure: Option<String>,
    /// Redirects to the bytes (`GET`).
    pub download_url: String,
    /// Thumbnails, once made.
    pub thumbnails: Vec<ThumbnailView>,
    /// Uploaded by.
    pub uploaded_by: Option<Uuid>,
    /// Uploaded at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

impl From<FileRecord> for FileView {
    fn from(file: FileRecord) -> Self {
        let path = format!("/v1/files/{}", file.id);
        Self {
            id: file.id,
            name: file.name,
            content_type: file.content_type,
            size: file.size,
            sha256: hex::encode(&file.sha256),
            width: file.width,
            height: file.height,
            status: file.status.into(),
            failure: file.failure,
            download_url: format!("{path}/download"),
            thumbnails: file
                .thumbnails
                .iter()
                .filter_map(|&size| u32::try_from(size).ok())
                .map(|size| ThumbnailView {
                    size,
                    url: format!("{path}/thumbnails/{size}"),
                })
                .collect(),
            uploaded_by: file.uploaded_by,
            created_at: file.created_at,
            updated_at: file.updated_at,
        }
    }
}

/// A page of files, newest first.
#[derive(Debug, Object)]
pub struct FilePage {
    /// The files.
    pub items: Vec<FileView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// The form of `POST /v1/files` (documentation only: the body is streamed by
/// [`FileUpload`], never buffered).
#[derive(Debug, Multipart)]
#[expect(dead_code, reason = "describes the request body; FileUpload reads it")]
struct UploadForm {
    /// The file: JPEG, PNG, WebP, GIF or PDF (as the plan allows), at most the plan's
    /// upload size. Its type is read from its bytes; a declared `Content-Type` or a file
    /// name extension that contradicts them is refused.
    file: Upload,
    /// Display name (default: the file's name).
    name: Option<String>,
}

/// The multipart body of an upload, read field by field as it arrives (see the module
/// docs); nothing is read until `FileUpload::start`.
pub struct FileUpload {
    body: Option<poem::Body>,
    boundary: String,
    content_length: Option<u64>,
    form: Option<multer::Multipart<'static>>,
    /// Why the body's framing was refused, once it was.
    refused: Arc<OnceLock<framing::Refusal>>,
}

impl FileUpload {
    /// Starts parsing, with every byte counted against `upload_limit`.
    fn start(&mut self, upload_limit: u64) -> ApiResult<&mut multer::Multipart<'static>> {
        if self.form.is_none() {
            let body = self.body.take().ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("the upload body was taken twice"))
            })?;
            let limits = framing::Limits {
                total: upload_limit,
                headers: MAX_PART_HEADER_BYTES,
                parts: MAX_PARTS,
            };
            let chunks =
                tokio_util::io::ReaderStream::with_capacity(body.into_async_read(), READ_CHUNK);
            let guarded = framing::guarded(
                chunks,
                framing::Framing::new(&self.boundary, limits),
                IDLE_READ_TIMEOUT,
                self.refused.clone(),
            );
            self.form = Some(multer::Multipart::new(guarded, self.boundary.clone()));
        }
        self.form
            .as_mut()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no form")))
    }

    /// The problem for a body whose framing was refused, if it was.
    fn refusal(&self, upload_limit: u64) -> Option<ApiError> {
        let bad = |detail: String| Some(ApiError::new(ErrorCode::BadRequest, detail));
        match self.refused.get()? {
            framing::Refusal::TooLarge => Some(too_large(upload_limit)),
            framing::Refusal::Preamble => bad(format!(
                "The form has more than {MAX_PART_HEADER_BYTES} bytes before its first boundary."
            )),
            framing::Refusal::Headers => bad(format!(
                "A part of the form has more than {MAX_PART_HEADER_BYTES} bytes of headers."
            )),
            framing::Refusal::Parts => bad(format!(
                "The form has more than {MAX_PARTS} parts; only `file` and `name` are accepted."
            )),
            framing::Refusal::Idle => bad(format!(
                "The upload stalled: no data for {} seconds.",
                IDLE_READ_TIMEOUT.as_secs()
            )),
        }
    }
}

impl<'a> ApiExtractor<'a> for FileUpload {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <UploadForm as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <UploadForm as Payload>::CONTENT_TYPE,
                schema: <UploadForm as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let is_form = request
            .content_type()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("multipart/form-data"));
        if !is_form {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Send the file as `multipart/form-data` with a `file` field.",
            )
            .into());
        }
        let content_length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let boundary = request
            .content_type()
            .ok_or_else(|| multer::Error::NoBoundary)
            .and_then(multer::parse_boundary)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("Malformed form: {e}")))?;
        Ok(Self {
            body: Some(body.take()?),
            boundary,
            content_length,
            form: None,
            refused: Arc::default(),
        })
    }
}

/// A file, stored now or before.
#[derive(ApiResponse)]
pub enum FileUploaded {
    /// Stored. Images are `processing` until their thumbnails are made.
    #[oai(status = 201)]
    Created(
        Json<FileView>,
        /// Where the file lives.
        #[oai(header = "Location")]
        String,
    ),
    /// The tenant already has a live file with exactly these bytes: that one is returned,
    /// and nothing new is stored.
    #[oai(status = 200)]
    Existing(
        Json<FileView>,
        /// Where the file lives.
        #[oai(header = "Location")]
        String,
    ),
}

/// A redirect to a presigned URL.
#[derive(ApiResponse)]
pub enum Redirect {
    /// Follow `Location` within the URL's lifetime (the `file_url_ttl` setting, 5 minutes
    /// by default); it answers with `Content-Disposition: attachment`.
    #[oai(status = 302)]
    Found(
        /// The presigned URL.
        #[oai(header = "Location")]
        String,
        /// `no-store`: the URL expires.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

/// A file was deleted.
#[derive(ApiResponse)]
pub enum FileDeleted {
    /// Deleted; its objects are removed in the background.
    #[oai(status = 204)]
    Deleted,
}

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
    fn remaining(&self) -> u64 {
        self.quota.saturating_sub(self.used)
    }

    fn refusal(&self, error: UploadError) -> ApiError {
        match error {
            UploadError::Type(TypeError::Empty) => {
                ApiError::validation(vec![FieldError::new("file", "empty", "The file is empty.")])
            }
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
                ApiError::validation(vec![FieldError::new("file", "corrupt", reason)])
            }
            UploadError::Body(reason) => ApiError::new(
                ErrorCode::BadRequest,
                format!("The upload could not be read: {reason}."),
            ),
            UploadError::Storage(error) => storage_unavailable(error),
        }
    }
}

/// The form's fields, as read.
#[derive(Default)]
struct Form {
    name: Option<String>,
    stored: Option<(ObjectKey, Uploaded, Option<String>)>,
}

/// A field's bytes as a stream (the body under it already fails when the client stalls).
fn field_stream(
    field: multer::Field<'static>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    field.map_err(std::io::Error::other)
}

fn malformed(error: multer::Error) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("Malformed form: {error}"))
}

/// The `name` field, of at most [`MAX_NAME_BYTES`] (no more is read).
async fn read_name(mut field: multer::Field<'static>) -> ApiResult<String> {
    let invalid = |m: &str| ApiError::validation(vec![FieldError::new("name", "invalid", m)]);
    let mut raw = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if raw.len() + chunk.len() > MAX_NAME_BYTES {
            return Err(invalid("The name is longer than 1024 bytes."));
        }
        raw.extend_from_slice(&chunk);
    }
    String::from_utf8(raw).map_err(|_| invalid("The name is not UTF-8."))
}

impl FilesApi {
    /// Reads the form into `form`, streaming the file into the bucket. On error, whatever
    /// was stored is in `form.stored` for the caller to remove.
    async fn read_form(
        state: &AppState,
        tenant: tenancy::TenantId,
        upload: &mut FileUpload,
        allowance: &Allowance,
        form: &mut Form,
    ) -> ApiResult<()> {
        let form_stream = upload.start(allowance.upload_limit)?;
        while let Some(field) = form_stream.next_field().await.map_err(malformed)? {
            match field.name() {
                Some("name") if form.name.is_none() => form.name = Some(read_name(field).await?),
                Some("file") if form.stored.is_none() => {
                    let file_name = field.file_name().map(str::to_owned);
                    let rules = UploadRules {
                        max_bytes: allowance.upload_limit.min(allowance.remaining()),
                        allowed: allowance.types.clone(),
                        // Browsers send octet-stream for anything they do not know.
                        declared_type: field
                            .content_type()
                            .map(|t| t.essence_str())
                            .filter(|t| *t != "application/octet-stream")
                            .map(str::to_owned),
                        file_name: file_name.clone(),
                        image_limits: Some(ImageLimits::default()),
                    };
                    let key = ObjectKey::original(tenant, Uuid::now_v7());
                    let uploaded = state
                        .storage
                        .upload(&key, field_stream(field), &rules)
                        .await
                        .map_err(|e| allowance.refusal(e))?;
                    form.stored = Some((key, uploaded, file_name));
                }
                Some(name @ ("name" | "file")) => {
                    return Err(ApiError::validation(vec![FieldError::new(
                        name,
                        "duplicate",
                        "The field appears more than once.",
                    )]));
                }
                other => {
                    let name = other.unwrap_or_default().to_owned();
                    return Err(ApiError::validation(vec![FieldError::new(
                        name,
                        "unknown_field",
                        "Only `file` and `name` are accepted.",
                    )]));
                }
            }
        }
        Ok(())
    }

    /// Removes an object no record will own (the orphan sweeper catches a failure here).
    async fn discard(state: &AppState, key: &ObjectKey) {
        if let Err(error) = state.storage.delete(key).await {
            tracing::warn!(%error, key = key.as_str(), "cannot remove an unrecorded object");
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        mut upload: FileUpload,
    ) -> ApiResult<FileUploaded> {
        let tenant = auth.principal.tenant.clone();
        let limits = state.settings.plans.limits(&tenant.plan);
        let mut tx = state.tenant_db.begin(tenant.id).await?;
        let (used, _) = store::usage(&mut tx).await?;
        tx.commit().await?;
        let allowance = Allowance {
            upload_limit: limits.upload_bytes.as_u64(),
            quota: limits.storage_bytes.as_u64(),
            used: u64::try_from(used).unwrap_or(0),
            types: FileType::ALL
                .into_iter()
                .filter(|t| limits.file_types.iter().any(|m| m == t.mime()))
                .collect(),
        };
        if let Some(length) = upload.content_length {
            if length > allowance.upload_limit {
                return Err(too_large(allowance.upload_limit));
            }
            if length > allowance.remaining() + FORM_OVERHEAD {
                return Err(over_quota(allowance.used, allowance.quota));
            }
        }

        let mut form = Form::default();
        let read = Self::read_form(&state, tenant.id, &mut upload, &allowance, &mut form)
            .await
            // A refused framing shows as whatever failed to read: say why it was refused.
            .map_err(|error| upload.refusal(allowance.upload_limit).unwrap_or(error));
        let stored = form.stored.take();
        let (key, uploaded, file_name) = match (read, stored) {
            (Ok(()), Some(stored)) => stored,
            (Ok(()), None) => {
                return Err(ApiError::validation(vec![FieldError::new(
                    "file",
                    "required",
                    "The form has no `file` field.",
                )]));
            }
            (Err(error), stored) => {
                if let Some((key, ..)) = stored {
                    Self::discard(&state, &key).await;
                }
                return Err(error);
            }
        };
        let Some((_, id)) = ObjectKey::parse_file_key(key.as_str()) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "unparsable key {key:?}"
            )));
        };
        let name = display_name(
            form.name
                .as_deref()
                .or(file_name.as_deref())
                .unwrap_or("file"),
            Some(uploaded.kind),
        );
        let new = NewFile {
            id,
            name: &name,
            content_type: uploaded.kind.mime(),
            size: i64::try_from(uploaded.size).unwrap_or(i64::MAX),
            sha256: &uploaded.sha256,
            status: if uploaded.kind.is_image() {
                FileStatus::Processing
            } else {
                FileStatus::Ready
            },
            uploaded_by: auth.principal.user_id,
        };
        let recorded = async {
            let mut tx = state.tenant_db.begin(tenant.id).await?;
            let quota = i64::try_from(allowance.quota).unwrap_or(i64::MAX);
            let recorded = store::record(&mut tx, &new, quota).await?;
            match recorded {
                Recorded::Created(_) => {
                    if uploaded.kind.is_image() {
                        jobs::enqueue(&mut tx, thumbnails_job(id))
                            .await
                            .map_err(ApiError::internal)?;
                    }
                    tx.commit().await?;
                }
                Recorded::Existing(_) | Recorded::OverQuota { .. } => tx.rollback().await?,
            }
            Ok::<_, ApiError>(recorded)
        }
        .await;
        let recorded = match recorded {
            Ok(Recorded::Created(file)) => {
                let location = format!("/v1/files/{}", file.id);
                return Ok(FileUploaded::Created(Json(file.into()), location));
            }
            Ok(recorded) => recorded,
            Err(error) => {
                Self::discard(&state, &key).await;
                return Err(error);
            }
        };
        // Not recorded: the object has no owner.
        Self::discard(&state, &key).await;
        match recorded {
            Recorded::Existing(file) => {
                let location = format!("/v1/files/{}", file.id);
                Ok(FileUploaded::Existing(Json(file.into()), location))
            }
            Recorded::OverQuota { used } => Err(over_quota(
                u64::try_from(used).unwrap_or(0),
                allowance.quota,
            )),
            Recorded::Created(_) => unreachable!("returned above"),
        }
    }

    /// List files.
    ///
    /// Newest first, keyset-paginated: pass `next_cursor` back as `cursor`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per documented query parameter"
    )]
    #[oai(path = "/v1/files", method = "get", operation_id = "list_files")]
    async fn list_files(
        &self,
        state: Data<&AppState>,
        auth: Authorized<perm::FilesRead>,
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        let files = store::list(&mut tx, &listing).await?;
        tx.commit().await?;
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
        /// File id.
        id: Path<Uuid>,
    ) -> ApiResult<FileDeleted> {
        let mut tx = state.tenant_db.begin(auth.principal.tenant.id).await?;
        if !store::delete(&mut tx, id.0).await? {
            return Err(not_found(id.0));
        }
        jobs::enqueue(&mut tx, delete_objects_job(id.0))
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await?;
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
        /// Tenant slug or id, when the host is not the tenant's subdomain.
        #[oai(name = "X-Tenant")]
        _tenant: CurrentTenant,
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
    let mut tx = state.tenant_db.begin(tenant.id).await?;
    let file = store::get(&mut tx, id).await?;
    tx.commit().await?;
    file.ok_or_else(|| not_found(id))
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
    let missing = store::not_ready_images(conn, &all).await?;
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
                        "not_a_ready_image",
                        format!("{id} is not a ready image file of this tenant."),
                    )
                })
        })
        .collect();
    Err(ApiError::validation(errors))
}
