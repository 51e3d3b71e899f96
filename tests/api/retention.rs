//! Retention: the prune jobs delete what is past its retention, in bounded batches, and
//! nothing else. Each test backdates rows in SQL ("old": 2 h ago, past the 1 h retention
//! the app runs with; "recent": 10 minutes ago, inside it), runs the jobs with the binary's
//! registry, and checks row by row what is left.

use e2e::{TestApp, TestAppBuilder};
use jobs::{JobKind, NewJob, enqueue};
use tenancy::Tenant;
use uuid::Uuid;

/// An app keeping everything 1 h (webhook events 4 days) and pruning 2 rows per batch.
async fn app_with(plans: Option<&str>) -> TestApp {
    let mut builder = TestAppBuilder::default();
    for key in [
        "retain_sessions",
        "retain_email_tokens",
        "retain_invitations",
        "retain_succeeded_jobs",
        "retain_audit_events",
    ] {
        builder = builder.env(key, "1h");
    }
    // Webhook events are kept at least as long as reconciliation looks back (4 days).
    builder = builder.env("retain_webhook_events", "4d");
    builder = builder.env("prune_batch", "2");
    if let Some(plans) = plans {
        builder = builder.env("plans", plans);
    }
    builder.spawn().await
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(app.state.db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn ids(app: &TestApp, sql: &str) -> Vec<String> {
    let mut found: Vec<String> = sqlx::query_scalar(sql)
        .fetch_all(app.state.db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    found.sort();
    found
}

fn schema(tenant: &Tenant) -> String {
    format!("\"{}\"", tenant.id.schema_name())
}

async fn enqueue_now(app: &TestApp, job: NewJob) {
    let mut conn = app.state.db.pool().acquire().await.expect("conn");
    enqueue(&mut conn, job).await.expect("enqueue");
}

/// Runs one pass of every prune job (the tenant prunes fanned out by `auth.prune_tenants`).
async fn prune_all(app: &TestApp) {
    for job in api::startup::retention_jobs().expect("jobs") {
        enqueue_now(app, job).await;
    }
    app.run_jobs().await;
}

/// Runs the identity prune of `tenant` alone.
async fn prune_tenant(app: &TestApp, tenant: &Tenant) {
    let job = identity::retention::PruneTenant {}
        .new_job(tenant.id)
        .expect("job");
    enqueue_now(app, job).await;
    app.run_jobs().await;
}

/// `canopy_pruned_total{what}` as the app's metrics render it.
fn pruned_metric(app: &TestApp, what: &str) -> u64 {
    let gauge = api::metrics::PoolGauge { open: 0, idle: 0 };
    let text = app.state.metrics.render(gauge, 0, gauge);
    let prefix = format!("canopy_pruned_total{{what=\"{what}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// A user of `tenant`, for sessions and tokens to belong to.
async fn user(app: &TestApp, tenant: &Tenant, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    exec(
        app,
        &format!(
            "insert into {s}.users (id, email, email_key, name, password_hash)
             values ('{id}', '{name}@example.com', '{name}@example.com', '{name}', 'x')",
            s = schema(tenant)
        ),
    )
    .await;
    id
}

/// A session named by its user agent, last used `last_used` ago, revoked `revoked` ago
/// (when given), with a live (unrotated) refresh token expiring at `expires` (SQL).
async fn session(
    app: &TestApp,
    tenant: &Tenant,
    user: Uuid,
    name: &str,
    last_used: &str,
    revoked: Option<&str>,
    expires: &str,
) -> Uuid {
    let id = Uuid::now_v7();
    let revoked = revoked.map_or("null, null".to_owned(), |ago| {
        format!("now() - interval '{ago}', 'test'")
    });
    exec(
        app,
        &format!(
            "insert into {s}.sessions (id, user_id, user_agent, last_used_at, revoked_at, revoked_reason)
             values ('{id}', '{user}', '{name}', now() - interval '{last_used}', {revoked});
             insert into {s}.refresh_tokens (token_hash, session_id, expires_at)
             values (convert_to('{name}', 'utf8'), '{id}', {expires})",
            s = schema(tenant)
        ),
    )
    .await;
    id
}

#[tokio::test]
async fn sessions_and_refresh_tokens_past_retention_go_and_live_ones_stay() {
    let app = app_with(None).await;
    let t = app.create_tenant("acme").await;
    let s = schema(&t);
    let u = user(&app, &t, "ada").await;
    let live = session(
        &app,
        &t,
        u,
        "live",
        "0s",
        None,
        "now() + interval '30 days'",
    )
    .await;
    // The live session's earlier token: rotated, and past its lifetime for 2 h.
    exec(
        &app,
        &format!(
            "insert into {s}.refresh_tokens
                 (token_hash, session_id, created_at, expires_at, rotated_at, successor_hash, successor_sealed)
             values ('\\x01', '{live}', now() - interval '31 days', now() - interval '2 hours',
                     now() - interval '3 hours', 'live', 'sealed')"
        ),
    )
    .await;
    session(
        &app,
        &t,
        u,
        "revoked-old",
        "3h",
        Some("2h"),
        "now() + interval '30 days'",
    )
    .await;
    // Revoked within retention: kept, though its token is long expired (and goes).
    session(
        &app,
        &t,
        u,
        "revoked-recent",
        "3h",
        Some("10m"),
        "now() - interval '2 hours'",
    )
    .await;
    session(
        &app,
        &t,
        u,
        "expired-old",
        "3h",
        None,
        "now() - interval '2 hours'",
    )
    .await;
    session(
        &app,
        &t,
        u,
        "expired-recent",
        "3h",
        None,
        "now() - interval '10 minutes'",
    )
    .await;

    prune_all(&app).await;

    assert_eq!(
        ids(&app, &format!("select user_agent from {s}.sessions")).await,
        ["expired-recent", "live", "revoked-recent"]
    );
    assert_eq!(
        ids(
            &app,
            &format!("select convert_from(token_hash, 'utf8') from {s}.refresh_tokens")
        )
        .await,
        ["expired-recent", "live"]
    );
    assert_eq!(pruned_metric(&app, "sessions"), 2);
    assert_eq!(pruned_metric(&app, "refresh_tokens"), 4);
    // The live session is untouched: still there and not revoked.
    let valid: bool = sqlx::query_scalar(&format!(
        "select revoked_at is null from {s}.sessions where id = $1"
    ))
    .bind(live)
    .fetch_one(app.state.db.pool())
    .await
    .expect("live session");
    assert!(valid);
}

#[tokio::test]
async fn used_and_expired_email_tokens_and_closed_invitations_go_and_live_ones_stay() {
    let app = app_with(None).await;
    let t = app.create_tenant("acme").await;
    let s = schema(&t);
    let u = user(&app, &t, "ada").await;
    exec(
        &app,
        &format!(
            "insert into {s}.user_tokens (token_hash, user_id, purpose, expires_at, used_at) values
               (convert_to('used-old', 'utf8'), '{u}', 'reset_password', now() + interval '1 day', now() - interval '2 hours'),
               (convert_to('expired-old', 'utf8'), '{u}', 'verify_email', now() - interval '2 hours', null),
               (convert_to('live', 'utf8'), '{u}', 'verify_email', now() + interval '1 hour', null),
               (convert_to('used-recent', 'utf8'), '{u}', 'reset_password', now() + interval '1 hour', now() - interval '10 minutes'),
               (convert_to('expired-recent', 'utf8'), '{u}', 'reset_password', now() - interval '10 minutes', null)"
        ),
    )
    .await;
    let role = Uuid::now_v7();
    let invitation = |name: &str, expires: &str, accepted: &str, revoked: &str| {
        format!(
            "('{id}', '{name}@example.com', '{name}@example.com', array['{role}']::uuid[], {expires}, {accepted}, {revoked})",
            id = Uuid::now_v7()
        )
    };
    let ago = |t: &str| format!("now() - interval '{t}'");
    let rows = [
        invitation("accepted-old", &ago("1 day"), &ago("2 hours"), "null"),
        invitation(
            "revoked-old",
            "now() + interval '1 day'",
            "null",
            &ago("2 hours"),
        ),
        invitation("expired-old", &ago("2 hours"), "null", "null"),
        invitation("live", "now() + interval '7 days'", "null", "null"),
        invitation(
            "accepted-recent",
            "now() + interval '1 day'",
            &ago("10 minutes"),
            "null",
        ),
        invitation("expired-recent", &ago("10 minutes"), "null", "null"),
    ];
    exec(
        &app,
        &format!(
            "insert into {s}.invitations (id, email, email_key, role_ids, expires_at, accepted_at, revoked_at) values {}",
            rows.join(", ")
        ),
    )
    .await;

    prune_all(&app).await;

    assert_eq!(
        ids(
            &app,
            &format!("select convert_from(token_hash, 'utf8') from {s}.user_tokens")
        )
        .await,
        ["expired-recent", "live", "used-recent"]
    );
    assert_eq!(
        ids(
            &app,
            &format!("select split_part(email, '@', 1) from {s}.invitations")
        )
        .await,
        ["accepted-recent", "expired-recent", "live"]
    );
    assert_eq!(pruned_metric(&app, "email_tokens"), 2);
    assert_eq!(pruned_metric(&app, "invitations"), 3);
}

#[tokio::test]
async fn audit_events_go_in_batches_once_past_retention() {
    let app = app_with(None).await;
    let t = app.create_tenant("acme").await;
    let s = schema(&t);
    let insert = |ago: &str, n: usize| {
        format!(
            "insert into {s}.audit_events (event, occurred_at)
             select 'test.' || case when '{ago}' = '2 hours' then 'old' else 'recent' end,
                    now() - interval '{ago}' from generate_series(1, {n})"
        )
    };
    exec(&app, &insert("2 hours", 5)).await;
    exec(&app, &insert("10 minutes", 2)).await;

    // One batch takes at most its limit.
    let mut tx = app.state.tenant_db.begin(t.id).await.expect("tx");
    let one = identity::store::retention::prune_audit_events(
        &mut tx,
        std::time::Duration::from_secs(3600),
        2,
    )
    .await
    .expect("batch");
    tx.rollback().await.expect("rollback");
    assert_eq!(one, 2);

    // The job (batches of 2) takes all 5 over several batches, and nothing recent.
    prune_all(&app).await;
    let left: Vec<String> = ids(&app, &format!("select event from {s}.audit_events")).await;
    assert_eq!(left, ["test.recent", "test.recent"]);
    assert_eq!(pruned_metric(&app, "audit_events"), 5);
}

#[tokio::test]
async fn a_plan_may_keep_its_audit_trail_longer() {
    let plans = r#"[
        {"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB"}},
        {"name": "pro", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB",
                                   "audit_retention": "3h"}}
    ]"#;
    let app = app_with(Some(plans)).await;
    let free = app.create_tenant("free-tenant").await;
    let pro = app.create_tenant("pro-tenant").await;
    exec(
        &app,
        &format!(
            "update public.tenants set plan = 'pro' where id = '{}'",
            pro.id.0
        ),
    )
    .await;
    for t in [&free, &pro] {
        exec(
            &app,
            &format!(
                "insert into {s}.audit_events (event, occurred_at) values
                   ('test.two_hours', now() - interval '2 hours'),
                   ('test.four_hours', now() - interval '4 hours')",
                s = schema(t)
            ),
        )
        .await;
    }
    prune_all(&app).await;
    let events = |t: &Tenant| format!("select event from {}.audit_events", schema(t));
    assert_eq!(ids(&app, &events(&free)).await, Vec::<String>::new());
    assert_eq!(ids(&app, &events(&pro)).await, ["test.two_hours"]);
}

#[tokio::test]
async fn one_tenants_prune_never_touches_another_tenants_rows() {
    let app = app_with(None).await;
    let a = app.create_tenant("alpha").await;
    let b = app.create_tenant("bravo").await;
    for t in [&a, &b] {
        let s = schema(t);
        let u = user(&app, t, "ada").await;
        exec(
            &app,
            &format!(
                "insert into {s}.audit_events (event, occurred_at) values
                   ('test.old', now() - interval '2 hours'), ('test.old', now() - interval '3 hours'),
                   ('test.old', now() - interval '4 hours'), ('test.live', now());
                 insert into {s}.user_tokens (token_hash, user_id, purpose, expires_at, used_at) values
                   ('\\x01', '{u}', 'verify_email', now() - interval '2 hours', null),
                   ('\\x02', '{u}', 'verify_email', now() + interval '1 hour', null)"
            ),
        )
        .await;
        session(
            &app,
            t,
            u,
            "old",
            "3h",
            Some("2h"),
            "now() + interval '1 day'",
        )
        .await;
        session(&app, t, u, "live", "0s", None, "now() + interval '1 day'").await;
    }
    let state = |t: &Tenant| {
        let s = schema(t);
        format!(
            "select event from {s}.audit_events
             union all select encode(token_hash, 'hex') from {s}.user_tokens
             union all select user_agent from {s}.sessions"
        )
    };
    let untouched = [
        "01",
        "02",
        "live",
        "old",
        "test.live",
        "test.old",
        "test.old",
        "test.old",
    ];
    let pruned = ["02", "live", "test.live"];

    prune_tenant(&app, &a).await;
    assert_eq!(ids(&app, &state(&a)).await, pruned);
    assert_eq!(
        ids(&app, &state(&b)).await,
        untouched,
        "bravo is not alpha's to prune"
    );
    assert_eq!(pruned_metric(&app, "audit_events"), 3);

    prune_tenant(&app, &b).await;
    assert_eq!(ids(&app, &state(&b)).await, pruned);
    assert_eq!(ids(&app, &state(&a)).await, pruned);
    assert_eq!(pruned_metric(&app, "audit_events"), 6);
    assert_eq!(pruned_metric(&app, "sessions"), 2);
    assert_eq!(pruned_metric(&app, "email_tokens"), 2);
}

#[tokio::test]
async fn succeeded_jobs_and_processed_events_go_and_pending_dead_and_failed_stay() {
    let app = app_with(None).await;
    let tenant = app.create_tenant("acme").await;
    let job = |name: &str, status: &str, finished: &str, run_at: &str| {
        format!(
            "('{}', 'test.{name}', '{status}', {finished}, {run_at})",
            Uuid::now_v7()
        )
    };
    let old = "now() - interval '2 hours'";
    let later = "now() + interval '1 day'";
    let mut rows: Vec<String> = (0..5)
        .map(|i| job(&format!("succeeded_old_{i}"), "succeeded", old, old))
        .collect();
    rows.extend([
        job(
            "succeeded_recent",
            "succeeded",
            "now() - interval '10 minutes'",
            old,
        ),
        job("dead", "dead", old, old),
        // Neither waiting job is due, so the test's worker leaves them be.
        job("failed", "failed", "null", later),
        job("queued", "queued", "null", later),
    ]);
    exec(
        &app,
        &format!(
            "insert into public.jobs (id, kind, status, finished_at, run_at) values {}",
            rows.join(", ")
        ),
    )
    .await;
    // A tenant's old succeeded job goes too (the queue is pruned as a whole).
    exec(
        &app,
        &format!(
            "insert into public.jobs (id, kind, status, finished_at, tenant_id)
             values ('{}', 'test.tenant_succeeded', 'succeeded', {old}, '{}')",
            Uuid::now_v7(),
            tenant.id.0
        ),
    )
    .await;
    let event = |id: &str, status: &str, processed: &str| {
        format!(
            "('{id}', 'invoice.paid', now() - interval '6 days', '{{}}', '{status}', {processed}, now() - interval '6 days')"
        )
    };
    let long_ago = "now() - interval '5 days'";
    let events = [
        event("evt_processed_old_1", "processed", long_ago),
        event("evt_processed_old_2", "processed", long_ago),
        event("evt_ignored_old", "ignored", long_ago),
        event(
            "evt_processed_recent",
            "processed",
            "now() - interval '3 days'",
        ),
        event("evt_pending_old", "pending", "null"),
        event("evt_failed_old", "failed", long_ago),
    ];
    exec(
        &app,
        &format!(
            "insert into public.webhook_events (id, type, created_at, payload, status, processed_at, received_at)
             values {}",
            events.join(", ")
        ),
    )
    .await;

    prune_all(&app).await;

    let left = ids(
        &app,
        "select kind from public.jobs where kind like 'test.%'",
    )
    .await;
    assert_eq!(
        left,
        [
            "test.dead",
            "test.failed",
            "test.queued",
            "test.succeeded_recent"
        ]
    );
    // The prune jobs of this pass succeeded just now: inside retention.
    let kinds = ids(
        &app,
        "select kind from public.jobs where kind not like 'test.%'",
    )
    .await;
    assert!(
        kinds.contains(&jobs::retention::PruneJobs::KIND.to_owned()),
        "{kinds:?}"
    );
    assert_eq!(
        ids(&app, "select id from public.webhook_events").await,
        ["evt_failed_old", "evt_pending_old", "evt_processed_recent"]
    );
    assert_eq!(pruned_metric(&app, "jobs"), 6);
    assert_eq!(pruned_metric(&app, "webhook_events"), 3);
}

#[tokio::test]
async fn the_scheduled_kinds_are_unique_so_instances_never_pile_them_up() {
    let app = app_with(None).await;
    for _ in 0..2 {
        for job in api::startup::retention_jobs().expect("jobs") {
            enqueue_now(&app, job).await;
        }
    }
    let kinds = ids(&app, "select kind from public.jobs").await;
    assert_eq!(
        kinds,
        [
            "auth.prune_tenants",
            "billing.prune_webhook_events",
            "email.prune_messages",
            "jobs.prune"
        ]
    );
}
