//! Invitations: the email and its single-use link, acceptance (an active, verified user
//! with the invited roles, logged in), expiry, revocation, resends, refreshes, escalation,
//! the seat limit, isolation between tenants, job payloads without secrets; and the
//! registration policy every tenant starts with.

use std::collections::BTreeSet;

use e2e::{TestApp, assert_problem, auth::PASSWORD, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use tenancy::{TenantSlug, migrate::embedded_migrations};
use uuid::Uuid;

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON")
}

/// The payloads of every invitation email job, oldest first.
async fn invitation_jobs(app: &TestApp) -> Vec<Value> {
    sqlx::query_scalar(
        "select payload from public.jobs where kind = 'auth.invitation_email'
         order by created_at, id",
    )
    .fetch_all(app.state.db.pool())
    .await
    .expect("jobs")
}

/// How many job payloads of any kind contain `needle`.
async fn payloads_containing(app: &TestApp, needle: &str) -> i64 {
    sqlx::query_scalar("select count(*) from public.jobs where strpos(payload::text, $1) > 0")
        .bind(needle)
        .fetch_one(app.state.db.pool())
        .await
        .expect("jobs")
}

/// How many users of `tenant` have this address (any case).
async fn users_with_email(app: &TestApp, tenant: Uuid, email: &str) -> i64 {
    let schema = tenancy::TenantId(tenant).schema_name();
    sqlx::query_scalar(&format!(
        r#"select count(*) from "{schema}".users where email_key = lower($1)"#
    ))
    .bind(email)
    .fetch_one(app.state.db.pool())
    .await
    .expect("users")
}

#[tokio::test]
async fn an_invitation_is_emailed_accepted_once_and_logs_the_new_member_in() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let member = app.role_id(&org, "member").await;
    let response = app
        .invite(&org.slug, &org.tokens.access, "Nia@Example.com", &[member])
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let invitation = json_of(response).await;
    let id = invitation["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/invitations/{id}"));
    assert_eq!(invitation["email"], "Nia@Example.com");
    assert_eq!(invitation["status"], "pending");
    assert_eq!(
        invitation["roles"],
        json!([{"id": member, "name": "member"}])
    );
    assert_eq!(invitation["invited_by"], org.owner_id.to_string());
    assert!(invitation.get("sent_at").is_none_or(Value::is_null));

    // The job names the invitation and nothing else; the link exists only in the email.
    assert_eq!(invitation_jobs(&app).await, [json!({"invitation_id": id})]);
    assert!(app.invitation_tokens("nia@example.com").is_empty());
    app.run_jobs().await;
    let token = app.new_invitation_token("nia@example.com", &BTreeSet::new());
    assert_eq!(payloads_containing(&app, &token).await, 0);
    let listed = json_of(
        app.get_authed(&org.slug, "/v1/invitations", &org.tokens.access)
            .await,
    )
    .await;
    assert_eq!(listed["items"].as_array().expect("items").len(), 1);
    assert!(listed["items"][0]["sent_at"].is_string(), "{listed}");

    let accepted = app.accept_invitation(&org.slug, &token, "Nia").await;
    assert_eq!(accepted.status(), 200);
    let tokens = json_of(accepted).await;
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().expect("access token");
    assert!(tokens["refresh_token"].is_string());
    let me = json_of(app.get_authed(&org.slug, "/v1/me", access).await).await;
    assert_eq!(me["email"], "Nia@Example.com");
    assert_eq!(me["name"], "Nia");
    assert_eq!(me["status"], "active");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["roles"], json!([{"id": member, "name": "member"}]));
    assert!(
        me["permissions"]
            .as_array()
            .expect("permissions")
            .contains(&json!("products:write")),
        "{me}"
    );
    app.login_ok(&org.slug, "nia@example.com", PASSWORD).await;

    // Single use; the accepted invitation is no longer open.
    assert_problem(
        app.accept_invitation(&org.slug, &token, "Nia again").await,
        400,
        "invitation_invalid",
    )
    .await;
    assert_eq!(
        users_with_email(&app, org.tenant_id, "nia@example.com").await,
        1
    );
    let listed = json_of(
        app.get_authed(&org.slug, "/v1/invitations", &org.tokens.access)
            .await,
    )
    .await;
    assert_eq!(listed["items"], json!([]));
    let user_id = me["id"].as_str().expect("id");
    let created = app.audit_events(org.tenant_id, "invitation.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["actor_id"], org.owner_id.to_string());
    assert_eq!(created[0]["details"]["invitation_id"], id.as_str());
    let events = app.audit_events(org.tenant_id, "invitation.accepted").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject_id"], user_id);
    assert_eq!(events[0]["details"]["invitation_id"], id.as_str());
    assert_eq!(events[0]["details"]["role_ids"], json!([member]));
}

#[tokio::test]
async fn unknown_expired_and_revoked_links_are_refused() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let viewer = app.role_id(&org, "viewer").await;
    for bad in ["", "not-a-token", &"A".repeat(43)] {
        assert_problem(
            app.accept_invitation(&org.slug, bad, "Who").await,
            400,
            "invitation_invalid",
        )
        .await;
    }

    let late = app.invite_ok(&org, "late@example.com", &[viewer]).await;
    let gone = app.invite_ok(&org, "gone@example.com", &[viewer]).await;
    app.run_jobs().await;
    let late_token = app.new_invitation_token("late@example.com", &BTreeSet::new());
    let gone_token = app.new_invitation_token("gone@example.com", &BTreeSet::new());

    let expired = app
        .tenant_sql(
            org.tenant_id,
            "update invitations set expires_at = now() - interval '1 second' where id = $1",
            Some(late),
        )
        .await;
    assert_eq!(expired, 1);
    assert_problem(
        app.accept_invitation(&org.slug, &late_token, "Late").await,
        400,
        "invitation_invalid",
    )
    .await;
    let listed = json_of(
        app.get_authed(&org.slug, "/v1/invitations", &org.tokens.access)
            .await,
    )
    .await;
    let late_view = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["id"] == late.to_string())
        .expect("an expired invitation stays listed")
        .clone();
    assert_eq!(late_view["status"], "expired");

    let revoked = app
        .send_authed(
            Method::DELETE,
            &org.slug,
            &format!("/v1/invitations/{gone}"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(revoked.status(), 204);
    assert_problem(
        app.accept_invitation(&org.slug, &gone_token, "Gone").await,
        400,
        "invitation_invalid",
    )
    .await;
    let again = app
        .send_authed(
            Method::DELETE,
            &org.slug,
            &format!("/v1/invitations/{gone}"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_problem(again, 404, "not_found").await;
    assert_eq!(
        users_with_email(&app, org.tenant_id, "late@example.com").await,
        0
    );
    assert_eq!(
        users_with_email(&app, org.tenant_id, "gone@example.com").await,
        0
    );
    let events = app.audit_events(org.tenant_id, "invitation.revoked").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"]["invitation_id"], gone.to_string());
}

#[tokio::test]
async fn a_resend_voids_the_old_link_at_once_and_mails_a_new_one() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let viewer = app.role_id(&org, "viewer").await;
    let id = app.invite_ok(&org, "sam@example.com", &[viewer]).await;
    app.run_jobs().await;
    let old = app.new_invitation_token("sam@example.com", &BTreeSet::new());
    // An expired invitation can be resent: its lifetime starts again.
    app.tenant_sql(
        org.tenant_id,
        "update invitations set expires_at = now() - interval '1 second' where id = $1",
        Some(id),
    )
    .await;

    let resent = app
        .send_authed(
            Method::POST,
            &org.slug,
            &format!("/v1/invitations/{id}/resend"),
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(resent.status(), 202);
    let view = json_of(resent).await;
    assert_eq!(view["status"], "pending");
    // Void before the new email has even gone out.
    assert_problem(
        app.accept_invitation(&org.slug, &old, "Sam").await,
        400,
        "invitation_invalid",
    )
    .await;
    app.run_jobs().await;
    let known = BTreeSet::from([old.clone()]);
    let new = app.new_invitation_token("sam@example.com", &known);
    assert_ne!(new, old);
    for payload in invitation_jobs(&app).await {
        assert_eq!(payload, json!({"invitation_id": id}));
    }
    assert_eq!(payloads_containing(&app, &new).await, 0);
    assert_eq!(payloads_containing(&app, &old).await, 0);
    assert_problem(
        app.accept_invitation(&org.slug, &old, "Sam").await,
        400,
        "invitation_invalid",
    )
    .await;
    assert_eq!(
        app.accept_invitation(&org.slug, &new, "Sam").await.status(),
        200
    );
    assert_eq!(
        app.audit_events(org.tenant_id, "invitation.resent")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn inviting_again_refreshes_and_a_member_cannot_be_invited() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let viewer = app.role_id(&org, "viewer").await;
    let member = app.role_id(&org, "member").await;
    let first = app.invite_ok(&org, "kim@example.com", &[viewer]).await;
    app.run_jobs().await;
    let old = app.new_invitation_token("kim@example.com", &BTreeSet::new());

    let again = app
        .invite(&org.slug, &org.tokens.access, "KIM@example.com", &[member])
        .await;
    assert_eq!(again.status(), 200);
    let view = json_of(again).await;
    assert_eq!(view["id"], first.to_string());
    assert_eq!(view["roles"], json!([{"id": member, "name": "member"}]));
    let listed = json_of(
        app.get_authed(&org.slug, "/v1/invitations", &org.tokens.access)
            .await,
    )
    .await;
    assert_eq!(listed["items"].as_array().expect("items").len(), 1);
    assert_problem(
        app.accept_invitation(&org.slug, &old, "Kim").await,
        400,
        "invitation_invalid",
    )
    .await;
    app.run_jobs().await;
    let new = app.new_invitation_token("kim@example.com", &BTreeSet::from([old]));
    let tokens = json_of(app.accept_invitation(&org.slug, &new, "Kim").await).await;
    let me = json_of(
        app.get_authed(
            &org.slug,
            "/v1/me",
            tokens["access_token"].as_str().expect("access"),
        )
        .await,
    )
    .await;
    assert_eq!(me["roles"], json!([{"id": member, "name": "member"}]));
    assert_eq!(
        app.audit_events(org.tenant_id, "invitation.refreshed")
            .await
            .len(),
        1
    );

    // Addresses that already have a user, in any case.
    for taken in [org.owner_email.to_uppercase(), "kim@example.com".to_owned()] {
        assert_problem(
            app.invite(&org.slug, &org.tokens.access, &taken, &[viewer])
                .await,
            409,
            "already_member",
        )
        .await;
    }
    // Invalid input is 4xx.
    for body in [
        json!({"email": "not an address", "role_ids": [viewer]}),
        json!({"email": "x@example.com", "role_ids": []}),
        json!({"email": "x@example.com", "role_ids": [Uuid::now_v7()]}),
    ] {
        let response = app
            .send_authed(
                Method::POST,
                &org.slug,
                "/v1/invitations",
                &org.tokens.access,
                Some(&body),
            )
            .await;
        assert_problem(response, 422, "validation_failed").await;
    }
}

#[tokio::test]
async fn nobody_invites_with_permissions_they_do_not_hold() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let viewer = app.role_id(&org, "viewer").await;
    let admin = app.role_id(&org, "admin").await;
    let member = app.role_id(&org, "member").await;
    let keeper = app
        .create_role_ok(
            &org,
            &json!({"name": "keeper", "parent_id": viewer, "permissions": ["users:read", "users:manage"]}),
        )
        .await;
    let (_, keeper_tokens) = app
        .user_with_roles(&org, "keeper@acme.example", &[keeper])
        .await;
    let (_, member_tokens) = app
        .user_with_roles(&org, "member@acme.example", &[member])
        .await;

    let refused = app
        .invite(
            &org.slug,
            &keeper_tokens.access,
            "boss@example.com",
            &[admin],
        )
        .await;
    let problem = assert_problem(refused, 403, "forbidden").await;
    assert!(
        problem["permissions"]
            .as_array()
            .expect("permissions")
            .contains(&json!("roles:manage")),
        "{problem}"
    );
    let refused = app
        .invite(
            &org.slug,
            &keeper_tokens.access,
            "boss@example.com",
            &[viewer, member],
        )
        .await;
    assert_problem(refused, 403, "forbidden").await;
    let problem = assert_problem(
        app.invite(
            &org.slug,
            &member_tokens.access,
            "pal@example.com",
            &[viewer],
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(problem["permission"], "users:manage");
    assert_eq!(
        app.invite(
            &org.slug,
            &keeper_tokens.access,
            "pal@example.com",
            &[viewer]
        )
        .await
        .status(),
        201
    );
    // Resending an admin's invitation would re-issue admin rights: refused too.
    let boss = app.invite_ok(&org, "boss@example.com", &[admin]).await;
    let resend = app
        .send_authed(
            Method::POST,
            &org.slug,
            &format!("/v1/invitations/{boss}/resend"),
            &keeper_tokens.access,
            None,
        )
        .await;
    assert_problem(resend, 403, "forbidden").await;
    // So would taking it over by inviting the address again with lesser roles, or revoking it.
    let refresh = app
        .invite(
            &org.slug,
            &keeper_tokens.access,
            "boss@example.com",
            &[viewer],
        )
        .await;
    assert_problem(refresh, 403, "forbidden").await;
    let revoke = app
        .send_authed(
            Method::DELETE,
            &org.slug,
            &format!("/v1/invitations/{boss}"),
            &keeper_tokens.access,
            None,
        )
        .await;
    assert_problem(revoke, 403, "forbidden").await;
    let open: Value = app
        .get_authed(&org.slug, "/v1/invitations", &org.tokens.access)
        .await
        .json()
        .await
        .expect("JSON");
    let still = open["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["id"] == boss.to_string())
        .expect("the admin's invitation is still open");
    assert_eq!(still["roles"][0]["id"], admin.to_string(), "{still}");
    let jobs = invitation_jobs(&app).await;
    assert_eq!(jobs.len(), 2, "one email per accepted invitation: {jobs:?}");
}

#[tokio::test]
async fn the_seat_limit_is_checked_when_an_invitation_is_accepted() {
    let app = TestApp::builder()
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB", "seats": 1}}]"#,
        )
        .spawn()
        .await;
    let org = app.signup("seats").await;
    let viewer = app.role_id(&org, "viewer").await;
    let id = app.invite_ok(&org, "extra@example.com", &[viewer]).await;
    app.run_jobs().await;
    let token = app.new_invitation_token("extra@example.com", &BTreeSet::new());
    let problem = assert_problem(
        app.accept_invitation(&org.slug, &token, "Extra").await,
        402,
        "plan_limit_reached",
    )
    .await;
    assert_eq!(problem["limit"], "seats");
    assert_eq!(
        (problem["allowed"].clone(), problem["used"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        users_with_email(&app, org.tenant_id, "extra@example.com").await,
        0
    );
    // Nothing was used up: the invitation is still open, its link unchanged.
    let listed = json_of(
        app.get_authed(&org.slug, "/v1/invitations", &org.tokens.access)
            .await,
    )
    .await;
    assert_eq!(listed["items"][0]["id"], id.to_string());
    assert_eq!(listed["items"][0]["status"], "pending");
}

#[tokio::test]
async fn another_tenants_invitation_is_useless() {
    let app = spawn_app().await;
    let a = app.signup("alpha").await;
    let b = app.signup("bravo").await;
    let viewer_a = app.role_id(&a, "viewer").await;
    let id = app.invite_ok(&a, "x@example.com", &[viewer_a]).await;
    app.run_jobs().await;
    let token = app.new_invitation_token("x@example.com", &BTreeSet::new());

    // A's token presented to B, by header and with B's owner logged in or not.
    assert_problem(
        app.accept_invitation(&b.slug, &token, "X").await,
        400,
        "invitation_invalid",
    )
    .await;
    let b_id = b.tenant_id.to_string();
    assert_problem(
        app.accept_invitation(&b_id, &token, "X").await,
        400,
        "invitation_invalid",
    )
    .await;
    assert_eq!(
        users_with_email(&app, a.tenant_id, "x@example.com").await,
        0
    );
    assert_eq!(
        users_with_email(&app, b.tenant_id, "x@example.com").await,
        0
    );

    // A's invitation id means nothing in B.
    for (method, path) in [
        (Method::DELETE, format!("/v1/invitations/{id}")),
        (Method::POST, format!("/v1/invitations/{id}/resend")),
    ] {
        let response = app
            .send_authed(method, &b.slug, &path, &b.tokens.access, None)
            .await;
        assert_problem(response, 404, "not_found").await;
    }
    let theirs = json_of(
        app.get_authed(&b.slug, "/v1/invitations", &b.tokens.access)
            .await,
    )
    .await;
    assert_eq!(theirs["items"], json!([]));
    // B's token against A's name: refused as another tenant's.
    let wrong = app
        .send_authed(
            Method::DELETE,
            &a.slug,
            &format!("/v1/invitations/{id}"),
            &b.tokens.access,
            None,
        )
        .await;
    assert_problem(wrong, 403, "wrong_tenant").await;

    // Still A's to accept.
    assert_eq!(
        app.accept_invitation(&a.slug, &token, "X").await.status(),
        200
    );
    assert_eq!(
        users_with_email(&app, a.tenant_id, "x@example.com").await,
        1
    );
    assert_eq!(
        users_with_email(&app, b.tenant_id, "x@example.com").await,
        0
    );
}

#[tokio::test]
async fn invitations_are_listed_page_by_page() {
    let app = spawn_app().await;
    let org = app.signup("acme").await;
    let viewer = app.role_id(&org, "viewer").await;
    let mut invited = Vec::new();
    for n in 0..5 {
        invited.push(
            app.invite_ok(&org, &format!("p{n}@example.com"), &[viewer])
                .await
                .to_string(),
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/invitations?limit=2".to_owned();
    loop {
        let page = json_of(app.get_authed(&org.slug, &path, &org.tokens.access).await).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|i| i["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/invitations?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, invited);
    assert_problem(
        app.get_authed(
            &org.slug,
            "/v1/invitations?cursor=nonsense",
            &org.tokens.access,
        )
        .await,
        400,
        "invalid_parameter",
    )
    .await;
}

#[tokio::test]
async fn every_tenant_new_or_existing_starts_invite_only() {
    let app = spawn_app().await;
    let fresh = app.create_tenant("fresh").await;
    let profile = json_of(app.get_as(fresh.slug.as_str(), "/v1/tenant").await).await;
    assert_eq!(profile["registration_policy"], "invite_only");

    // A tenant provisioned before membership existed gets the default from the migration.
    let before: Vec<_> = embedded_migrations()
        .into_iter()
        .filter(|m| m.version < 20261201000051)
        .collect();
    let slug = TenantSlug::parse("legacy").expect("slug");
    let legacy = app
        .state
        .db
        .create_tenant_with(&slug, "Legacy", &before)
        .await
        .expect("legacy tenant");
    app.state
        .db
        .migrate_tenants(&embedded_migrations(), 2, |_| {})
        .await
        .expect("migrate");
    let schema = legacy.id.schema_name();
    let policy: String = sqlx::query_scalar(&format!(
        "select registration_policy from {schema}.settings"
    ))
    .fetch_one(app.state.db.pool())
    .await
    .expect("policy");
    assert_eq!(policy, "invite_only");
    app.state.tenants.invalidate_all();
    let profile = json_of(app.get_as("legacy", "/v1/tenant").await).await;
    assert_eq!(profile["registration_policy"], "invite_only");
}
