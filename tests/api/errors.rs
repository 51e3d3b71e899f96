//! Every error, the framework's own included, is problem+json with a stable code.

use e2e::{TestApp, assert_problem, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn unknown_route_is_404() {
    let app = spawn_app().await;
    assert_problem(app.get("/no/such/route").await, 404, "not_found").await;
}

#[tokio::test]
async fn wrong_method_is_405() {
    let app = spawn_app().await;
    let response = app
        .request(Method::DELETE, "/health/live")
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    assert_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn every_405_names_the_methods_its_path_allows() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.expect("json");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let mut methods: Vec<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
            .map(|k| k.to_ascii_uppercase())
            .collect();
        let Some(missing) = ["PUT", "PATCH", "DELETE", "POST"]
            .into_iter()
            .find(|m| !methods.iter().any(|have| have == m))
        else {
            continue;
        };
        if methods.iter().any(|m| m == "GET") {
            methods.push("HEAD".into());
        }
        methods.sort();
        let concrete = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "01890000-0000-7000-8000-000000000000"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let response = app
            .request(
                Method::from_bytes(missing.as_bytes()).expect("method"),
                &concrete,
            )
            .header("x-tenant", "acme")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{missing} {path}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(methods.join(", ").as_str()),
            "{missing} {path}"
        );
        assert_problem(response, 405, "method_not_allowed").await;
        checked += 1;
    }
    assert!(checked > 30, "only {checked} paths checked");
}

#[tokio::test]
async fn malformed_json_is_400_with_its_position() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/__test/echo")
        .header("content-type", "application/json")
        .body("{\"name\": \"x\",\n \"count\": }")
        .send()
        .await
        .expect("request");
    let body = assert_problem(response, 400, "malformed_json").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("line 2")),
        "{body}"
    );
}

#[tokio::test]
async fn invalid_fields_are_422_listing_each_one() {
    let app = spawn_app().await;
    let body = assert_problem(
        app.post_json("/__test/echo", &json!({"name": "", "count": 500}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["name", "count"], "{body}");
}

#[tokio::test]
async fn wrong_shape_is_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": 5, "count": 1}), "name", "invalid_type"),
        (json!({"count": 1}), "name", "required"),
        (
            json!({"name": "a", "count": 1, "admin": true}),
            "admin",
            "unknown_field",
        ),
        (json!({"name": "a", "count": -1}), "count", "invalid_value"),
    ];
    for (input, field, code) in cases {
        let body = assert_problem(
            app.post_json("/__test/echo", &input).await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
        assert_eq!(body["errors"][0]["code"], code, "{body}");
    }
}

#[tokio::test]
async fn valid_body_passes_the_pipeline() {
    let app = spawn_app().await;
    let response = app
        .post_json("/__test/echo", &json!({"name": "ok", "count": 3}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"name": "ok", "count": 3})
    );
}

#[tokio::test]
async fn oversized_body_is_413_whether_announced_or_streamed() {
    let app = TestApp::builder().env("body_limit", "1KiB").spawn().await;
    let big = format!("{{\"name\": \"{}\", \"count\": 1}}", "x".repeat(4096));

    let announced = app
        .request(Method::POST, "/__test/echo")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("request");
    assert_problem(announced, 413, "payload_too_large").await;

    // A stream body goes out chunked, without Content-Length: the limit must still hold.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let streamed = app
        .request(Method::POST, "/__test/echo")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request");
    assert_problem(streamed, 413, "payload_too_large").await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = spawn_app().await;
    let wrong = app
        .request(Method::POST, "/__test/echo")
        .header("content-type", "text/plain")
        .body("{\"name\": \"a\", \"count\": 1}")
        .send()
        .await
        .expect("request");
    let body = assert_problem(wrong, 415, "unsupported_media_type").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("text/plain")),
        "{body}"
    );

    let missing = app
        .request(Method::POST, "/__test/echo")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_problem(missing, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn panic_is_500_without_internals() {
    let app = spawn_app().await;
    let body = assert_problem(app.get("/__test/panic").await, 500, "internal_error").await;
    assert!(!body.to_string().contains("deliberate"), "{body}");
    // The server survives the panic.
    assert_eq!(app.get("/health/live").await.status(), 200);
}

#[tokio::test]
async fn internal_error_reveals_nothing() {
    let app = spawn_app().await;
    let body = assert_problem(app.get("/__test/internal").await, 500, "internal_error").await;
    let text = body.to_string();
    // (The request id is random hex, so look for words that cannot occur in it.)
    for leak in ["hunter2", "postgres", "refused", "connection"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
}

#[tokio::test]
async fn problem_types_are_documented() {
    let app = spawn_app().await;
    let response = app.get("/problems/validation_failed").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], 422);
    assert_eq!(body["code"], "validation_failed");
    assert!(
        body["description"]
            .as_str()
            .is_some_and(|d| d.contains("errors"))
    );
    assert_problem(app.get("/problems/no_such_code").await, 404, "not_found").await;
}
