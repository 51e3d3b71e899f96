//! The object store against the real S3-compatible server (Garage): bytes round-trip
//! exactly, through the client and through a presigned URL; keys stay under their tenant's
//! prefix; deletion is idempotent.

use std::time::Duration;

use bytes::Bytes;
use e2e::spawn_app;
use storage::{ObjectKey, StorageError, ThumbnailFormat};
use tenancy::TenantId;
use uuid::Uuid;

#[tokio::test]
async fn objects_round_trip_and_stay_under_their_tenant_prefix() {
    let app = spawn_app().await;
    let store = &app.state.storage;
    store.check_bucket().await.expect("bucket reachable");
    let (a, b) = (TenantId(Uuid::new_v4()), TenantId(Uuid::new_v4()));
    let file = Uuid::new_v4();
    // Every byte value, so that nothing is re-encoded on the way.
    let bytes = Bytes::from((0..=255u8).cycle().take(300_000).collect::<Vec<_>>());
    let original = ObjectKey::original(a, file);
    let thumb = ObjectKey::thumbnail(a, file, 128, ThumbnailFormat::Webp);
    store
        .put(&original, bytes.clone(), "application/octet-stream")
        .await
        .unwrap();
    store
        .put(&thumb, Bytes::from_static(b"thumb"), "image/webp")
        .await
        .unwrap();
    store
        .put(
            &ObjectKey::original(b, file),
            Bytes::from_static(b"other tenant"),
            "text/plain",
        )
        .await
        .unwrap();
    assert_eq!(store.get(&original).await.unwrap(), bytes);

    let mut listed = store.list(&ObjectKey::tenant_prefix(a)).await.unwrap();
    listed.sort();
    let mut expected = vec![original.as_str().to_owned(), thumb.as_str().to_owned()];
    expected.sort();
    assert_eq!(
        listed, expected,
        "tenant b's object is not under a's prefix"
    );

    // A presigned URL needs no credentials and answers as asked.
    let url = store
        .presigned_get(
            &original,
            Duration::from_secs(60),
            "attachment; filename=\"data.bin\"",
            "application/octet-stream",
        )
        .await
        .unwrap();
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"data.bin\""
    );
    assert_eq!(response.bytes().await.unwrap(), bytes);
    // Tampering with the signed query is refused.
    let tampered = url.replace("original", "thumbs/128.webp");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);

    for key in [&original, &thumb, &original] {
        store.delete(key).await.expect("deleting twice is fine");
    }
    assert!(matches!(
        store.get(&original).await,
        Err(StorageError::NotFound)
    ));
    assert!(
        store
            .list(&ObjectKey::tenant_prefix(a))
            .await
            .unwrap()
            .is_empty()
    );
    store.delete(&ObjectKey::original(b, file)).await.unwrap();
}
