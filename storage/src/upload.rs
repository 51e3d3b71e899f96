//! Streaming an upload into the bucket with bounded memory: the body is read chunk by
//! chunk, its type decided from its first bytes before anything is stored, its SHA-256
//! computed on the way, its size checked against the limit as it grows, and it leaves in
//! parts of [`PART_SIZE`] (an S3 multipart upload) once it is larger than one part. At most
//! one part is held in memory. A failed upload aborts its multipart upload, so the bucket
//! keeps neither an object nor parts.

use std::{fmt::Display, time::SystemTime};

use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::{
    ObjectKey, ObjectStore, StorageError,
    images::{ImageError, ImageLimits, dimensions},
    sniff::{FileType, SNIFF_LEN, TypeError, check_claims, sniff},
    store::service,
};

/// Size of the parts of a multipart upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// What an upload may be.
#[derive(Debug, Clone)]
pub struct UploadRules {
    /// Largest size in bytes.
    pub max_bytes: u64,
    /// Types accepted.
    pub allowed: Vec<FileType>,
    /// The `Content-Type` the client declared, if any.
    pub declared_type: Option<String>,
    /// The file name the client gave, if any.
    pub file_name: Option<String>,
    /// For images: dimensions that the header already shows to pass these limits refuse
    /// the upload before anything is stored.
    pub image_limits: Option<ImageLimits>,
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The type, from the bytes.
    pub kind: FileType,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
}

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes are of a refused type, or contradict what the client said.
    #[error(transparent)]
    Type(#[from] TypeError),
    /// The image's header declares more pixels than allowed.
    #[error(transparent)]
    Image(ImageError),
    /// The type is recognised but not allowed here.
    #[error("{0} files are not allowed")]
    NotAllowed(&'static str),
    /// The body is larger than the limit.
    #[error("the file is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Reading the body failed (the client went away, a malformed request).
    #[error("the upload could not be read: {0}")]
    Body(String),
    /// The bucket refused or could not be reached.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A multipart upload in progress.
struct Multipart {
    id: String,
    parts: Vec<CompletedPart>,
}

impl ObjectStore {
    /// Streams `body` into `key` under `rules` (see the module documentation).
    pub async fn upload<S, E>(
        &self,
        key: &ObjectKey,
        body: S,
        rules: &UploadRules,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let mut multipart: Option<Multipart> = None;
        let outcome = self.stream_upload(key, body, rules, &mut multipart).await;
        if outcome.is_err()
            && let Some(upload) = multipart
        {
            // What is left behind is the orphan sweeper's to remove.
            let _ = self.abort_upload(key.as_str(), &upload.id).await;
        }
        outcome
    }

    async fn stream_upload<S, E>(
        &self,
        key: &ObjectKey,
        mut body: S,
        rules: &UploadRules,
        multipart: &mut Option<Multipart>,
    ) -> Result<Uploaded, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = BytesMut::with_capacity(PART_SIZE);
        let mut kind: Option<FileType> = None;
        loop {
            let chunk = body.next().await;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > rules.max_bytes {
                    return Err(UploadError::TooLarge {
                        limit: rules.max_bytes,
                    });
                }
                hasher.update(&chunk);
                buffer.extend_from_slice(&chunk);
            }
            if kind.is_none() && (buffer.len() >= SNIFF_LEN || done) {
                kind = Some(check_type(&buffer[..buffer.len().min(SNIFF_LEN)], rules)?);
            }
            while buffer.len() >= PART_SIZE {
                let part = buffer.split_to(PART_SIZE).freeze();
                self.upload_part(key, multipart, part, kind).await?;
            }
            if done {
                break;
            }
        }
        let kind = kind.ok_or(TypeError::Empty)?;
        if multipart.is_none() {
            self.put(key, buffer.freeze(), kind.mime()).await?;
        } else {
            if !buffer.is_empty() {
                self.upload_part(key, multipart, buffer.freeze(), Some(kind))
                    .await?;
            }
            let upload = multipart
                .as_ref()
                .ok_or_else(|| StorageError::Service("multipart upload lost".to_owned()))?;
            let parts = CompletedMultipartUpload::builder()
                .set_parts(Some(upload.parts.clone()))
                .build();
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key.as_str())
                .upload_id(&upload.id)
                .multipart_upload(parts)
                .send()
                .await
                .map_err(service)?;
            // Complete: nothing to abort any more.
            *multipart = None;
        }
        Ok(Uploaded {
            kind,
            size,
            sha256: hasher.finalize().into(),
        })
    }

    /// Sends one part, starting the multipart upload first if need be.
    async fn upload_part(
        &self,
        key: &ObjectKey,
        multipart: &mut Option<Multipart>,
        part: Bytes,
        kind: Option<FileType>,
    ) -> Result<(), UploadError> {
        if multipart.is_none() {
            let content_type = kind.map_or("application/octet-stream", FileType::mime);
            let id = self.start_upload(key, content_type).await?;
            *multipart = Some(Multipart {
                id,
                parts: Vec::new(),
            });
        }
        let upload = multipart
            .as_mut()
            .ok_or_else(|| StorageError::Service("multipart upload lost".to_owned()))?;
        let number = i32::try_from(upload.parts.len() + 1)
            .map_err(|_| StorageError::Service("too many parts".to_owned()))?;
        let sent = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(&upload.id)
            .part_number(number)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(service)?;
        upload.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// Starts a multipart upload of `key`; returns its id.
    pub async fn start_upload(
        &self,
        key: &ObjectKey,
        content_type: &str,
    ) -> Result<String, StorageError> {
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .send()
            .await
            .map_err(service)?;
        started
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::Service("no upload id".to_owned()))
    }

    /// Ends a multipart upload without an object, dropping its parts.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(drop)
            .map_err(service)
    }

    /// The multipart uploads in progress under `prefix` (for the orphan sweeper).
    pub async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StorageError> {
        let mut pending = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(service)?;
            pending.extend(listed.uploads().iter().filter_map(|u| {
                Some(PendingUpload {
                    key: u.key()?.to_owned(),
                    upload_id: u.upload_id()?.to_owned(),
                    initiated: u.initiated().and_then(|t| SystemTime::try_from(*t).ok()),
                })
            }));
            if listed.is_truncated() != Some(true) {
                break;
            }
            key_marker = listed.next_key_marker().map(str::to_owned);
            id_marker = listed.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(pending)
    }
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it will write.
    pub key: String,
    /// Its id.
    pub upload_id: String,
    /// When it started, when the store says.
    pub initiated: Option<SystemTime>,
}

fn check_type(head: &[u8], rules: &UploadRules) -> Result<FileType, UploadError> {
    let kind = sniff(head)?;
    if !rules.allowed.contains(&kind) {
        return Err(UploadError::NotAllowed(kind.mime()));
    }
    check_claims(
        kind,
        rules.declared_type.as_deref(),
        rules.file_name.as_deref(),
    )?;
    if let Some(limits) = rules.image_limits
        && kind.is_image()
        && let Err(refused @ ImageError::TooLarge { .. }) = dimensions(head, limits)
    {
        // Only a header that fits in the first bytes is judged here; anything else is the
        // thumbnail job's to find out.
        return Err(UploadError::Image(refused));
    }
    Ok(kind)
}
