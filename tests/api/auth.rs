//! Sign-up, registration and verification, login and lockout, throttles, password
//! recovery and change, refresh-token rotation and reuse, and sessions — against the real
//! PostgreSQL and Redis.

use e2e::{
    TestApp, assert_problem,
    auth::{PASSWORD, Tokens},
    spawn_app,
};
use futures_util::future::join_all;
use jobs::Job;
use reqwest::Method;
use serde_json::{Value, json};

fn without_request_id(mut body: Value) -> Value {
    body.as_object_mut().map(|o| o.remove("request_id"));
    body
}

#[tokio::test]
async fn signup_creates_the_tenant_and_its_owner_and_logs_the_owner_in() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;

    let me = app.get_authed("acme", "/v1/me", &org.tokens.access).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["id"], org.owner_id.to_string());
    assert_eq!(me["email"], "owner@acme.example");
    assert_eq!(me["status"], "active");
    assert_eq!(me["email_verified"], false);
    assert_eq!(me["roles"].as_array().unwrap().len(), 1);
    assert_eq!(me["roles"][0]["name"], "owner");
    // The owner may do everything the catalog has.
    assert_eq!(
        me["permissions"].as_array().unwrap().len(),
        rbac::Permission::ALL.len()
    );
    let tenant: Value = app.get_as("acme", "/v1/tenant").await.json().await.unwrap();
    assert_eq!(tenant["id"], org.tenant_id.to_string());
    // The owner is asked to verify their address.
    assert!(
        app.emailed_token(&org.owner_email, "verification")
            .await
            .is_some()
    );

    let again = app
        .post_json(
            "/v1/signup",
            &json!({"tenant_slug": "acme", "tenant_name": "Other", "email": "x@y.example", "password": PASSWORD, "name": "X"}),
        )
        .await;
    assert_problem(again, 409, "slug_taken").await;
}

#[tokio::test]
async fn password_policy_names_the_rule_that_failed() {
    let app = spawn_app().await;
    let common = include_str!("../../identity/data/common-passwords.txt")
        .lines()
        .next()
        .unwrap()
        .to_uppercase();
    for (password, code) in [
        ("short pass", "too_short"),
        (&"x".repeat(129), "too_long"),
        (common.as_str(), "common"),
    ] {
        let response = app
            .post_json(
                "/v1/signup",
                &json!({"tenant_slug": "policy", "tenant_name": "P", "email": "a@b.example", "password": password, "name": "A"}),
            )
            .await;
        let body = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "password", "{body}");
        assert_eq!(body["errors"][0]["code"], code, "{body}");
    }
    // Nothing was created by the refused attempts.
    assert_problem(
        app.get_as("policy", "/v1/tenant").await,
        404,
        "tenant_not_found",
    )
    .await;
    // Any characters count, one per code point; spaces and emoji are fine.
    let org_body = json!({"tenant_slug": "policy", "tenant_name": "P", "email": "a@b.example", "password": "ünïcödé pässwörd 🌳", "name": "A"});
    assert_eq!(app.post_json("/v1/signup", &org_body).await.status(), 201);
    app.login_ok("policy", "a@b.example", "ünïcödé pässwörd 🌳")
        .await;
    // Verified exactly as typed: no case folding, no normalisation, no truncation.
    for near in [
        "Ünïcödé pässwörd 🌳",
        "ünïcödé pässwörd",
        "ünïcödé pässwörd 🌳 ",
    ] {
        assert_problem(
            app.login("policy", "a@b.example", near).await,
            401,
            "invalid_credentials",
        )
        .await;
    }
}

#[tokio::test]
async fn registration_needs_a_verified_email_and_the_link_works_once() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    app.open_registration(&org).await;
    let response = app
        .post_as(
            "acme",
            "/v1/auth/register",
            &json!({"email": "Bea@Example.com", "password": PASSWORD, "name": "Bea"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();

    let body = assert_problem(
        app.login("acme", "bea@example.com", PASSWORD).await,
        403,
        "email_not_verified",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("Verify"),
        "{body}"
    );

    let token = app
        .emailed_token("Bea@Example.com", "verification")
        .await
        .expect("verification email");
    let verified = app
        .post_as("acme", "/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(verified.status(), 200);
    let user: Value = verified.json().await.unwrap();
    assert_eq!(user["status"], "active");
    assert_eq!(user["email_verified"], true);
    app.login_ok("acme", "BEA@example.COM", PASSWORD).await;

    // Single use.
    let reused = app
        .post_as("acme", "/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_problem(reused, 400, "link_invalid").await;

    // Registering a taken address answers the same and creates nobody; its owner is told.
    let again = app
        .post_as("acme", "/v1/auth/register", &json!({"email": "bea@example.com", "password": "another long password", "name": "Impostor"}))
        .await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), accepted);
    let notices = app.emails_to("Bea@Example.com").await;
    assert_eq!(notices[0].0, "security_notice", "{notices:?}");
    app.login_ok("acme", "bea@example.com", PASSWORD).await;
    assert_problem(
        app.login("acme", "bea@example.com", "another long password")
            .await,
        401,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn an_expired_verification_link_is_refused() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    app.open_registration(&org).await;
    app.post_as(
        "acme",
        "/v1/auth/register",
        &json!({"email": "late@example.com", "password": PASSWORD, "name": "Late"}),
    )
    .await;
    let token = app
        .emailed_token("late@example.com", "verification")
        .await
        .unwrap();
    let expired = app
        .tenant_sql(
            org.tenant_id,
            "update user_tokens set expires_at = now() - interval '1 second'",
            None,
        )
        .await;
    assert!(expired >= 1);
    let response = app
        .post_as("acme", "/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_problem(response, 400, "link_invalid").await;
    assert_problem(
        app.login("acme", "late@example.com", PASSWORD).await,
        403,
        "email_not_verified",
    )
    .await;

    // A new link can be asked for, and works.
    let resend = app
        .post_as(
            "acme",
            "/v1/auth/resend-verification",
            &json!({"email": "late@example.com"}),
        )
        .await;
    assert_eq!(resend.status(), 202);
    app.run_jobs().await;
    let fresh = app
        .emailed_token("late@example.com", "verification")
        .await
        .unwrap();
    assert_ne!(fresh, token);
    let response = app
        .post_as("acme", "/v1/auth/verify-email", &json!({"token": fresh}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn recovery_requests_answer_the_same_whether_or_not_the_account_exists() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    for path in ["/v1/auth/forgot-password", "/v1/auth/resend-verification"] {
        let known = app
            .post_as("acme", path, &json!({"email": org.owner_email}))
            .await;
        let unknown = app
            .post_as("acme", path, &json!({"email": "nobody@acme.example"}))
            .await;
        assert_eq!(known.status(), 202);
        assert_eq!(unknown.status(), 202);
        let (known, unknown): (Value, Value) =
            (known.json().await.unwrap(), unknown.json().await.unwrap());
        assert_eq!(known, unknown, "{path}");
    }
    // Both answers did the same work: one job each, naming the address.
    let jobs: Vec<(String, String)> = sqlx::query_as(
        "select kind, payload->>'email' from public.jobs
         where kind in ('auth.password_reset_requested', 'auth.verification_requested')
         order by created_at, id",
    )
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    app.run_jobs().await;
    // Only the real account gets a reset link; the owner is active, so no new verification.
    assert!(
        app.emailed_token(&org.owner_email, "password_reset")
            .await
            .is_some()
    );
    assert!(app.emails_to("nobody@acme.example").await.is_empty());
    let verifications = app
        .emails_to(&org.owner_email)
        .await
        .into_iter()
        .filter(|(t, _)| t == "verification")
        .count();
    assert_eq!(verifications, 1, "only the sign-up's");
}

#[tokio::test]
async fn a_password_reset_works_once_ends_every_session_and_notifies() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.login_ok("acme", &org.owner_email, PASSWORD).await;

    app.post_as(
        "acme",
        "/v1/auth/forgot-password",
        &json!({"email": org.owner_email}),
    )
    .await;
    app.run_jobs().await;
    let token = app
        .emailed_token(&org.owner_email, "password_reset")
        .await
        .unwrap();
    let reset = json!({"token": token, "password": "a brand new passphrase"});
    let response = app.post_as("acme", "/v1/auth/reset-password", &reset).await;
    assert_eq!(response.status(), 204);

    // Every session ended at once, access and refresh alike.
    for tokens in [&org.tokens, &other] {
        app.assert_tokens_dead("acme", tokens).await;
    }
    assert_problem(
        app.login("acme", &org.owner_email, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    app.login_ok("acme", &org.owner_email, "a brand new passphrase")
        .await;
    assert_eq!(
        app.emails_to(&org.owner_email).await[0].0,
        "security_notice"
    );
    assert_eq!(
        app.audit_events(org.tenant_id, "password.reset")
            .await
            .len(),
        1
    );

    // Single use, and a weak new password is refused before the link is spent.
    assert_problem(
        app.post_as("acme", "/v1/auth/reset-password", &reset).await,
        400,
        "link_invalid",
    )
    .await;
    app.post_as(
        "acme",
        "/v1/auth/forgot-password",
        &json!({"email": org.owner_email}),
    )
    .await;
    app.run_jobs().await;
    let second = app
        .emailed_token(&org.owner_email, "password_reset")
        .await
        .unwrap();
    let weak = app
        .post_as(
            "acme",
            "/v1/auth/reset-password",
            &json!({"token": second, "password": "short"}),
        )
        .await;
    assert_problem(weak, 422, "validation_failed").await;
    // Expired links fail.
    app.tenant_sql(
        org.tenant_id,
        "update user_tokens set expires_at = now() - interval '1 second' where used_at is null",
        None,
    )
    .await;
    let late = app
        .post_as(
            "acme",
            "/v1/auth/reset-password",
            &json!({"token": second, "password": "yet another passphrase"}),
        )
        .await;
    assert_problem(late, 400, "link_invalid").await;
    for garbage in ["", "not-a-token", &"A".repeat(43)] {
        let response = app
            .post_as(
                "acme",
                "/v1/auth/reset-password",
                &json!({"token": garbage, "password": "yet another passphrase"}),
            )
            .await;
        assert_problem(response, 400, "link_invalid").await;
    }
}

#[tokio::test]
async fn changing_the_password_keeps_this_session_and_ends_the_others() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let laptop = app.login_ok("acme", &org.owner_email, PASSWORD).await;
    let change = |current: &str, new: &str| {
        app.authed(
            Method::POST,
            "acme",
            "/v1/auth/change-password",
            &org.tokens.access,
        )
        .json(&json!({"current_password": current, "new_password": new}))
        .send()
    };
    let wrong = change("not my password", "a brand new passphrase")
        .await
        .unwrap();
    let body = assert_problem(wrong, 422, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "current_password");

    assert_eq!(
        change(PASSWORD, "a brand new passphrase")
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        app.get_authed("acme", "/v1/me", &org.tokens.access)
            .await
            .status(),
        200
    );
    assert_problem(
        app.get_authed("acme", "/v1/me", &laptop.access).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.refresh("acme", &laptop.refresh).await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(app.refresh("acme", &org.tokens.refresh).await.status(), 200);
    app.login_ok("acme", &org.owner_email, "a brand new passphrase")
        .await;
    assert_eq!(
        app.emails_to(&org.owner_email).await[0].0,
        "security_notice"
    );
    assert_eq!(
        app.audit_events(org.tenant_id, "password.changed")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn login_failures_are_generic_and_lock_the_account_for_a_while() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let unknown = assert_problem(
        app.login("acme", "nobody@acme.example", "whatever it is")
            .await,
        401,
        "invalid_credentials",
    )
    .await;
    let wrong = assert_problem(
        app.login("acme", &org.owner_email, "whatever it is").await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(without_request_id(unknown), without_request_id(wrong));

    // Four more failures (five in all) lock the account.
    for _ in 0..3 {
        assert_problem(
            app.login("acme", &org.owner_email, "whatever it is").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    let fifth = app.login("acme", &org.owner_email, "whatever it is").await;
    let retry_after: u64 = fifth.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry_after), "{retry_after}");
    let body = assert_problem(fifth, 403, "account_locked").await;
    let until: chrono::DateTime<chrono::Utc> =
        body["locked_until"].as_str().unwrap().parse().unwrap();
    assert!(
        until > chrono::Utc::now() + chrono::Duration::minutes(14),
        "{body}"
    );
    // Even the right password is refused while locked.
    assert_problem(
        app.login("acme", &org.owner_email, PASSWORD).await,
        403,
        "account_locked",
    )
    .await;
    // One for the unknown address, five for the owner.
    assert_eq!(
        app.audit_events(org.tenant_id, "login.failed").await.len(),
        6
    );
    let locked = app.audit_events(org.tenant_id, "login.locked").await;
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0]["subject_id"], org.owner_id.to_string());
    assert_eq!(locked[0]["ip"], "127.0.0.1");

    // Once the lock lapses, the right password works again and the count starts afresh.
    app.tenant_sql(
        org.tenant_id,
        "update users set locked_until = now() - interval '1 second' where id = $1",
        Some(org.owner_id),
    )
    .await;
    app.login_ok("acme", &org.owner_email, PASSWORD).await;
    assert_problem(
        app.login("acme", &org.owner_email, "whatever it is").await,
        401,
        "invalid_credentials",
    )
    .await;
    let succeeded = app.audit_events(org.tenant_id, "login.succeeded").await;
    assert_eq!(succeeded.last().unwrap()["user_agent"], Value::Null);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_client_address() {
    let app = TestApp::builder()
        .env("login_ip_max_failures", "3")
        .env("trusted_proxies", "127.0.0.1/32")
        .spawn()
        .await;
    app.signup("acme").await;
    let login_from = |ip: &'static str, email: &'static str, password: &'static str| {
        app.request(Method::POST, "/v1/auth/login")
            .header("x-tenant", "acme")
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    for n in 0..3 {
        let email = ["a@x.example", "b@x.example", "c@x.example"][n];
        assert_eq!(
            login_from("203.0.113.7", email, "wrong password!")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let throttled = login_from("203.0.113.7", "owner@acme.example", PASSWORD)
        .await
        .unwrap();
    assert!(throttled.headers().contains_key("retry-after"));
    assert_problem(throttled, 429, "rate_limited").await;
    // Another address is not affected.
    assert_eq!(
        login_from("198.51.100.1", "owner@acme.example", PASSWORD)
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn sign_ups_are_throttled_per_client_address() {
    let app = TestApp::builder()
        .env("signup_ip_max_requests", "2")
        .env("trusted_proxies", "127.0.0.1/32")
        .spawn()
        .await;
    // An address no other test uses: this counter is platform-wide.
    let ip = format!("10.{}.{}.{}", rand_octet(), rand_octet(), rand_octet());
    let signup = |slug: &str| {
        app.request(Method::POST, "/v1/signup")
            .header("x-forwarded-for", ip.as_str())
            .json(&json!({"tenant_slug": slug, "tenant_name": "T", "email": "a@b.example", "password": PASSWORD, "name": "A"}))
            .send()
    };
    assert_eq!(signup("first-org").await.unwrap().status(), 201);
    assert_eq!(signup("second-org").await.unwrap().status(), 201);
    assert_problem(signup("third-org").await.unwrap(), 429, "rate_limited").await;
}

fn rand_octet() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

#[tokio::test]
async fn login_and_recovery_fail_closed_without_redis() {
    let app = TestApp::builder()
        .env("redis_url", "redis://127.0.0.1:1")
        .spawn()
        .await;
    let org = app.create_tenant("acme").await;
    for (path, body) in [
        (
            "/v1/auth/login",
            json!({"email": "a@acme.example", "password": PASSWORD}),
        ),
        (
            "/v1/auth/forgot-password",
            json!({"email": "a@acme.example"}),
        ),
        (
            "/v1/auth/reset-password",
            json!({"token": "x", "password": PASSWORD}),
        ),
        (
            "/v1/auth/resend-verification",
            json!({"email": "a@acme.example"}),
        ),
    ] {
        let response = app.post_as(org.slug.as_str(), path, &body).await;
        assert!(response.headers().contains_key("retry-after"), "{path}");
        assert_problem(response, 503, "dependency_unavailable").await;
    }
}

#[tokio::test]
async fn logins_upgrade_hashes_made_with_weaker_parameters() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let weak = identity::password::hash_now(
        identity::HashCost {
            memory_kib: 4096,
            iterations: 1,
            parallelism: 1,
        },
        PASSWORD,
    )
    .unwrap();
    let schema = tenancy::TenantId(org.tenant_id).schema_name();
    sqlx::query(&format!(
        r#"update "{schema}".users set password_hash = $1"#
    ))
    .bind(&weak)
    .execute(app.state.db.pool())
    .await
    .unwrap();
    app.login_ok("acme", &org.owner_email, PASSWORD).await;
    let stored: String =
        sqlx::query_scalar(&format!(r#"select password_hash from "{schema}".users"#))
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    app.login_ok("acme", &org.owner_email, PASSWORD).await;
}

#[tokio::test]
async fn refresh_rotates_and_a_racing_client_gets_one_successor() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;

    // Eight refreshes of the same token at once: one rotation, the same successor for all.
    let answers = join_all((0..8).map(|_| app.refresh("acme", &org.tokens.refresh))).await;
    let mut successors = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        successors.push(Tokens::from_json(&answer.json().await.unwrap()));
    }
    let successor = successors[0].refresh.clone();
    assert_ne!(successor, org.tokens.refresh);
    assert!(
        successors.iter().all(|t| t.refresh == successor),
        "{successors:?}"
    );
    let live: i64 = sqlx::query_scalar(&format!(
        r#"select count(*) from "{}".refresh_tokens where rotated_at is null"#,
        tenancy::TenantId(org.tenant_id).schema_name()
    ))
    .fetch_one(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(live, 1, "never two live successors");
    for tokens in &successors {
        assert_eq!(
            app.get_authed("acme", "/v1/me", &tokens.access)
                .await
                .status(),
            200
        );
    }

    // The successor works, and rotates in turn.
    let next = app.refresh("acme", &successor).await;
    assert_eq!(next.status(), 200);
    let next = Tokens::from_json(&next.json().await.unwrap());

    // After the grace window, the first token is a stolen one: the session is revoked.
    app.tenant_sql(
        org.tenant_id,
        "update refresh_tokens set rotated_at = rotated_at - interval '11 seconds'",
        None,
    )
    .await;
    assert_problem(
        app.refresh("acme", &org.tokens.refresh).await,
        401,
        "refresh_token_reused",
    )
    .await;
    assert_problem(
        app.refresh("acme", &next.refresh).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.get_authed("acme", "/v1/me", &next.access).await,
        401,
        "invalid_token",
    )
    .await;
    let reuse = app
        .audit_events(org.tenant_id, "refresh_token.reused")
        .await;
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["subject_id"], org.owner_id.to_string());
    // Other sessions are untouched.
    app.login_ok("acme", &org.owner_email, PASSWORD).await;
}

#[tokio::test]
async fn a_retry_within_the_grace_window_gets_the_same_successor_once_only() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let first: Value = app
        .refresh("acme", &org.tokens.refresh)
        .await
        .json()
        .await
        .unwrap();
    let retry: Value = app
        .refresh("acme", &org.tokens.refresh)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["refresh_token"], retry["refresh_token"]);
    // Once the successor itself has been used, the old token is no longer a retry.
    let successor = first["refresh_token"].as_str().unwrap();
    assert_eq!(app.refresh("acme", successor).await.status(), 200);
    assert_problem(
        app.refresh("acme", &org.tokens.refresh).await,
        401,
        "refresh_token_reused",
    )
    .await;
    for garbage in ["", "nope", &"A".repeat(43)] {
        assert_problem(app.refresh("acme", garbage).await, 401, "invalid_token").await;
    }
}

#[tokio::test]
async fn refresh_tokens_of_one_tenant_mean_nothing_to_another() {
    let app = spawn_app().await;
    let a = app.signup("tenant-a").await;
    app.signup("tenant-b").await;
    assert_problem(
        app.refresh("tenant-b", &a.tokens.refresh).await,
        401,
        "invalid_token",
    )
    .await;
    let response = app.get_authed("tenant-b", "/v1/me", &a.tokens.access).await;
    assert_problem(response, 403, "wrong_tenant").await;
    assert_eq!(
        app.refresh("tenant-a", &a.tokens.refresh).await.status(),
        200
    );
}

#[tokio::test]
async fn sessions_are_listed_and_ended_one_by_one_or_all_at_once() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let phone = app
        .request(Method::POST, "/v1/auth/login")
        .header("x-tenant", "acme")
        .header("user-agent", "PhoneApp/1.0")
        .json(&json!({"email": org.owner_email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let phone = Tokens::from_json(&phone.json().await.unwrap());
    let laptop = app.login_ok("acme", &org.owner_email, PASSWORD).await;

    let list: Value = app
        .get_authed("acme", "/v1/auth/sessions", &laptop.access)
        .await
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let phone_session = items
        .iter()
        .find(|s| s["user_agent"] == "PhoneApp/1.0")
        .unwrap();
    assert_eq!(phone_session["ip"], "127.0.0.1");

    let end = |id: &str| {
        app.authed(
            Method::DELETE,
            "acme",
            &format!("/v1/auth/sessions/{id}"),
            &laptop.access,
        )
        .send()
    };
    assert_eq!(
        end(phone_session["id"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        204
    );
    assert_problem(
        app.get_authed("acme", "/v1/me", &phone.access).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.refresh("acme", &phone.refresh).await,
        401,
        "invalid_token",
    )
    .await;
    assert_problem(
        end(phone_session["id"].as_str().unwrap()).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_problem(
        end(&uuid::Uuid::new_v4().to_string()).await.unwrap(),
        404,
        "not_found",
    )
    .await;

    // Logout ends this session only.
    let logout = app
        .authed(Method::POST, "acme", "/v1/auth/logout", &laptop.access)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_problem(
        app.get_authed("acme", "/v1/me", &laptop.access).await,
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

    // Logout-all ends every one.
    let second = app.login_ok("acme", &org.owner_email, PASSWORD).await;
    let all = app
        .authed(Method::POST, "acme", "/v1/auth/logout-all", &second.access)
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), 204);
    for tokens in [&org.tokens, &second] {
        app.assert_tokens_dead("acme", tokens).await;
    }
    // Unauthenticated requests are told how to authenticate.
    let anonymous = app.get_as("acme", "/v1/auth/sessions").await;
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_problem(anonymous, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_non_ascii_address_is_one_account_in_every_spelling() {
    let app = spawn_app().await;
    let org = app.signup("buecher").await;
    app.open_registration(&org).await;
    let register = |email: &'static str| {
        let app = &app;
        async move {
            app.post_as(
                "buecher",
                "/v1/auth/register",
                &json!({"email": email, "password": PASSWORD, "name": "Ana"}),
            )
            .await
        }
    };
    let first = register("ANA@BÜCHER.TEST").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The same address again: the same answer, nobody new.
    let again = register("ANA@BÜCHER.TEST").await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    let token = app
        .emailed_token("ANA@BÜCHER.TEST", "verification")
        .await
        .expect("verification email");
    let verified = app
        .post_as("buecher", "/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(verified.status(), 200);
    let user: Value = verified.json().await.unwrap();
    assert_eq!(user["email"], "ANA@BÜCHER.TEST", "kept as given");
    app.login_ok("buecher", "ANA@BÜCHER.TEST", PASSWORD).await;
    app.login_ok("buecher", "ana@bücher.test", PASSWORD).await;
    // Decomposed ü (u + combining diaeresis) is the same mailbox too.
    app.login_ok("buecher", "Ana@Bu\u{308}cher.test", PASSWORD)
        .await;

    // The lower-case spelling finds the account: same answer, a notice, no second user.
    let lower = register("ana@bücher.test").await;
    assert_eq!(lower.status(), 202);
    assert_eq!(lower.json::<Value>().await.unwrap(), first);
    let schema = tenancy::TenantId(org.tenant_id).schema_name();
    let users: Vec<(String, String)> = sqlx::query_as(&format!(
        "select email, email_key from {schema}.users where id <> $1 order by created_at"
    ))
    .bind(org.owner_id)
    .fetch_all(app.state.db.pool())
    .await
    .unwrap();
    assert_eq!(
        users,
        [("ANA@BÜCHER.TEST".to_owned(), "ana@bücher.test".to_owned())]
    );
    let emails = app.emails_to("ANA@BÜCHER.TEST").await;
    let notices = emails
        .iter()
        .filter(|(t, _)| t == "security_notice")
        .count();
    assert_eq!(notices, 2, "one per repeated registration: {emails:?}");

    // Recovery by either spelling reaches the account.
    let forgot = app
        .post_as(
            "buecher",
            "/v1/auth/forgot-password",
            &json!({"email": "ana@BÜCHER.test"}),
        )
        .await;
    assert_eq!(forgot.status(), 202);
    assert!(
        app.emailed_token("ANA@BÜCHER.TEST", "password_reset")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn job_payloads_and_the_admin_view_hold_no_link_secret() {
    let app = spawn_app().await;
    let org = app.signup("secrets").await;
    app.open_registration(&org).await;
    let registered = app
        .post_as(
            "secrets",
            "/v1/auth/register",
            &json!({"email": "cy@secrets.example", "password": PASSWORD, "name": "Cy"}),
        )
        .await;
    assert_eq!(registered.status(), 202);
    let forgot = app
        .post_as(
            "secrets",
            "/v1/auth/forgot-password",
            &json!({"email": org.owner_email}),
        )
        .await;
    assert_eq!(forgot.status(), 202);
    let payloads = || async {
        sqlx::query_scalar::<_, String>("select payload::text from public.jobs")
            .fetch_all(app.state.db.pool())
            .await
            .unwrap()
    };
    // Queued: a reference to the user and the purpose, nothing usable.
    let queued = payloads().await;
    assert!(
        queued
            .iter()
            .any(|p| p.contains("verify_email") && p.contains("user_id")),
        "{queued:?}"
    );

    // Sent (the helpers run the jobs and read the outbox).
    let verification = app
        .emailed_token("cy@secrets.example", "verification")
        .await
        .expect("verification email");
    let owner_verification = app
        .emailed_token(&org.owner_email, "verification")
        .await
        .expect("the owner's verification email");
    let reset = app
        .emailed_token(&org.owner_email, "password_reset")
        .await
        .expect("reset email");
    let tokens = [&verification, &owner_verification, &reset];
    for payload in payloads().await {
        assert!(!payload.contains("token="), "{payload}");
        for token in tokens {
            assert!(!payload.contains(token.as_str()), "{payload}");
        }
    }
    let key = app.admin_key().await;
    let listed = app
        .request(Method::GET, "/v1/admin/jobs?limit=100")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await.unwrap();
    assert!(listed.contains("auth.link_email"), "{listed}");
    assert!(!listed.contains("token="), "{listed}");
    for token in tokens {
        assert!(!listed.contains(token.as_str()));
    }

    // The links from the outbox work.
    let verified = app
        .post_as(
            "secrets",
            "/v1/auth/verify-email",
            &json!({"token": verification}),
        )
        .await;
    assert_eq!(verified.status(), 200);
    let owner = app
        .post_as(
            "secrets",
            "/v1/auth/verify-email",
            &json!({"token": owner_verification}),
        )
        .await;
    assert_eq!(owner.status(), 200);
    assert_eq!(owner.json::<Value>().await.unwrap()["email_verified"], true);
    let reset = app
        .post_as(
            "secrets",
            "/v1/auth/reset-password",
            &json!({"token": reset, "password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(reset.status(), 204);
    app.login_ok("secrets", "cy@secrets.example", PASSWORD)
        .await;
    app.login_ok("secrets", &org.owner_email, "a brand new passphrase")
        .await;
}

#[tokio::test]
async fn the_admin_job_view_redacts_secret_fields_of_any_payload() {
    let app = spawn_app().await;
    // A job as an older release (or a careless one) might have enqueued it.
    let mut vars = serde_json::Map::new();
    vars.insert("user_name".into(), json!("Ada"));
    vars.insert(
        "link".into(),
        json!("https://acme.canopy.test/verify-email?token=s3cr3t-t0k3n"),
    );
    let mut conn = app.state.db.pool().acquire().await.unwrap();
    let id = jobs::enqueue(
        &mut conn,
        email::SendEmail {
            to: "ada@example.com".into(),
            template: email::Template::Verification,
            vars,
            user_id: None,
        }
        .to_job()
        .unwrap(),
    )
    .await
    .unwrap();
    drop(conn);
    let key = app.admin_key().await;
    let listed: Value = app
        .request(Method::GET, "/v1/admin/jobs?kind=email.send")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = &listed["items"][0];
    assert_eq!(job["id"], id.to_string());
    assert_eq!(job["payload"]["vars"]["link"], jobs::REDACTED);
    assert_eq!(job["payload"]["vars"]["user_name"], "Ada");
    assert_eq!(job["payload"]["to"], "ada@example.com");
    assert!(!listed.to_string().contains("s3cr3t"), "{listed}");
}

/// `POST /v1/auth/register` of `email` in tenant `slug`: the status and the body without
/// its request id.
async fn register(app: &TestApp, slug: &str, email: &str) -> (u16, Value) {
    let response = app
        .post_as(
            slug,
            "/v1/auth/register",
            &json!({"email": email, "password": PASSWORD, "name": "Someone"}),
        )
        .await;
    let status = response.status().as_u16();
    (
        status,
        without_request_id(response.json().await.expect("well-formed answer")),
    )
}

/// The user of `org` with this address (as its owner sees the directory), if any.
async fn user_by_email(app: &TestApp, org: &e2e::auth::Signup, email: &str) -> Option<Value> {
    let page: Value = app
        .get_authed(&org.slug, "/v1/users?limit=100", &org.tokens.access)
        .await
        .json()
        .await
        .expect("well-formed answer");
    page["items"]
        .as_array()
        .expect("well-formed answer")
        .iter()
        .find(|u| {
            u["email"]
                .as_str()
                .expect("well-formed answer")
                .eq_ignore_ascii_case(email)
        })
        .cloned()
}

/// How many emails were sent to `email` (after running the due jobs).
async fn emails_sent_to(app: &TestApp, email: &str) -> usize {
    app.emails_to(email).await.len()
}

fn role_names(user: &Value) -> Vec<&str> {
    user["roles"]
        .as_array()
        .expect("well-formed answer")
        .iter()
        .map(|r| r["name"].as_str().expect("well-formed answer"))
        .collect()
}

#[tokio::test]
async fn invite_only_registration_makes_nothing_and_answers_like_a_taken_address() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let taken = register(&app, "acme", &org.owner_email).await;
    assert_eq!(taken.0, 202);
    let refused = register(&app, "acme", "newcomer@example.com").await;
    assert_eq!(refused, taken);
    assert_eq!(
        user_by_email(&app, &org, "newcomer@example.com").await,
        None
    );
    assert_eq!(emails_sent_to(&app, "newcomer@example.com").await, 0);
    assert!(
        app.audit_events(org.tenant_id, "user.registered")
            .await
            .is_empty()
    );
    assert_problem(
        app.login("acme", "newcomer@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn an_open_tenant_registers_viewers_or_the_role_it_chose() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    app.open_registration(&org).await;
    assert_eq!(register(&app, "acme", "first@example.com").await.0, 202);
    let first = user_by_email(&app, &org, "first@example.com")
        .await
        .unwrap();
    assert_eq!(first["status"], "pending");
    assert_eq!(role_names(&first), ["viewer"]);

    let helper = app
        .create_role_ok(
            &org,
            &json!({"name": "helper", "permissions": ["products:read", "products:write"]}),
        )
        .await;
    let response = app
        .update_tenant(
            "acme",
            &org.tokens.access,
            &json!({"registration_role_id": helper}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["registration_policy"], "open");
    assert_eq!(profile["registration_role_id"], helper.to_string());
    register(&app, "acme", "second@example.com").await;
    let second = user_by_email(&app, &org, "second@example.com")
        .await
        .unwrap();
    assert_eq!(role_names(&second), ["helper"]);

    // The role changed since it was chosen and now manages users: registrants get viewer.
    let changed = app
        .send_authed(
            Method::PATCH,
            "acme",
            &format!("/v1/roles/{helper}"),
            &org.tokens.access,
            Some(&json!({"permissions": ["products:read", "users:manage"]})),
        )
        .await;
    assert_eq!(changed.status(), 200);
    register(&app, "acme", "third@example.com").await;
    let third = user_by_email(&app, &org, "third@example.com")
        .await
        .unwrap();
    assert_eq!(role_names(&third), ["viewer"]);

    // `null` goes back to the default, which the profile names.
    let viewer = app.role_id(&org, "viewer").await;
    let profile: Value = app
        .update_tenant(
            "acme",
            &org.tokens.access,
            &json!({"registration_role_id": null}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["registration_role_id"], viewer.to_string());
}

#[tokio::test]
async fn roles_at_admin_level_cannot_be_what_registration_grants() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let admin = app.role_id(&org, "admin").await;
    let owner = app.role_id(&org, "owner").await;
    let member = app.role_id(&org, "member").await;
    let deputy = app
        .create_role_ok(
            &org,
            &json!({"name": "deputy", "permissions": ["users:manage"]}),
        )
        .await;
    let designer = app
        .create_role_ok(
            &org,
            &json!({"name": "designer", "permissions": ["roles:manage"]}),
        )
        .await;
    let heir = app
        .create_role_ok(
            &org,
            &json!({"name": "heir", "parent_id": designer, "permissions": ["products:read"]}),
        )
        .await;
    let payer = app
        .create_role_ok(
            &org,
            &json!({"name": "payer", "permissions": ["billing:manage"]}),
        )
        .await;
    for (role, code) in [
        (owner, "too_powerful"),
        (admin, "too_powerful"),
        (deputy, "too_powerful"),
        (heir, "too_powerful"),
        (payer, "too_powerful"),
        (uuid::Uuid::now_v7(), "not_found"),
    ] {
        let response = app
            .update_tenant(
                "acme",
                &org.tokens.access,
                &json!({"registration_role_id": role}),
            )
            .await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(
            problem["errors"][0]["field"], "registration_role_id",
            "{problem}"
        );
        assert_eq!(problem["errors"][0]["code"], code, "{problem}");
    }
    let viewer = app.role_id(&org, "viewer").await;
    let profile: Value = app
        .get_authed("acme", "/v1/tenant", &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["registration_role_id"], viewer.to_string());

    // A settings keeper may not hand out what they do not hold themselves.
    let keeper = app
        .create_role_ok(
            &org,
            &json!({"name": "keeper", "permissions": ["tenant:manage"]}),
        )
        .await;
    let (_, tokens) = app
        .user_with_roles(&org, "keeper@acme.example", &[keeper])
        .await;
    let problem = assert_problem(
        app.update_tenant(
            "acme",
            &tokens.access,
            &json!({"registration_role_id": member}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert!(
        problem["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("products:write")),
        "{problem}"
    );
    assert_eq!(
        app.update_tenant(
            "acme",
            &org.tokens.access,
            &json!({"registration_role_id": member})
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn the_domain_policy_admits_only_its_domains() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let response = app
        .update_tenant(
            "acme",
            &org.tokens.access,
            &json!({
                "registration_policy": "domain",
                "registration_domains": ["Acme.Example", "bücher.example", "acme.example "],
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["registration_policy"], "domain");
    assert_eq!(
        profile["registration_domains"],
        json!(["acme.example", "xn--bcher-kva.example"])
    );

    let taken = register(&app, "acme", &org.owner_email).await;
    let admitted = register(&app, "acme", "Ada@ACME.example").await;
    assert_eq!(admitted, taken);
    let ada = user_by_email(&app, &org, "ada@acme.example").await.unwrap();
    assert_eq!(ada["status"], "pending");
    assert_eq!(role_names(&ada), ["viewer"]);
    assert!(
        emails_sent_to(&app, "Ada@ACME.example").await >= 1,
        "a verification email"
    );
    for outsider in [
        "eve@evil.example",
        "eve@sub.acme.example",
        "eve@acme.example.evil",
    ] {
        assert_eq!(register(&app, "acme", outsider).await, taken, "{outsider}");
        assert_eq!(
            user_by_email(&app, &org, outsider).await,
            None,
            "{outsider}"
        );
        assert_eq!(emails_sent_to(&app, outsider).await, 0, "{outsider}");
    }
}

#[tokio::test]
async fn registration_settings_are_validated_with_422s() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let too_many: Vec<String> = (0..51).map(|n| format!("d{n}.example")).collect();
    let long = format!("{}.example", vec!["a".repeat(63); 4].join("."));
    for (body, field, code) in [
        (json!({}), "", "empty"),
        (
            json!({"registration_policy": "domain"}),
            "registration_domains",
            "required",
        ),
        (
            json!({"registration_policy": "domain", "registration_domains": []}),
            "registration_domains",
            "required",
        ),
        (
            json!({"registration_domains": too_many}),
            "registration_domains",
            "too_long",
        ),
        (
            json!({"registration_domains": ["ok.example", "not a domain"]}),
            "registration_domains[1]",
            "invalid",
        ),
        (
            json!({"registration_domains": [long]}),
            "registration_domains[0]",
            "too_long",
        ),
        (
            json!({"registration_domains": ["ada@acme.example"]}),
            "registration_domains[0]",
            "invalid",
        ),
    ] {
        let response = app.update_tenant("acme", &org.tokens.access, &body).await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["code"], code, "{body}: {problem}");
    }
    for body in [
        json!({"registration_policy": "everyone"}),
        json!({"registration_domains": "acme.example"}),
        json!({"registration_role_id": "not-a-uuid"}),
        json!({"registration_policy": "open", "plan": "business"}),
    ] {
        let response = app.update_tenant("acme", &org.tokens.access, &body).await;
        assert_problem(response, 422, "validation_failed").await;
    }
    let profile: Value = app
        .get_authed("acme", "/v1/tenant", &org.tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(profile["registration_policy"], "invite_only");
    assert_eq!(profile["registration_domains"], json!([]));
}
