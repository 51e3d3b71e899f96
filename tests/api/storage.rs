//! The object store against the real S3-compatible server (Garage): bytes round-trip
//! exactly, through the client and through a presigned URL; keys stay under their tenant's
//! prefix; deletion is idempotent; uploads stream in parts, and refused or failed ones
//! leave neither an object nor a pending multipart upload.

use std::time::Duration;

use bytes::Bytes;
use e2e::spawn_app;
use sha2::{Digest, Sha256};
use storage::{
    ObjectKey, StorageError, ThumbnailFormat, UploadError, UploadRules,
    sniff::{FileType, TypeError},
};
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
        .presigned_get(&original, Duration::from_secs(60), "data.bin", None)
        .await
        .unwrap();
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"data.bin\"; filename*=UTF-8''data.bin"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
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

/// A PNG signature followed by `len - 8` pseudo-random bytes.
fn png_bytes(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x: u32 = 0x9E37_79B9;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(x as u8);
    }
    bytes
}

/// `bytes` as a body of 64 KiB chunks, failing after `fail_after` bytes if given.
fn body(
    bytes: &[u8],
    fail_after: Option<usize>,
) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin {
    let mut chunks: Vec<Result<Bytes, String>> = bytes
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    if let Some(at) = fail_after {
        chunks.truncate(at / (64 * 1024));
        chunks.push(Err("connection reset by peer".to_owned()));
    }
    futures_util::stream::iter(chunks)
}

fn rules(max_bytes: u64) -> UploadRules {
    UploadRules {
        max_bytes,
        allowed: FileType::ALL.to_vec(),
        declared_type: Some("image/png".to_owned()),
        file_name: Some("picture.png".to_owned()),
        image_limits: None,
    }
}

#[tokio::test]
async fn large_uploads_stream_in_parts_and_round_trip() {
    let app = spawn_app().await;
    let store = &app.state.storage;
    let tenant = TenantId(Uuid::new_v4());
    let key = ObjectKey::original(tenant, Uuid::new_v4());
    let bytes = png_bytes(2 * storage::upload::PART_SIZE + 12_345);
    let uploaded = store
        .upload(&key, body(&bytes, None), &rules(64 << 20))
        .await
        .unwrap();
    assert_eq!(uploaded.kind, FileType::Png);
    assert_eq!(uploaded.size, bytes.len() as u64);
    assert_eq!(uploaded.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
    assert_eq!(store.get(&key).await.unwrap(), bytes);
    let prefix = ObjectKey::tenant_prefix(tenant);
    assert!(store.pending_uploads(&prefix).await.unwrap().is_empty());

    // A small one is a single object too.
    let small_key = ObjectKey::original(tenant, Uuid::new_v4());
    let small = png_bytes(1000);
    let uploaded = store
        .upload(&small_key, body(&small, None), &rules(64 << 20))
        .await
        .unwrap();
    assert_eq!(uploaded.size, 1000);
    assert_eq!(store.get(&small_key).await.unwrap(), small);
    for key in [&key, &small_key] {
        store.delete(key).await.unwrap();
    }
}

#[tokio::test]
async fn refused_and_failed_uploads_leave_nothing_behind() {
    let app = spawn_app().await;
    let store = &app.state.storage;
    let tenant = TenantId(Uuid::new_v4());
    let prefix = ObjectKey::tenant_prefix(tenant);
    let large = png_bytes(storage::upload::PART_SIZE + 4 * 1024 * 1024);
    // The listing of pending uploads sees one, and aborting ends it.
    let pending_key = ObjectKey::original(tenant, Uuid::new_v4());
    let id = store.start_upload(&pending_key, "image/png").await.unwrap();
    let pending = store.pending_uploads(&prefix).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].key.as_str(), pending[0].upload_id.as_str()),
        (pending_key.as_str(), id.as_str())
    );
    assert!(pending[0].initiated.is_some());
    store.abort_upload(pending_key.as_str(), &id).await.unwrap();
    assert!(store.pending_uploads(&prefix).await.unwrap().is_empty());

    let mut pdf_rules = rules(1 << 20);
    pdf_rules.allowed = vec![FileType::Png];
    pdf_rules.declared_type = None;
    pdf_rules.file_name = None;
    let mut lying = rules(1 << 20);
    lying.declared_type = Some("image/jpeg".to_owned());
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>".to_vec();

    let cases: Vec<(&str, Vec<u8>, Option<usize>, UploadRules)> = vec![
        // Past the limit after a first part has gone: the multipart upload is aborted.
        (
            "too large",
            large.clone(),
            None,
            rules(storage::upload::PART_SIZE as u64 + 1024),
        ),
        // The client goes away after a first part.
        (
            "broken body",
            large,
            Some(storage::upload::PART_SIZE + 1024 * 1024),
            rules(64 << 20),
        ),
        ("svg", svg, None, rules(1 << 20)),
        ("not allowed", b"%PDF-1.7\n%...".to_vec(), None, pdf_rules),
        ("declared otherwise", png_bytes(2000), None, lying),
        ("empty", Vec::new(), None, rules(1 << 20)),
    ];
    for (name, bytes, fail_after, rules) in cases {
        let key = ObjectKey::original(tenant, Uuid::new_v4());
        let outcome = store.upload(&key, body(&bytes, fail_after), &rules).await;
        let refused_as_expected = matches!(
            (name, &outcome),
            ("too large", Err(UploadError::TooLarge { .. }))
                | ("broken body", Err(UploadError::Body(_)))
                | ("svg", Err(UploadError::Type(TypeError::Markup)))
                | (
                    "not allowed",
                    Err(UploadError::NotAllowed("application/pdf"))
                )
                | (
                    "declared otherwise",
                    Err(UploadError::Type(TypeError::DeclaredMismatch { .. }))
                )
                | ("empty", Err(UploadError::Type(TypeError::Empty)))
        );
        assert!(refused_as_expected, "{name}: {outcome:?}");
        assert!(
            store.list(&prefix).await.unwrap().is_empty(),
            "{name}: an object was left"
        );
        assert!(
            store.pending_uploads(&prefix).await.unwrap().is_empty(),
            "{name}: a multipart upload was left"
        );
    }
}
