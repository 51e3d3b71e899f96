//! Roles and permissions: every endpoint enforces the permission the OpenAPI document says
//! it needs, for each system role and a custom one; inheritance; changes take effect on the
//! next request (on every instance, with or without Redis); hierarchy rules; the last-owner
//! rules; and privilege escalation attempts.

use std::collections::{BTreeMap, BTreeSet};

use e2e::{
    TestApp, assert_problem,
    auth::{PrivateRedis, Signup, Tokens},
    spawn_app,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Operations that end sessions or change the password: no permission, run last (in this
/// order) by every actor of the matrix, see [`session_operations`].
const SESSION_OPERATIONS: [&str; 4] =
    ["revoke_session", "change_password", "log_out", "logout_all"];

/// The signed-in user's two-factor authentication operations: no permission, run by every
/// actor of the matrix in this order (each needs the one before), see [`mfa_operations`].
const MFA_OPERATIONS: [&str; 5] = [
    "get_mfa",
    "enroll_totp",
    "confirm_totp",
    "regenerate_recovery_codes",
    "disable_totp",
];

/// Operations on one's own account: no permission, run by a second user of each actor's
/// role (the last one deletes it), see [`self_operations`].
const SELF_OPERATIONS: [&str; 4] = [
    "change_my_email",
    "confirm_my_email_change",
    "export_my_data",
    "delete_me",
];

/// Every operation a tenant user can call, with the permission the document declares for
/// it (`None`: any signed-in user).
fn user_operations() -> BTreeMap<String, Option<String>> {
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    let mut ops = BTreeMap::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            let user_auth = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("UserAuth").is_some()));
            if user_auth {
                ops.insert(
                    op["operationId"].as_str().expect("operationId").to_owned(),
                    op["x-permission"].as_str().map(str::to_owned),
                );
            }
        }
    }
    ops
}

/// What each role of the matrix is expected to allow (the system roles' definitions, and
/// the custom role the matrix creates).
fn expected_permissions(role: &str) -> Vec<&'static str> {
    let all = rbac::Permission::ALL.iter().map(|p| p.as_str());
    match role {
        "owner" => all.collect(),
        "admin" => all.filter(|p| *p != "billing:manage").collect(),
        "member" => vec![
            "users:read",
            "roles:read",
            "products:read",
            "products:write",
            "files:read",
            "files:write",
        ],
        "viewer" => vec!["products:read", "files:read"],
        "keeper" => vec!["users:read", "users:manage", "products:read", "files:read"],
        other => panic!("no role {other}"),
    }
}

struct Call {
    op: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    success: u16,
}

fn call(op: &'static str, method: Method, path: String, body: Option<Value>) -> Call {
    let success = match op {
        "create_role"
        | "create_product"
        | "bulk_create_products"
        | "upload_file"
        | "create_invitation"
        | "create_api_key"
        | "create_user"
        | "create_realtime_ticket" => 201,
        "delete_role"
        | "delete_product"
        | "delete_file"
        | "revoke_invitation"
        | "delete_api_key"
        | "delete_email_template"
        | "delete_user" => 204,
        "resend_invitation" => 202,
        "download_file" | "get_file_thumbnail" => 302,
        _ => 200,
    };
    Call {
        op,
        method,
        path,
        body,
        success,
    }
}

/// A byte that differs between the matrix's actors, for files no other actor uploads.
fn seed(actor: &str) -> u8 {
    actor
        .bytes()
        .fold(7u8, |acc, b| acc.wrapping_mul(31).wrapping_add(b))
}

/// One call per operation, each on objects made for this actor alone.
async fn matrix_calls(app: &TestApp, org: &Signup, actor: &str, viewer: Uuid) -> Vec<Call> {
    let victim = app
        .user_with_roles(org, &format!("victim-{actor}@acme.example"), &[viewer])
        .await
        .0;
    let to_change = app
        .create_role_ok(
            org,
            &json!({"name": format!("change-{actor}"), "permissions": []}),
        )
        .await;
    let to_delete = app
        .create_role_ok(
            org,
            &json!({"name": format!("delete-{actor}"), "permissions": []}),
        )
        .await;
    let product = app
        .create_product_ok(
            org,
            &json!({"name": "Lamp", "price": 100, "currency": "USD"}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let deleted = app
        .create_product_ok(
            org,
            &json!({"name": "Gone", "price": 100, "currency": "USD"}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let gone = app
        .send_authed(
            Method::DELETE,
            &org.slug,
            &format!("/v1/products/{deleted}"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(gone.status(), 204);
    let new_product = json!({"name": "Chair", "price": 100, "currency": "USD"});
    let image = app
        .upload_ok(org, e2e::files::png(40, 30, seed(actor)), "photo.png")
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let doomed = app
        .upload_ok(org, e2e::files::pdf(100, seed(actor)), "doomed.pdf")
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let flagged = app
        .user_with_roles(org, &format!("flagged-{actor}@acme.example"), &[viewer])
        .await
        .0;
    let erased = app
        .user_with_roles(org, &format!("erased-{actor}@acme.example"), &[viewer])
        .await
        .0;
    let to_revoke = app
        .invite_ok(org, &format!("revoke-{actor}@acme.example"), &[viewer])
        .await;
    let to_resend = app
        .invite_ok(org, &format!("resend-{actor}@acme.example"), &[viewer])
        .await;
    let api_key = app
        .create_api_key_ok(
            org,
            &json!({"name": format!("key-{actor}"), "permissions": ["products:read"]}),
        )
        .await
        .0;
    app.run_jobs().await;
    vec![
        call("get_current_tenant", Method::GET, "/v1/tenant".into(), None),
        call(
            "create_api_key",
            Method::POST,
            "/v1/api-keys".into(),
            Some(json!({"name": format!("made-by-{actor}"), "permissions": ["products:read"]})),
        ),
        call("list_api_keys", Method::GET, "/v1/api-keys".into(), None),
        call(
            "get_api_key",
            Method::GET,
            format!("/v1/api-keys/{api_key}"),
            None,
        ),
        call(
            "delete_api_key",
            Method::DELETE,
            format!("/v1/api-keys/{api_key}"),
            None,
        ),
        call(
            "update_current_tenant",
            Method::PATCH,
            "/v1/tenant".into(),
            Some(json!({"registration_policy": "open"})),
        ),
        call(
            "create_invitation",
            Method::POST,
            "/v1/invitations".into(),
            Some(
                json!({"email": format!("invited-by-{actor}@acme.example"), "role_ids": [viewer]}),
            ),
        ),
        call(
            "list_invitations",
            Method::GET,
            "/v1/invitations".into(),
            None,
        ),
        call(
            "revoke_invitation",
            Method::DELETE,
            format!("/v1/invitations/{to_revoke}"),
            None,
        ),
        call(
            "resend_invitation",
            Method::POST,
            format!("/v1/invitations/{to_resend}/resend"),
            None,
        ),
        call(
            "get_subscription",
            Method::GET,
            "/v1/billing/subscription".into(),
            None,
        ),
        call(
            "create_checkout_session",
            Method::POST,
            "/v1/billing/checkout".into(),
            Some(json!({"plan": "pro"})),
        ),
        call(
            "create_billing_portal_session",
            Method::POST,
            "/v1/billing/portal".into(),
            None,
        ),
        call("list_files", Method::GET, "/v1/files".into(), None),
        call("upload_file", Method::POST, "/v1/files".into(), None),
        call("get_file", Method::GET, format!("/v1/files/{image}"), None),
        call(
            "download_file",
            Method::GET,
            format!("/v1/files/{image}/download"),
            None,
        ),
        call(
            "get_file_thumbnail",
            Method::GET,
            format!("/v1/files/{image}/thumbnails/128"),
            None,
        ),
        call(
            "delete_file",
            Method::DELETE,
            format!("/v1/files/{doomed}"),
            None,
        ),
        call(
            "list_permissions",
            Method::GET,
            "/v1/permissions".into(),
            None,
        ),
        call("list_roles", Method::GET, "/v1/roles".into(), None),
        call("get_role", Method::GET, format!("/v1/roles/{viewer}"), None),
        call(
            "create_role",
            Method::POST,
            "/v1/roles".into(),
            Some(json!({"name": format!("made-by-{actor}"), "permissions": ["products:read"]})),
        ),
        call(
            "update_role",
            Method::PATCH,
            format!("/v1/roles/{to_change}"),
            Some(json!({"description": "changed"})),
        ),
        call(
            "delete_role",
            Method::DELETE,
            format!("/v1/roles/{to_delete}"),
            None,
        ),
        call("list_users", Method::GET, "/v1/users".into(), None),
        call("get_user", Method::GET, format!("/v1/users/{victim}"), None),
        call(
            "update_user",
            Method::PATCH,
            format!("/v1/users/{victim}"),
            Some(json!({"name": "Renamed"})),
        ),
        call(
            "set_user_roles",
            Method::PUT,
            format!("/v1/users/{victim}/roles"),
            Some(json!({"role_ids": [viewer]})),
        ),
        call(
            "logout_user",
            Method::POST,
            format!("/v1/users/{victim}/logout"),
            None,
        ),
        call(
            "create_user",
            Method::POST,
            "/v1/users".into(),
            Some(json!({
                "email": format!("created-by-{actor}@acme.example"),
                "name": "Created",
                "role_ids": [viewer],
            })),
        ),
        call(
            "flag_user_security_issue",
            Method::POST,
            format!("/v1/users/{flagged}/security-issue"),
            None,
        ),
        call(
            "delete_user",
            Method::DELETE,
            format!("/v1/users/{erased}"),
            None,
        ),
        call("get_me", Method::GET, "/v1/me".into(), None),
        call(
            "create_realtime_ticket",
            Method::POST,
            "/v1/realtime/tickets".into(),
            None,
        ),
        call(
            "update_me",
            Method::PATCH,
            "/v1/me".into(),
            Some(json!({"name": "Myself"})),
        ),
        call(
            "list_sessions",
            Method::GET,
            "/v1/auth/sessions".into(),
            None,
        ),
        call(
            "list_audit_events",
            Method::GET,
            "/v1/audit-events".into(),
            None,
        ),
        call("list_emails", Method::GET, "/v1/emails".into(), None),
        call(
            "list_email_templates",
            Method::GET,
            "/v1/email-templates".into(),
            None,
        ),
        call(
            "get_email_template",
            Method::GET,
            "/v1/email-templates/welcome".into(),
            None,
        ),
        call(
            "put_email_template",
            Method::PUT,
            "/v1/email-templates/welcome".into(),
            Some(json!({"subject": "Hi {{ user_name }}", "text": "Welcome to {{ tenant_name }}"})),
        ),
        call(
            "delete_email_template",
            Method::DELETE,
            "/v1/email-templates/invitation".into(),
            None,
        ),
        call("list_products", Method::GET, "/v1/products".into(), None),
        call(
            "create_product",
            Method::POST,
            "/v1/products".into(),
            Some(new_product.clone()),
        ),
        call(
            "bulk_create_products",
            Method::POST,
            "/v1/products/bulk".into(),
            Some(json!({"items": [new_product]})),
        ),
        call(
            "get_product",
            Method::GET,
            format!("/v1/products/{product}"),
            None,
        ),
        call(
            "update_product",
            Method::PATCH,
            format!("/v1/products/{product}"),
            Some(json!({"name": "Lamp 2"})),
        ),
        call(
            "adjust_stock",
            Method::POST,
            format!("/v1/products/{product}/stock"),
            Some(json!({"delta": 3})),
        ),
        call(
            "restore_product",
            Method::POST,
            format!("/v1/products/{deleted}/restore"),
            None,
        ),
        call(
            "delete_product",
            Method::DELETE,
            format!("/v1/products/{product}"),
            None,
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_enforces_the_permission_its_document_declares() {
    let stripe = e2e::stripe::FakeStripe::start().await;
    // Each actor registers four users of its own: past the default per-IP allowance.
    let app = e2e::TestApp::builder()
        .env("stripe_api_base", &stripe.url)
        .env("recovery_ip_max_requests", "1000")
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let ops = user_operations();
    let viewer = app.role_id(&org, "viewer").await;
    let keeper = app
        .create_role_ok(
            &org,
            &json!({"name": "keeper", "parent_id": viewer, "permissions": ["users:read", "users:manage"]}),
        )
        .await;

    for actor in ["owner", "admin", "member", "viewer", "keeper"] {
        let role = if actor == "keeper" {
            keeper
        } else {
            app.role_id(&org, actor).await
        };
        let (_, tokens) = app
            .user_with_roles(&org, &format!("actor-{actor}@acme.example"), &[role])
            .await;
        let me: Value = app
            .get_authed("acme", "/v1/me", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        let held: Vec<&str> = me["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(held, expected_permissions(actor), "{actor}'s permissions");

        let calls = matrix_calls(&app, &org, actor, viewer).await;
        let covered: BTreeSet<&str> = calls
            .iter()
            .map(|c| c.op)
            .chain(SESSION_OPERATIONS)
            .chain(MFA_OPERATIONS)
            .chain(SELF_OPERATIONS)
            .collect();
        let documented: BTreeSet<&str> = ops.keys().map(String::as_str).collect();
        assert_eq!(
            covered, documented,
            "the matrix covers every user operation"
        );

        for c in calls {
            let response = if c.op == "upload_file" {
                // A multipart body of bytes no other actor sends (no dedupe).
                let bytes = e2e::files::pdf(200, seed(actor).wrapping_add(1));
                app.upload("acme", &tokens.access, bytes, "new.pdf", "application/pdf")
                    .await
            } else {
                app.send_authed(c.method, "acme", &c.path, &tokens.access, c.body.as_ref())
                    .await
            };
            match &ops[c.op] {
                Some(needed) if !held.contains(&needed.as_str()) => {
                    let problem = assert_problem(response, 403, "forbidden").await;
                    assert_eq!(problem["permission"], needed.as_str(), "{actor} {}", c.op);
                }
                _ => assert_eq!(
                    response.status().as_u16(),
                    c.success,
                    "{actor} calling {}: {}",
                    c.op,
                    response.text().await.unwrap()
                ),
            }
        }
        mfa_operations(&app, &tokens, &ops).await;
        session_operations(&app, &format!("actor-{actor}@acme.example"), &tokens, &ops).await;
        self_operations(&app, &org, actor, role, &ops).await;
    }
}

/// Runs [`SELF_OPERATIONS`] as a new user holding `role`: each must succeed, whatever
/// the role, and none may declare a permission.
async fn self_operations(
    app: &TestApp,
    org: &Signup,
    actor: &str,
    role: Uuid,
    ops: &BTreeMap<String, Option<String>>,
) {
    for op in SELF_OPERATIONS {
        assert_eq!(ops[op], None, "{op} needs no permission");
    }
    let (_, tokens) = app
        .user_with_roles(org, &format!("self-{actor}@acme.example"), &[role])
        .await;
    let moved = format!("moved-{actor}@acme.example");
    let asked = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/email",
            &tokens.access,
            Some(&json!({"new_email": moved, "password": e2e::auth::PASSWORD})),
        )
        .await;
    assert_eq!(asked.status(), 202, "{actor} change_my_email");
    let token = app
        .emailed_token(&moved, "verification")
        .await
        .expect("a confirmation link");
    let steps = [
        (
            Method::POST,
            "/v1/me/email/confirm",
            Some(json!({"token": token})),
            200,
        ),
        (Method::GET, "/v1/me/export", None, 200),
        (
            Method::DELETE,
            "/v1/me",
            Some(json!({"password": e2e::auth::PASSWORD})),
            204,
        ),
    ];
    for (method, path, body, status) in steps {
        let response = app
            .send_authed(method, "acme", path, &tokens.access, body.as_ref())
            .await;
        assert_eq!(response.status().as_u16(), status, "{actor} {path}");
    }
}

/// Runs [`MFA_OPERATIONS`] as the holder of `tokens`: each must succeed, whatever the
/// user's roles, and none may declare a permission.
async fn mfa_operations(app: &TestApp, tokens: &Tokens, ops: &BTreeMap<String, Option<String>>) {
    for op in MFA_OPERATIONS {
        assert_eq!(ops[op], None, "{op} needs no permission");
    }
    e2e::mfa::clear_of_step_boundary(10).await;
    let send = |method: Method, path: &'static str, body: Option<Value>| async move {
        app.send_authed(method, "acme", path, &tokens.access, body.as_ref())
            .await
    };
    assert_eq!(send(Method::GET, "/v1/me/mfa", None).await.status(), 200);
    let password = json!({"password": e2e::auth::PASSWORD});
    let started = send(Method::POST, "/v1/me/mfa/totp", Some(password)).await;
    assert_eq!(started.status(), 201, "enroll_totp");
    let body: Value = started.json().await.expect("JSON");
    let secret = identity::mfa::TotpSecret::from_base32(body["secret"].as_str().expect("secret"))
        .expect("base32");
    let step = e2e::mfa::now_step();
    let code = json!({"code": secret.code_at(step)});
    let confirmed = send(Method::POST, "/v1/me/mfa/totp/confirm", Some(code)).await;
    assert_eq!(confirmed.status(), 200, "confirm_totp");
    let password = json!({"password": e2e::auth::PASSWORD});
    let regenerated = send(Method::POST, "/v1/me/mfa/recovery-codes", Some(password)).await;
    assert_eq!(regenerated.status(), 200, "regenerate_recovery_codes");
    let disable = json!({"password": e2e::auth::PASSWORD, "code": secret.code_at(step + 1)});
    let disabled = send(Method::DELETE, "/v1/me/mfa/totp", Some(disable)).await;
    assert_eq!(disabled.status(), 204, "disable_totp");
}

/// Runs [`SESSION_OPERATIONS`] as the user `email` (holding `tokens`): each must succeed,
/// whatever the user's roles, and none may declare a permission.
async fn session_operations(
    app: &TestApp,
    email: &str,
    tokens: &Tokens,
    ops: &BTreeMap<String, Option<String>>,
) {
    for op in SESSION_OPERATIONS {
        assert_eq!(ops[op], None, "{op} needs no permission");
    }
    let other = app.login_ok("acme", email, e2e::auth::PASSWORD).await;
    let sessions: Value = app
        .get_authed("acme", "/v1/auth/sessions", &tokens.access)
        .await
        .json()
        .await
        .expect("session listing");
    let other_id = sessions["items"]
        .as_array()
        .expect("session listing")
        .iter()
        .find(|s| s["current"] == false)
        .expect("session listing")["id"]
        .as_str()
        .expect("session listing")
        .to_owned();
    let new_password = "another long pass phrase";
    let steps = [
        (
            Method::DELETE,
            format!("/v1/auth/sessions/{other_id}"),
            None,
        ),
        (
            Method::POST,
            "/v1/auth/change-password".to_owned(),
            Some(json!({"current_password": e2e::auth::PASSWORD, "new_password": new_password})),
        ),
        (Method::POST, "/v1/auth/logout".to_owned(), None),
    ];
    for (method, path, body) in steps {
        let response = app
            .send_authed(method, "acme", &path, &tokens.access, body.as_ref())
            .await;
        assert!(
            response.status().is_success(),
            "{email} {path}: {}",
            response.status()
        );
    }
    assert_problem(
        app.get_authed("acme", "/v1/me", &other.access).await,
        401,
        "invalid_token",
    )
    .await;
    let again = app.login_ok("acme", email, new_password).await;
    let response = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/auth/logout-all",
            &again.access,
            None,
        )
        .await;
    assert!(response.status().is_success(), "{email} logout-all");
}

#[test]
fn the_document_shows_each_operations_permission() {
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).unwrap();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(
        schemes.keys().collect::<Vec<_>>(),
        ["ApiKeyAuth", "PlatformAdmin", "UserAuth"]
    );
    let list_users = &doc["paths"]["/v1/users"]["get"];
    assert_eq!(list_users["x-permission"], "users:read");
    assert_eq!(
        list_users["security"],
        json!([{"UserAuth": []}, {"ApiKeyAuth": []}])
    );
    assert_eq!(
        doc["paths"]["/v1/api-keys"]["get"]["security"],
        json!([{"UserAuth": []}])
    );
    assert!(
        list_users["description"]
            .as_str()
            .unwrap()
            .contains("**Permission:** `users:read`")
    );
    assert_eq!(
        doc["paths"]["/v1/users/{id}/roles"]["put"]["x-permission"],
        "roles:manage"
    );
    // Every permission named in the document is one of the catalog.
    for permission in user_operations().values().flatten() {
        assert!(
            permission.parse::<rbac::Permission>().is_ok(),
            "{permission}"
        );
    }
}

#[tokio::test]
async fn the_catalog_is_listed_with_descriptions() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let catalog: Value = app
        .get_authed("acme", "/v1/permissions", &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    let items = catalog["items"].as_array().unwrap();
    assert_eq!(items.len(), rbac::Permission::ALL.len());
    for name in [
        "users:manage",
        "roles:manage",
        "products:write",
        "files:write",
        "billing:manage",
        "audit:read",
    ] {
        let item = items.iter().find(|i| i["name"] == name).unwrap();
        assert!(!item["description"].as_str().unwrap().is_empty());
    }
    let roles = app.roles(&org).await;
    let names: Vec<&str> = roles.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["owner", "admin", "member", "viewer"]);
    assert!(roles.iter().all(|r| r["system"] == true));
}

/// A user holding `role`, and a fresh login.
async fn user_holding(app: &TestApp, org: &Signup, email: &str, role: Uuid) -> (Uuid, Tokens) {
    app.user_with_roles(org, email, &[role]).await
}

#[tokio::test]
async fn inherited_permissions_follow_changes_on_the_next_request_everywhere() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let sibling = app.spawn_sibling().await;
    let base = app
        .create_role_ok(
            &org,
            &json!({"name": "base", "permissions": ["users:read"]}),
        )
        .await;
    let child = app
        .create_role_ok(
            &org,
            &json!({"name": "child", "parent_id": base, "permissions": ["roles:read"]}),
        )
        .await;
    let (user, tokens) = user_holding(&app, &org, "u@acme.example", child).await;
    let role: Value = app
        .get_authed("acme", &format!("/v1/roles/{child}"), &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(role["permissions"], json!(["roles:read"]));
    assert_eq!(
        role["effective_permissions"],
        json!(["users:read", "roles:read"])
    );

    // Inherited from the parent, on both instances; now cached.
    for instance in [&app, &sibling, &app] {
        let response = instance
            .get_authed("acme", "/v1/users", &tokens.access)
            .await;
        assert_eq!(response.status(), 200);
    }
    let key = format!("canopy:t:{}:perms:u:{user}", org.tenant_id);
    let cached: Option<String> = redis_get(&app, &key).await;
    assert!(cached.unwrap().ends_with("users:read,roles:read"));

    // The parent loses the permission: refused on the very next request, on both.
    let response = app
        .send_authed(
            Method::PATCH,
            "acme",
            &format!("/v1/roles/{base}"),
            &org.tokens.access,
            Some(&json!({"permissions": []})),
        )
        .await;
    assert_eq!(response.status(), 200);
    for instance in [&sibling, &app] {
        let response = instance
            .get_authed("acme", "/v1/users", &tokens.access)
            .await;
        let problem = assert_problem(response, 403, "forbidden").await;
        assert_eq!(problem["permission"], "users:read");
    }
    // The child's own permission stays.
    assert_eq!(
        app.get_authed("acme", "/v1/roles", &tokens.access)
            .await
            .status(),
        200
    );

    // Re-parenting under a role that has it gives it back; removing the parent takes it.
    let readers = app
        .create_role_ok(
            &org,
            &json!({"name": "readers", "permissions": ["users:read"]}),
        )
        .await;
    let reparent = |parent: Value| {
        let app = &app;
        let access = org.tokens.access.clone();
        async move {
            app.send_authed(
                Method::PATCH,
                "acme",
                &format!("/v1/roles/{child}"),
                &access,
                Some(&json!({"parent_id": parent})),
            )
            .await
            .status()
        }
    };
    assert_eq!(reparent(json!(readers)).await, 200);
    assert_eq!(
        sibling
            .get_authed("acme", "/v1/users", &tokens.access)
            .await
            .status(),
        200
    );
    assert_eq!(reparent(Value::Null).await, 200);
    assert_problem(
        sibling
            .get_authed("acme", "/v1/users", &tokens.access)
            .await,
        403,
        "forbidden",
    )
    .await;

    // Taking the role away from the user, likewise.
    assert_eq!(
        app.set_roles("acme", &org.tokens.access, user, &[readers])
            .await
            .status(),
        200
    );
    assert_eq!(
        sibling
            .get_authed("acme", "/v1/users", &tokens.access)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.set_roles("acme", &org.tokens.access, user, &[])
            .await
            .status(),
        200
    );
    assert_problem(
        sibling
            .get_authed("acme", "/v1/users", &tokens.access)
            .await,
        403,
        "forbidden",
    )
    .await;
    let changes = app.audit_events(org.tenant_id, "user.roles_changed").await;
    let last = changes.last().unwrap();
    assert_eq!(last["details"]["to"], json!([]));
    assert_eq!(last["details"]["from"], json!(["readers"]));
    assert_eq!(last["actor_id"], org.owner_id.to_string());
}

async fn redis_get(app: &TestApp, key: &str) -> Option<String> {
    let mut conn = app.state.redis.get().await.expect("redis");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut *conn)
        .await
        .expect("GET")
}

#[tokio::test]
async fn without_redis_permissions_come_from_the_database_and_changes_still_bite() {
    let redis = PrivateRedis::start().await;
    let app = TestApp::builder()
        .env("redis_url", &redis.url)
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let member = app.role_id(&org, "member").await;
    let (user, tokens) = user_holding(&app, &org, "m@acme.example", member).await;
    assert_eq!(
        app.get_authed("acme", "/v1/users", &tokens.access)
            .await
            .status(),
        200
    );
    let mut redis = redis;
    redis.stop();
    // The cached entry is out of reach; the database answers, and a change made now
    // (whose invalidation Redis cannot take) is seen at once.
    assert_eq!(
        app.get_authed("acme", "/v1/users", &tokens.access)
            .await
            .status(),
        200
    );
    let viewer = app.role_id(&org, "viewer").await;
    assert_eq!(
        app.set_roles("acme", &org.tokens.access, user, &[viewer])
            .await
            .status(),
        200
    );
    assert_problem(
        app.get_authed("acme", "/v1/users", &tokens.access).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_redis_flush_loses_nothing() {
    let redis = PrivateRedis::start().await;
    let app = TestApp::builder()
        .env("redis_url", &redis.url)
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let member = app.role_id(&org, "member").await;
    let viewer = app.role_id(&org, "viewer").await;
    let (user, tokens) = user_holding(&app, &org, "m@acme.example", member).await;
    for _ in 0..2 {
        assert_eq!(
            app.get_authed("acme", "/v1/users", &tokens.access)
                .await
                .status(),
            200
        );
    }
    redis.command(&["FLUSHALL"]).await;
    assert_eq!(
        app.set_roles("acme", &org.tokens.access, user, &[viewer])
            .await
            .status(),
        200
    );
    for _ in 0..2 {
        assert_problem(
            app.get_authed("acme", "/v1/users", &tokens.access).await,
            403,
            "forbidden",
        )
        .await;
    }
}

async fn patch_role(app: &TestApp, org: &Signup, id: Uuid, body: Value) -> reqwest::Response {
    app.send_authed(
        Method::PATCH,
        &org.slug,
        &format!("/v1/roles/{id}"),
        &org.tokens.access,
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn the_hierarchy_refuses_cycles_depth_and_changes_to_system_roles() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let owner = app.role_id(&org, "owner").await;
    let mut chain = vec![
        app.create_role_ok(&org, &json!({"name": "r0", "permissions": []}))
            .await,
    ];
    for n in 1..5 {
        let parent = chain[n - 1];
        chain.push(
            app.create_role_ok(
                &org,
                &json!({"name": format!("r{n}"), "parent_id": parent, "permissions": []}),
            )
            .await,
        );
    }
    // A sixth level is too deep.
    let problem = assert_problem(
        app.create_role(
            "acme",
            &org.tokens.access,
            &json!({"name": "r5", "parent_id": chain[4], "permissions": []}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "parent_id");
    assert_eq!(problem["errors"][0]["code"], "too_deep");
    // A role under its own descendant, or itself: a cycle.
    for parent in [chain[3], chain[0]] {
        let problem = assert_problem(
            patch_role(&app, &org, chain[0], json!({"parent_id": parent})).await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["code"], "cycle");
    }
    // A parent that does not exist (here: an id from nowhere).
    let problem = assert_problem(
        patch_role(&app, &org, chain[0], json!({"parent_id": Uuid::new_v4()})).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["code"], "not_found");

    // System roles stay as they are.
    assert_problem(
        patch_role(&app, &org, owner, json!({"name": "boss"})).await,
        409,
        "system_role_immutable",
    )
    .await;
    assert_problem(
        app.send_authed(
            Method::DELETE,
            "acme",
            &format!("/v1/roles/{owner}"),
            &org.tokens.access,
            None,
        )
        .await,
        409,
        "system_role_immutable",
    )
    .await;
    // Names are unique regardless of case, system names included.
    for name in ["Owner", "R1"] {
        assert_problem(
            app.create_role(
                "acme",
                &org.tokens.access,
                &json!({"name": name, "permissions": []}),
            )
            .await,
            409,
            "role_name_taken",
        )
        .await;
    }
    // A parent of others, or a role someone holds, cannot be deleted.
    let delete = |id: Uuid| {
        let app = &app;
        let access = org.tokens.access.clone();
        async move {
            app.send_authed(
                Method::DELETE,
                "acme",
                &format!("/v1/roles/{id}"),
                &access,
                None,
            )
            .await
        }
    };
    assert_problem(delete(chain[3]).await, 409, "role_in_use").await;
    app.user_with_roles(&org, "holder@acme.example", &[chain[4]])
        .await;
    assert_problem(delete(chain[4]).await, 409, "role_in_use").await;

    // Bad bodies name each failing field; unknown fields are refused.
    let problem = assert_problem(
        app.create_role(
            "acme",
            &org.tokens.access,
            &json!({"name": " ", "description": "x".repeat(501), "permissions": ["users:read", "users:fly"]}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "description", "permissions[1]"]);
    assert_problem(
        app.create_role(
            "acme",
            &org.tokens.access,
            &json!({"name": "x", "permissions": [], "is_system": true}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_problem(
        patch_role(&app, &org, chain[0], json!({})).await,
        422,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn the_last_owner_keeps_the_role_and_cannot_be_blocked() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let owner_role = app.role_id(&org, "owner").await;
    let admin = app.role_id(&org, "admin").await;
    // A custom role with every permission can manage the owner, but not leave the tenant
    // without one.
    let everything: Vec<&str> = rbac::Permission::ALL.iter().map(|p| p.as_str()).collect();
    let all = app
        .create_role_ok(&org, &json!({"name": "all", "permissions": everything}))
        .await;
    let (deputy, deputy_tokens) = user_holding(&app, &org, "deputy@acme.example", all).await;

    assert_problem(
        app.set_roles("acme", &org.tokens.access, org.owner_id, &[admin])
            .await,
        409,
        "last_owner",
    )
    .await;
    for status in ["banned", "deactivated"] {
        assert_problem(
            app.send_authed(
                Method::PATCH,
                "acme",
                &format!("/v1/users/{}", org.owner_id),
                &deputy_tokens.access,
                Some(&json!({"status": status})),
            )
            .await,
            409,
            "last_owner",
        )
        .await;
    }
    assert_problem(
        app.set_roles("acme", &deputy_tokens.access, org.owner_id, &[])
            .await,
        409,
        "last_owner",
    )
    .await;

    // With a second owner, the first may step down.
    assert_eq!(
        app.set_roles("acme", &org.tokens.access, deputy, &[owner_role])
            .await
            .status(),
        200
    );
    assert_eq!(
        app.set_roles("acme", &org.tokens.access, org.owner_id, &[admin])
            .await
            .status(),
        200
    );
    // The deputy is now the last owner.
    assert_problem(
        app.set_roles("acme", &deputy_tokens.access, deputy, &[])
            .await,
        409,
        "last_owner",
    )
    .await;
}

#[tokio::test]
async fn two_owners_demoting_each_other_at_once_leave_one_owner() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let owner_role = app.role_id(&org, "owner").await;
    let (second, second_tokens) = user_holding(&app, &org, "second@acme.example", owner_role).await;
    let (a, b) = tokio::join!(
        app.set_roles("acme", &org.tokens.access, second, &[]),
        app.set_roles("acme", &second_tokens.access, org.owner_id, &[]),
    );
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    // The loser acted after losing the owner role (403) or was the last owner (409).
    assert!(
        statuses.iter().any(|s| [403, 409].contains(s)),
        "{statuses:?}"
    );
    // Whoever won, exactly one owner is left (and the loser may not even read roles).
    let owners: i64 = sqlx::query_scalar(&format!(
        "select count(*) from {}.user_roles ur join {0}.roles r on r.id = ur.role_id where r.system_key = 'owner'",
        tenancy::TenantId(org.tenant_id).schema_name()
    ))
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(owners, 1);
}

#[tokio::test]
async fn nobody_grants_what_they_do_not_hold() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.signup("other").await;
    let owner_role = app.role_id(&org, "owner").await;
    let admin = app.role_id(&org, "admin").await;
    let member = app.role_id(&org, "member").await;
    let viewer = app.role_id(&org, "viewer").await;
    let (admin_user, admin_tokens) = user_holding(&app, &org, "admin@acme.example", admin).await;
    let (_, member_tokens) = user_holding(&app, &org, "member@acme.example", member).await;
    let (victim, _) = user_holding(&app, &org, "victim@acme.example", viewer).await;
    let access = admin_tokens.access.as_str();

    // A role with a permission the admin lacks, directly or through its parent.
    let problem = assert_problem(
        app.create_role(
            "acme",
            access,
            &json!({"name": "payer", "permissions": ["billing:manage"]}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(problem["permissions"], json!(["billing:manage"]));
    assert_problem(
        app.create_role(
            "acme",
            access,
            &json!({"name": "crown", "parent_id": owner_role, "permissions": []}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    // Adding it to an existing role, or re-parenting one under the owner role.
    let mine = app
        .create_role(
            "acme",
            access,
            &json!({"name": "mine", "permissions": ["users:read"]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .unwrap();
    for body in [
        json!({"permissions": ["users:read", "billing:manage"]}),
        json!({"parent_id": owner_role}),
    ] {
        assert_problem(
            app.send_authed(
                Method::PATCH,
                "acme",
                &format!("/v1/roles/{mine}"),
                access,
                Some(&body),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
    }
    // Nor can the admin change or delete a role granting what they lack: its holders
    // would be managed by someone they outrank.
    let treasurer = app
        .create_role_ok(
            &org,
            &json!({"name": "treasurer", "permissions": ["billing:manage"]}),
        )
        .await;
    for (method, body) in [
        (Method::PATCH, Some(json!({"permissions": []}))),
        (Method::PATCH, Some(json!({"description": "harmless?"}))),
        (Method::DELETE, None),
    ] {
        assert_problem(
            app.send_authed(
                method,
                "acme",
                &format!("/v1/roles/{treasurer}"),
                access,
                body.as_ref(),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
    }
    // The owner role, to oneself or anyone.
    for user in [admin_user, victim] {
        assert_problem(
            app.set_roles("acme", access, user, &[owner_role]).await,
            403,
            "forbidden",
        )
        .await;
    }
    // Managing the owner, who holds more.
    for body in [json!({"status": "banned"}), json!({"name": "Deposed"})] {
        let problem = assert_problem(
            app.send_authed(
                Method::PATCH,
                "acme",
                &format!("/v1/users/{}", org.owner_id),
                access,
                Some(&body),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
        assert_eq!(problem["permissions"], json!(["billing:manage"]));
    }
    assert_problem(
        app.set_roles("acme", access, org.owner_id, &[admin]).await,
        403,
        "forbidden",
    )
    .await;
    // A member cannot give themselves more.
    let me: Value = app
        .get_authed("acme", "/v1/me", &member_tokens.access)
        .await
        .json()
        .await
        .unwrap();
    let me_id: Uuid = me["id"].as_str().unwrap().parse().unwrap();
    let problem = assert_problem(
        app.set_roles("acme", &member_tokens.access, me_id, &[admin])
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(problem["permission"], "roles:manage");

    // Another tenant's role ids mean nothing here: not assignable, not readable.
    let foreign_owner = app.role_id(&other, "owner").await;
    let problem = assert_problem(
        app.set_roles("acme", &org.tokens.access, victim, &[foreign_owner])
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "role_ids[0]");
    // Errors name the items as sent.
    let problem = assert_problem(
        app.set_roles(
            "acme",
            &org.tokens.access,
            victim,
            &[viewer, viewer, foreign_owner],
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "role_ids[2]");
    assert_problem(
        app.get_authed(
            "acme",
            &format!("/v1/roles/{foreign_owner}"),
            &org.tokens.access,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert_problem(
        patch_role(
            &app,
            &org,
            foreign_owner,
            json!({"description": "mine now"}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // Nothing of this changed who holds what.
    let victim_view: Value = app
        .get_authed("acme", &format!("/v1/users/{victim}"), &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(victim_view["roles"][0]["name"], "viewer");
    assert_eq!(victim_view["roles"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_audit_log_pages_newest_first_and_needs_audit_read() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.signup("other").await;
    let member = app.role_id(&org, "member").await;
    let (user, tokens) = user_holding(&app, &org, "m@acme.example", member).await;
    for n in 0..3 {
        app.create_role_ok(&org, &json!({"name": format!("r{n}"), "permissions": []}))
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/audit-events?event=role.created&limit=2".to_owned();
    loop {
        let page: Value = app
            .get_authed("acme", &path, &org.tokens.access)
            .await
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["event"], "role.created");
            assert_eq!(item["actor_id"], org.owner_id.to_string());
            seen.push(item["details"]["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/audit-events?event=role.created&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["r2", "r1", "r0"]);
    // Entries concerning one user: their registration, verification and role change.
    let mine: Value = app
        .get_authed(
            "acme",
            &format!("/v1/audit-events?user_id={user}"),
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let events: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"user.roles_changed"), "{events:?}");
    assert!(events.contains(&"user.registered"), "{events:?}");
    // Each tenant sees its own log only; a member cannot read it.
    let theirs: Value = app
        .get_authed(
            "other",
            "/v1/audit-events?event=role.created",
            &other.tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["items"], json!([]));
    let problem = assert_problem(
        app.get_authed("acme", "/v1/audit-events", &tokens.access)
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(problem["permission"], "audit:read");
    assert_problem(
        app.get_authed("acme", "/v1/audit-events?cursor=x", &org.tokens.access)
            .await,
        400,
        "invalid_parameter",
    )
    .await;
}

/// The ids a call names, in its path or its body.
fn named_ids(c: &Call) -> Vec<Uuid> {
    let mut text = c.path.clone();
    if let Some(body) = &c.body {
        text.push(' ');
        text.push_str(&body.to_string());
    }
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35))
        .filter_map(|i| text.get(i..i + 36).and_then(|s| Uuid::parse_str(s).ok()))
        .collect()
}

/// Every operation of the matrix aimed at another tenant, three ways: tenant A's owner
/// with tenant B's ids (in path and body), A's token sent to B, and no token. Never a 5xx,
/// never B's data; the matrix's coverage of the document (asserted above) makes a new
/// operation part of this test too.
#[tokio::test]
async fn no_operation_reaches_another_tenants_data() {
    let stripe = e2e::stripe::FakeStripe::start().await;
    let app = e2e::TestApp::builder()
        .env("stripe_api_base", &stripe.url)
        .env("recovery_ip_max_requests", "1000")
        .spawn()
        .await;
    let a = app.signup("alpha").await;
    let b = app.signup("bravo").await;
    let viewer_b = app.role_id(&b, "viewer").await;
    let calls = matrix_calls(&app, &b, "owner", viewer_b).await;
    // Operations whose document makes the credential optional (`security` lists `{}`).
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    let optional: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("path item").values())
        .filter(|op| {
            op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
            })
        })
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let mut aimed = 0;
    for c in &calls {
        let ids = named_ids(c);
        // A's owner, in A, with B's ids: not found or refused, and nothing of B's shown.
        if !ids.is_empty() && c.op != "upload_file" {
            let response = app
                .send_authed(
                    c.method.clone(),
                    &a.slug,
                    &c.path,
                    &a.tokens.access,
                    c.body.as_ref(),
                )
                .await;
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(
                status.is_client_error() || status.is_success(),
                "{} with B's ids answered {status}: {text}",
                c.op
            );
            assert_ne!(status.as_u16(), 401, "{}: {text}", c.op);
            if status.is_success() {
                // Only what A may see: a listing filtered by B's id finds nothing of B's.
                for id in &ids {
                    assert!(
                        !text.contains(&id.to_string()),
                        "{} showed {id}: {text}",
                        c.op
                    );
                }
            }
            assert!(!text.contains(&b.owner_email), "{}: {text}", c.op);
            aimed += 1;
        }
        // A's token, sent to B: refused before anything of B's is read.
        let response = if c.op == "upload_file" {
            let bytes = e2e::files::pdf(50, 3);
            app.upload(&b.slug, &a.tokens.access, bytes, "a.pdf", "application/pdf")
                .await
        } else {
            app.send_authed(
                c.method.clone(),
                &b.slug,
                &c.path,
                &a.tokens.access,
                c.body.as_ref(),
            )
            .await
        };
        assert_problem(response, 403, "wrong_tenant").await;
        // No token at all.
        let mut request = app
            .request(c.method.clone(), &c.path)
            .header("x-tenant", &b.slug);
        if let Some(body) = &c.body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        if optional.contains(c.op) {
            // Public by the document: what anyone may know of B, and nothing more.
            assert_eq!(response.status(), 200, "{} without a token", c.op);
            let text = response.text().await.unwrap();
            assert!(!text.contains(&b.owner_email), "{}: {text}", c.op);
        } else {
            assert_eq!(response.status(), 401, "{} without a token", c.op);
        }
    }
    assert!(aimed >= 20, "only {aimed} operations name ids");
}
