//! Canopy's files, free of HTTP: the file model and its lifecycle. A file is an object in
//! the bucket (through `storage`, which owns the object store and the image work) plus a
//! row in the tenant's schema that owns it; this crate keeps the two in step.
//!
//! * [`store`]: the SQL of file rows and of the tenant's storage usage ([`FileStatus`],
//!   [`FileRecord`]), over a tenant transaction.
//! * [`upload`]: the steps of an upload once the request is read (store the bytes, record
//!   them within the quota, enqueue the thumbnails, or discard the object).
//! * [`records`]: reading, listing and deleting files, one tenant transaction each.
//! * [`jobs`]: the typed jobs that make thumbnails and remove objects (of deleted files,
//!   orphans, purged tenants), the sweep schedule and the tenant purge hook.
//!
//! Errors are one [`FileError`]; the HTTP edge (`api`) turns it into problem+json, and maps
//! [`FileStatus`] to its own view type.

mod error;
pub mod jobs;
pub mod records;
pub mod store;
pub mod upload;

pub use error::FileError;
pub use records::{delete_file, get_file, list_files, usage};
pub use store::{FileRecord, FileStatus, Listing, NewFile, Recorded};
pub use upload::{StoredOriginal, UploadBy, discard, record_upload, store_original};
