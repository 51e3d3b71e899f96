//! Reading and deleting files, each in one transaction of the tenant's.

use tenancy::{TenantDb, TenantId};
use uuid::Uuid;

use crate::{
    FileError,
    jobs::DeleteObjects,
    store::{self, FileRecord, Listing},
};

/// Bytes and files `tenant` has in use.
pub async fn usage(tenant_db: &TenantDb, tenant: TenantId) -> Result<(i64, i64), FileError> {
    let mut tx = tenant_db.begin(tenant).await?;
    let usage = store::usage(&mut tx).await?;
    tx.commit().await?;
    Ok(usage)
}

/// A live file of `tenant`'s.
pub async fn get_file(
    tenant_db: &TenantDb,
    tenant: TenantId,
    id: Uuid,
) -> Result<FileRecord, FileError> {
    let mut tx = tenant_db.begin(tenant).await?;
    let file = store::get(&mut tx, id).await?;
    tx.commit().await?;
    file.ok_or(FileError::NotFound(id))
}

/// `tenant`'s live files, newest first, as `listing` filters them.
pub async fn list_files(
    tenant_db: &TenantDb,
    tenant: TenantId,
    listing: &Listing,
) -> Result<Vec<FileRecord>, FileError> {
    let mut tx = tenant_db.begin(tenant).await?;
    let files = store::list(&mut tx, listing).await?;
    tx.commit().await?;
    Ok(files)
}

/// Deletes a live file of `tenant`'s: it stops counting at once, and its objects are
/// removed by a [`DeleteObjects`] job enqueued in the same transaction.
pub async fn delete_file(
    tenant_db: &TenantDb,
    tenant: TenantId,
    id: Uuid,
) -> Result<(), FileError> {
    let mut tx = tenant_db.begin(tenant).await?;
    if !store::delete(&mut tx, id).await? {
        return Err(FileError::NotFound(id));
    }
    jobs::enqueue(&mut tx, DeleteObjects { file_id: id }.new_job()?).await?;
    tx.commit().await?;
    Ok(())
}
