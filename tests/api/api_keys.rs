//! Tenant API keys: the secret shown once and stored hashed; a key works where its
//! permissions allow and nowhere else; it cannot exceed its creator, at creation or after
//! a demotion; revocation is seen on the next request on every instance; expiry; its
//! tenant only (another tenant's `X-Tenant`, another tenant's ids); malformed keys; last
//! use; the audit log's actor; person-only operations; the OpenAPI document.

use e2e::{assert_problem, auth::Signup, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn product_of(app: &e2e::TestApp, org: &Signup) -> String {
    app.create_product_ok(
        org,
        &json!({"name": "Lamp", "price": 100, "currency": "USD"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test]
async fn a_key_is_shown_once_works_within_its_permissions_and_is_audited_as_itself() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let product = product_of(&app, &org).await;

    let response = app
        .create_api_key(
            "acme",
            &org.tokens.access,
            &json!({"name": " ci reader ", "permissions": ["products:read", "roles:read", "roles:manage"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    let secret = created["key"].as_str().expect("key").to_owned();
    let id: Uuid = created["api_key"]["id"].as_str().unwrap().parse().unwrap();
    assert!(secret.starts_with("cnt_") && secret.len() == 91, "{secret}");
    assert_eq!(created["api_key"]["name"], "ci reader");
    assert_eq!(created["api_key"]["created_by"], org.owner_id.to_string());
    assert!(created["api_key"]["last_used_at"].is_null());

    // Stored hashed: the row holds 32 bytes that appear nowhere in the key.
    let hash = app.api_key_hash(org.tenant_id, id).await;
    assert_eq!(hash.len(), 32);
    assert!(
        !secret
            .as_bytes()
            .windows(8)
            .any(|w| hash.windows(8).any(|h| h == w))
    );

    // Never shown again.
    let listed = app
        .get_authed("acme", "/v1/api-keys", &org.tokens.access)
        .await;
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await.unwrap();
    assert!(listed.contains(&id.to_string()) && !listed.contains(&secret[50..]));
    let one = app
        .get_authed("acme", &format!("/v1/api-keys/{id}"), &org.tokens.access)
        .await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert!(one.get("key").is_none() && !one.to_string().contains(&secret[50..]));

    // Allowed: listing and reading products. Forbidden: creating one.
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_eq!(list.status(), 200);
    let got = app
        .get_authed("acme", &format!("/v1/products/{product}"), &secret)
        .await;
    assert_eq!(got.status(), 200);
    let create = app
        .create_product(
            "acme",
            &secret,
            &json!({"name": "Chair", "price": 100, "currency": "USD"}),
        )
        .await;
    let problem = assert_problem(create, 403, "forbidden").await;
    assert_eq!(problem["permission"], "products:write");

    // Last use: time and address.
    let one: Value = app
        .get_authed("acme", &format!("/v1/api-keys/{id}"), &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(one["last_used_at"].is_string(), "{one}");
    assert_eq!(one["last_used_ip"], "127.0.0.1");

    // An audited act done with the key names the key (and its creator).
    let role = app
        .create_role(
            "acme",
            &secret,
            &json!({"name": "made-by-key", "permissions": []}),
        )
        .await;
    assert_eq!(role.status(), 201);
    let log: Value = app
        .get_authed(
            "acme",
            "/v1/audit-events?event=role.created",
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let entry = &log["items"][0];
    assert_eq!(entry["actor_id"], org.owner_id.to_string());
    assert_eq!(
        entry["actor_api_key"],
        json!({"type": "api_key", "id": id, "name": "ci reader"})
    );
    let created_events = app.audit_events(org.tenant_id, "api_key.created").await;
    assert_eq!(created_events.len(), 1);
    assert_eq!(created_events[0]["subject_id"], id.to_string());
    // A person's own act has no key.
    let log: Value = app
        .get_authed(
            "acme",
            "/v1/audit-events?event=api_key.created",
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(log["items"][0]["actor_api_key"].is_null(), "{log}");

    // Person-only operations, and managing keys, refuse a key whatever it holds.
    for (method, path, body) in [
        (Method::GET, "/v1/me", None),
        (Method::GET, "/v1/auth/sessions", None),
        (Method::GET, "/v1/api-keys", None),
        (
            Method::POST,
            "/v1/api-keys",
            Some(json!({"name": "child", "permissions": ["products:read"]})),
        ),
    ] {
        let response = app
            .send_authed(method, "acme", path, &secret, body.as_ref())
            .await;
        assert_problem(response, 403, "api_key_not_allowed").await;
    }
}

#[tokio::test]
async fn a_key_cannot_exceed_its_creator_at_creation_or_after_a_demotion() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let editor = app
        .create_role_ok(
            &org,
            &json!({"name": "editor", "permissions": ["products:read", "products:write", "api_keys:manage"]}),
        )
        .await;
    let reader = app
        .create_role_ok(
            &org,
            &json!({"name": "reader", "permissions": ["products:read", "api_keys:manage"]}),
        )
        .await;
    let (user, tokens) = app
        .user_with_roles(&org, "ed@acme.example", &[reader])
        .await;

    // More than they hold: refused, naming what they lack.
    let response = app
        .create_api_key(
            "acme",
            &tokens.access,
            &json!({"name": "w", "permissions": ["products:read", "products:write"]}),
        )
        .await;
    let problem = assert_problem(response, 403, "forbidden").await;
    assert_eq!(problem["permissions"], json!(["products:write"]));

    // Bad input is a 422 naming the field.
    for (body, field, code) in [
        (
            json!({"name": "x", "permissions": ["nope:nope"]}),
            "permissions[0]",
            "unknown_permission",
        ),
        (
            json!({"name": "x", "permissions": ["api_keys:manage"]}),
            "permissions[0]",
            "too_powerful",
        ),
        (
            json!({"name": "x", "permissions": ["products:read", "products:read"]}),
            "permissions[1]",
            "duplicate",
        ),
        (
            json!({"name": "x", "permissions": []}),
            "permissions",
            "length",
        ),
        (
            json!({"name": "  ", "permissions": ["products:read"]}),
            "name",
            "length",
        ),
        (
            json!({"name": "x".repeat(101), "permissions": ["products:read"]}),
            "name",
            "length",
        ),
        (
            json!({"name": "x", "permissions": ["products:read"], "expires_at": "2020-01-01T00:00:00Z"}),
            "expires_at",
            "out_of_range",
        ),
        (
            json!({"name": "x", "permissions": ["products:read"], "expires_at": "2999-01-01T00:00:00Z"}),
            "expires_at",
            "out_of_range",
        ),
    ] {
        let response = app.create_api_key("acme", &tokens.access, &body).await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert_eq!(problem["errors"][0]["code"], code, "{body}");
    }

    // Promoted, they make a writing key, which writes.
    let response = app
        .set_roles("acme", &org.tokens.access, user, &[editor])
        .await;
    assert_eq!(response.status(), 200);
    let response = app
        .create_api_key(
            "acme",
            &tokens.access,
            &json!({"name": "w", "permissions": ["products:read", "products:write"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let secret = response.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let chair = json!({"name": "Chair", "price": 100, "currency": "USD"});
    let made = app.create_product("acme", &secret, &chair).await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    assert_eq!(made["name"], "Chair");

    // Demoted: the key loses what its creator lost, on the next request.
    let response = app
        .set_roles("acme", &org.tokens.access, user, &[reader])
        .await;
    assert_eq!(response.status(), 200);
    let refused = app.create_product("acme", &secret, &chair).await;
    let problem = assert_problem(refused, 403, "forbidden").await;
    assert_eq!(problem["permission"], "products:write");
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_eq!(list.status(), 200);

    // Banned: the key stops at once.
    let ban = app
        .send_authed(
            Method::PATCH,
            "acme",
            &format!("/v1/users/{user}"),
            &org.tokens.access,
            Some(&json!({"status": "banned"})),
        )
        .await;
    assert_eq!(ban.status(), 200);
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_problem(list, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_the_next_request_on_every_instance() {
    let app = spawn_app().await;
    let sibling = app.spawn_sibling().await;
    let org = app.signup("acme").await;
    let (id, secret) = app
        .create_api_key_ok(
            &org,
            &json!({"name": "ci", "permissions": ["products:read"]}),
        )
        .await;
    // Both instances have the key's row cached.
    for instance in [&app, &sibling] {
        let list = instance.get_authed("acme", "/v1/products", &secret).await;
        assert_eq!(list.status(), 200);
    }
    let deleted = app
        .send_authed(
            Method::DELETE,
            "acme",
            &format!("/v1/api-keys/{id}"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    for instance in [&sibling, &app] {
        let list = instance.get_authed("acme", "/v1/products", &secret).await;
        assert_problem(list, 401, "invalid_token").await;
    }
    let again = app
        .send_authed(
            Method::DELETE,
            "acme",
            &format!("/v1/api-keys/{id}"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_problem(again, 404, "not_found").await;
    let one = app
        .get_authed("acme", &format!("/v1/api-keys/{id}"), &org.tokens.access)
        .await;
    assert_problem(one, 404, "not_found").await;
    let revoked = app.audit_events(org.tenant_id, "api_key.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["subject_id"], id.to_string());
    assert_eq!(revoked[0]["actor_id"], org.owner_id.to_string());
}

#[tokio::test]
async fn a_key_serves_its_own_tenant_only_and_bad_keys_are_refused_cleanly() {
    let app = spawn_app().await;
    let a = app.signup("alpha").await;
    let b = app.signup("bravo").await;
    let b_product = product_of(&app, &b).await;
    let (_, a_key) = app
        .create_api_key_ok(&a, &json!({"name": "ci", "permissions": ["products:read"]}))
        .await;
    let (b_id, _) = app
        .create_api_key_ok(&b, &json!({"name": "ci", "permissions": ["products:read"]}))
        .await;

    // Another tenant's X-Tenant: 403, as for an access token of another tenant.
    let list = app.get_authed("bravo", "/v1/products", &a_key).await;
    assert_problem(list, 403, "wrong_tenant").await;
    // Another tenant's ids, in its own tenant: not found.
    let read = app
        .get_authed("alpha", &format!("/v1/products/{b_product}"), &a_key)
        .await;
    assert_problem(read, 404, "not_found").await;
    // Another tenant's key id, through the owner: not found, and not revocable.
    let delete = app
        .send_authed(
            Method::DELETE,
            "alpha",
            &format!("/v1/api-keys/{b_id}"),
            &a.tokens.access,
            None,
        )
        .await;
    assert_problem(delete, 404, "not_found").await;
    let still = app
        .get_authed("bravo", &format!("/v1/api-keys/{b_id}"), &b.tokens.access)
        .await;
    assert_eq!(still.status(), 200);
    let list = app.get_authed("alpha", "/v1/products", &a_key).await;
    assert_eq!(list.status(), 200);

    // Malformed or forged keys: 401, never 500.
    let wrong_secret = format!("{}{}", &a_key[..48], "A".repeat(43));
    let platform_key = app.admin_key().await;
    for bad in [
        "cnt_".to_owned(),
        "cnt_x".to_owned(),
        format!("{a_key}x"),
        a_key[..90].to_owned(),
        format!("cnt_{}", "!".repeat(87)),
        wrong_secret,
        platform_key,
    ] {
        let list = app.get_authed("alpha", "/v1/products", &bad).await;
        assert_problem(list, 401, "invalid_token").await;
    }

    // Expired (set in the database, before this instance has the row cached).
    let (expiring, expiring_key) = app
        .create_api_key_ok(
            &a,
            &json!({
                "name": "short",
                "permissions": ["products:read"],
                "expires_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
            }),
        )
        .await;
    let changed = app
        .tenant_sql(
            a.tenant_id,
            "update api_keys set created_at = now() - interval '2 days',
                    expires_at = now() - interval '1 day' where id = $1",
            Some(expiring),
        )
        .await;
    assert_eq!(changed, 1);
    let list = app.get_authed("alpha", "/v1/products", &expiring_key).await;
    assert_problem(list, 401, "api_key_expired").await;
}

#[test]
fn the_document_lists_the_key_scheme_where_keys_are_taken() {
    let doc: Value = serde_json::from_str(&api::routes::openapi_json()).expect("json");
    let schemes = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["security"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r.as_object().unwrap().keys().cloned())
            .collect()
    };
    assert_eq!(schemes("/v1/products", "get"), ["UserAuth", "ApiKeyAuth"]);
    assert_eq!(schemes("/v1/products", "post"), ["UserAuth", "ApiKeyAuth"]);
    assert_eq!(schemes("/v1/me", "get"), ["UserAuth"]);
    assert_eq!(schemes("/v1/api-keys", "post"), ["UserAuth"]);
    assert_eq!(schemes("/v1/auth/sessions", "get"), ["UserAuth"]);
    let scheme = &doc["components"]["securitySchemes"]["ApiKeyAuth"];
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "cnt_…");
}

#[tokio::test]
async fn without_redis_a_key_is_checked_against_the_database() {
    let mut redis = e2e::auth::PrivateRedis::start().await;
    let app = e2e::TestApp::builder()
        .env("redis_url", &redis.url)
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let (id, secret) = app
        .create_api_key_ok(
            &org,
            &json!({"name": "ci", "permissions": ["products:read"]}),
        )
        .await;
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_eq!(list.status(), 200);
    redis.stop();
    // Redis unreachable: the database says the key is fine…
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_eq!(list.status(), 200);
    // …and, once revoked elsewhere (an announcement Redis cannot take), that it is not,
    // although this instance still holds the key's row cached as live.
    let revoked = app
        .tenant_sql(
            org.tenant_id,
            "update api_keys set revoked_at = now() where id = $1",
            Some(id),
        )
        .await;
    assert_eq!(revoked, 1);
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_problem(list, 401, "invalid_token").await;
}

/// A user of `org` holding `products:read` and `api_keys:manage`, with a key of theirs.
async fn member_with_key(app: &e2e::TestApp, org: &Signup, email: &str) -> (Uuid, Uuid, String) {
    let role = app
        .create_role_ok(
            org,
            &json!({"name": "keyholder", "permissions": ["products:read", "api_keys:manage"]}),
        )
        .await;
    let (user, tokens) = app.user_with_roles(org, email, &[role]).await;
    let response = app
        .create_api_key(
            &org.slug,
            &tokens.access,
            &json!({"name": "theirs", "permissions": ["products:read"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    let id = created["api_key"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let secret = created["key"].as_str().expect("key").to_owned();
    let list = app.get_authed(&org.slug, "/v1/products", &secret).await;
    assert_eq!(list.status(), 200);
    (user, id, secret)
}

#[tokio::test]
async fn a_flagged_creators_keys_stay_refused_after_their_password_reset() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let email = "kim@acme.example";
    let (user, key, secret) = member_with_key(&app, &org, email).await;
    let flagged = app
        .send_authed(
            Method::POST,
            "acme",
            &format!("/v1/users/{user}/security-issue"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(flagged.status(), 200);
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_problem(list, 401, "invalid_token").await;
    // Revoked in the database, not only blocked on the list.
    let still_live = app
        .tenant_sql(
            org.tenant_id,
            "update api_keys set name = name where id = $1 and revoked_at is null",
            Some(key),
        )
        .await;
    assert_eq!(still_live, 0);

    // The reset makes the user active again (and lifts their block); the key stays dead.
    let reset = app
        .reset_password_by_email("acme", email, "a brand new pass phrase")
        .await;
    assert_eq!(reset.status(), 204);
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_problem(list, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_banned_creators_key_is_refused_once_the_list_entries_expire() {
    let redis = e2e::auth::PrivateRedis::start().await;
    let app = e2e::TestApp::builder()
        .env("redis_url", &redis.url)
        .spawn()
        .await;
    let org = app.signup("acme").await;
    let (user, key, secret) = member_with_key(&app, &org, "kim@acme.example").await;
    let banned = app
        .send_authed(
            Method::PATCH,
            "acme",
            &format!("/v1/users/{user}"),
            &org.tokens.access,
            Some(&json!({"status": "banned"})),
        )
        .await;
    assert_eq!(banned.status(), 200);
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_problem(list, 401, "invalid_token").await;
    // The ban revoked the key in the database.
    let still_live = app
        .tenant_sql(
            org.tenant_id,
            "update api_keys set name = name where id = $1 and revoked_at is null",
            Some(key),
        )
        .await;
    assert_eq!(still_live, 0);

    // A key left unrevoked (one made before bans revoked keys), and the list's entries
    // expired: the creator's status in the key's row still refuses it.
    let unrevoked = app
        .tenant_sql(
            org.tenant_id,
            "update api_keys set revoked_at = null where id = $1",
            Some(key),
        )
        .await;
    assert_eq!(unrevoked, 1);
    let tenant = org.tenant_id;
    for entry in [
        format!("canopy:t:{tenant}:revoked:user:{user}"),
        format!("canopy:t:{tenant}:revoked:session:{key}"),
    ] {
        assert_eq!(redis.command(&["DEL", &entry]).await, redis::Value::Int(1));
    }
    app.state.api_keys.forget(tenancy::TenantId(tenant), key);
    let list = app.get_authed("acme", "/v1/products", &secret).await;
    assert_problem(list, 401, "invalid_token").await;
}

#[tokio::test]
async fn expired_keys_never_hide_a_live_one_from_the_list() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let (id, _) = app
        .create_api_key_ok(
            &org,
            &json!({"name": "live", "permissions": ["products:read"]}),
        )
        .await;
    // A hundred expired, unrevoked keys, all newer than the live one.
    let backdated = app
        .tenant_sql(
            org.tenant_id,
            "update api_keys set created_at = now() - interval '3 days' where id = $1",
            Some(id),
        )
        .await;
    assert_eq!(backdated, 1);
    let inserted = app
        .tenant_sql(
            org.tenant_id,
            "insert into api_keys (id, name, permissions, created_by, created_at, expires_at,
                                   secret_hash)
             select gen_random_uuid(), 'old' || g, '{products:read}', $1,
                    now() - interval '2 days', now() - interval '1 day',
                    sha256(g::text::bytea)
             from generate_series(1, 100) g",
            Some(org.owner_id),
        )
        .await;
    assert_eq!(inserted, 100);
    let list: Value = app
        .get_authed("acme", "/v1/api-keys", &org.tokens.access)
        .await
        .json()
        .await
        .expect("JSON");
    let items = list
        .as_array()
        .or_else(|| list["items"].as_array())
        .expect("a list");
    assert_eq!(items.len(), 100);
    assert_eq!(items[0]["id"], id.to_string(), "{}", items[0]);
}
