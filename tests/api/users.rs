//! The member directory and user status: a ban takes effect on the banned user's very next
//! request, survives a Redis flush and a Redis outage, and is lifted by reactivation.

use e2e::{
    TestApp, assert_problem,
    auth::{PASSWORD, PrivateRedis, Signup, Tokens},
    spawn_app,
};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

async fn patch_user(
    app: &TestApp,
    org: &Signup,
    access: &str,
    user: Uuid,
    body: Value,
) -> Response {
    app.authed(
        Method::PATCH,
        &org.slug,
        &format!("/v1/users/{user}"),
        access,
    )
    .json(&body)
    .send()
    .await
    .expect("request failed")
}

/// An organization with a verified, logged-in member.
async fn org_with_member(app: &TestApp) -> (Signup, Uuid, Tokens) {
    let org = app.signup("acme").await;
    let member = app.register_verified("acme", "member@acme.example").await;
    let tokens = app.login_ok("acme", "member@acme.example", PASSWORD).await;
    (org, member, tokens)
}

#[tokio::test]
async fn the_directory_lists_users_page_by_page_and_by_status() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    for n in 0..3 {
        app.register_verified("acme", &format!("m{n}@acme.example"))
            .await;
    }
    app.post_as(
        "acme",
        "/v1/auth/register",
        &json!({"email": "pending@acme.example", "password": PASSWORD, "name": "P"}),
    )
    .await;
    let access = &org.tokens.access;

    let mut seen = Vec::new();
    let mut path = "/v1/users?limit=2".to_owned();
    loop {
        let page: Value = app
            .get_authed("acme", &path, access)
            .await
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|u| u["email"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/users?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "owner@acme.example",
            "m0@acme.example",
            "m1@acme.example",
            "m2@acme.example",
            "pending@acme.example"
        ]
    );
    let pending: Value = app
        .get_authed("acme", "/v1/users?status=pending", access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["items"].as_array().unwrap().len(), 1);
    assert_eq!(pending["items"][0]["email_verified"], false);
    assert_problem(
        app.get_authed("acme", "/v1/users?cursor=garbage", access)
            .await,
        400,
        "invalid_parameter",
    )
    .await;

    let one: Value = app
        .get_authed("acme", &format!("/v1/users/{}", org.owner_id), access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["email"], "owner@acme.example");
    let missing = app
        .get_authed("acme", &format!("/v1/users/{}", Uuid::new_v4()), access)
        .await;
    assert_problem(missing, 404, "not_found").await;
}

#[tokio::test]
async fn users_of_another_tenant_are_out_of_reach() {
    let app = spawn_app().await;
    let (org, member, _) = org_with_member(&app).await;
    let other = app.signup("other").await;
    // Other's owner, addressing other, names acme's member: no such user there.
    let response = app
        .get_authed(
            "other",
            &format!("/v1/users/{member}"),
            &other.tokens.access,
        )
        .await;
    assert_problem(response, 404, "not_found").await;
    let response = patch_user(
        &app,
        &other,
        &other.tokens.access,
        member,
        json!({"status": "banned"}),
    )
    .await;
    assert_problem(response, 404, "not_found").await;
    // And other's token cannot be pointed at acme.
    let response = app
        .get_authed("acme", "/v1/users", &other.tokens.access)
        .await;
    assert_problem(response, 403, "wrong_tenant").await;
    let list: Value = app
        .get_authed("other", "/v1/users", &other.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(org.slug, "acme");
}

#[tokio::test]
async fn a_banned_user_is_refused_at_once_and_reactivation_lets_them_back() {
    let app = spawn_app().await;
    let (org, member, tokens) = org_with_member(&app).await;
    assert_eq!(
        app.get_authed("acme", "/v1/me", &tokens.access)
            .await
            .status(),
        200
    );

    // A viewer (what self-registration grants) may not change a status; nobody may
    // change their own.
    let response = patch_user(
        &app,
        &org,
        &tokens.access,
        org.owner_id,
        json!({"status": "banned"}),
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    let response = patch_user(
        &app,
        &org,
        &org.tokens.access,
        org.owner_id,
        json!({"status": "banned"}),
    )
    .await;
    assert_problem(response, 409, "conflict").await;
    let response = app
        .authed(Method::PATCH, "acme", "/v1/me", &tokens.access)
        .json(&json!({"name": "Renamed Me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap()["name"],
        "Renamed Me"
    );

    let banned = patch_user(
        &app,
        &org,
        &org.tokens.access,
        member,
        json!({"status": "banned"}),
    )
    .await;
    assert_eq!(banned.status(), 200);
    assert_eq!(banned.json::<Value>().await.unwrap()["status"], "banned");
    // The very next request with the still-unexpired access token is refused, refreshing
    // fails, and so does logging in.
    app.assert_tokens_dead("acme", &tokens).await;
    assert_problem(
        app.login("acme", "member@acme.example", PASSWORD).await,
        403,
        "account_disabled",
    )
    .await;
    let changes = app.audit_events(org.tenant_id, "user.status_changed").await;
    assert_eq!(changes[0]["details"]["to"], "banned");
    assert_eq!(changes[0]["actor_id"], org.owner_id.to_string());

    let back = patch_user(
        &app,
        &org,
        &org.tokens.access,
        member,
        json!({"status": "active"}),
    )
    .await;
    assert_eq!(back.status(), 200);
    let fresh = app.login_ok("acme", "member@acme.example", PASSWORD).await;
    assert_eq!(
        app.get_authed("acme", "/v1/me", &fresh.access)
            .await
            .status(),
        200
    );
    // Sessions ended by the ban stay ended.
    assert_problem(
        app.get_authed("acme", "/v1/me", &tokens.access).await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn a_ban_reaches_every_instance_on_the_next_request() {
    let app = spawn_app().await;
    let (org, member, tokens) = org_with_member(&app).await;
    let sibling = app.spawn_sibling().await;
    assert_eq!(
        sibling
            .get_authed("acme", "/v1/me", &tokens.access)
            .await
            .status(),
        200
    );
    let deactivated = patch_user(
        &app,
        &org,
        &org.tokens.access,
        member,
        json!({"status": "deactivated"}),
    )
    .await;
    assert_eq!(deactivated.status(), 200);
    assert_problem(
        sibling.get_authed("acme", "/v1/me", &tokens.access).await,
        401,
        "invalid_token",
    )
    .await;
}

/// An app whose Redis is a private server the test can flush or stop.
async fn app_with_private_redis() -> (TestApp, PrivateRedis) {
    let redis = PrivateRedis::start().await;
    let app = TestApp::builder()
        .env("redis_url", &redis.url)
        .spawn()
        .await;
    (app, redis)
}

#[tokio::test]
async fn a_redis_flush_does_not_let_a_banned_user_back_in() {
    let (app, redis) = app_with_private_redis().await;
    let (org, member, tokens) = org_with_member(&app).await;
    patch_user(
        &app,
        &org,
        &org.tokens.access,
        member,
        json!({"status": "banned"}),
    )
    .await;
    assert_problem(
        app.get_authed("acme", "/v1/me", &tokens.access).await,
        401,
        "invalid_token",
    )
    .await;

    redis.command(&["FLUSHALL"]).await;
    // The list is gone; the database still knows.
    assert_problem(
        app.get_authed("acme", "/v1/me", &tokens.access).await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.get_authed("acme", "/v1/me", &org.tokens.access)
            .await
            .status(),
        200
    );
    // The list is rebuilt from the database (the rebuild is what the first check started;
    // running it here as well makes the wait explicit and is idempotent).
    app.state
        .revocations
        .rebuild(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap();
    let key = format!("canopy:t:{}:revoked:user:{member}", org.tenant_id);
    assert_eq!(redis.command(&["EXISTS", &key]).await, redis::Value::Int(1));
    assert_problem(
        app.get_authed("acme", "/v1/me", &tokens.access).await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn with_redis_down_checks_fall_back_to_the_database() {
    let (app, mut redis) = app_with_private_redis().await;
    let (org, member, tokens) = org_with_member(&app).await;
    let refresh_of_owner = org.tokens.refresh.clone();
    redis.stop();

    // Valid tokens still work; a ban made while Redis is down still bites at once.
    assert_eq!(
        app.get_authed("acme", "/v1/me", &tokens.access)
            .await
            .status(),
        200
    );
    let banned = patch_user(
        &app,
        &org,
        &org.tokens.access,
        member,
        json!({"status": "banned"}),
    )
    .await;
    assert_eq!(banned.status(), 200);
    assert_problem(
        app.get_authed("acme", "/v1/me", &tokens.access).await,
        401,
        "invalid_token",
    )
    .await;
    // Refresh reads the database: right for both users.
    assert_problem(
        app.refresh("acme", &tokens.refresh).await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(app.refresh("acme", &refresh_of_owner).await.status(), 200);
    // Logins fail closed.
    assert_problem(
        app.login("acme", &org.owner_email, PASSWORD).await,
        503,
        "dependency_unavailable",
    )
    .await;

    // With PostgreSQL gone too, nothing is let through unchecked.
    app.state.db.pool().close().await;
    let response = app.get_authed("acme", "/v1/me", &org.tokens.access).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "dependency_unavailable").await;
}

/// A catalog whose free plan has three seats.
const THREE_SEATS: &str = r#"[
    {"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB", "seats": 3}}
]"#;

async fn active_users(app: &TestApp, org: &Signup) -> i64 {
    let schema = tenancy::TenantId(org.tenant_id).schema_name();
    sqlx::query_scalar(&format!(
        "select count(*) from {schema}.users where status = 'active'"
    ))
    .fetch_one(app.state.db.pool())
    .await
    .expect("count")
}

/// Registers `email` (pending) and returns the verification link's token.
async fn register_pending(app: &TestApp, org: &Signup, email: &str) -> String {
    app.open_registration(org).await;
    let response = app
        .post_as(
            &org.slug,
            "/v1/auth/register",
            &json!({"email": email, "password": PASSWORD, "name": "Member"}),
        )
        .await;
    assert_eq!(response.status(), 202, "register {email}");
    app.emailed_token(email, "verification")
        .await
        .expect("a verification email")
}

#[tokio::test]
async fn a_password_reset_does_not_activate_a_pending_user_past_the_seat_limit() {
    let app = TestApp::builder()
        .env("plans", THREE_SEATS)
        .env("recovery_ip_max_requests", "1000")
        .spawn()
        .await;
    let org = app.signup("seats").await;
    // Registered while seats were free: pending users take none.
    let emails: Vec<String> = (1..=5).map(|n| format!("m{n}@seats.example")).collect();
    let mut links = Vec::new();
    for email in &emails {
        links.push(register_pending(&app, &org, email).await);
    }
    for link in &links[..2] {
        let verified = app
            .post_as(&org.slug, "/v1/auth/verify-email", &json!({"token": link}))
            .await;
        assert_eq!(verified.status(), 200);
    }
    assert_eq!(active_users(&app, &org).await, 3);
    for (email, link) in emails[2..].iter().zip(&links[2..]) {
        let refused = app
            .post_as(&org.slug, "/v1/auth/verify-email", &json!({"token": link}))
            .await;
        assert_eq!(
            assert_problem(refused, 402, "plan_limit_reached").await["limit"],
            "seats"
        );

        // The bypass: forgot-password, then the reset link. It is refused as well, and
        // changes nothing: the old password stands and the user stays pending.
        let reset = app
            .reset_password_by_email(&org.slug, email, "a brand new passphrase")
            .await;
        let problem = assert_problem(reset, 402, "plan_limit_reached").await;
        assert_eq!(
            (problem["limit"].clone(), problem["allowed"].clone()),
            (json!("seats"), json!(3))
        );
        assert_problem(
            app.login(&org.slug, email, "a brand new passphrase").await,
            401,
            "invalid_credentials",
        )
        .await;
        assert_problem(
            app.login(&org.slug, email, PASSWORD).await,
            403,
            "email_not_verified",
        )
        .await;
    }
    assert_eq!(active_users(&app, &org).await, 3);

    // With a seat free again, the same reset link works and activates.
    let member = app.login_ok(&org.slug, &emails[0], PASSWORD).await;
    let me: Value = app
        .get_authed(&org.slug, "/v1/me", &member.access)
        .await
        .json()
        .await
        .expect("JSON");
    let id: Uuid = me["id"].as_str().expect("id").parse().expect("uuid");
    let deactivated = patch_user(
        &app,
        &org,
        &org.tokens.access,
        id,
        json!({"status": "deactivated"}),
    )
    .await;
    assert_eq!(deactivated.status(), 200);
    let token = app
        .emailed_token(&emails[2], "password_reset")
        .await
        .expect("reset email");
    let reset = app
        .post_as(
            &org.slug,
            "/v1/auth/reset-password",
            &json!({"token": token, "password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(reset.status(), 204);
    app.login_ok(&org.slug, &emails[2], "a brand new passphrase")
        .await;
    assert_eq!(active_users(&app, &org).await, 3);
}

#[tokio::test]
async fn reactivating_or_activating_a_user_past_the_seat_limit_is_refused() {
    let app = TestApp::builder().env("plans", THREE_SEATS).spawn().await;
    let org = app.signup("reseat").await;
    let second = app.register_verified(&org.slug, "two@reseat.example").await;
    // Registered while seats were free: pending users take none.
    let pending = register_pending(&app, &org, "four@reseat.example").await;
    register_pending(&app, &org, "five@reseat.example").await;
    app.register_verified(&org.slug, "three@reseat.example")
        .await;
    let deactivate = patch_user(
        &app,
        &org,
        &org.tokens.access,
        second,
        json!({"status": "deactivated"}),
    )
    .await;
    assert_eq!(deactivate.status(), 200);
    let verified = app
        .post_as(
            &org.slug,
            "/v1/auth/verify-email",
            &json!({"token": pending}),
        )
        .await;
    assert_eq!(verified.status(), 200);
    let fourth: Uuid = verified.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    assert_eq!(active_users(&app, &org).await, 3);

    let reactivate = patch_user(
        &app,
        &org,
        &org.tokens.access,
        second,
        json!({"status": "active"}),
    )
    .await;
    assert_eq!(
        assert_problem(reactivate, 402, "plan_limit_reached").await["limit"],
        "seats"
    );
    let user: Value = app
        .get_authed(
            &org.slug,
            &format!("/v1/users/{second}"),
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(user["status"], "deactivated");

    // An administrator activating a pending user is judged the same way.
    let page: Value = app
        .get_authed(&org.slug, "/v1/users?status=pending", &org.tokens.access)
        .await
        .json()
        .await
        .expect("JSON");
    let fifth: Uuid = page["items"][0]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let activate = patch_user(
        &app,
        &org,
        &org.tokens.access,
        fifth,
        json!({"status": "active"}),
    )
    .await;
    assert_problem(activate, 402, "plan_limit_reached").await;
    assert_eq!(active_users(&app, &org).await, 3);

    // A seat freed, reactivation works.
    let off = patch_user(
        &app,
        &org,
        &org.tokens.access,
        fourth,
        json!({"status": "banned"}),
    )
    .await;
    assert_eq!(off.status(), 200);
    let reactivate = patch_user(
        &app,
        &org,
        &org.tokens.access,
        second,
        json!({"status": "active"}),
    )
    .await;
    assert_eq!(reactivate.status(), 200);
    assert_eq!(active_users(&app, &org).await, 3);
}

#[tokio::test]
async fn concurrent_verifications_take_the_last_seat_once() {
    let app = TestApp::builder().env("plans", THREE_SEATS).spawn().await;
    let org = app.signup("lastseat").await;
    app.register_verified(&org.slug, "two@lastseat.example")
        .await;
    let mut links = Vec::new();
    for n in 3..=6 {
        links.push(register_pending(&app, &org, &format!("m{n}@lastseat.example")).await);
    }
    // One seat left, four links opened at once: exactly one is let in.
    let bodies: Vec<Value> = links.iter().map(|link| json!({"token": link})).collect();
    let answers = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| app.post_as(&org.slug, "/v1/auth/verify-email", body)),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 402, 402, 402]);
    assert_eq!(active_users(&app, &org).await, 3);
}

async fn force_logout(app: &TestApp, slug: &str, access: &str, user: Uuid) -> Response {
    app.authed(
        Method::POST,
        slug,
        &format!("/v1/users/{user}/logout"),
        access,
    )
    .send()
    .await
    .expect("request failed")
}

#[tokio::test]
async fn a_forced_logout_ends_every_session_everywhere_and_changes_nothing_else() {
    let app = spawn_app().await;
    let (org, member, first) = org_with_member(&app).await;
    let second = app.login_ok("acme", "member@acme.example", PASSWORD).await;
    let sibling = app.spawn_sibling().await;
    assert_eq!(
        sibling
            .get_authed("acme", "/v1/me", &first.access)
            .await
            .status(),
        200
    );
    let other = app.signup("other").await;

    // Another tenant's owner can neither name this member in their tenant nor address acme.
    assert_problem(
        force_logout(&app, "other", &other.tokens.access, member).await,
        404,
        "not_found",
    )
    .await;
    assert_problem(
        force_logout(&app, "acme", &other.tokens.access, member).await,
        403,
        "wrong_tenant",
    )
    .await;
    // A member may not log others out.
    assert_problem(
        force_logout(&app, "acme", &first.access, org.owner_id).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        force_logout(&app, "acme", &org.tokens.access, Uuid::new_v4()).await,
        404,
        "not_found",
    )
    .await;

    let response = force_logout(&app, "acme", &org.tokens.access, member).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sessions_ended"], 2);
    // Both sessions end on every instance at once, and their refresh tokens with them.
    for tokens in [&first, &second] {
        assert_problem(
            sibling.get_authed("acme", "/v1/me", &tokens.access).await,
            401,
            "invalid_token",
        )
        .await;
        assert_problem(
            app.refresh("acme", &tokens.refresh).await,
            401,
            "invalid_token",
        )
        .await;
    }
    // The status is untouched: the member logs in again; the owner kept their session.
    let user: Value = app
        .get_authed("acme", &format!("/v1/users/{member}"), &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["status"], "active");
    let again = app.login_ok("acme", "member@acme.example", PASSWORD).await;
    assert_eq!(
        app.get_authed("acme", "/v1/me", &again.access)
            .await
            .status(),
        200
    );
    let events = app.audit_events(org.tenant_id, "user.logged_out").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor_id"], org.owner_id.to_string());
    assert_eq!(events[0]["subject_id"], member.to_string());
    assert_eq!(
        events[0]["details"]["sessions"].as_array().unwrap().len(),
        2
    );
    // Nobody else was logged out.
    assert_eq!(
        app.get_authed("other", "/v1/me", &other.tokens.access)
            .await
            .status(),
        200
    );
}
