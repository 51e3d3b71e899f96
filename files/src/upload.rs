//! The steps of an upload, apart from reading the request: [`store_original`] streams the
//! bytes into a new object (its id is the file's to be), [`record_upload`] records it in the
//! tenant's transaction, counted against the quota and deduplicated by content, with its
//! thumbnail job, and [`discard`] removes an object that no record will own.
//!
//! The object is stored before the row exists (a row exists only once its object does),
//! so every path that does not end in a new record removes the object again; a crash in
//! between leaves it to the orphan sweep (`crate::jobs::SweepTenant`).

use std::fmt::Display;

use bytes::Bytes;
use futures_util::Stream;
use storage::{ObjectKey, ObjectStore, UploadError, UploadRules, Uploaded, names::display_name};
use tenancy::{TenantDb, TenantId};
use uuid::Uuid;

use crate::{
    FileError,
    jobs::Thumbnails,
    store::{self, FileStatus, NewFile, Recorded},
};

/// An original in the bucket that no record owns yet: record it ([`record_upload`]) or
/// remove it ([`discard`]).
#[derive(Debug)]
#[must_use = "an unrecorded object must be recorded or discarded"]
pub struct StoredOriginal {
    id: Uuid,
    key: ObjectKey,
    uploaded: Uploaded,
}

impl StoredOriginal {
    /// The id of the file it will be.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// What was stored: type, size and digest, read from the bytes.
    pub fn uploaded(&self) -> &Uploaded {
        &self.uploaded
    }
}

/// Streams `body` into a new original of `tenant`'s under `rules` (see
/// [`ObjectStore::upload`]); the file id is a fresh UUIDv7, so ids sort by upload time.
pub async fn store_original<S, E>(
    storage: &ObjectStore,
    tenant: TenantId,
    body: S,
    rules: &UploadRules,
) -> Result<StoredOriginal, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let id = Uuid::now_v7();
    let key = ObjectKey::original(tenant, id);
    let uploaded = storage.upload(&key, body, rules).await?;
    Ok(StoredOriginal { id, key, uploaded })
}

/// Removes an object no record will own (the orphan sweeper catches a failure here).
pub async fn discard(storage: &ObjectStore, stored: StoredOriginal) {
    if let Err(error) = storage.delete(&stored.key).await {
        tracing::warn!(%error, key = stored.key.as_str(), "cannot remove an unrecorded object");
    }
}

/// Who uploaded a file, under which name, and the tenant's storage quota.
#[derive(Debug, Clone, Copy)]
pub struct UploadBy<'a> {
    /// The name the client asked for (cleaned by [`display_name`], its extension made to
    /// agree with the bytes).
    pub name: &'a str,
    /// The uploader.
    pub user: Uuid,
    /// Bytes of storage the tenant's plan allows.
    pub quota: u64,
}

/// Records `stored` as a file of `tenant` in one transaction: counted against the quota,
/// with its thumbnail job when it is an image. Unless a new file was recorded (the same
/// bytes were live already, the quota would be passed, or recording failed), the object is
/// discarded and nothing is written.
pub async fn record_upload(
    tenant_db: &TenantDb,
    storage: &ObjectStore,
    tenant: TenantId,
    stored: StoredOriginal,
    by: UploadBy<'_>,
) -> Result<Recorded, FileError> {
    let recorded = record(tenant_db, tenant, &stored, by).await;
    if !matches!(recorded, Ok(Recorded::Created(_))) {
        discard(storage, stored).await;
    }
    recorded
}

async fn record(
    tenant_db: &TenantDb,
    tenant: TenantId,
    stored: &StoredOriginal,
    by: UploadBy<'_>,
) -> Result<Recorded, FileError> {
    let uploaded = &stored.uploaded;
    let is_image = uploaded.kind.is_image();
    let name = display_name(by.name, Some(uploaded.kind));
    let new = NewFile {
        id: stored.id,
        name: &name,
        content_type: uploaded.kind.mime(),
        size: i64::try_from(uploaded.size).unwrap_or(i64::MAX),
        sha256: &uploaded.sha256,
        status: if is_image {
            FileStatus::Processing
        } else {
            FileStatus::Ready
        },
        uploaded_by: by.user,
    };
    let mut tx = tenant_db.begin(tenant).await?;
    let quota = i64::try_from(by.quota).unwrap_or(i64::MAX);
    let recorded = store::record(&mut tx, &new, quota).await?;
    match recorded {
        Recorded::Created(_) => {
            if is_image {
                let job = Thumbnails { file_id: stored.id }.new_job()?;
                jobs::enqueue(&mut tx, job).await?;
            }
            tx.commit().await?;
        }
        Recorded::Existing(_) | Recorded::OverQuota { .. } => tx.rollback().await?,
    }
    Ok(recorded)
}
