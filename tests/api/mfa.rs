//! Two-factor authentication against the real services: enrollment (secret, URI, QR
//! code, the secret encrypted at rest), login with a code or a recovery code, the ±1
//! step window and replay refusal (sequential and concurrent), wrong codes toward the
//! lockout, recovery codes and their regeneration, disabling, MFA tokens (expired, used,
//! wrong purpose, another tenant's), the tenant's `mfa_required_for` policy, and
//! cross-tenant attempts.

use e2e::{
    TestApp, assert_problem,
    auth::{PASSWORD, Signup},
    mfa::{clear_of_step_boundary, now_step},
};
use identity::mfa::{SecretsCipher, TotpSecret};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn audit_events(app: &TestApp, org: &Signup, event: &str) -> Vec<Value> {
    let body: Value = app
        .get_authed(
            &org.slug,
            &format!("/v1/audit-events?event={event}"),
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .expect("JSON");
    body["items"].as_array().expect("items").clone()
}

async fn notices(app: &TestApp, to: &str) -> Vec<String> {
    app.emails_to(to)
        .await
        .into_iter()
        .filter(|(template, _)| template == "security_notice")
        .map(|(_, m)| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn mfa_status(app: &TestApp, tenant: &str, access: &str) -> Value {
    app.get_authed(tenant, "/v1/me/mfa", access)
        .await
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn enrollment_then_login_with_a_code_and_the_secret_is_encrypted_at_rest() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    let access = &org.tokens.access;
    assert_eq!(mfa_status(&app, "acme", access).await["totp"], "disabled");

    // Starting needs the password: an access token alone does not do.
    let bare = app
        .send_authed(Method::POST, "acme", "/v1/me/mfa/totp", access, None)
        .await;
    assert!(bare.status().is_client_error(), "{}", bare.status());
    let wrong = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/totp",
            access,
            Some(&json!({"password": "not the password"})),
        )
        .await;
    let problem = assert_problem(wrong, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "password", "{problem}");
    let failed = audit_events(&app, &org, "mfa.enroll_failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(mfa_status(&app, "acme", access).await["totp"], "disabled");

    let started = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/totp",
            access,
            Some(&json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(started.status(), 201);
    let body: Value = started.json().await.unwrap();
    let base32 = body["secret"].as_str().unwrap();
    let secret = TotpSecret::from_base32(base32).expect("a 160-bit base32 secret");
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={base32}")), "{uri}");
    assert!(uri.contains("owner%40acme.example"), "{uri}");
    let svg = body["qr_code_svg"].as_str().unwrap();
    assert!(svg.starts_with("<?xml"), "{svg}");
    assert!(
        svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(svg.contains("<path"), "the QR code draws modules: {svg}");
    assert_eq!(mfa_status(&app, "acme", access).await["totp"], "pending");

    // The stored secret is ciphertext, bound to this tenant and user.
    let mut tx = app
        .state
        .tenant_db
        .begin(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap();
    let stored: Vec<u8> =
        sqlx::query_scalar("select secret_ciphertext from user_totp where user_id = $1")
            .bind(org.owner_id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    assert!(
        !stored.windows(20).any(|w| w == secret.as_bytes()),
        "plaintext secret stored"
    );
    assert!(!String::from_utf8_lossy(&stored).contains(base32));
    let cipher = SecretsCipher::new(app.settings.secrets.key());
    assert_eq!(
        cipher
            .open(org.tenant_id, org.owner_id, &stored)
            .expect("decrypts"),
        secret
    );
    assert!(cipher.open(org.tenant_id, Uuid::new_v4(), &stored).is_err());
    assert!(cipher.open(Uuid::new_v4(), org.owner_id, &stored).is_err());

    // A wrong first code changes nothing; the right one turns MFA on.
    clear_of_step_boundary(3).await;
    let step = now_step();
    let wrong = if secret.code_at(step) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let response = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/totp/confirm",
            access,
            Some(&json!({"code": wrong})),
        )
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "code");
    let response = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/totp/confirm",
            access,
            Some(&json!({"code": secret.code_at(step)})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let codes: Vec<&str> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 10);
    assert!(
        codes
            .iter()
            .all(|c| c.len() == 14 && c.matches('-').count() == 2)
    );
    let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 10);
    let status = mfa_status(&app, "acme", access).await;
    assert_eq!(status["totp"], "enabled");
    assert_eq!(status["recovery_codes_left"], 10);
    let stored_codes: Vec<Vec<u8>> =
        sqlx::query_scalar("select code_hash from recovery_codes where user_id = $1")
            .bind(org.owner_id)
            .fetch_all(
                &mut *app
                    .state
                    .tenant_db
                    .begin(tenancy::TenantId(org.tenant_id))
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    assert_eq!(stored_codes.len(), 10);
    assert!(
        stored_codes
            .iter()
            .all(|h| h.len() == 32 && !codes.iter().any(|c| c.as_bytes() == h.as_slice()))
    );
    assert_eq!(audit_events(&app, &org, "mfa.enabled").await.len(), 1);
    assert!(
        notices(&app, &org.owner_email)
            .await
            .iter()
            .any(|t| t.contains("Two-factor authentication was turned on")),
        "no notice of enabling"
    );

    // Enrolling again while on is refused.
    let again = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/totp",
            access,
            Some(&json!({"password": PASSWORD})),
        )
        .await;
    assert_problem(again, 409, "mfa_already_enabled").await;

    // The password step answers an MFA token and no tokens.
    let response = app.login("acme", &org.owner_email, PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "mfa_required");
    assert_eq!(body["methods"], json!(["totp", "recovery_code"]));
    assert_eq!(body["expires_in"], 300);
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    let token = body["mfa_token"].as_str().unwrap();
    // The confirmation's code was used: presenting it again is a replay.
    let replay = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": secret.code_at(step)}),
        )
        .await;
    assert_problem(replay, 401, "mfa_code_invalid").await;
    let next = secret.code_at(step + 1);
    let response = app
        .verify_mfa("acme", &json!({"mfa_token": token, "code": next}))
        .await;
    assert_eq!(response.status(), 200);
    let tokens = e2e::auth::Tokens::from_json(&response.json().await.unwrap());
    let me = app.get_authed("acme", "/v1/me", &tokens.access).await;
    assert_eq!(me.status(), 200);
    // The token is spent.
    let used = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": secret.code_at(step + 1)}),
        )
        .await;
    assert_problem(used, 401, "mfa_token_invalid").await;
    // The code just accepted, with a new login: refused (replay).
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let replay = app
        .verify_mfa("acme", &json!({"mfa_token": token, "code": next}))
        .await;
    assert_problem(replay, 401, "mfa_code_invalid").await;
    let failed = audit_events(&app, &org, "login.failed").await;
    assert!(
        failed
            .iter()
            .any(|e| e["details"]["reason"] == "wrong_mfa_code")
    );
}

#[tokio::test]
async fn codes_of_one_step_either_side_pass_two_steps_do_not_and_none_twice() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    // Made before the owner has MFA (the harness logs in as the owner to invite).
    let second = app
        .user_with_roles(
            &org,
            "second@acme.example",
            &[app.role_id(&org, "member").await],
        )
        .await;
    clear_of_step_boundary(10).await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let now = now_step();
    let login = |code: String| {
        let app = &app;
        let email = org.owner_email.clone();
        async move {
            let token = app.login_for_mfa("acme", &email, PASSWORD).await;
            app.verify_mfa("acme", &json!({"mfa_token": token, "code": code}))
                .await
        }
    };
    // The enrollment used `now`: the previous step is no longer acceptable (replay), as
    // two steps away either side never is; the next one is.
    for step in [now - 2, now - 1, now, now + 2] {
        let code = auth.code(step);
        if (now - 1..=now + 1).any(|s| s != step && auth.code(s) == code) {
            continue; // A chance collision (1 in 10⁶) with an acceptable step.
        }
        assert_problem(login(code).await, 401, "mfa_code_invalid").await;
    }
    assert_eq!(login(auth.code(now + 1)).await.status(), 200);
    assert_problem(login(auth.code(now + 1)).await, 401, "mfa_code_invalid").await;

    // A user who enrolled a step ago: a code of the step before now still passes.
    clear_of_step_boundary(10).await;
    let auth2 = app.enroll_totp("acme", &second.1.access).await;
    let now = now_step();
    // Move the last accepted step back, as if the enrollment had been two steps ago.
    let mut tx = app
        .state
        .tenant_db
        .begin(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap();
    sqlx::query("update user_totp set last_used_step = $2 where user_id = $1")
        .bind(second.0)
        .bind(i64::try_from(now - 2).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let token = app
        .login_for_mfa("acme", "second@acme.example", PASSWORD)
        .await;
    let response = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": auth2.code(now - 1)}),
        )
        .await;
    assert_eq!(response.status(), 200, "a code of the previous step passes");
}

#[tokio::test]
async fn two_concurrent_logins_with_one_code_let_exactly_one_in() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    clear_of_step_boundary(10).await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let code = auth.code(now_step() + 1);
    let first = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let second = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let (one, two) = (
        json!({"mfa_token": first, "code": code}),
        json!({"mfa_token": second, "code": code}),
    );
    let (a, b) = tokio::join!(app.verify_mfa("acme", &one), app.verify_mfa("acme", &two));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "exactly one login passes");
}

#[tokio::test]
async fn wrong_codes_lock_the_account_and_a_locked_account_gets_no_second_step() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    clear_of_step_boundary(10).await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let wrong = |step: u64| {
        let good: Vec<String> = (step - 1..=step + 1).map(|s| auth.code(s)).collect();
        (0..10)
            .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
            .find(|c| !good.contains(c))
            .expect("a wrong code")
    };
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    // The default policy locks at the fifth failure.
    for _ in 0..4 {
        let response = app
            .verify_mfa(
                "acme",
                &json!({"mfa_token": token, "code": wrong(now_step())}),
            )
            .await;
        assert_problem(response, 401, "mfa_code_invalid").await;
    }
    // A new password step does not reset the count.
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let response = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": wrong(now_step())}),
        )
        .await;
    let problem = assert_problem(response, 403, "account_locked").await;
    assert!(problem["locked_until"].is_string());
    // Locked: the right code is refused, and so is the password step.
    let response = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": auth.code(now_step() + 1)}),
        )
        .await;
    assert_problem(response, 403, "account_locked").await;
    let response = app.login("acme", &org.owner_email, PASSWORD).await;
    assert_problem(response, 403, "account_locked").await;
    assert_eq!(audit_events(&app, &org, "login.locked").await.len(), 1);
}

#[tokio::test]
async fn an_mfa_token_dies_after_five_wrong_codes() {
    let app = TestApp::builder()
        .env("login_max_failures", "100")
        .spawn()
        .await;
    let org = app.signup("acme").await;
    clear_of_step_boundary(10).await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let step = now_step();
    let good: Vec<String> = (step - 1..=step + 2).map(|s| auth.code(s)).collect();
    let wrong = (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !good.contains(c))
        .unwrap();
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    for _ in 0..5 {
        let response = app
            .verify_mfa("acme", &json!({"mfa_token": token, "code": wrong}))
            .await;
        assert_problem(response, 401, "mfa_code_invalid").await;
    }
    let response = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": auth.code(step + 1)}),
        )
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;
}

#[tokio::test]
async fn a_recovery_code_works_once_and_regenerating_voids_the_old_ones() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let first = &auth.recovery_codes[0];
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    // Typed in upper case without the hyphens: the same code.
    let typed = first.replace('-', "").to_uppercase();
    let response = app
        .verify_mfa("acme", &json!({"mfa_token": token, "recovery_code": typed}))
        .await;
    assert_eq!(response.status(), 200);
    let used = audit_events(&app, &org, "mfa.recovery_code_used").await;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["details"]["recovery_codes_left"], 9);
    assert!(
        notices(&app, &org.owner_email)
            .await
            .iter()
            .any(|t| t.contains("A recovery code was used")),
        "no notice of the recovery code"
    );
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let again = app
        .verify_mfa("acme", &json!({"mfa_token": token, "recovery_code": first}))
        .await;
    assert_problem(again, 401, "mfa_code_invalid").await;
    assert_eq!(
        mfa_status(&app, "acme", &org.tokens.access).await["recovery_codes_left"],
        9
    );

    // Regenerating needs the password, and voids the old codes.
    let response = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/recovery-codes",
            &org.tokens.access,
            Some(&json!({"password": "not the password"})),
        )
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "password");
    let response = app
        .send_authed(
            Method::POST,
            "acme",
            "/v1/me/mfa/recovery-codes",
            &org.tokens.access,
            Some(&json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let fresh: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !auth.recovery_codes.contains(c)));
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let old = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "recovery_code": auth.recovery_codes[1]}),
        )
        .await;
    assert_problem(old, 401, "mfa_code_invalid").await;
    let new = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "recovery_code": fresh[0]}),
        )
        .await;
    assert_eq!(new.status(), 200);
    assert_eq!(
        audit_events(&app, &org, "mfa.recovery_codes_regenerated")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn disabling_needs_the_password_and_a_code() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    clear_of_step_boundary(10).await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let step = now_step();
    let disable = |body: Value| {
        let app = &app;
        let access = org.tokens.access.clone();
        async move {
            app.send_authed(
                Method::DELETE,
                "acme",
                "/v1/me/mfa/totp",
                &access,
                Some(&body),
            )
            .await
        }
    };
    let good: Vec<String> = (step - 1..=step + 1).map(|s| auth.code(s)).collect();
    let wrong = (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !good.contains(c))
        .unwrap();
    for (body, field) in [
        (json!({"password": PASSWORD}), "code"),
        (json!({"code": auth.code(step + 1)}), "password"),
        (
            json!({"password": "wrong password", "code": auth.code(step + 1)}),
            "password",
        ),
        (json!({"password": PASSWORD, "code": wrong}), "code"),
        (json!({"password": PASSWORD, "code": "12345"}), "code"),
        (
            json!({"password": PASSWORD, "code": auth.code(step + 1), "recovery_code": auth.recovery_codes[0]}),
            "recovery_code",
        ),
    ] {
        let status = disable(body.clone()).await;
        let code = status.status().as_u16();
        let problem: Value = status.json().await.unwrap();
        assert_eq!(code, 422, "{body}: {problem}");
        assert!(
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{body}: {problem}"
        );
    }
    assert_eq!(
        mfa_status(&app, "acme", &org.tokens.access).await["totp"],
        "enabled"
    );
    let response = disable(json!({"password": PASSWORD, "code": auth.code(step + 1)})).await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        mfa_status(&app, "acme", &org.tokens.access).await["totp"],
        "disabled"
    );
    assert_eq!(audit_events(&app, &org, "mfa.disabled").await.len(), 1);
    assert!(
        notices(&app, &org.owner_email)
            .await
            .iter()
            .any(|t| t.contains("turned off")),
        "no notice of disabling"
    );
    // Logins are one step again; disabling twice is a conflict.
    let response = app.login("acme", &org.owner_email, PASSWORD).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "authenticated");
    assert!(body["access_token"].is_string());
    let response = disable(json!({"password": PASSWORD, "code": auth.code(step + 1)})).await;
    assert_problem(response, 409, "mfa_not_enabled").await;
}

#[tokio::test]
async fn mfa_tokens_expired_used_for_another_step_or_of_another_tenant_are_refused() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.signup("globex").await;
    clear_of_step_boundary(10).await;
    let auth = app.enroll_totp("acme", &org.tokens.access).await;
    let code = auth.code(now_step() + 1);

    // Another tenant's `X-Tenant` does not know the token (and its wrong codes lock no one).
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let response = app
        .verify_mfa("globex", &json!({"mfa_token": token, "code": code}))
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;
    // Nor do the enrollment endpoints take a login token.
    for (path, body) in [
        ("/v1/auth/mfa/enroll", json!({"mfa_token": token})),
        (
            "/v1/auth/mfa/enroll/confirm",
            json!({"mfa_token": token, "code": code}),
        ),
    ] {
        let response = app.post_as("acme", path, &body).await;
        assert_problem(response, 401, "mfa_token_invalid").await;
    }
    // Garbage is no token.
    let response = app
        .verify_mfa("acme", &json!({"mfa_token": "nonsense", "code": code}))
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;

    // Expired.
    let mut tx = app
        .state
        .tenant_db
        .begin(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap();
    sqlx::query("update mfa_challenges set expires_at = now() - interval '1 second'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let response = app
        .verify_mfa("acme", &json!({"mfa_token": token, "code": code}))
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;

    // Still valid in its own tenant when live; then used.
    let token = app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let response = app
        .verify_mfa("acme", &json!({"mfa_token": token, "code": code}))
        .await;
    assert_eq!(response.status(), 200);
    let response = app
        .verify_mfa(
            "acme",
            &json!({"mfa_token": token, "code": auth.code(now_step() + 1)}),
        )
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;

    // Another tenant's credential on this tenant's MFA endpoints.
    for (method, path, body) in [
        (Method::GET, "/v1/me/mfa", None),
        (
            Method::POST,
            "/v1/me/mfa/totp",
            Some(json!({"password": PASSWORD})),
        ),
        (
            Method::POST,
            "/v1/me/mfa/totp/confirm",
            Some(json!({"code": code})),
        ),
        (
            Method::POST,
            "/v1/me/mfa/recovery-codes",
            Some(json!({"password": PASSWORD})),
        ),
        (
            Method::DELETE,
            "/v1/me/mfa/totp",
            Some(json!({"password": PASSWORD, "code": code})),
        ),
    ] {
        let response = app
            .send_authed(method, "acme", path, &other.tokens.access, body.as_ref())
            .await;
        assert_problem(response, 403, "wrong_tenant").await;
    }
    // The other tenant's owner has no MFA of their own, and acme's is unchanged.
    assert_eq!(
        mfa_status(&app, "globex", &other.tokens.access).await["totp"],
        "disabled"
    );
    assert_eq!(
        mfa_status(&app, "acme", &org.tokens.access).await["totp"],
        "enabled"
    );
}

#[tokio::test]
async fn the_tenant_policy_makes_holders_of_a_role_enroll_before_they_log_in() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    let other = app.signup("globex").await;
    let member = app.role_id(&org, "member").await;
    let viewer = app.role_id(&org, "viewer").await;
    let (_, _) = app
        .user_with_roles(&org, "mem@acme.example", &[member])
        .await;
    let (_, _) = app
        .user_with_roles(&org, "view@acme.example", &[viewer])
        .await;
    let patch = |body: Value| {
        let app = &app;
        let access = org.tokens.access.clone();
        async move {
            app.send_authed(Method::PATCH, "acme", "/v1/tenant", &access, Some(&body))
                .await
        }
    };
    // Unknown ids, another tenant's role, duplicates: 422.
    let globex_member = app.role_id(&other, "member").await;
    for (ids, field) in [
        (json!([Uuid::new_v4()]), "mfa_required_for[0]"),
        (json!([member, globex_member]), "mfa_required_for[1]"),
        (json!([member, member]), "mfa_required_for[1]"),
    ] {
        let problem = assert_problem(
            patch(json!({"mfa_required_for": ids})).await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let response = patch(json!({"mfa_required_for": [member]})).await;
    assert_eq!(response.status(), 200);
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["mfa_required_for"], json!([member]));
    let changed = audit_events(&app, &org, "tenant.settings_changed").await;
    assert_eq!(
        changed[0]["details"]["to"]["mfa_required_for"],
        json!([member])
    );
    assert_eq!(changed[0]["details"]["from"]["mfa_required_for"], json!([]));
    // Shown only to managers.
    let public: Value = app.get_as("acme", "/v1/tenant").await.json().await.unwrap();
    assert!(public.get("mfa_required_for").is_none(), "{public}");

    // A viewer logs in as before.
    let response = app.login("acme", "view@acme.example", PASSWORD).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "authenticated");

    // A member gets an enrollment token, good for nothing else.
    let response = app.login("acme", "mem@acme.example", PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "mfa_enrollment_required", "{body}");
    assert!(body.get("access_token").is_none());
    let token = body["mfa_token"].as_str().unwrap().to_owned();
    let response = app
        .verify_mfa("acme", &json!({"mfa_token": token, "code": "123456"}))
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;
    let response = app
        .post_as(
            "globex",
            "/v1/auth/mfa/enroll",
            &json!({"mfa_token": token}),
        )
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;
    let response = app
        .post_as("acme", "/v1/auth/mfa/enroll", &json!({"mfa_token": token}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let secret = TotpSecret::from_base32(body["secret"].as_str().unwrap()).unwrap();
    assert!(body["qr_code_svg"].as_str().unwrap().contains("<svg"));
    clear_of_step_boundary(3).await;
    let step = now_step();
    let good: Vec<String> = (step - 1..=step + 1).map(|s| secret.code_at(s)).collect();
    let wrong = (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !good.contains(c))
        .unwrap();
    let confirm = "/v1/auth/mfa/enroll/confirm";
    let response = app
        .post_as("acme", confirm, &json!({"mfa_token": token, "code": wrong}))
        .await;
    assert_problem(response, 401, "mfa_code_invalid").await;
    let response = app
        .post_as(
            "acme",
            confirm,
            &json!({"mfa_token": token, "code": secret.code_at(step)}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);
    let tokens = e2e::auth::Tokens::from_json(&body["tokens"]);
    let me = app.get_authed("acme", "/v1/me/mfa", &tokens.access).await;
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["totp"], "enabled");
    // Spent; the next login asks for a code.
    let response = app
        .post_as(
            "acme",
            confirm,
            &json!({"mfa_token": token, "code": secret.code_at(step + 1)}),
        )
        .await;
    assert_problem(response, 401, "mfa_token_invalid").await;
    let response = app.login("acme", "mem@acme.example", PASSWORD).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "mfa_required");

    // Lifting the policy: members without MFA log in directly again.
    let response = patch(json!({"mfa_required_for": []})).await;
    assert_eq!(response.status(), 200);
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["mfa_required_for"], json!([]));
}

#[tokio::test]
async fn accepting_an_invitation_to_a_role_the_policy_covers_requires_enrolling_first() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    let member = app.role_id(&org, "member").await;
    let response = app
        .update_tenant(
            "acme",
            &org.tokens.access,
            &json!({"mfa_required_for": [member]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    app.invite_ok(&org, "nia@example.com", &[member]).await;
    app.run_jobs().await;
    let invitation = app.new_invitation_token("nia@example.com", &Default::default());
    let response = app.accept_invitation("acme", &invitation, "Nia").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "mfa_enrollment_required", "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["mfa_token"].as_str().unwrap().to_owned();
    // The invitation is spent all the same.
    let response = app.accept_invitation("acme", &invitation, "Nia").await;
    assert_problem(response, 400, "invitation_invalid").await;

    let response = app
        .post_as("acme", "/v1/auth/mfa/enroll", &json!({"mfa_token": token}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let secret = TotpSecret::from_base32(body["secret"].as_str().unwrap()).unwrap();
    clear_of_step_boundary(3).await;
    let response = app
        .post_as(
            "acme",
            "/v1/auth/mfa/enroll/confirm",
            &json!({"mfa_token": token, "code": secret.code_at(now_step())}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);
    let tokens = e2e::auth::Tokens::from_json(&body["tokens"]);
    let me = mfa_status(&app, "acme", &tokens.access).await;
    assert_eq!(me["totp"], "enabled");

    // Without the policy, an acceptance logs in at once.
    let viewer = app.role_id(&org, "viewer").await;
    app.invite_ok(&org, "vic@example.com", &[viewer]).await;
    app.run_jobs().await;
    let invitation = app.new_invitation_token("vic@example.com", &Default::default());
    let response = app.accept_invitation("acme", &invitation, "Vic").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "authenticated", "{body}");
    assert!(body["access_token"].is_string(), "{body}");
}

#[tokio::test]
async fn the_password_step_of_an_mfa_login_upgrades_an_outdated_hash() {
    let app = e2e::spawn_app().await;
    let org = app.signup("acme").await;
    app.enroll_totp("acme", &org.tokens.access).await;
    let cost = app.state.hasher.cost();
    let other = identity::PasswordHasher::new(
        1,
        1,
        identity::HashCost {
            iterations: cost.iterations + 1,
            ..cost
        },
    )
    .unwrap();
    let outdated = other.hash(PASSWORD).await.unwrap();
    let stored_hash = || async {
        let mut tx = app
            .state
            .tenant_db
            .begin(tenancy::TenantId(org.tenant_id))
            .await
            .unwrap();
        let hash: String = sqlx::query_scalar("select password_hash from users where id = $1")
            .bind(org.owner_id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        hash
    };
    let mut tx = app
        .state
        .tenant_db
        .begin(tenancy::TenantId(org.tenant_id))
        .await
        .unwrap();
    sqlx::query("update users set password_hash = $2 where id = $1")
        .bind(org.owner_id)
        .bind(&outdated)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored_hash().await, outdated);

    // The password step alone (the second step never comes) stores the current hash.
    app.login_for_mfa("acme", &org.owner_email, PASSWORD).await;
    let upgraded = stored_hash().await;
    assert_ne!(upgraded, outdated);
    let current = format!(
        "$argon2id$v=19$m={},t={},p={}$",
        cost.memory_kib, cost.iterations, cost.parallelism
    );
    assert!(upgraded.starts_with(&current), "{upgraded}");
    assert_eq!(
        app.state
            .hasher
            .verify(PASSWORD, Some(&upgraded))
            .await
            .unwrap(),
        identity::Verified::Yes
    );
}
