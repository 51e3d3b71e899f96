//! The bucket: keys ([`ObjectKey`]) and the client ([`ObjectStore`]).

use std::time::{Duration, SystemTime};

use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
    presigning::PresigningConfig,
    primitives::ByteStream,
};
use bytes::Bytes;
use tenancy::TenantId;
use uuid::Uuid;

use crate::{
    names::{content_disposition, display_name},
    sniff::FileType,
};

/// Where the bucket is and how to sign in.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Endpoint URL (`http://127.0.0.1:3900`).
    pub endpoint: String,
    /// Region name (`garage`, `us-east-1`, …).
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

/// What went wrong talking to the object store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object has this key.
    #[error("no object has this key")]
    NotFound,
    /// The store refused or could not be reached.
    #[error("object storage: {0}")]
    Service(String),
}

pub(crate) fn service<E: std::error::Error>(e: E) -> StorageError {
    // The SDK's Display is terse ("service error"); the source chain says what happened.
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    StorageError::Service(text)
}

/// The size of a thumbnail's image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbnailFormat {
    /// `image/webp`.
    Webp,
    /// `image/jpeg`.
    Jpeg,
}

impl ThumbnailFormat {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Webp => "webp",
            Self::Jpeg => "jpg",
        }
    }
}

/// The key of an object, built from ids only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// `t/<tenant>/`: everything of one tenant.
    pub fn tenant_prefix(tenant: TenantId) -> String {
        format!("t/{}/", tenant.0)
    }

    /// `t/<tenant>/files/<file>/`: everything of one file.
    pub fn file_prefix(tenant: TenantId, file: Uuid) -> String {
        format!("{}files/{file}/", Self::tenant_prefix(tenant))
    }

    /// The uploaded bytes of a file.
    pub fn original(tenant: TenantId, file: Uuid) -> Self {
        Self(format!("{}original", Self::file_prefix(tenant, file)))
    }

    /// A thumbnail of a file, `size` pixels on its longest edge.
    pub fn thumbnail(tenant: TenantId, file: Uuid, size: u32, format: ThumbnailFormat) -> Self {
        Self(format!(
            "{}thumbs/{size}.{}",
            Self::file_prefix(tenant, file),
            format.extension()
        ))
    }

    /// The key as the store sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key as the store listed it (for removing what a listing found).
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }

    /// The tenant and file ids of a key under `t/<tenant>/files/<file>/`, if it is one.
    pub fn parse_file_key(key: &str) -> Option<(TenantId, Uuid)> {
        let rest = key.strip_prefix("t/")?;
        let (tenant, rest) = rest.split_once('/')?;
        let rest = rest.strip_prefix("files/")?;
        let (file, _) = rest.split_once('/')?;
        Some((TenantId(tenant.parse().ok()?), file.parse().ok()?))
    }
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// When it was written, when the store says.
    pub last_modified: Option<SystemTime>,
}

/// The bucket.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    pub(crate) client: Client,
    pub(crate) bucket: String,
}

impl ObjectStore {
    /// A client for the bucket (no request is made until the first use).
    pub fn new(settings: &StorageSettings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key_id,
            &settings.secret_access_key,
            None,
            None,
            "canopy-settings",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .endpoint_url(&settings.endpoint)
            .force_path_style(true)
            // Checksums only where S3 requires them: the SDK's default (a CRC trailer on
            // every streamed body, in aws-chunked encoding) is not understood by every
            // S3-compatible server (Garage refuses it), and TLS already protects transit.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .credentials_provider(credentials)
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
        }
    }

    /// The SDK client, for what this crate does not wrap (benchmarks' baselines).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether the bucket exists and these credentials reach it (readiness).
    pub async fn check_bucket(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(service)
    }

    /// Stores `body` under `key`.
    pub async fn put(
        &self,
        key: &ObjectKey,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(drop)
            .map_err(service)
    }

    /// The whole object (small objects: thumbnails' sources are read in parts elsewhere).
    pub async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(err) if err.is_no_such_key() => StorageError::NotFound,
                _ => service(e),
            })?;
        let data = object.body.collect().await.map_err(service)?;
        Ok(data.into_bytes())
    }

    /// Removes the object (a missing one is fine: deletion is idempotent).
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map(drop)
            .map_err(service)
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }

    /// Every object under `prefix`, with its age.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(service)?;
            objects.extend(page.contents().iter().filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_owned(),
                    last_modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                })
            }));
        }
        Ok(objects)
    }

    /// Removes every object under `prefix` (idempotent).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let keys = self.list(prefix).await?;
        for key in &keys {
            self.delete(&ObjectKey(key.clone())).await?;
        }
        Ok(keys.len())
    }

    /// A URL that downloads the object without credentials until `expires_in` has passed.
    /// The store's answer is safe on its own, whatever the object was stored as: it is an
    /// attachment (`Content-Disposition: attachment`) under `name` as [`display_name`]
    /// cleans it for `kind` (so its extension is the type's), and its `Content-Type` is
    /// one no browser renders as a page: `kind`'s (the raster images and PDF Canopy
    /// accepts), `application/octet-stream` when the type is unknown. S3 cannot add
    /// `X-Content-Type-Options: nosniff` to the answer of a presigned GET; a CDN or proxy
    /// in front of the bucket can.
    pub async fn presigned_get(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
        name: &str,
        kind: Option<FileType>,
    ) -> Result<String, StorageError> {
        let presigning = PresigningConfig::expires_in(expires_in).map_err(service)?;
        let content_type = kind.map_or("application/octet-stream", FileType::mime);
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .response_content_disposition(content_disposition(&display_name(name, kind)))
            .response_content_type(content_type)
            .presigned(presigning)
            .await
            .map_err(service)?;
        Ok(request.uri().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_from_ids_under_the_tenant_prefix() {
        let tenant = TenantId(Uuid::from_u128(1));
        let file = Uuid::from_u128(2);
        let prefix = "t/00000000-0000-0000-0000-000000000001/";
        assert_eq!(ObjectKey::tenant_prefix(tenant), prefix);
        assert_eq!(
            ObjectKey::original(tenant, file).as_str(),
            format!("{prefix}files/00000000-0000-0000-0000-000000000002/original")
        );
        assert_eq!(
            ObjectKey::thumbnail(tenant, file, 512, ThumbnailFormat::Webp).as_str(),
            format!("{prefix}files/00000000-0000-0000-0000-000000000002/thumbs/512.webp")
        );
        assert!(
            ObjectKey::thumbnail(tenant, file, 128, ThumbnailFormat::Jpeg)
                .as_str()
                .starts_with(&ObjectKey::file_prefix(tenant, file))
        );
        for key in [
            ObjectKey::original(tenant, file),
            ObjectKey::thumbnail(tenant, file, 512, ThumbnailFormat::Jpeg),
        ] {
            assert_eq!(
                ObjectKey::parse_file_key(key.as_str()),
                Some((tenant, file))
            );
        }
        for foreign in [
            "t/x/files/y/original",
            "t/00000000-0000-0000-0000-000000000001/other/y",
            "files/00000000-0000-0000-0000-000000000002/original",
        ] {
            assert_eq!(ObjectKey::parse_file_key(foreign), None);
        }
    }
}
