//! The OpenAPI document: checked in, served, and browsable offline in Swagger UI.

use e2e::spawn_app;
use serde_json::Value;

const CHECKED_IN: &str = include_str!("../../openapi/openapi.json");

#[test]
fn checked_in_document_matches_the_code() {
    let generated = api::routes::openapi_json();
    assert!(
        generated == CHECKED_IN,
        "openapi/openapi.json is out of date; regenerate it with:\n\n    cargo run -q -p api -- openapi > openapi/openapi.json\n"
    );
}

#[test]
fn every_operation_is_named_and_documents_its_errors() {
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.is_empty());
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            let (verb, resource) = id
                .split_once('_')
                .unwrap_or_else(|| panic!("operationId {id} is not <verb>_<resource>"));
            assert!(!verb.is_empty() && !resource.is_empty(), "{id}");
            assert!(
                id.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{id}"
            );
            let default = &op["responses"]["default"]["content"]["application/problem+json"];
            assert!(
                default.is_object(),
                "{method} {path} does not document problem+json errors"
            );
            assert!(
                !op["tags"].as_array().expect("tags").is_empty(),
                "{id} has no tag"
            );
        }
    }
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum");
    assert!(codes.iter().any(|c| c == "validation_failed"));
}

#[tokio::test]
async fn served_document_is_the_generated_one() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.expect("json");
    let generated: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    assert_eq!(served, generated);
}

#[tokio::test]
async fn swagger_ui_is_self_contained() {
    let app = spawn_app().await;
    let response = app.get("/docs").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let html = response.text().await.expect("body");
    assert!(html.contains("SwaggerUIBundle"));
    assert!(
        html.contains("\"/health/ready\""),
        "the spec is embedded in the page"
    );
    // Offline: no script or stylesheet comes from anywhere else.
    assert!(
        !html.contains("<script src=\"http")
            && !html.contains("<link rel=\"stylesheet\" href=\"http")
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
}

#[test]
fn the_document_is_valid_for_the_openapi_version_it_declares() {
    let document = api::routes::openapi_json();
    let doc: Value = serde_json::from_str(&document).expect("json");
    assert_eq!(doc["openapi"], "3.0.0");
    // Installed by deploy/local/up.sh (pinned, in a venv of its own).
    let local = std::env::var_os("CANOPY_LOCAL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local"));
    let validator = local.join("venv/bin/openapi-spec-validator");
    assert!(
        validator.exists(),
        "{} is missing: run deploy/local/up.sh, which installs the OpenAPI validator",
        validator.display()
    );
    let file = std::env::temp_dir().join(format!("canopy-openapi-{}.json", std::process::id()));
    std::fs::write(&file, &document).expect("write the document");
    let output = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .expect("run the validator");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "the OpenAPI document is not valid 3.0:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
