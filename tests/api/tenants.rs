//! Tenant resolution, the tenant profile and its registration settings, and the platform
//! operator's tenant registry.

use e2e::{TestApp, assert_problem, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.request(method, path).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn admin_provisions_lists_and_reads_tenants() {
    let app = spawn_app().await;
    let key = app.admin_key().await;

    let created = admin(
        &app,
        Method::POST,
        "/v1/admin/tenants",
        &key,
        Some(json!({"slug": "acme", "name": "Acme Inc"})),
    )
    .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let tenant: Value = created.json().await.expect("json");
    let id = tenant["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/admin/tenants/{id}"));
    assert_eq!(tenant["slug"], "acme");
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["plan"], "free");
    assert_eq!(tenant["schema"], format!("t_{}", id.replace('-', "")));

    let fetched: Value = admin(&app, Method::GET, &location, &key, None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(fetched, tenant);

    // The tenant is real: its schema serves the tenant-scoped endpoint.
    let profile: Value = app
        .get_as("acme", "/v1/tenant")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(profile["id"], id.as_str());
    assert_eq!(profile["settings"]["timezone"], "UTC");
    let by_id: Value = app
        .get_as(&id, "/v1/tenant")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(by_id["slug"], "acme");

    for slug in ["bravo", "charlie"] {
        let response = admin(
            &app,
            Method::POST,
            "/v1/admin/tenants",
            &key,
            Some(json!({"slug": slug, "name": slug})),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    let first: Value = admin(&app, Method::GET, "/v1/admin/tenants?limit=2", &key, None)
        .await
        .json()
        .await
        .expect("json");
    let slugs: Vec<&str> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["slug"].as_str().expect("slug"))
        .collect();
    assert_eq!(slugs, ["acme", "bravo"]);
    let cursor = first["next_cursor"].as_str().expect("next page");
    let second: Value = admin(
        &app,
        Method::GET,
        &format!("/v1/admin/tenants?limit=2&cursor={cursor}"),
        &key,
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(second["items"][0]["slug"], "charlie");
    assert!(second["next_cursor"].is_null());
    assert_problem(
        admin(&app, Method::GET, "/v1/admin/tenants?cursor=zz", &key, None).await,
        400,
        "invalid_parameter",
    )
    .await;
}

#[tokio::test]
async fn taken_slug_is_409() {
    let app = spawn_app().await;
    let key = app.admin_key().await;
    let body = json!({"slug": "dupe", "name": "First"});
    assert_eq!(
        admin(
            &app,
            Method::POST,
            "/v1/admin/tenants",
            &key,
            Some(body.clone())
        )
        .await
        .status(),
        201
    );
    assert_problem(
        admin(&app, Method::POST, "/v1/admin/tenants", &key, Some(body)).await,
        409,
        "slug_taken",
    )
    .await;
}

#[tokio::test]
async fn hostile_slugs_are_refused_before_any_sql() {
    let app = spawn_app().await;
    let key = app.admin_key().await;
    for slug in [
        "a,b",
        "x\";drop",
        "../",
        "public",
        "admin",
        "www",
        "api",
        "pg_catalog",
        "UPPER",
        "ab",
        "-lead",
    ] {
        let response = admin(
            &app,
            Method::POST,
            "/v1/admin/tenants",
            &key,
            Some(json!({"slug": slug, "name": "n"})),
        )
        .await;
        let body = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "slug", "{slug}: {body}");
    }
    let schemas: i64 =
        sqlx::query_scalar("select count(*) from pg_namespace where nspname like 't\\_%'")
            .fetch_one(app.state.db.pool())
            .await
            .expect("count");
    assert_eq!(schemas, 0);
    let list: Value = admin(&app, Method::GET, "/v1/admin/tenants", &key, None)
        .await
        .json()
        .await
        .expect("json");
    assert!(list["items"].as_array().expect("items").is_empty());
}

#[tokio::test]
async fn admin_endpoints_require_a_platform_key() {
    let app = spawn_app().await;
    let missing = app.get("/v1/admin/tenants").await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_problem(missing, 401, "unauthorized").await;
    let forged = admin(
        &app,
        Method::GET,
        "/v1/admin/tenants",
        "cnp_0000000000000000000000000000000000000000000000000000000000000000",
        None,
    )
    .await;
    assert_problem(forged, 401, "unauthorized").await;
    // A tenant's header is no credential for the platform.
    let tenant = app.create_tenant("acme").await;
    let response = app
        .request(Method::GET, "/v1/admin/tenants")
        .header("x-tenant", tenant.id.to_string())
        .send()
        .await
        .expect("request");
    assert_problem(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn suspend_resume_delete_and_purge() {
    let app = spawn_app().await;
    let key = app.admin_key().await;
    let tenant = app.create_tenant("lifecycle").await;
    let path = format!("/v1/admin/tenants/{}", tenant.id);
    assert_eq!(app.get_as("lifecycle", "/v1/tenant").await.status(), 200);

    let suspended: Value = admin(
        &app,
        Method::PATCH,
        &path,
        &key,
        Some(json!({"status": "suspended"})),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(suspended["status"], "suspended");
    assert_problem(
        app.get_as("lifecycle", "/v1/tenant").await,
        403,
        "tenant_suspended",
    )
    .await;

    let resumed = admin(
        &app,
        Method::PATCH,
        &path,
        &key,
        Some(json!({"status": "active", "name": "Renamed"})),
    )
    .await;
    let resumed: Value = resumed.json().await.expect("json");
    assert_eq!(
        (resumed["status"].as_str(), resumed["name"].as_str()),
        (Some("active"), Some("Renamed"))
    );
    assert_eq!(app.get_as("lifecycle", "/v1/tenant").await.status(), 200);
    assert_problem(
        admin(&app, Method::PATCH, &path, &key, Some(json!({}))).await,
        422,
        "validation_failed",
    )
    .await;
    assert_problem(
        admin(
            &app,
            Method::PATCH,
            &path,
            &key,
            Some(json!({"status": "deleted"})),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;

    let deleted: Value = admin(&app, Method::DELETE, &path, &key, None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["status"], "deleted");
    assert!(deleted["purge_after"].is_string());
    assert_problem(
        app.get_as("lifecycle", "/v1/tenant").await,
        404,
        "tenant_not_found",
    )
    .await;
    assert_problem(
        admin(
            &app,
            Method::PATCH,
            &path,
            &key,
            Some(json!({"status": "active"})),
        )
        .await,
        409,
        "conflict",
    )
    .await;

    // Within the grace period nothing is dropped.
    let schema_exists = |app: &TestApp, schema: String| {
        let pool = app.state.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_namespace where nspname = $1) and exists (select 1 from pg_roles where rolname = $1)")
                .bind(schema)
                .fetch_one(&pool)
                .await
                .expect("query")
        }
    };
    assert!(
        app.state
            .db
            .purge_deleted_tenants(chrono::Utc::now())
            .await
            .expect("purge")
            .is_empty()
    );
    assert!(schema_exists(&app, tenant.schema_name()).await);

    let after_grace = chrono::Utc::now() + chrono::Duration::days(8);
    let purged = app
        .state
        .db
        .purge_deleted_tenants(after_grace)
        .await
        .expect("purge");
    assert_eq!(purged, [tenant.id]);
    let gone = sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_namespace where nspname = $1) or exists (select 1 from pg_roles where rolname = $1)")
        .bind(tenant.schema_name())
        .fetch_one(app.state.db.pool())
        .await
        .expect("query");
    assert!(!gone, "schema or role survived the purge");
    assert_problem(
        admin(&app, Method::GET, &path, &key, None).await,
        404,
        "tenant_not_found",
    )
    .await;
}

#[tokio::test]
async fn resolution_problems() {
    let app = spawn_app().await;
    assert_problem(app.get("/v1/tenant").await, 400, "tenant_required").await;
    assert_problem(
        app.get_as("nobody-here", "/v1/tenant").await,
        404,
        "tenant_not_found",
    )
    .await;
    assert_problem(
        app.get_as("../etc", "/v1/tenant").await,
        404,
        "tenant_not_found",
    )
    .await;
    assert_problem(
        app.get_as("01a2018a-c2f1-75fd-b5f3-3996eb79e977", "/v1/tenant")
            .await,
        404,
        "tenant_not_found",
    )
    .await;
}

#[tokio::test]
async fn subdomains_name_tenants_and_must_agree_with_the_header() {
    let app = TestApp::builder()
        .env("base_domain", "canopy.test")
        .spawn()
        .await;
    let acme = app.create_tenant("acme").await;
    app.create_tenant("globex").await;

    let via_host = app
        .request(Method::GET, "/v1/tenant")
        .header("host", "acme.canopy.test:8080")
        .send()
        .await
        .expect("request");
    assert_eq!(via_host.status(), 200);
    assert_eq!(
        via_host.json::<Value>().await.expect("json")["id"],
        acme.id.to_string()
    );

    let agreeing = app
        .request(Method::GET, "/v1/tenant")
        .header("host", "acme.canopy.test")
        .header("x-tenant", acme.id.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(agreeing.status(), 200);

    // acme's host with globex's header must not reach globex.
    let crossing = app
        .request(Method::GET, "/v1/tenant")
        .header("host", "acme.canopy.test")
        .header("x-tenant", "globex")
        .send()
        .await
        .expect("request");
    let body = assert_problem(crossing, 400, "tenant_mismatch").await;
    assert!(!body.to_string().contains("globex"));

    // The bare base domain and reserved labels name no tenant.
    let bare = app
        .request(Method::GET, "/v1/tenant")
        .header("host", "canopy.test")
        .send()
        .await
        .expect("request");
    assert_problem(bare, 400, "tenant_required").await;
    let www = app
        .request(Method::GET, "/v1/tenant")
        .header("host", "www.canopy.test")
        .send()
        .await
        .expect("request");
    assert_problem(www, 400, "tenant_required").await;
}

#[tokio::test]
async fn suspension_reaches_every_instance_within_a_second() {
    let first = spawn_app().await;
    let second = first.spawn_sibling().await;
    let key = first.admin_key().await;
    let tenant = first.create_tenant("common-co").await;
    first.state.tenants.listening().await;
    second.state.tenants.listening().await;
    // Both instances have the tenant cached as active.
    assert_eq!(first.get_as("common-co", "/v1/tenant").await.status(), 200);
    assert_eq!(second.get_as("common-co", "/v1/tenant").await.status(), 200);

    // Other tests share this Redis: wait for the announcement of *this* tenant.
    let mut announcements = second.state.tenants.announcements();
    let response = admin(
        &first,
        Method::PATCH,
        &format!("/v1/admin/tenants/{}", tenant.id),
        &key,
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(response.status(), 200);
    tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while announcements.recv().await.expect("listener alive") != tenant.id {}
    })
    .await
    .expect("the second instance heard of the change within a second");
    assert_problem(
        second.get_as("common-co", "/v1/tenant").await,
        403,
        "tenant_suspended",
    )
    .await;
}

#[tokio::test]
async fn the_public_profile_shows_what_a_login_page_needs_and_members_see_more() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let viewer = app.role_id(&org, "viewer").await;
    let accountant = app
        .create_role_ok(
            &org,
            &json!({"name": "accountant", "permissions": ["billing:read"]}),
        )
        .await;
    let (_, viewer_tokens) = app
        .user_with_roles(&org, "viewer@acme.example", &[viewer])
        .await;
    let (_, accountant_tokens) = app
        .user_with_roles(&org, "accountant@acme.example", &[accountant])
        .await;
    let keys = |profile: &Value| -> Vec<String> {
        let mut keys: Vec<String> = profile
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let public = [
        "id",
        "name",
        "registration_policy",
        "settings",
        "slug",
        "status",
    ];

    let anonymous: Value = app
        .get_as("acme", "/v1/tenant")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(keys(&anonymous), public);
    // `user_with_roles` registered its users after opening registration.
    assert_eq!(anonymous["registration_policy"], "open");
    assert_eq!(anonymous["id"], org.tenant_id.to_string());
    let as_viewer: Value = app
        .get_authed("acme", "/v1/tenant", &viewer_tokens.access)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(as_viewer, anonymous);

    let as_accountant: Value = app
        .get_authed("acme", "/v1/tenant", &accountant_tokens.access)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(as_accountant["plan"], "free");
    assert_eq!(as_accountant["storage"]["used_bytes"], 0);
    assert_eq!(as_accountant["storage"]["files"], 0);
    assert!(
        as_accountant.get("registration_domains").is_none(),
        "{as_accountant}"
    );

    let as_owner: Value = app
        .get_authed("acme", "/v1/tenant", &org.tokens.access)
        .await
        .json()
        .await
        .expect("json");
    let mut everything: Vec<&str> = public.to_vec();
    everything.extend([
        "mfa_required_for",
        "plan",
        "registration_domains",
        "registration_role_id",
        "storage",
    ]);
    everything.sort_unstable();
    assert_eq!(keys(&as_owner), everything);
    assert_eq!(as_owner["plan"], "free");
    assert!(
        as_owner["storage"]["limit_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0)
    );
    assert_eq!(as_owner["registration_role_id"], viewer.to_string());
    assert_eq!(as_owner["mfa_required_for"], json!([]));

    // A token that is sent must be valid: never quietly anonymous.
    let forged = app
        .request(Method::GET, "/v1/tenant")
        .header("x-tenant", "acme")
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("request");
    assert_problem(forged, 401, "invalid_token").await;
    let other = app.signup("other").await;
    let foreign = app
        .request(Method::GET, "/v1/tenant")
        .header("x-tenant", "acme")
        .bearer_auth(&other.tokens.access)
        .send()
        .await
        .expect("request");
    assert_problem(foreign, 403, "wrong_tenant").await;
}

#[tokio::test]
async fn changing_who_may_register_needs_tenant_manage_and_is_audited() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let member = app.role_id(&org, "member").await;
    let admin = app.role_id(&org, "admin").await;
    let (_, member_tokens) = app
        .user_with_roles(&org, "member@acme.example", &[member])
        .await;
    let (admin_id, admin_tokens) = app
        .user_with_roles(&org, "admin@acme.example", &[admin])
        .await;
    // user_with_roles opened registration; start again from invite_only.
    let reset = app
        .update_tenant(
            "acme",
            &org.tokens.access,
            &json!({"registration_policy": "invite_only"}),
        )
        .await;
    assert_eq!(reset.status(), 200);
    let body = json!({"registration_policy": "open"});

    let anonymous = app
        .request(Method::PATCH, "/v1/tenant")
        .header("x-tenant", "acme")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_problem(anonymous, 401, "unauthorized").await;
    let problem = assert_problem(
        app.update_tenant("acme", &member_tokens.access, &body)
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(problem["permission"], "tenant:manage");
    let public: Value = app
        .get_as("acme", "/v1/tenant")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(public["registration_policy"], "invite_only");

    let response = app.update_tenant("acme", &admin_tokens.access, &body).await;
    assert_eq!(response.status(), 200);
    let public: Value = app
        .get_as("acme", "/v1/tenant")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(public["registration_policy"], "open");
    let events = app
        .audit_events(org.tenant_id, "tenant.registration_changed")
        .await;
    let last = events.last().expect("audited");
    assert_eq!(last["actor_id"], admin_id.to_string());
    assert_eq!(last["details"]["from"]["policy"], "invite_only");
    assert_eq!(last["details"]["to"]["policy"], "open");
    // Setting what is already set changes and audits nothing.
    let count = events.len();
    app.update_tenant("acme", &admin_tokens.access, &body).await;
    assert_eq!(
        app.audit_events(org.tenant_id, "tenant.registration_changed")
            .await
            .len(),
        count
    );
}

#[tokio::test]
async fn name_locale_and_time_zone_change_together_or_not_at_all() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.signup("other").await;
    let public = |slug: &'static str| {
        let app = &app;
        async move {
            let profile: Value = app.get_as(slug, "/v1/tenant").await.json().await.unwrap();
            profile
        }
    };
    let before = public("acme").await;
    assert_eq!(
        before["settings"],
        json!({"locale": "en", "timezone": "UTC"})
    );

    let body = json!({"name": "  Acme Corp  ", "locale": "pt-BR", "timezone": "Europe/Lisbon"});
    let response = app.update_tenant("acme", &org.tokens.access, &body).await;
    assert_eq!(response.status(), 200);
    let answered: Value = response.json().await.unwrap();
    assert_eq!(answered["name"], "Acme Corp");
    assert_eq!(
        answered["settings"],
        json!({"locale": "pt-BR", "timezone": "Europe/Lisbon"})
    );
    // Everyone sees it at once: the resolver's cached name was dropped.
    let after = public("acme").await;
    assert_eq!(after["name"], "Acme Corp");
    assert_eq!(after["settings"], answered["settings"]);
    let registry = app
        .state
        .db
        .tenant_by_id(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(registry.name, "Acme Corp");
    let events = app
        .audit_events(org.tenant_id, "tenant.settings_changed")
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"]["from"]["name"], before["name"]);
    assert_eq!(events[0]["details"]["to"]["name"], "Acme Corp");
    assert_eq!(events[0]["details"]["to"]["timezone"], "Europe/Lisbon");
    // The name it already has: nothing to audit, the registry's row is not touched.
    let same = app
        .update_tenant("acme", &org.tokens.access, &json!({"name": "Acme Corp "}))
        .await;
    assert_eq!(same.status(), 200);
    let again = app
        .state
        .db
        .tenant_by_id(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.updated_at, registry.updated_at);
    assert_eq!(
        app.audit_events(org.tenant_id, "tenant.settings_changed")
            .await
            .len(),
        1
    );

    // A time zone PostgreSQL does not know refuses the whole change, the rename included
    // (it is made in the same transaction).
    let refused = app
        .update_tenant(
            "acme",
            &org.tokens.access,
            &json!({"name": "Should Not Stick", "timezone": "Mars/Olympus_Mons"}),
        )
        .await;
    let problem = assert_problem(refused, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "timezone");
    assert_eq!(problem["errors"][0]["code"], "invalid");
    let unchanged = public("acme").await;
    assert_eq!(unchanged["name"], "Acme Corp");
    assert_eq!(unchanged["settings"]["timezone"], "Europe/Lisbon");
    for (body, field, code) in [
        (json!({"locale": "EN_us"}), "locale", "invalid"),
        (json!({"locale": "en-"}), "locale", "invalid"),
        (json!({"name": "   "}), "name", "length"),
        (json!({"name": "a\u{7}b"}), "name", "length"),
        (json!({"timezone": ""}), "timezone", "length"),
        (json!({"timezone": "Europe/\u{0}"}), "timezone", "invalid"),
    ] {
        let response = app.update_tenant("acme", &org.tokens.access, &body).await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert_eq!(problem["errors"][0]["code"], code, "{body}");
    }
    assert_eq!(
        app.audit_events(org.tenant_id, "tenant.settings_changed")
            .await
            .len(),
        1
    );

    // Another tenant's owner cannot change this one, and this one's change did not reach it.
    let foreign = app.update_tenant("acme", &other.tokens.access, &body).await;
    assert_problem(foreign, 403, "wrong_tenant").await;
    let theirs = public("other").await;
    assert_ne!(theirs["name"], "Acme Corp");
    assert_eq!(
        theirs["settings"],
        json!({"locale": "en", "timezone": "UTC"})
    );
}
