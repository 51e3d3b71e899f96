//! The body of `POST /v1/files`: [`FileUpload`] takes the multipart body without reading
//! it, then reads it field by field as it arrives, behind the framing bounds of
//! [`framing`](super::framing), streaming the `file` field into the bucket through
//! `files::store_original`. What the form may hold is HTTP; what happens to the stored
//! bytes is the `files` crate's.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use files::StoredOriginal;
use futures_util::{Stream, TryStreamExt};
use poem::{Request, RequestBody, http::header};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, Multipart,
    payload::Payload,
    registry::{MetaMediaType, MetaRequest, Registry},
    types::multipart::Upload,
};
use storage::{ObjectStore, UploadRules, images::ImageLimits};
use tenancy::TenantId;

use super::{
    Allowance, IDLE_READ_TIMEOUT, MAX_NAME_BYTES, MAX_PART_HEADER_BYTES, MAX_PARTS, READ_CHUNK,
    framing, too_large,
};
use crate::error::{ApiError, ApiResult, ErrorCode, FieldCode, FieldError};

/// The form of `POST /v1/files` (documentation only: the body is streamed by
/// [`FileUpload`], never buffered).
#[derive(Debug, Multipart)]
#[expect(dead_code, reason = "describes the request body; FileUpload reads it")]
struct UploadForm {
    /// The file: JPEG, PNG, WebP, GIF or PDF (as the plan allows), at most the plan's
    /// upload size. Its type is read from its bytes; a declared `Content-Type` or a file
    /// name extension that contradicts them is refused.
    file: Upload,
    /// Display name (default: the file's name), at most 1,024 bytes of UTF-8. Each field
    /// may appear once; any other field is refused (422).
    #[oai(validator(max_length = 1024))]
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

/// A form read whole: its file stored (not yet recorded), and the name asked for.
pub(super) struct Received {
    /// The file's bytes, in the bucket.
    pub(super) stored: StoredOriginal,
    /// The `name` field, else the file's name, else `file`.
    pub(super) name: String,
}

impl FileUpload {
    /// The body's `Content-Length`, when it had one.
    pub(super) fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Reads the form, streaming the file into the bucket under `allowance`. On error,
    /// whatever was stored is removed again.
    pub(super) async fn read(
        &mut self,
        storage: &ObjectStore,
        tenant: TenantId,
        allowance: &Allowance,
    ) -> ApiResult<Received> {
        let mut form = Form::default();
        let read = self
            .read_fields(storage, tenant, allowance, &mut form)
            .await
            // A refused framing shows as whatever failed to read: say why it was refused.
            .map_err(|error| self.refusal(allowance.upload_limit).unwrap_or(error));
        match (read, form.stored) {
            (Ok(()), Some((stored, file_name))) => Ok(Received {
                stored,
                name: form.name.or(file_name).unwrap_or_else(|| "file".to_owned()),
            }),
            (Ok(()), None) => Err(ApiError::validation(vec![FieldError::new(
                "file",
                FieldCode::Required,
                "The form has no `file` field.",
            )])),
            (Err(error), stored) => {
                if let Some((stored, _)) = stored {
                    files::discard(storage, stored).await;
                }
                Err(error)
            }
        }
    }

    /// Reads the form into `form`, streaming the file into the bucket. On error, whatever
    /// was stored is in `form.stored` for the caller to remove.
    async fn read_fields(
        &mut self,
        storage: &ObjectStore,
        tenant: TenantId,
        allowance: &Allowance,
        form: &mut Form,
    ) -> ApiResult<()> {
        let form_stream = self.start(allowance.upload_limit)?;
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
                    let stored =
                        files::store_original(storage, tenant, field_stream(field), &rules)
                            .await
                            .map_err(|e| allowance.refusal(e))?;
                    form.stored = Some((stored, file_name));
                }
                Some(name @ ("name" | "file")) => {
                    return Err(ApiError::validation(vec![FieldError::new(
                        name,
                        FieldCode::Duplicate,
                        "The field appears more than once.",
                    )]));
                }
                other => {
                    let name = other.unwrap_or_default().to_owned();
                    return Err(ApiError::validation(vec![FieldError::new(
                        name,
                        FieldCode::UnknownField,
                        "Only `file` and `name` are accepted.",
                    )]));
                }
            }
        }
        Ok(())
    }

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

/// The form's fields, as read.
#[derive(Default)]
struct Form {
    name: Option<String>,
    /// The file, stored, and the file name the client gave it.
    stored: Option<(StoredOriginal, Option<String>)>,
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
    let invalid =
        |m: &str| ApiError::validation(vec![FieldError::new("name", FieldCode::Invalid, m)]);
    let mut raw = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if raw.len() + chunk.len() > MAX_NAME_BYTES {
            return Err(invalid("The name is longer than 1024 bytes."));
        }
        raw.extend_from_slice(&chunk);
    }
    String::from_utf8(raw).map_err(|_| invalid("The name is not UTF-8."))
}
