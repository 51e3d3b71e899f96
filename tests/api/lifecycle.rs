//! The user lifecycle: the security-issue status and its way back through a password
//! reset, users created by an administrator (an invitation that carries their name and
//! holds a seat), email changes confirmed from the new address, deletion (erasure, dead
//! tokens, a free address and seat, a pseudonymous audit trail, the last owner kept), the
//! export of one's own data, and isolation between tenants for all of them.

use e2e::{
    TestApp, assert_problem,
    auth::{PASSWORD, Signup, Tokens},
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON")
}

/// An app whose free plan has `seats` seats.
async fn app_with_seats(seats: u64) -> TestApp {
    TestApp::builder()
        .env(
            "plans",
            &format!(
                r#"[{{"name": "free", "limits": {{"storage_bytes": "1 GiB", "upload_bytes": "10 MiB", "seats": {seats}}}}}]"#
            ),
        )
        .spawn()
        .await
}

async fn send(
    app: &TestApp,
    org: &Signup,
    method: Method,
    path: &str,
    access: &str,
    body: Option<Value>,
) -> reqwest::Response {
    app.send_authed(method, &org.slug, path, access, body.as_ref())
        .await
}

async fn create_user(
    app: &TestApp,
    org: &Signup,
    access: &str,
    email: &str,
    roles: &[Uuid],
) -> reqwest::Response {
    let body = json!({"email": email, "name": "Nia New", "role_ids": roles});
    send(app, org, Method::POST, "/v1/users", access, Some(body)).await
}

/// `POST /v1/me/email/confirm` with `token` as `access`.
async fn confirm_change(
    app: &TestApp,
    org: &Signup,
    access: &str,
    token: &str,
) -> reqwest::Response {
    let body = json!({"token": token});
    send(
        app,
        org,
        Method::POST,
        "/v1/me/email/confirm",
        access,
        Some(body),
    )
    .await
}

/// `DELETE /v1/me` with `password` as `access`.
async fn delete_me(app: &TestApp, org: &Signup, access: &str, password: &str) -> reqwest::Response {
    let body = json!({"password": password});
    send(app, org, Method::DELETE, "/v1/me", access, Some(body)).await
}

/// Resets the password of `email` through the emailed link.
async fn reset_password(app: &TestApp, org: &Signup, email: &str, new_password: &str) {
    let reset = app
        .reset_password_by_email(&org.slug, email, new_password)
        .await;
    assert_eq!(reset.status(), 204);
}

/// `DELETE /v1/invitations/{id}` as the owner: 204.
async fn revoke_invitation(app: &TestApp, org: &Signup, id: &str) {
    let path = format!("/v1/invitations/{id}");
    let revoked = send(app, org, Method::DELETE, &path, &org.tokens.access, None).await;
    assert_eq!(revoked.status(), 204);
}

/// `PATCH /v1/users/{user}` with `{"status": status}` as the owner.
async fn set_status(app: &TestApp, org: &Signup, user: Uuid, status: &str) -> reqwest::Response {
    let body = json!({"status": status});
    let path = format!("/v1/users/{user}");
    send(
        app,
        org,
        Method::PATCH,
        &path,
        &org.tokens.access,
        Some(body),
    )
    .await
}

/// `GET /v1/me` as `tokens`: its status.
async fn me_status(app: &TestApp, org: &Signup, tokens: &Tokens) -> u16 {
    app.get_authed(&org.slug, "/v1/me", &tokens.access)
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_security_issue_ends_every_session_until_a_password_reset() {
    let app = e2e::spawn_app().await;
    let org = app.signup("flagged").await;
    let viewer = app.role_id(&org, "viewer").await;
    let email = "mo@flagged.example";
    let (mo, tokens) = app.user_with_roles(&org, email, &[viewer]).await;
    assert_eq!(me_status(&app, &org, &tokens).await, 200);

    let path = format!("/v1/users/{mo}/security-issue");
    let flagged = send(&app, &org, Method::POST, &path, &org.tokens.access, None).await;
    assert_eq!(flagged.status(), 200);
    let flagged = json_of(flagged).await;
    assert_eq!(flagged["user"]["status"], "security_issue");
    assert!(
        flagged["sessions_ended"].as_u64().unwrap() >= 1,
        "{flagged}"
    );

    // Access and refresh are refused on the next request; login names the way back.
    app.assert_tokens_dead(&org.slug, &tokens).await;
    assert_problem(
        app.login(&org.slug, email, PASSWORD).await,
        403,
        "password_reset_required",
    )
    .await;
    // An administrator cannot simply reactivate them.
    assert_problem(set_status(&app, &org, mo, "active").await, 409, "conflict").await;
    // Nor move them through another status to the same end.
    let deactivate = set_status(&app, &org, mo, "deactivated").await;
    assert_problem(deactivate, 409, "conflict").await;
    let user = json_of(
        app.get_authed(&org.slug, &format!("/v1/users/{mo}"), &org.tokens.access)
            .await,
    )
    .await;
    assert_eq!(user["status"], "security_issue");
    let events = app.audit_events(org.tenant_id, "user.security_issue").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject_id"], mo.to_string());

    // The reset link is sent to a flagged user, and the reset makes them active again.
    let new_password = "a brand new pass phrase";
    reset_password(&app, &org, email, new_password).await;
    let back = app.login_ok(&org.slug, email, new_password).await;
    assert_eq!(me_status(&app, &org, &back).await, 200);
    let user = json_of(
        app.get_authed(&org.slug, &format!("/v1/users/{mo}"), &org.tokens.access)
            .await,
    )
    .await;
    assert_eq!(user["status"], "active");
    // The old tokens stay dead.
    assert_eq!(me_status(&app, &org, &tokens).await, 401);
}

#[tokio::test]
async fn a_ban_lifted_later_gives_back_the_security_issue_until_the_password_is_reset() {
    // Two seats: the owner and the flagged user.
    let app = app_with_seats(2).await;
    let org = app.signup("held").await;
    let viewer = app.role_id(&org, "viewer").await;
    let email = "kai@held.example";
    let (kai, kai_tokens) = app.user_with_roles(&org, email, &[viewer]).await;
    let path = format!("/v1/users/{kai}/security-issue");
    let flagged = send(&app, &org, Method::POST, &path, &org.tokens.access, None).await;
    assert_eq!(flagged.status(), 200);

    // However an administrator moves them, coming back means the security issue again.
    for (asked, shown) in [
        ("banned", "banned"),
        ("active", "security_issue"),
        ("banned", "banned"),
        ("deactivated", "deactivated"),
        ("active", "security_issue"),
    ] {
        let changed = set_status(&app, &org, kai, asked).await;
        assert_eq!(changed.status(), 200, "{asked}");
        assert_eq!(json_of(changed).await["status"], shown, "{asked}");
        // Coming back to the security issue unblocks nothing: the old tokens stay dead.
        app.assert_tokens_dead(&org.slug, &kai_tokens).await;
        assert_problem(
            app.login(&org.slug, email, PASSWORD).await,
            403,
            if shown == "security_issue" {
                "password_reset_required"
            } else {
                "account_disabled"
            },
        )
        .await;
    }
    // Coming back from a ban with the issue takes a seat again: refused while it is taken.
    assert_eq!(set_status(&app, &org, kai, "banned").await.status(), 200);
    let invited = create_user(
        &app,
        &org,
        &org.tokens.access,
        "new@held.example",
        &[viewer],
    )
    .await;
    assert_eq!(invited.status(), 201);
    let invitation = json_of(invited).await["id"].as_str().unwrap().to_owned();
    assert_problem(
        set_status(&app, &org, kai, "active").await,
        402,
        "plan_limit_reached",
    )
    .await;
    revoke_invitation(&app, &org, &invitation).await;
    let back = set_status(&app, &org, kai, "active").await;
    assert_eq!(json_of(back).await["status"], "security_issue");

    // The reset lifts the hold for good: a later ban and unban is an ordinary one.
    let new_password = "another new pass phrase";
    reset_password(&app, &org, email, new_password).await;
    let tokens = app.login_ok(&org.slug, email, new_password).await;
    assert_eq!(me_status(&app, &org, &tokens).await, 200);
    assert_eq!(set_status(&app, &org, kai, "banned").await.status(), 200);
    let unbanned = set_status(&app, &org, kai, "active").await;
    assert_eq!(json_of(unbanned).await["status"], "active");
    app.login_ok(&org.slug, email, new_password).await;
}

#[tokio::test]
async fn an_admin_created_user_sets_a_password_through_the_invitation_and_holds_a_seat() {
    let app = app_with_seats(3).await;
    let org = app.signup("created").await;
    let member = app.role_id(&org, "member").await;
    let viewer = app.role_id(&org, "viewer").await;
    let admin = app.role_id(&org, "admin").await;
    // A user who may manage users but holds little: cannot grant more than they hold.
    let keeper = app
        .create_role_ok(
            &org,
            &json!({"name": "keeper", "parent_id": viewer, "permissions": ["users:read", "users:manage"]}),
        )
        .await;
    let (_, keeper_tokens) = app
        .user_with_roles(&org, "keeper@created.example", &[keeper])
        .await;
    let escalation = create_user(
        &app,
        &org,
        &keeper_tokens.access,
        "boss@created.example",
        &[admin],
    )
    .await;
    assert_problem(escalation, 403, "forbidden").await;

    let created = create_user(
        &app,
        &org,
        &org.tokens.access,
        "Nia@Created.example",
        &[member],
    )
    .await;
    assert_eq!(created.status(), 201);
    let created = json_of(created).await;
    assert_eq!(created["name"], "Nia New");
    assert_eq!(created["reserves_seat"], true);
    assert_eq!(created["roles"][0]["id"], member.to_string());

    // Owner, keeper and Nia's reservation fill the three seats.
    let full = create_user(
        &app,
        &org,
        &org.tokens.access,
        "late@created.example",
        &[viewer],
    )
    .await;
    let problem = assert_problem(full, 402, "plan_limit_reached").await;
    assert_eq!(problem["limit"], "seats");
    // A taken address is a 409 (this is not the anonymous path).
    let taken = create_user(&app, &org, &org.tokens.access, &org.owner_email, &[viewer]).await;
    assert_problem(taken, 409, "already_member").await;
    let audited = app.audit_events(org.tenant_id, "user.created").await;
    assert_eq!(audited.len(), 1);

    // The email carries the invitation link; accepting it sets the password, and the name
    // given by the administrator stays.
    let emails = app.emails_to("nia@created.example").await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].0, "invitation");
    let token = app.new_invitation_token("nia@created.example", &Default::default());
    let accepted = app
        .post_as(
            &org.slug,
            "/v1/auth/accept-invitation",
            &json!({"token": token, "password": PASSWORD}),
        )
        .await;
    assert_eq!(accepted.status(), 200);
    let tokens = app
        .login_ok(&org.slug, "nia@created.example", PASSWORD)
        .await;
    let me = json_of(app.get_authed(&org.slug, "/v1/me", &tokens.access).await).await;
    assert_eq!(me["name"], "Nia New");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["roles"][0]["name"], "member");
    assert!(
        me["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("products:write")),
        "{me}"
    );
    // Accepted, the reservation became Nia's seat: still full.
    let still_full = create_user(
        &app,
        &org,
        &org.tokens.access,
        "late@created.example",
        &[viewer],
    )
    .await;
    assert_problem(still_full, 402, "plan_limit_reached").await;
}

#[tokio::test]
async fn an_email_change_is_confirmed_from_the_new_address() {
    let app = e2e::spawn_app().await;
    let org = app.signup("moving").await;
    let viewer = app.role_id(&org, "viewer").await;
    let old = "ana@moving.example";
    let (ana, tokens) = app.user_with_roles(&org, old, &[viewer]).await;
    let other_device = app.login_ok(&org.slug, old, PASSWORD).await;
    let (_, bo_tokens) = app
        .user_with_roles(&org, "bo@moving.example", &[viewer])
        .await;
    let ask = |email: &str, password: &str| {
        let body = json!({"new_email": email, "password": password});
        send(
            &app,
            &org,
            Method::POST,
            "/v1/me/email",
            &tokens.access,
            Some(body),
        )
    };

    let wrong = ask("new@moving.example", "not my password").await;
    let problem = assert_problem(wrong, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "password");
    assert_eq!(problem["errors"][0]["code"], "incorrect");

    // A taken address and a free one get the same answer.
    let taken = ask("bo@moving.example", PASSWORD).await;
    let (taken_status, taken_body) = (taken.status(), taken.text().await.unwrap());
    let free = ask("New@Moving.example", PASSWORD).await;
    let (free_status, free_body) = (free.status(), free.text().await.unwrap());
    assert_eq!(free_status, 202);
    assert_eq!((taken_status, taken_body), (free_status, free_body));

    // The link goes to the new address only; the old one gets notices; Bo gets nothing.
    let to_new = app.emails_to("new@moving.example").await;
    assert_eq!(to_new.len(), 1, "{to_new:?}");
    assert_eq!(to_new[0].0, "verification");
    let bo_templates: Vec<String> = app
        .emails_to("bo@moving.example")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(
        bo_templates.iter().filter(|t| *t == "verification").count(),
        1,
        "only Bo's own registration link: {bo_templates:?}"
    );
    let notices = app
        .emails_to(old)
        .await
        .into_iter()
        .filter(|(t, _)| t == "security_notice")
        .count();
    assert_eq!(notices, 2, "one notice per request");

    // Nothing changes until the confirmation.
    app.login_ok(&org.slug, old, PASSWORD).await;
    assert_problem(
        app.login(&org.slug, "new@moving.example", PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let token = app
        .emailed_token("new@moving.example", "verification")
        .await
        .expect("a confirmation link");
    // Another user cannot use Ana's link (and does not spend it).
    assert_problem(
        confirm_change(&app, &org, &bo_tokens.access, &token).await,
        400,
        "email_change_invalid",
    )
    .await;
    let confirmed = confirm_change(&app, &org, &tokens.access, &token).await;
    assert_eq!(confirmed.status(), 200);
    let confirmed = json_of(confirmed).await;
    assert_eq!(confirmed["email"], "New@Moving.example");
    assert_eq!(confirmed["email_verified"], true);
    assert_eq!(confirmed["id"], ana.to_string());
    // Single use.
    assert_problem(
        confirm_change(&app, &org, &tokens.access, &token).await,
        400,
        "email_change_invalid",
    )
    .await;

    // The new address logs in, the old one no longer; other sessions ended, this one stays.
    app.login_ok(&org.slug, "new@moving.example", PASSWORD)
        .await;
    assert_problem(
        app.login(&org.slug, old, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(me_status(&app, &org, &tokens).await, 200);
    assert_eq!(me_status(&app, &org, &other_device).await, 401);
    let events = app.audit_events(org.tenant_id, "user.email_changed").await;
    assert_eq!(events.len(), 1);
    assert!(
        !events[0]["details"].to_string().contains('@'),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_deleted_user_is_erased_and_their_address_and_seat_are_free_again() {
    let app = app_with_seats(3).await;
    let org = app.signup("erased").await;
    let viewer = app.role_id(&org, "viewer").await;
    let email = "gone@erased.example";
    let (gone, tokens) = app.user_with_roles(&org, email, &[viewer]).await;
    // Everything but owner powers, and yet not an owner: outranks the owner.
    let all: Vec<&str> = rbac::Permission::ALL.iter().map(|p| p.as_str()).collect();
    let almighty = app
        .create_role_ok(&org, &json!({"name": "almighty", "permissions": all}))
        .await;
    let (_, almighty_tokens) = app
        .user_with_roles(&org, "almighty@erased.example", &[almighty])
        .await;
    let full = create_user(
        &app,
        &org,
        &org.tokens.access,
        "third@erased.example",
        &[viewer],
    )
    .await;
    assert_problem(full, 402, "plan_limit_reached").await;

    // The last owner can be deleted neither by another nor by themselves.
    let owner_path = format!("/v1/users/{}", org.owner_id);
    let refused = send(
        &app,
        &org,
        Method::DELETE,
        &owner_path,
        &almighty_tokens.access,
        None,
    )
    .await;
    assert_problem(refused, 409, "last_owner").await;
    assert_problem(
        delete_me(&app, &org, &org.tokens.access, PASSWORD).await,
        409,
        "last_owner",
    )
    .await;

    let deleted = send(
        &app,
        &org,
        Method::DELETE,
        &format!("/v1/users/{gone}"),
        &org.tokens.access,
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    // Every token is dead at once.
    app.assert_tokens_dead(&org.slug, &tokens).await;
    assert_problem(
        app.login(&org.slug, email, PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    // A tombstone without personal data, left out of the listing.
    let path = format!("/v1/users/{gone}");
    let tombstone = json_of(app.get_authed(&org.slug, &path, &org.tokens.access).await).await;
    assert_eq!(tombstone["status"], "deleted");
    assert_eq!(tombstone["name"], "Deleted user");
    assert!(!tombstone["email"].as_str().unwrap().contains('@'));
    assert_eq!(tombstone["roles"], json!([]));
    let listing = app
        .get_authed(&org.slug, "/v1/users", &org.tokens.access)
        .await
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(&gone.to_string()), "{listing}");
    assert_eq!(
        send(&app, &org, Method::DELETE, &path, &org.tokens.access, None)
            .await
            .status(),
        404
    );
    // The audit log keeps their events, pseudonymously and without their address.
    let audit_path = format!("/v1/audit-events?user_id={gone}&limit=100");
    let audit = app
        .get_authed(&org.slug, &audit_path, &org.tokens.access)
        .await;
    let audit = json_of(audit).await;
    let items = audit["items"].as_array().unwrap();
    let login = items
        .iter()
        .find(|e| e["event"] == "login.succeeded" && e["actor_id"] == gone.to_string())
        .expect("their login is still in the log");
    let label = login["actor_label"].as_str().expect("a pseudonym");
    assert!(label.starts_with("Deleted user "), "{label}");
    // Where they signed in from is theirs too.
    assert!(login["ip"].is_null(), "{login}");
    assert!(login["user_agent"].is_null(), "{login}");
    assert!(items.iter().any(|e| e["event"] == "user.deleted"));
    assert!(!audit.to_string().contains(email), "{audit}");
    // The seat is free, and the address can be used again.
    let third = create_user(
        &app,
        &org,
        &org.tokens.access,
        "third@erased.example",
        &[viewer],
    )
    .await;
    assert_eq!(third.status(), 201);
    let invitation = json_of(third).await["id"].as_str().unwrap().to_owned();
    revoke_invitation(&app, &org, &invitation).await;
    let again = app.register_verified(&org.slug, email).await;
    assert_ne!(again, gone);

    // Self-deletion needs the password.
    let wrong = delete_me(&app, &org, &almighty_tokens.access, "not my password").await;
    assert_problem(wrong, 422, "validation_failed").await;
    assert_eq!(me_status(&app, &org, &almighty_tokens).await, 200);
    let done = delete_me(&app, &org, &almighty_tokens.access, PASSWORD).await;
    assert_eq!(done.status(), 204);
    assert_eq!(me_status(&app, &org, &almighty_tokens).await, 401);
}

#[tokio::test]
async fn the_export_holds_the_users_data_and_nobody_elses() {
    let app = e2e::spawn_app().await;
    let org = app.signup("export").await;
    let admin = app.role_id(&org, "admin").await;
    let viewer = app.role_id(&org, "viewer").await;
    let email = "eve@export.example";
    let (eve, tokens) = app.user_with_roles(&org, email, &[admin]).await;
    let (_, _) = app
        .user_with_roles(&org, "neighbour@export.example", &[viewer])
        .await;
    // Eve invites someone (the event records their address) and is acted on by the owner.
    let invited = app
        .invite(
            &org.slug,
            &tokens.access,
            "invitee@export.example",
            &[viewer],
        )
        .await;
    assert_eq!(invited.status(), 201);
    let logout = format!("/v1/users/{eve}/logout");
    let forced = send(&app, &org, Method::POST, &logout, &org.tokens.access, None).await;
    assert_eq!(forced.status(), 200);
    let tokens = app.login_ok(&org.slug, email, PASSWORD).await;

    let response = app
        .get_authed(&org.slug, "/v1/me/export", &tokens.access)
        .await;
    assert_eq!(response.status(), 200);
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let text = response.text().await.unwrap();
    let export: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(export["profile"]["id"], eve.to_string());
    assert_eq!(export["profile"]["email"], email);
    assert_eq!(export["roles"][0]["name"], "admin");
    let sessions = export["sessions"].as_array().unwrap();
    assert!(sessions.iter().any(|s| s["current"] == true), "{export}");
    assert_eq!(export["invitations_sent"].as_array().unwrap().len(), 1);
    let events = export["audit_events"].as_array().unwrap();
    let by_owner = events
        .iter()
        .find(|e| e["event"] == "user.logged_out")
        .expect("the owner's forced logout");
    assert_eq!(by_owner["actor_id"], org.owner_id.to_string());
    assert_eq!(by_owner["ip"], Value::Null);
    assert_eq!(by_owner["session_id"], Value::Null);
    assert!(events.iter().any(|e| e["event"] == "login.succeeded"));
    // Nobody else's address, anywhere.
    for other in [
        org.owner_email.as_str(),
        "neighbour@export.example",
        "invitee@export.example",
    ] {
        assert!(!text.contains(other), "{other} in {text}");
    }
}

#[tokio::test]
async fn the_lifecycle_stays_inside_its_tenant() {
    let app = e2e::spawn_app().await;
    let a = app.signup("life-a").await;
    let b = app.signup("life-b").await;
    let viewer_b = app.role_id(&b, "viewer").await;
    let (b_user, _) = app
        .user_with_roles(&b, "bea@life-b.example", &[viewer_b])
        .await;
    // B's ids through A's administrator are unknown.
    for (method, path) in [
        (Method::POST, format!("/v1/users/{b_user}/security-issue")),
        (Method::DELETE, format!("/v1/users/{b_user}")),
    ] {
        let response = send(&app, &a, method, &path, &a.tokens.access, None).await;
        assert_problem(response, 404, "not_found").await;
    }
    // A's token addressed to B is refused for every new operation.
    let viewer_a = app.role_id(&a, "viewer").await;
    let calls = [
        (Method::GET, "/v1/me/export".to_owned(), None),
        (
            Method::POST,
            "/v1/users".to_owned(),
            Some(json!({"email": "x@life-b.example", "name": "X", "role_ids": [viewer_a]})),
        ),
        (
            Method::POST,
            format!("/v1/users/{b_user}/security-issue"),
            None,
        ),
        (Method::DELETE, format!("/v1/users/{b_user}"), None),
        (
            Method::POST,
            "/v1/me/email".to_owned(),
            Some(json!({"new_email": "x@life-b.example", "password": PASSWORD})),
        ),
        (
            Method::DELETE,
            "/v1/me".to_owned(),
            Some(json!({"password": PASSWORD})),
        ),
    ];
    for (method, path, body) in calls {
        let response = app
            .send_authed(method, &b.slug, &path, &a.tokens.access, body.as_ref())
            .await;
        assert_problem(response, 403, "wrong_tenant").await;
    }
    // B's user is untouched.
    let bea = app
        .get_authed(&b.slug, &format!("/v1/users/{b_user}"), &b.tokens.access)
        .await;
    assert_eq!(json_of(bea).await["status"], "active");
}
