//! Files end to end, against the real Garage: bytes round-trip through upload and the
//! presigned download; thumbnails are upright and metadata-free; every object stays under
//! its tenant's prefix and other tenants see 404s; types are read from the bytes; bombs,
//! corrupt images, quotas, size limits and dedupe; deletion and the orphan sweeper remove
//! objects; storage failing mid-upload keeps nothing; a crashed thumbnail job runs again.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use e2e::{
    TestApp, assert_problem,
    auth::Signup,
    files::{contains, jpeg, pdf, pixel_bomb, png, with_exif},
    spawn_app,
};
use files::jobs::{
    PurgeTenantObjects, SweepOrphans, SweepTenant, Sweeper, ThumbnailMaker, Thumbnails,
};
use jobs::{Job, JobContext, JobKind, NewJob, Registry};
use reqwest::{
    Method,
    multipart::{Form, Part},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use storage::{ObjectKey, ObjectStore};
use tenancy::TenantId;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Notify,
};
use uuid::Uuid;

fn id_of(file: &Value) -> String {
    file["id"].as_str().expect("id").to_owned()
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON")
}

async fn get(app: &TestApp, org: &Signup, path: &str) -> reqwest::Response {
    app.get_authed(&org.slug, path, &org.tokens.access).await
}

async fn delete(app: &TestApp, org: &Signup, path: &str) -> reqwest::Response {
    app.send_authed(Method::DELETE, &org.slug, path, &org.tokens.access, None)
        .await
}

/// The tenant's `storage` member of `GET /v1/tenant`, as its owner sees it.
async fn storage_usage(app: &TestApp, org: &Signup) -> Value {
    let response = app
        .request(Method::GET, "/v1/tenant")
        .header("x-tenant", &org.slug)
        .bearer_auth(&org.tokens.access)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    json(response).await["storage"].clone()
}

#[tokio::test]
async fn uploads_round_trip_and_images_get_upright_metadata_free_thumbnails() {
    let app = spawn_app().await;
    let org = app.signup("files-rt").await;
    // 1200×800 as stored, EXIF orientation 6 (turn 90° clockwise): 800×1200 upright.
    let original = with_exif(&jpeg(1200, 800, 1), 6);
    assert!(contains(&original, b"GPS!"));
    let file = app
        .upload_ok(&org, original.clone(), "C:\\photos\\holiday.jpg")
        .await;
    let id = id_of(&file);
    assert_eq!(file["name"], "holiday.jpg", "the path is not kept");
    assert_eq!(file["content_type"], "image/jpeg");
    assert_eq!(file["size"], original.len());
    assert_eq!(file["sha256"], hex(&Sha256::digest(&original)));
    assert_eq!(file["status"], "processing");
    assert_eq!(file["uploaded_by"], org.owner_id.to_string());
    assert_eq!(file["thumbnails"], json!([]));

    app.run_jobs().await;
    let file = json(app.file(&org, &id).await).await;
    assert_eq!(file["status"], "ready", "{file}");
    assert_eq!(
        (&file["width"], &file["height"]),
        (&json!(800), &json!(1200))
    );
    let sizes: Vec<u64> = file["thumbnails"]
        .as_array()
        .expect("thumbnails")
        .iter()
        .map(|t| t["size"].as_u64().expect("size"))
        .collect();
    assert_eq!(sizes, [128, 512]);

    // The download redirects to a presigned URL that serves the exact bytes as an
    // attachment under the file's name.
    let response = get(&app, &org, &format!("/v1/files/{id}/download")).await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let object = app.follow(response).await;
    assert_eq!(object.status(), 200);
    let disposition = object.headers()["content-disposition"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("filename=\"holiday.jpg\""),
        "{disposition}"
    );
    assert_eq!(object.headers()["content-type"], "image/jpeg");
    assert_eq!(object.bytes().await.expect("bytes"), original);

    // Thumbnails: upright, longest edge at the size, and nothing of the EXIF left.
    for (size, width, height) in [(128, 85, 128), (512, 341, 512)] {
        let response = get(&app, &org, &format!("/v1/files/{id}/thumbnails/{size}")).await;
        let thumb = app.follow(response).await;
        assert_eq!(thumb.status(), 200);
        assert_eq!(thumb.headers()["content-type"], "image/jpeg");
        let bytes = thumb.bytes().await.expect("bytes");
        let decoded = image::load_from_memory(&bytes).expect("a JPEG");
        assert_eq!((decoded.width(), decoded.height()), (width, height));
        assert!(!contains(&bytes, b"Exif"), "EXIF stripped");
        assert!(!contains(&bytes, b"GPS!"), "camera data stripped");
    }
    let missing = get(&app, &org, &format!("/v1/files/{id}/thumbnails/300")).await;
    let problem = assert_problem(missing, 404, "not_found").await;
    assert_eq!(problem["sizes"], json!([128, 512]));

    // A PDF is ready at once, with no thumbnails, and round-trips too.
    let document = pdf(70_000, 9);
    let file = app.upload_ok(&org, document.clone(), "report.pdf").await;
    assert_eq!(file["status"], "ready");
    assert_eq!(file["width"], Value::Null);
    let pdf_id = id_of(&file);
    let response = get(&app, &org, &format!("/v1/files/{pdf_id}/download")).await;
    let object = app.follow(response).await;
    assert_eq!(object.bytes().await.expect("bytes"), document);
    let none = get(&app, &org, &format!("/v1/files/{pdf_id}/thumbnails/128")).await;
    assert_problem(none, 404, "not_found").await;

    // Listing: newest first, paginated, filtered.
    let page = json(get(&app, &org, "/v1/files?limit=1").await).await;
    assert_eq!(page["items"][0]["id"], pdf_id.as_str());
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let page = json(get(&app, &org, &format!("/v1/files?limit=1&cursor={cursor}")).await).await;
    assert_eq!(page["items"][0]["id"], id.as_str());
    assert_eq!(page["next_cursor"], Value::Null);
    let images = json(get(&app, &org, "/v1/files?content_type=image/").await).await;
    assert_eq!(images["items"].as_array().expect("items").len(), 1);
    assert_eq!(images["items"][0]["id"], id.as_str());
    let ready = json(get(&app, &org, "/v1/files?status=processing").await).await;
    assert_eq!(ready["items"], json!([]));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn files_stay_under_their_tenant_and_other_tenants_get_404() {
    let app = spawn_app().await;
    let a = app.signup("files-a").await;
    let b = app.signup("files-b").await;
    let image = id_of(&app.upload_ok(&a, png(300, 200, 1), "a.png").await);
    let document = id_of(&app.upload_ok(&a, pdf(5_000, 1), "a.pdf").await);
    let theirs = id_of(&app.upload_ok(&b, png(300, 200, 2), "b.png").await);
    app.run_jobs().await;

    for id in [&image, &document] {
        for path in [
            format!("/v1/files/{id}"),
            format!("/v1/files/{id}/download"),
            format!("/v1/files/{id}/thumbnails/128"),
        ] {
            assert_problem(get(&app, &b, &path).await, 404, "not_found").await;
        }
        let gone = delete(&app, &b, &format!("/v1/files/{id}")).await;
        assert_problem(gone, 404, "not_found").await;
    }
    let listed = json(get(&app, &b, "/v1/files").await).await;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|f| f["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [theirs.as_str()]);
    // B's attempts changed nothing of A's.
    assert_eq!(app.file(&a, &image).await.status(), 200);

    // Every object is under its uploader's tenant prefix, built from ids only.
    let a_prefix = ObjectKey::tenant_prefix(TenantId(a.tenant_id));
    let expected = |tenant: Uuid, file: &str, thumbs: bool| {
        let mut keys = vec![format!("t/{tenant}/files/{file}/original")];
        if thumbs {
            keys.push(format!("t/{tenant}/files/{file}/thumbs/128.jpg"));
            keys.push(format!("t/{tenant}/files/{file}/thumbs/512.jpg"));
        }
        keys
    };
    let mut a_expected = [
        expected(a.tenant_id, &image, true),
        expected(a.tenant_id, &document, false),
    ]
    .concat();
    a_expected.sort();
    assert_eq!(app.objects_of(a.tenant_id).await, a_expected);
    assert_eq!(
        app.objects_of(b.tenant_id).await,
        expected(b.tenant_id, &theirs, true)
    );
    // And no object anywhere in the bucket names A's files outside A's prefix.
    let everything = app.state.storage.list("t/").await.expect("list");
    for key in everything {
        if key.contains(&image) || key.contains(&document) {
            assert!(key.starts_with(&a_prefix), "{key}");
        }
    }
}

#[tokio::test]
async fn types_come_from_the_bytes_and_refusals_store_nothing() {
    let app = spawn_app().await;
    let org = app.signup("files-types").await;
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>".to_vec();
    let html = b"<!DOCTYPE html><script>alert(1)</script>".to_vec();
    // (case, bytes, file name, declared type, status, code)
    type Case = (
        &'static str,
        Vec<u8>,
        &'static str,
        &'static str,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "declared jpeg",
            png(20, 20, 1),
            "a.png",
            "image/jpeg",
            415,
            "unsupported_media_type",
        ),
        (
            "wrong extension",
            png(20, 20, 2),
            "a.jpg",
            "application/octet-stream",
            415,
            "unsupported_media_type",
        ),
        (
            "svg",
            svg.clone(),
            "a.svg",
            "image/svg+xml",
            415,
            "unsupported_media_type",
        ),
        (
            "svg as png",
            svg,
            "a.png",
            "image/png",
            415,
            "unsupported_media_type",
        ),
        (
            "html",
            html,
            "a.html",
            "text/html",
            415,
            "unsupported_media_type",
        ),
        (
            "text",
            b"just some words".to_vec(),
            "a.txt",
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "empty",
            Vec::new(),
            "a.png",
            "image/png",
            422,
            "validation_failed",
        ),
        (
            "pixel bomb",
            pixel_bomb(100_000, 100_000),
            "bomb.png",
            "image/png",
            422,
            "image_too_large",
        ),
    ];
    for (name, bytes, file_name, declared, status, code) in cases {
        let response = app
            .upload(&org.slug, &org.tokens.access, bytes, file_name, declared)
            .await;
        let problem = assert_problem(response, status, code).await;
        assert!(
            !problem["detail"].as_str().unwrap_or_default().is_empty(),
            "{name}"
        );
    }
    let bomb = pixel_bomb(100_000, 100_000);
    assert!(bomb.len() < 100, "the bomb is {} bytes", bomb.len());

    // A form without a file, with an unknown field, or not a form at all.
    let send = |form: Form| {
        app.authed(Method::POST, &org.slug, "/v1/files", &org.tokens.access)
            .multipart(form)
            .send()
    };
    let problem = assert_problem(
        send(Form::new().text("name", "x")).await.expect("request"),
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "file");
    let problem = assert_problem(
        send(Form::new().text("colour", "red"))
            .await
            .expect("request"),
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["code"], "unknown_field");
    // What the document says of the form holds: each field once, `name` at most 1,024
    // bytes (513 two-byte characters are fewer than 1,024 characters, and still too many).
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    let schema = &doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]
        ["schema"];
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["name"]["maxLength"], 1024);
    for (form, field, code) in [
        (
            Form::new().text("name", "a").text("name", "b"),
            "name",
            "duplicate",
        ),
        (Form::new().text("name", "é".repeat(513)), "name", "invalid"),
    ] {
        let problem =
            assert_problem(send(form).await.expect("request"), 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        assert_eq!(problem["errors"][0]["code"], code, "{problem}");
    }
    let not_a_form = app
        .send_authed(
            Method::POST,
            &org.slug,
            "/v1/files",
            &org.tokens.access,
            Some(&json!({"file": "x"})),
        )
        .await;
    assert_problem(not_a_form, 415, "unsupported_media_type").await;

    assert!(app.objects_of(org.tenant_id).await.is_empty());
    let listed = json(get(&app, &org, "/v1/files").await).await;
    assert_eq!(listed["items"], json!([]));
    assert_eq!(storage_usage(&app, &org).await["used_bytes"], 0);

    // The name field wins over the file's name, cleaned.
    let part = Part::bytes(pdf(300, 1))
        .file_name("scan.pdf")
        .mime_str("application/pdf")
        .expect("mime");
    let response = send(
        Form::new()
            .text("name", "Q3\u{202E}fdp.exe report.pdf")
            .part("file", part),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 201);
    assert_eq!(json(response).await["name"], "Q3fdp.exe report.pdf");
}

#[tokio::test]
async fn a_plan_can_narrow_the_accepted_types() {
    let app = TestApp::builder()
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": "1 MiB", "upload_bytes": "1 MiB",
                 "file_types": ["image/png", "image/jpeg"]}}]"#,
        )
        .spawn()
        .await;
    let org = app.signup("files-narrow").await;
    let response = app
        .upload(
            &org.slug,
            &org.tokens.access,
            pdf(500, 1),
            "a.pdf",
            "application/pdf",
        )
        .await;
    let problem = assert_problem(response, 415, "unsupported_media_type").await;
    assert_eq!(problem["allowed"], json!(["image/jpeg", "image/png"]));
    app.upload_ok(&org, png(10, 10, 1), "fine.png").await;
}

#[tokio::test]
async fn corrupt_images_end_failed_but_stay_downloadable() {
    let app = spawn_app().await;
    let org = app.signup("files-corrupt").await;
    let truncated_png = png(300, 200, 3)[..300].to_vec();
    let truncated_jpeg = jpeg(640, 480, 3)[..1_000].to_vec();
    let mut ids = Vec::new();
    for (bytes, name) in [(truncated_png, "t.png"), (truncated_jpeg.clone(), "t.jpg")] {
        let file = app.upload_ok(&org, bytes, name).await;
        assert_eq!(file["status"], "processing");
        ids.push(id_of(&file));
    }
    app.run_jobs().await;
    for id in &ids {
        let file = json(app.file(&org, id).await).await;
        assert_eq!(file["status"], "failed", "{file}");
        assert!(
            file["failure"].as_str().is_some_and(|f| !f.is_empty()),
            "{file}"
        );
        assert_eq!(file["thumbnails"], json!([]));
        let thumb = get(&app, &org, &format!("/v1/files/{id}/thumbnails/128")).await;
        assert_problem(thumb, 404, "not_found").await;
    }
    let response = get(&app, &org, &format!("/v1/files/{}/download", ids[1])).await;
    let object = app.follow(response).await;
    assert_eq!(object.bytes().await.expect("bytes"), truncated_jpeg);
}

/// Sends a request with `Content-Length: length` and reads the answer without sending a
/// byte of the body: an answer proves the server decided from the header alone.
async fn answer_without_body(app: &TestApp, org: &Signup, length: u64) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         X-Tenant: {}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Content-Length: {length}\r\n\r\n",
        org.tokens.access, org.slug
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        while !contains(&answer, b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "connection closed before an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("an answer before any body byte was sent");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn dedupe_quota_and_size_limits() {
    let app = TestApp::builder()
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": 60000, "upload_bytes": 30000}}]"#,
        )
        .spawn()
        .await;
    let org = app.signup("files-quota").await;
    let upload = |bytes: Vec<u8>, name: &'static str| {
        app.upload(
            &org.slug,
            &org.tokens.access,
            bytes,
            name,
            "application/pdf",
        )
    };
    let first = pdf(20_000, 1);
    let file = app.upload_ok(&org, first.clone(), "first.pdf").await;
    assert_eq!(
        storage_usage(&app, &org).await,
        json!({"used_bytes": 20_000, "files": 1, "limit_bytes": 60_000})
    );

    // The same bytes again: the same file, nothing stored or counted twice.
    let again = upload(first, "copy.pdf").await;
    assert_eq!(again.status(), 200);
    let location = format!("/v1/files/{}", id_of(&file));
    assert_eq!(again.headers()["location"], location.as_str());
    let again = json(again).await;
    assert_eq!(again["id"], file["id"]);
    assert_eq!(again["name"], "first.pdf");
    assert_eq!(storage_usage(&app, &org).await["used_bytes"], 20_000);
    assert_eq!(app.objects_of(org.tenant_id).await.len(), 1);

    // Past the upload size: refused while streaming, with or without a length.
    let problem = assert_problem(
        upload(pdf(31_000, 3), "c.pdf").await,
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(problem["limit"], 30_000);
    let chunks: Vec<Result<Bytes, std::io::Error>> = pdf(35_000, 4)
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .file_name("d.pdf")
    .mime_str("application/pdf")
    .expect("mime");
    let response = app
        .authed(Method::POST, &org.slug, "/v1/files", &org.tokens.access)
        .multipart(Form::new().part("file", streamed))
        .send()
        .await
        .expect("request");
    assert_problem(response, 413, "payload_too_large").await;
    // And at once when Content-Length says so, before any body byte is sent.
    let answer = answer_without_body(&app, &org, 10 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("application/problem+json"),
        "{answer}"
    );

    // Within the upload size but past the quota: refused, nothing kept.
    let second = app.upload_ok(&org, pdf(25_000, 2), "second.pdf").await;
    let problem =
        assert_problem(upload(pdf(20_000, 5), "e.pdf").await, 402, "quota_exceeded").await;
    assert_eq!(problem["used"], 45_000);
    assert_eq!(problem["limit"], 60_000);
    assert_eq!(app.objects_of(org.tenant_id).await.len(), 2);
    assert_eq!(
        storage_usage(&app, &org).await,
        json!({"used_bytes": 45_000, "files": 2, "limit_bytes": 60_000})
    );

    // Deleting frees the quota.
    let deleted = delete(&app, &org, &location).await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        storage_usage(&app, &org).await,
        json!({"used_bytes": 25_000, "files": 1, "limit_bytes": 60_000})
    );
    app.upload_ok(&org, pdf(20_000, 5), "e.pdf").await;
    assert_ne!(second["id"], file["id"]);
}

#[tokio::test]
async fn an_upload_within_a_large_plan_passes_the_global_body_limit() {
    let app = TestApp::builder()
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "64 MiB"}}]"#,
        )
        .env("body_limit", "64KiB")
        .spawn()
        .await;
    let org = app.signup("files-big").await;
    // Over two multipart parts, so the multipart path is taken end to end.
    let bytes = pdf(2 * storage::upload::PART_SIZE + 4321, 5);
    let file = app.upload_ok(&org, bytes.clone(), "big.pdf").await;
    assert_eq!(file["size"], bytes.len());
    let response = get(&app, &org, &format!("/v1/files/{}/download", id_of(&file))).await;
    let object = app.follow(response).await;
    let body = object.bytes().await.expect("bytes");
    assert!(body == bytes, "the large file round-trips");
}

#[tokio::test]
async fn deleting_a_file_removes_its_objects() {
    let app = spawn_app().await;
    let org = app.signup("files-delete").await;
    let id = id_of(&app.upload_ok(&org, png(600, 400, 4), "p.png").await);
    app.run_jobs().await;
    assert_eq!(app.objects_of(org.tenant_id).await.len(), 3);

    assert_eq!(
        delete(&app, &org, &format!("/v1/files/{id}"))
            .await
            .status(),
        204
    );
    assert_problem(app.file(&org, &id).await, 404, "not_found").await;
    let download = get(&app, &org, &format!("/v1/files/{id}/download")).await;
    assert_problem(download, 404, "not_found").await;
    assert_problem(
        delete(&app, &org, &format!("/v1/files/{id}")).await,
        404,
        "not_found",
    )
    .await;
    app.run_jobs().await;
    assert!(app.objects_of(org.tenant_id).await.is_empty());

    // The same bytes can come back as a new file.
    let again = app.upload_ok(&org, png(600, 400, 4), "p.png").await;
    assert_ne!(id_of(&again), id);
}

#[tokio::test]
async fn products_may_only_show_ready_images_of_their_tenant() {
    let app = spawn_app().await;
    let org = app.signup("files-products").await;
    let other = app.signup("files-products-b").await;
    let image = id_of(&app.upload_ok(&org, png(50, 50, 1), "i.png").await);
    let document = id_of(&app.upload_ok(&org, pdf(400, 1), "d.pdf").await);
    let foreign = id_of(&app.upload_ok(&other, png(50, 50, 2), "f.png").await);
    let product =
        |ids: &[&str]| json!({"name": "Lamp", "price": 100, "currency": "USD", "image_ids": ids});

    // Still processing.
    let response = app
        .create_product(&org.slug, &org.tokens.access, &product(&[&image]))
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "image_ids[0]");
    app.run_jobs().await;

    let created = app.create_product_ok(&org, &product(&[&image])).await;
    assert_eq!(created["image_ids"], json!([image]));
    let response = app
        .create_product(
            &org.slug,
            &org.tokens.access,
            &product(&[&image, &document, &foreign, &Uuid::new_v4().to_string()]),
        )
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["image_ids[1]", "image_ids[2]", "image_ids[3]"]);

    let response = app
        .bulk_create(&org, &[product(&[&image]), product(&[&foreign])])
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "items[1].image_ids[0]");

    let path = format!("/v1/products/{}", id_of(&created));
    let patch = app
        .send_authed(
            Method::PATCH,
            &org.slug,
            &path,
            &org.tokens.access,
            Some(&json!({"image_ids": [document]})),
        )
        .await;
    assert_problem(patch, 422, "validation_failed").await;
}

/// Forwards TCP to the real S3 server until stopped, counting the bytes sent upstream.
struct S3Proxy {
    port: u16,
    forwarded: tokio::sync::watch::Receiver<u64>,
    tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl S3Proxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (count, forwarded) = tokio::sync::watch::channel(0u64);
        let count = Arc::new(count);
        let tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>> = Arc::default();
        let spawner = tasks.clone();
        tasks.lock().expect("lock").spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let count = count.clone();
                spawner.lock().expect("lock").spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:3900").await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let upstream = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = client_read.read(&mut buffer).await?;
                            if n == 0 {
                                return server_write.shutdown().await;
                            }
                            server_write.write_all(&buffer[..n]).await?;
                            count.send_modify(|total| *total += n as u64);
                        }
                    };
                    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
                    let _ = tokio::join!(upstream, downstream);
                });
            }
        });
        Self {
            port,
            forwarded,
            tasks,
        }
    }

    /// Closes the listener and every connection: the server is gone.
    fn stop(&self) {
        self.tasks.lock().expect("lock").abort_all();
    }
}

fn direct_store(app: &TestApp) -> ObjectStore {
    let mut settings = app.settings.clone();
    settings.s3.endpoint = api::settings::DEFAULT_S3_ENDPOINT.parse().expect("URL");
    api::startup::object_store(&settings)
}

#[tokio::test]
async fn storage_failing_during_an_upload_is_a_503_and_keeps_nothing() {
    let proxy = S3Proxy::start().await;
    let app = TestApp::builder()
        .env("s3_endpoint", &format!("http://127.0.0.1:{}", proxy.port))
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "64 MiB"}}]"#,
        )
        .spawn()
        .await;
    let org = app.signup("files-s3-down").await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = futures_util::stream::unfold(receiver, |mut r| async move {
        r.recv().await.map(|chunk| (chunk, r))
    });
    let part = Part::stream(reqwest::Body::wrap_stream(body))
        .file_name("big.pdf")
        .mime_str("application/pdf")
        .expect("mime");
    let request = app
        .authed(Method::POST, &org.slug, "/v1/files", &org.tokens.access)
        .multipart(Form::new().part("file", part));
    let response = tokio::spawn(request.send());

    let bytes = pdf(3 * storage::upload::PART_SIZE, 6);
    let (first, rest) = bytes.split_at(storage::upload::PART_SIZE + (1 << 20));
    for chunk in first.chunks(256 * 1024) {
        sender
            .send(Ok(Bytes::copy_from_slice(chunk)))
            .await
            .expect("the server reads");
    }
    // The first part is on its way to storage: now storage goes away.
    let mut forwarded = proxy.forwarded.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        forwarded.wait_for(|n| *n >= storage::upload::PART_SIZE as u64),
    )
    .await
    .expect("the first part reached storage")
    .expect("proxy alive");
    proxy.stop();
    for chunk in rest.chunks(256 * 1024) {
        if sender
            .send(Ok(Bytes::copy_from_slice(chunk)))
            .await
            .is_err()
        {
            break; // The server gave up reading: fine.
        }
    }
    drop(sender);
    let response = response.await.expect("task").expect("an answer");
    let problem = assert_problem(response, 503, "dependency_unavailable").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("storage"))
    );

    // No record, nothing counted.
    let listed = json(get(&app, &org, "/v1/files").await).await;
    assert_eq!(listed["items"], json!([]));
    assert_eq!(storage_usage(&app, &org).await["used_bytes"], 0);
    // Nothing complete in the bucket; a multipart upload the server could not abort is
    // the sweeper's (it may already be gone if the abort got through).
    let store = direct_store(&app);
    let prefix = ObjectKey::tenant_prefix(TenantId(org.tenant_id));
    assert!(store.list(&prefix).await.expect("list").is_empty());
    let sweeper = Sweeper::new(store.clone(), Duration::ZERO);
    let mut tx = app
        .state
        .tenant_db
        .begin(TenantId(org.tenant_id))
        .await
        .expect("tx");
    sweeper
        .sweep(&mut tx, TenantId(org.tenant_id))
        .await
        .expect("sweep");
    tx.commit().await.expect("commit");
    assert!(
        store
            .pending_uploads(&prefix)
            .await
            .expect("list")
            .is_empty()
    );
}

/// The real thumbnail job, run to the end but never committed: the process "dies"
/// (its task is aborted) after the work and before the commit. Its kind is the thumbnail
/// job's, so it runs the jobs the upload enqueued.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct DiesAfterWork(Thumbnails);

jobs::declare_job!(DiesAfterWork = "files.thumbnails");

impl Job for DiesAfterWork {
    type Deps = (ThumbnailMaker, Arc<Notify>);

    async fn run(self, ctx: &mut JobContext, deps: &Self::Deps) -> anyhow::Result<()> {
        let (maker, reached) = deps;
        self.0.run(ctx, maker).await?;
        reached.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_thumbnail_job_killed_midway_runs_again_and_the_file_ends_ready() {
    let app = spawn_app().await;
    let org = app.signup("files-crash").await;
    let id = id_of(&app.upload_ok(&org, jpeg(900, 600, 7), "c.jpg").await);

    let reached = Arc::new(Notify::new());
    let maker = ThumbnailMaker::new(
        app.state.storage.clone(),
        vec![128, 512],
        storage::images::DecodeBudget::new(512 << 20),
    );
    let registry = Registry::new().register::<DiesAfterWork>((maker, reached.clone()));
    let worker = api::startup::worker(&app.state, registry);
    let running = tokio::spawn(worker.run(std::future::pending::<()>()));
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .expect("the job did its work");
    running.abort();
    assert!(running.await.expect_err("killed").is_cancelled());

    // The work was never committed.
    let file = json(app.file(&org, &id).await).await;
    assert_eq!(file["status"], "processing");
    // The dead worker's lease lapses (lapsed leases are tested with the queue).
    let lapsed = sqlx::query(
        "update public.jobs set lease_expires_at = now() - interval '1 second'
         where kind = 'files.thumbnails' and status = 'running'",
    )
    .execute(app.state.db.pool())
    .await
    .expect("lapse");
    assert_eq!(lapsed.rows_affected(), 1);

    app.run_jobs().await;
    let file = json(app.file(&org, &id).await).await;
    assert_eq!(file["status"], "ready", "{file}");
    assert_eq!(
        (&file["width"], &file["height"]),
        (&json!(900), &json!(600))
    );
    let attempts: i32 =
        sqlx::query_scalar("select attempts from public.jobs where kind = 'files.thumbnails'")
            .fetch_one(app.state.db.pool())
            .await
            .expect("job");
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn the_orphan_sweeper_removes_unowned_objects_and_stale_uploads() {
    let app = TestApp::builder().env("orphan_grace", "1ms").spawn().await;
    let a = app.signup("files-sweep-a").await;
    let b = app.signup("files-sweep-b").await;
    let kept = id_of(&app.upload_ok(&a, pdf(1_000, 1), "kept.pdf").await);
    let store = &app.state.storage;
    // What a crash between storing and recording leaves: an object, a multipart upload.
    let (ta, tb) = (TenantId(a.tenant_id), TenantId(b.tenant_id));
    let stray = ObjectKey::original(ta, Uuid::now_v7());
    store
        .put(
            &stray,
            Bytes::from_static(b"%PDF-1.7 stray"),
            "application/pdf",
        )
        .await
        .expect("put");
    let pending = ObjectKey::original(ta, Uuid::now_v7());
    store
        .start_upload(&pending, "application/pdf")
        .await
        .expect("start");
    let b_stray = ObjectKey::original(tb, Uuid::now_v7());
    store
        .put(
            &b_stray,
            Bytes::from_static(b"%PDF-1.7 b"),
            "application/pdf",
        )
        .await
        .expect("put");

    // Young objects are left alone.
    let young = Sweeper::new(store.clone(), Duration::from_secs(3600));
    let mut tx = app.state.tenant_db.begin(ta).await.expect("tx");
    assert_eq!(young.sweep(&mut tx, ta).await.expect("sweep"), (0, 0));
    tx.commit().await.expect("commit");

    // The scheduled sweep: one job for every tenant, each sweeping its own prefix.
    let mut conn = app.state.db.pool().acquire().await.expect("connection");
    jobs::enqueue(&mut conn, NewJob::new(SweepOrphans::KIND, json!({})))
        .await
        .expect("enqueue");
    drop(conn);
    app.run_jobs().await;
    let swept: i64 = sqlx::query_scalar(
        "select count(*) from public.jobs where kind = $1 and status = 'succeeded'",
    )
    .bind(SweepTenant::KIND)
    .fetch_one(app.state.db.pool())
    .await
    .expect("count");
    assert_eq!(swept, 2, "one sweep per tenant");
    assert_eq!(
        app.objects_of(a.tenant_id).await,
        [format!("t/{}/files/{kept}/original", a.tenant_id)]
    );
    assert!(app.objects_of(b.tenant_id).await.is_empty());
    let prefix = ObjectKey::tenant_prefix(ta);
    assert!(
        store
            .pending_uploads(&prefix)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(app.file(&a, &kept).await.status(), 200);
}

#[tokio::test]
async fn a_purged_tenants_objects_are_removed() {
    let app = spawn_app().await;
    let org = app.signup("files-purged").await;
    let neighbour = app.signup("files-neighbour").await;
    app.upload_ok(&org, png(64, 64, 1), "a.png").await;
    app.upload_ok(&neighbour, png(64, 64, 1), "a.png").await;
    app.run_jobs().await;
    assert_eq!(app.objects_of(org.tenant_id).await.len(), 3);

    let key = app.admin_key().await;
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/v1/admin/tenants/{}", org.tenant_id),
        )
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(
        deleted.status(),
        200,
        "{}",
        deleted.text().await.unwrap_or_default()
    );
    let after_grace = chrono::Utc::now() + chrono::Duration::days(30);
    let purged = app
        .state
        .db
        .purge_deleted_tenants(after_grace)
        .await
        .expect("purge");
    assert_eq!(purged, [TenantId(org.tenant_id)]);
    let enqueued: i64 = sqlx::query_scalar("select count(*) from public.jobs where kind = $1")
        .bind(PurgeTenantObjects::KIND)
        .fetch_one(app.state.db.pool())
        .await
        .expect("count");
    assert_eq!(enqueued, 1, "enqueued with the purge");
    app.run_jobs().await;
    assert!(app.objects_of(org.tenant_id).await.is_empty());
    assert_eq!(app.objects_of(neighbour.tenant_id).await.len(), 3);
}

#[tokio::test]
async fn recording_past_the_quota_writes_nothing_and_duplicates_count_once() {
    use files::store::{self, FileStatus, NewFile, Recorded};
    let app = spawn_app().await;
    let org = app.signup("files-record").await;
    let tenant = TenantId(org.tenant_id);
    // Another upload was counted between this one's start and its commit.
    app.tenant_sql(org.tenant_id, "update storage_usage set bytes = 900", None)
        .await;
    let sha = [7u8; 32];
    let file = |size: i64| NewFile {
        id: Uuid::now_v7(),
        name: "x.pdf",
        content_type: "application/pdf",
        size,
        sha256: &sha,
        status: FileStatus::Ready,
        uploaded_by: org.owner_id,
    };
    let record = |size: i64| {
        let app = &app;
        let new = file(size);
        async move {
            let mut tx = app.state.tenant_db.begin(tenant).await.expect("tx");
            let outcome = store::record(&mut tx, &new, 1000).await.expect("record");
            // Committed whatever the outcome: the store must leave nothing uncounted.
            tx.commit().await.expect("commit");
            outcome
        }
    };
    assert!(matches!(
        record(200).await,
        Recorded::OverQuota { used: 900 }
    ));
    let listed = json(get(&app, &org, "/v1/files").await).await;
    assert_eq!(listed["items"], json!([]));
    assert!(matches!(record(100).await, Recorded::Created(_)));
    assert!(matches!(record(100).await, Recorded::Existing(_)));
    // Full now, but the same bytes are still found rather than refused.
    assert!(matches!(record(100).await, Recorded::Existing(_)));
    let usage = storage_usage(&app, &org).await;
    assert_eq!(
        (usage["used_bytes"].clone(), usage["files"].clone()),
        (json!(1000), json!(1))
    );
}

/// Uploads `bytes` as a file part named `upload` (no extension) with the form field `name`.
async fn upload_named(app: &TestApp, org: &Signup, bytes: Vec<u8>, name: &str) -> Value {
    let part = Part::bytes(bytes).file_name("upload");
    let response = app
        .authed(Method::POST, &org.slug, "/v1/files", &org.tokens.access)
        .multipart(Form::new().text("name", name.to_owned()).part("file", part))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    json(response).await
}

#[tokio::test]
async fn download_names_carry_the_extension_of_the_bytes_and_the_bucket_answer_cannot_render() {
    let app = spawn_app().await;
    let org = app.signup("files-names").await;
    for (seed, name, kind, shown) in [
        (1, "report.html", "image/png", "report.png"),
        (2, "report.svg", "image/png", "report.png"),
        (3, "report.exe", "image/png", "report.png"),
        (4, "report", "image/png", "report.png"),
        (5, "photo.jpeg", "image/jpeg", "photo.jpeg"),
        (6, "invoice.html", "application/pdf", "invoice.pdf"),
    ] {
        let bytes = match kind {
            "image/png" => png(40, 30, seed),
            "image/jpeg" => jpeg(40, 30, seed),
            _ => pdf(2_000, seed),
        };
        let file = upload_named(&app, &org, bytes.clone(), name).await;
        assert_eq!(file["name"], shown, "{name}");
        assert_eq!(file["content_type"], kind, "{name}");
        let id = id_of(&file);
        // Stored as something a browser would render: the bucket's answer still says
        // what the bytes are, as an attachment.
        let key = ObjectKey::original(TenantId(org.tenant_id), id.parse().expect("uuid"));
        app.state
            .storage
            .put(&key, bytes.into(), "text/html")
            .await
            .expect("put");
        let response = get(&app, &org, &format!("/v1/files/{id}/download")).await;
        let object = app.follow(response).await;
        assert_eq!(object.status(), 200);
        assert_eq!(object.headers()["content-type"], kind, "{name}");
        let disposition = object.headers()["content-disposition"]
            .to_str()
            .expect("ASCII");
        assert_eq!(
            disposition,
            format!("attachment; filename=\"{shown}\"; filename*=UTF-8''{shown}"),
            "{name}"
        );
    }
    // Thumbnails download as JPEG under the file's stem.
    app.run_jobs().await;
    let listed = json(get(&app, &org, "/v1/files?content_type=image/png&limit=1").await).await;
    let id = id_of(&listed["items"][0]);
    let response = get(&app, &org, &format!("/v1/files/{id}/thumbnails/128")).await;
    let thumb = app.follow(response).await;
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    assert!(
        thumb.headers()["content-disposition"]
            .to_str()
            .expect("ASCII")
            .starts_with("attachment; filename=\"report-128.jpg\""),
    );
}

/// Writes `data` as one chunk of a chunked body.
async fn write_chunk(stream: &mut tokio::net::TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await
}

#[tokio::test]
async fn a_part_with_a_huge_header_line_is_refused_before_the_client_is_done_sending() {
    // The default free plan: 10 MiB per upload.
    let app = spawn_app().await;
    let org = app.signup("files-headers").await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         X-Tenant: {}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        org.tokens.access, org.slug
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let part = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
                 X-Padding: ";
    write_chunk(&mut stream, part).await.expect("write");
    // The header line is to be 1 MiB long: only its first 64 KiB are sent before the
    // answer is awaited, so an answer proves the server refused without the rest.
    let line = vec![b'a'; 1 << 20];
    write_chunk(&mut stream, &line[..64 << 10])
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        while !(contains(&answer, b"\r\n\r\n") && contains(&answer, b"}")) {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "connection closed before an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("an answer before the header line was sent whole");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    assert!(answer.contains("bytes of headers"), "{answer}");
    // The rest may or may not be taken: the server has given up on this request.
    let _ = write_chunk(&mut stream, &line[64 << 10..]).await;
    drop(stream);

    let listed = json(get(&app, &org, "/v1/files").await).await;
    assert_eq!(listed["items"], json!([]));
    assert!(app.objects_of(org.tenant_id).await.is_empty());
    assert_eq!(storage_usage(&app, &org).await["used_bytes"], 0);
}

#[tokio::test]
async fn every_byte_of_the_form_counts_against_the_upload_limit() {
    let app = TestApp::builder()
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": 100000, "upload_bytes": 30000}}]"#,
        )
        .spawn()
        .await;
    let org = app.signup("files-framing").await;
    // Streamed (no Content-Length): a 29,000-byte file under 4 KiB of extra part headers.
    let send = |padding: usize, seed: u8| {
        let bytes = pdf(29_000, seed);
        let body = futures_util::stream::iter(
            bytes
                .chunks(4096)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let mut headers = reqwest::header::HeaderMap::new();
        if padding > 0 {
            headers.insert(
                "x-padding",
                "p".repeat(padding).parse().expect("a header value"),
            );
        }
        let part = Part::stream(reqwest::Body::wrap_stream(body))
            .file_name("f.pdf")
            .mime_str("application/pdf")
            .expect("mime")
            .headers(headers);
        app.authed(Method::POST, &org.slug, "/v1/files", &org.tokens.access)
            .multipart(Form::new().part("file", part))
            .send()
    };
    let response = send(4000, 1).await.expect("request");
    let problem = assert_problem(response, 413, "payload_too_large").await;
    assert_eq!(problem["limit"], 30_000);
    assert!(app.objects_of(org.tenant_id).await.is_empty());
    // The same file with ordinary framing fits.
    assert_eq!(send(0, 2).await.expect("request").status(), 201);
    // A declared length past the limit is refused at once, framing included.
    let answer = answer_without_body(&app, &org, 30_001).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn an_image_whose_decode_exceeds_the_whole_budget_ends_failed_and_one_within_it_ready() {
    let app = TestApp::builder()
        .env("decode_memory", "64MiB")
        .spawn()
        .await;
    let org = app.signup("files-decode").await;
    // 16384×16384 at 1 bit: tens of KiB of file, 256 MiB as 8-bit grey once decoded.
    let bomb = e2e::files::one_bit_png(16_384, 16_384, 1);
    assert!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
    let big = id_of(&app.upload_ok(&org, bomb, "big.png").await);
    // 2048×2048 at 1 bit: 4 MiB decoded, well within the budget.
    let small = id_of(
        &app.upload_ok(&org, e2e::files::one_bit_png(2048, 2048, 2), "small.png")
            .await,
    );
    app.run_jobs().await;

    let file = json(app.file(&org, &big).await).await;
    assert_eq!(file["status"], "failed", "{file}");
    let failure = file["failure"].as_str().expect("a reason");
    assert!(
        failure.starts_with("the image is too large to decode")
            && failure.contains("more than the 64 MiB decode budget"),
        "{failure}"
    );
    assert_eq!(file["thumbnails"], json!([]));
    // Still downloadable.
    let response = get(&app, &org, &format!("/v1/files/{big}/download")).await;
    assert_eq!(app.follow(response).await.status(), 200);

    let file = json(app.file(&org, &small).await).await;
    assert_eq!(file["status"], "ready", "{file}");
    assert_eq!(
        (&file["width"], &file["height"]),
        (&json!(2048), &json!(2048))
    );
    assert_eq!(file["thumbnails"].as_array().map(Vec::len), Some(2));
}
