//! The view types of files: what the OpenAPI document shows of a file and of the
//! operations' answers. [`FileStatusView`] mirrors the domain's `files::FileStatus`, which
//! carries no poem derive.

use chrono::{DateTime, Utc};
use files::{FileRecord, FileStatus};
use poem_openapi::{ApiResponse, Enum, Object, payload::Json};
use uuid::Uuid;

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
