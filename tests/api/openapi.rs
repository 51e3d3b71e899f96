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

/// The operations with a JSON request body: (method, path, operation, its body's schema).
fn json_bodies(doc: &Value) -> Vec<(String, String, Value, Value)> {
    let mut bodies = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            let Some(reference) = schema["$ref"].as_str() else {
                continue;
            };
            let name = reference.trim_start_matches("#/components/schemas/");
            let schema = doc["components"]["schemas"][name].clone();
            assert!(schema.is_object(), "{reference} is not in the document");
            bodies.push((method.clone(), path.clone(), op.clone(), schema));
        }
    }
    assert!(bodies.len() > 10, "{} JSON bodies", bodies.len());
    bodies
}

/// Sends `body` to the operation the way its document says: the tenant in `X-Tenant`, the
/// owner's token or a platform key as its security asks, ids in the path made up.
async fn send_to(
    app: &e2e::TestApp,
    org: &e2e::auth::Signup,
    admin_key: &str,
    (method, path, op): (&str, &str, &Value),
    body: &Value,
) -> (u16, Value) {
    let path = path
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                uuid::Uuid::new_v4().to_string()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut request = app.request(method, &path).header("x-tenant", &org.slug);
    let security = op["security"].as_array().cloned().unwrap_or_default();
    if security.iter().any(|r| r.get("PlatformAdmin").is_some()) {
        request = request.bearer_auth(admin_key);
    } else if security.iter().any(|r| r.get("UserAuth").is_some()) {
        request = request.bearer_auth(&org.tokens.access);
    }
    let response = request.json(body).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The fields a 422 names.
fn named_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn json_bodies_refuse_unknown_members_exactly_when_their_schema_says_so() {
    let app = spawn_app().await;
    let org = app.signup("closed").await;
    let key = app.admin_key().await;
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    for (method, path, op, schema) in json_bodies(&doc) {
        let id = op["operationId"].as_str().expect("operationId").to_owned();
        let closed = schema["additionalProperties"] == false;
        let (status, problem) = send_to(
            &app,
            &org,
            &key,
            (&method, &path, &op),
            &serde_json::json!({"zz_unknown": 1}),
        )
        .await;
        let refused = status == 422
            && problem["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["field"] == "zz_unknown" && e["code"] == "unknown_field");
        assert_eq!(
            refused, closed,
            "{id}: the schema says additionalProperties {}, the server answered {status} {problem}",
            schema["additionalProperties"]
        );
    }
}

/// A valid body for each operation whose schema bounds a field, to break one bound at a time.
fn valid_body(operation: &str) -> Option<Value> {
    use serde_json::json;
    let password = "a sturdy passphrase";
    let product = json!({"name": "Lamp", "price": 100, "currency": "USD"});
    Some(match operation {
        "sign_up" => json!({
            "tenant_slug": "bounded-org", "tenant_name": "Bounded", "email": "ada@bounded.example",
            "password": password, "name": "Ada"
        }),
        "register_user" => {
            json!({"email": "bo@closed.example", "password": password, "name": "Bo"})
        }
        "log_in" => json!({"email": "owner@closed.example", "password": password}),
        "reset_password" => json!({"token": "t", "password": password}),
        "change_password" => json!({"current_password": password, "new_password": password}),
        "accept_invitation" => json!({"token": "t", "name": "Cy", "password": password}),
        "set_user_roles" => json!({"role_ids": []}),
        "create_invitation" => {
            json!({"email": "di@closed.example", "role_ids": [uuid::Uuid::new_v4()]})
        }
        "create_user" => json!({
            "email": "ed@closed.example", "name": "Ed", "role_ids": [uuid::Uuid::new_v4()]
        }),
        // Not the owner's password: these bodies never change anything.
        "change_my_email" => json!({"new_email": "fi@closed.example", "password": "not the one"}),
        "delete_me" => json!({"password": "not the one"}),
        "create_role" => json!({"name": "editor", "permissions": []}),
        "create_api_key" => json!({"name": "ci", "permissions": ["products:read"]}),
        "update_role" => json!({"name": "editor"}),
        "create_product" => product,
        "bulk_create_products" => json!({"items": [product]}),
        "update_product" => json!({"name": "Lamp"}),
        "adjust_stock" => json!({"delta": 1}),
        "update_current_tenant" => json!({"registration_domains": []}),
        "create_tenant" => json!({"slug": "bounded-org", "name": "Bounded"}),
        "put_email_template" => json!({"subject": "Hello", "text": "Welcome"}),
        "unsubscribe_email" => json!({"token": "t"}),
        _ => return None,
    })
}

/// For each bound the schema of `property` states: its name, a value just outside it and
/// one on its edge.
fn edge_values(property: &Value, sample: &Value) -> Vec<(&'static str, Value, Value)> {
    let number = |key: &str| property[key].as_f64().map(|v| v as i64);
    let count = |key: &str| property[key].as_u64().map(|v| v as usize);
    // Fits every pattern stated here (slugs, SKUs) and is no common password.
    let text = |n: usize| Value::from("qz7".repeat(n).chars().take(n).collect::<String>());
    let items = |n: usize| -> Value {
        (0..n)
            .map(
                |i| match (&property["items"]["format"], &property["items"]["$ref"]) {
                    (f, _) if f == "uuid" => Value::from(uuid::Uuid::new_v4().to_string()),
                    (_, r) if r.is_string() => sample.clone(),
                    _ => Value::from(format!("x{i}.example")),
                },
            )
            .collect()
    };
    let mut values = Vec::new();
    if let Some(max) = count("maxLength") {
        values.push(("maxLength", text(max + 1), text(max)));
    }
    if let Some(min) = count("minLength").filter(|m| *m > 0) {
        values.push(("minLength", text(min - 1), text(min)));
    }
    if property["pattern"].is_string() {
        let inside = match property["pattern"].as_str() {
            Some("^[A-Z]{3}$") => Value::from("EUR"),
            Some("^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$") => Value::from("pt-BR"),
            _ => text(5),
        };
        values.push(("pattern", Value::from("!!!"), inside));
    }
    if let Some(max) = number("maximum") {
        values.push(("maximum", Value::from(max + 1), Value::from(max)));
    }
    if let Some(min) = number("minimum") {
        values.push(("minimum", Value::from(min - 1), Value::from(min)));
    }
    if let Some(max) = count("maxItems") {
        values.push(("maxItems", items(max + 1), items(max)));
    }
    if let Some(min) = count("minItems").filter(|m| *m > 0) {
        values.push(("minItems", items(min - 1), items(min)));
    }
    if let Some(max) = count("maxProperties") {
        let object = |n: usize| -> Value {
            Value::Object((0..n).map(|i| (format!("k{i}"), Value::from(i))).collect())
        };
        values.push(("maxProperties", object(max + 1), object(max)));
    }
    values
}

/// Whether the 422 refuses `field` for its form (rather than for what the handler found
/// later, such as an unknown role id or a wrong current password).
fn refused_for_its_form(problem: &Value, field: &str) -> bool {
    const FORM: [&str; 6] = [
        "length",
        "too_short",
        "too_long",
        "invalid",
        "out_of_range",
        "too_large",
    ];
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["field"] == field && FORM.iter().any(|code| e["code"] == *code))
}

#[tokio::test]
async fn the_bounds_the_document_states_are_the_ones_enforced() {
    let app = spawn_app().await;
    let org = app.signup("closed").await;
    let key = app.admin_key().await;
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    let product = serde_json::json!({"name": "Lamp", "price": 100, "currency": "USD"});
    let mut checked = 0;
    for (method, path, op, schema) in json_bodies(&doc) {
        let id = op["operationId"].as_str().expect("operationId").to_owned();
        for (name, property) in schema["properties"].as_object().expect("properties") {
            let edges = edge_values(property, &product);
            if edges.is_empty() {
                continue;
            }
            let base = valid_body(&id)
                .unwrap_or_else(|| panic!("{id} bounds `{name}`: add a valid body for it"));
            for (bound, outside, inside) in edges {
                let mut body = base.clone();
                body[name.as_str()] = outside;
                let (status, problem) =
                    send_to(&app, &org, &key, (&method, &path, &op), &body).await;
                assert!(
                    status == 422 && named_fields(&problem).contains(name),
                    "{id}: `{name}` past its {bound} ({}) was answered {status} {problem}",
                    property[bound]
                );
                body[name.as_str()] = inside;
                let (status, problem) =
                    send_to(&app, &org, &key, (&method, &path, &op), &body).await;
                assert!(
                    !(status == 422 && refused_for_its_form(&problem, name)),
                    "{id}: `{name}` on the edge of its {bound} ({}) was refused: {problem}",
                    property[bound]
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} bounds checked");
}
