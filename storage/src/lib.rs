//! Canopy's object storage, free of HTTP frameworks: one S3-compatible bucket (Garage
//! locally, any S3 in production) reached through aws-sdk-s3 with an explicit endpoint,
//! region, path-style addressing and static credentials ([`store`]); streaming uploads
//! with bounded memory ([`upload`]); what uploads are allowed to be, decided from their
//! bytes ([`sniff`]); bomb-safe image decoding and thumbnails ([`images`]); and the names
//! files are shown and downloaded under ([`names`]).
//!
//! Every object of a tenant lives under `t/<tenant id>/`; a file's objects under
//! `t/<tenant id>/files/<file id>/` (`original`, `thumbs/<size>.<ext>`). Keys are built
//! from ids only ([`ObjectKey`]), never from anything a client typed, so no request can
//! name another tenant's object or escape its prefix.

pub mod images;
pub mod names;
pub mod sniff;
pub mod store;
pub mod upload;

pub use store::{
    ObjectInfo, ObjectKey, ObjectStore, StorageError, StorageSettings, ThumbnailFormat,
};
pub use upload::{PendingUpload, UploadError, UploadRules, Uploaded};
