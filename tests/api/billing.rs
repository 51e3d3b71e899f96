//! Billing end to end against the real PostgreSQL and Redis, with Stripe's API replaced by
//! a local server that records what it receives; webhook signatures are real HMACs.

use std::time::Duration;

use e2e::{
    TestApp, assert_problem,
    auth::Signup,
    spawn_app,
    stripe::{FakeStripe, WEBHOOK_SECRET, event, now, subscription},
};
use reqwest::Method;
use serde_json::{Value, json};

async fn app_with(stripe: &FakeStripe, extra: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder().env("stripe_api_base", &stripe.url);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.spawn().await
}

/// Links `org` to Stripe customer `customer` (as a completed checkout would).
async fn link_customer(app: &TestApp, org: &Signup, customer: &str) {
    sqlx::query("update public.tenants set stripe_customer_id = $2 where id = $1")
        .bind(org.tenant_id)
        .bind(customer)
        .execute(app.state.db.pool())
        .await
        .expect("link customer");
}

async fn billing_state(app: &TestApp, org: &Signup) -> Value {
    let response = app
        .get_authed(&org.slug, "/v1/billing/subscription", &org.tokens.access)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

async fn stored_status(app: &TestApp, id: &str) -> (String, i32) {
    sqlx::query_as("select status, attempts from public.webhook_events where id = $1")
        .bind(id)
        .fetch_one(app.state.db.pool())
        .await
        .expect("stored event")
}

#[tokio::test]
async fn signed_events_change_the_plan_and_forgeries_are_refused() {
    let app = spawn_app().await;
    let org = app.signup("bill-sig").await;
    link_customer(&app, &org, "cus_sig").await;
    let tenant = org.tenant_id.to_string();
    let created = event(
        "evt_sig_1",
        "customer.subscription.created",
        now() - 5,
        subscription("sub_sig", "cus_sig", "active", "price_pro", &tenant),
    );
    let body = serde_json::to_vec(&created).expect("JSON");

    // Forgeries and stale or early deliveries: 400, nothing stored.
    let sign = |secret: &str, t: i64, body: &[u8]| billing::signature::header(&[secret], t, body);
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let v1 = billing::signature::sign(WEBHOOK_SECRET, now(), &body);
    let cases = [
        (
            "tampered",
            tampered.clone(),
            Some(sign(WEBHOOK_SECRET, now(), &body)),
        ),
        (
            "wrong secret",
            body.clone(),
            Some(sign("whsec_other", now(), &body)),
        ),
        (
            "stale",
            body.clone(),
            Some(sign(WEBHOOK_SECRET, now() - 301, &body)),
        ),
        (
            "future",
            body.clone(),
            Some(sign(WEBHOOK_SECRET, now() + 61, &body)),
        ),
        (
            "only v0",
            body.clone(),
            Some(format!("t={},v0={v1}", now())),
        ),
        ("missing", body.clone(), None),
    ];
    for (name, body, signature) in cases {
        let response = app.deliver_raw(&body, signature.as_deref()).await;
        let problem = assert_problem(response, 400, "invalid_signature").await;
        assert!(
            !problem["detail"].as_str().unwrap_or_default().is_empty(),
            "{name}"
        );
    }
    let stored: i64 = sqlx::query_scalar("select count(*) from public.webhook_events")
        .fetch_one(app.state.db.pool())
        .await
        .expect("count");
    assert_eq!(stored, 0);

    // Signed with the old and the new secret during a rotation: accepted.
    let rotated = billing::signature::header(&["whsec_retired", WEBHOOK_SECRET], now(), &body);
    let response = app.deliver_raw(&body, Some(&rotated)).await;
    assert_eq!(response.status(), 200);
    let receipt: Value = response.json().await.expect("JSON");
    assert_eq!(receipt, json!({"id": "evt_sig_1", "duplicate": false}));

    assert_eq!(billing_state(&app, &org).await["plan"], "free");
    app.run_jobs().await;
    let state = billing_state(&app, &org).await;
    assert_eq!(state["plan"], "pro");
    assert_eq!(state["status"], "active");
    assert_eq!(state["subscribed_plan"], "pro");
    assert_eq!(state["limits"]["products"], 10_000);
    let tenant_view: Value = app
        .request(Method::GET, "/v1/tenant")
        .header("x-tenant", &org.slug)
        .bearer_auth(&org.tokens.access)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(tenant_view["plan"], "pro");
    assert_eq!(
        stored_status(&app, "evt_sig_1").await,
        ("processed".into(), 1)
    );

    // Not an event at all, though signed: 400; an unknown type: recorded, acknowledged.
    let junk = b"{\"hello\": 1}";
    let response = app
        .deliver_raw(junk, Some(&sign(WEBHOOK_SECRET, now(), junk)))
        .await;
    assert_problem(response, 400, "bad_request").await;
    let unknown = event(
        "evt_sig_2",
        "charge.dispute.funds_withdrawn",
        now(),
        json!({"id": "du_1"}),
    );
    assert_eq!(app.deliver(&unknown).await.status(), 200);
    app.run_jobs().await;
    assert_eq!(stored_status(&app, "evt_sig_2").await.0, "ignored");
}

#[tokio::test]
async fn a_second_secret_is_accepted_after_a_rotation() {
    let app = TestApp::builder()
        .env("stripe_webhook_secrets", "whsec_new, whsec_old")
        .spawn()
        .await;
    let body =
        serde_json::to_vec(&event("evt_rot", "ping", now(), json!({"id": "x"}))).expect("JSON");
    for secret in ["whsec_old", "whsec_new"] {
        let signature = billing::signature::header(&[secret], now(), &body);
        assert_eq!(app.deliver_raw(&body, Some(&signature)).await.status(), 200);
    }
    let signature = billing::signature::header(&[WEBHOOK_SECRET], now(), &body);
    let response = app.deliver_raw(&body, Some(&signature)).await;
    assert_problem(response, 400, "invalid_signature").await;
}

#[tokio::test]
async fn fifty_concurrent_deliveries_of_one_event_have_one_effect() {
    let app = spawn_app().await;
    let org = app.signup("bill-dup").await;
    link_customer(&app, &org, "cus_dup").await;
    let tenant = org.tenant_id.to_string();
    let created = event(
        "evt_dup",
        "customer.subscription.created",
        now() - 5,
        subscription("sub_dup", "cus_dup", "active", "price_business", &tenant),
    );
    let deliveries = (0..50).map(|_| app.deliver(&created));
    let responses = futures_util::future::join_all(deliveries).await;
    let mut fresh = 0;
    for response in responses {
        assert_eq!(response.status(), 200);
        let receipt: Value = response.json().await.expect("JSON");
        if receipt["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one delivery was new");
    let jobs: i64 =
        sqlx::query_scalar("select count(*) from public.jobs where kind = 'billing.process_event'")
            .fetch_one(app.state.db.pool())
            .await
            .expect("count");
    assert_eq!(jobs, 1, "one processing job");
    app.run_jobs().await;
    assert_eq!(
        stored_status(&app, "evt_dup").await,
        ("processed".into(), 1)
    );
    assert_eq!(billing_state(&app, &org).await["plan"], "business");
    // Delivered again later: acknowledged, nothing queued.
    let again: Value = app.deliver(&created).await.json().await.expect("JSON");
    assert_eq!(again["duplicate"], true);
    let jobs: i64 =
        sqlx::query_scalar("select count(*) from public.jobs where kind = 'billing.process_event'")
            .fetch_one(app.state.db.pool())
            .await
            .expect("count");
    assert_eq!(jobs, 1);
}

#[tokio::test]
async fn a_duplicate_storm_across_three_instances_has_one_effect_per_event() {
    let app = spawn_app().await;
    let instances = [app.spawn_sibling().await, app.spawn_sibling().await];
    let instances = [&app, &instances[0], &instances[1]];
    let org = app.signup("bill-storm").await;
    link_customer(&app, &org, "cus_storm").await;
    let tenant = org.tenant_id.to_string();
    // Twelve events, each delivered four times to every instance at once.
    let events: Vec<Value> = (0..12)
        .map(|i| {
            let price = if i % 2 == 0 {
                "price_pro"
            } else {
                "price_business"
            };
            event(
                &format!("evt_storm_{i}"),
                "customer.subscription.updated",
                now() - 60 + i,
                subscription("sub_storm", "cus_storm", "active", price, &tenant),
            )
        })
        .collect();
    let deliveries = events.iter().flat_map(|e| {
        instances
            .iter()
            .flat_map(move |instance| (0..4).map(move |_| instance.deliver(e)))
    });
    let responses = futures_util::future::join_all(deliveries).await;
    let mut fresh = std::collections::BTreeMap::<String, usize>::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let receipt: Value = response.json().await.expect("JSON");
        let id = receipt["id"].as_str().expect("id").to_owned();
        *fresh.entry(id).or_default() += usize::from(receipt["duplicate"] == false);
    }
    assert_eq!(fresh.len(), events.len());
    assert!(
        fresh.values().all(|n| *n == 1),
        "one new delivery per event: {fresh:?}"
    );
    let ids: Vec<String> = fresh.keys().cloned().collect();
    let stored: i64 =
        sqlx::query_scalar("select count(*) from public.webhook_events where id = any($1)")
            .bind(&ids)
            .fetch_one(app.state.db.pool())
            .await
            .expect("count events");
    assert_eq!(stored, 12, "each event stored once");
    let jobs: i64 =
        sqlx::query_scalar("select count(*) from public.jobs where kind = 'billing.process_event'")
            .fetch_one(app.state.db.pool())
            .await
            .expect("count jobs");
    assert_eq!(jobs, 12, "one processing job per event");
    app.run_jobs().await;
    // Each handled once: applied, or ignored as older than one applied before it.
    for id in &ids {
        let (status, attempts) = stored_status(&app, id).await;
        assert!(
            matches!(status.as_str(), "processed" | "ignored"),
            "{id}: {status}"
        );
        assert_eq!(attempts, 1, "{id}");
    }
    // The newest event decides (business, the twelfth's price: i = 11 is odd).
    assert_eq!(billing_state(&app, &org).await["plan"], "business");
}

#[tokio::test]
async fn subscription_events_in_any_order_end_in_the_latest_state() {
    let app = spawn_app().await;
    let org = app.signup("bill-order").await;
    let tenant = org.tenant_id.to_string();
    let t = now() - 100;
    // No customer is linked: the subscription's metadata names the tenant.
    let sub =
        |status: &str, price: &str| subscription("sub_o", "cus_order", status, price, &tenant);
    let history = [
        event(
            "evt_o1",
            "customer.subscription.created",
            t,
            sub("active", "price_pro"),
        ),
        event(
            "evt_o2",
            "customer.subscription.updated",
            t + 10,
            sub("active", "price_business"),
        ),
        event(
            "evt_o3",
            "customer.subscription.updated",
            t + 20,
            sub("past_due", "price_business"),
        ),
        event(
            "evt_o4",
            "customer.subscription.deleted",
            t + 30,
            sub("canceled", "price_business"),
        ),
    ];
    // Newest first, each processed before the next arrives.
    for e in history.iter().rev() {
        assert_eq!(app.deliver(e).await.status(), 200);
        app.run_jobs().await;
    }
    let state = billing_state(&app, &org).await;
    assert_eq!(state["status"], "canceled");
    assert_eq!(
        state["plan"], "free",
        "a canceled subscription falls back to free"
    );
    assert_eq!(stored_status(&app, "evt_o4").await.0, "processed");
    for older in ["evt_o1", "evt_o2", "evt_o3"] {
        assert_eq!(stored_status(&app, older).await.0, "ignored", "{older}");
    }
    // The customer is now the tenant's: invoices map through it.
    let failed = event(
        "evt_o5",
        "invoice.payment_failed",
        t + 40,
        json!({"id": "in_1", "customer": "cus_order"}),
    );
    app.deliver(&failed).await;
    app.run_jobs().await;
    assert_eq!(
        billing_state(&app, &org).await["last_payment_status"],
        "failed"
    );

    // Another tenant, shuffled: the state of the newest event wins.
    let other = app.signup("bill-order-b").await;
    let tenant_b = other.tenant_id.to_string();
    let sub_b =
        |status: &str, price: &str| subscription("sub_b", "cus_b", status, price, &tenant_b);
    let shuffled = [
        event(
            "evt_b2",
            "customer.subscription.updated",
            t + 10,
            sub_b("past_due", "price_pro"),
        ),
        event(
            "evt_b3",
            "customer.subscription.updated",
            t + 20,
            sub_b("active", "price_pro"),
        ),
        event(
            "evt_b1",
            "customer.subscription.created",
            t,
            sub_b("incomplete", "price_pro"),
        ),
    ];
    for e in &shuffled {
        app.deliver(e).await;
    }
    app.run_jobs().await;
    let state = billing_state(&app, &other).await;
    assert_eq!(
        (state["status"].clone(), state["plan"].clone()),
        (json!("active"), json!("pro"))
    );
    // A replay of an older event changes nothing either.
    let key = app.admin_key().await;
    let replay = app
        .request(Method::POST, "/v1/admin/webhook-events/evt_b1/replay")
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(replay.status(), 202);
    app.run_jobs().await;
    assert_eq!(billing_state(&app, &other).await["status"], "active");
}

#[tokio::test]
async fn slow_processing_does_not_delay_the_answer() {
    let app = spawn_app().await;
    let org = app.signup("bill-slow").await;
    link_customer(&app, &org, "cus_slow").await;
    let tenant = org.tenant_id.to_string();
    // Processing this tenant's events waits for this lock as long as the test holds it.
    let mut blocker = app.state.db.pool().begin().await.expect("tx");
    sqlx::query("select 1 from public.tenants where id = $1 for update")
        .bind(org.tenant_id)
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let worker = api::startup::worker(
        &app.state,
        api::startup::job_registry(&app.state).expect("registry"),
    );
    let mut outcomes = worker.outcomes();
    let running = tokio::spawn(worker.run(std::future::pending::<()>()));

    let first = event(
        "evt_slow_1",
        "customer.subscription.created",
        now() - 5,
        subscription("sub_slow", "cus_slow", "active", "price_pro", &tenant),
    );
    let second = event(
        "evt_slow_2",
        "invoice.paid",
        now() - 4,
        json!({"id": "in_s", "customer": "cus_slow"}),
    );
    for e in [&first, &second] {
        let answered = tokio::time::timeout(Duration::from_secs(10), app.deliver(e))
            .await
            .expect("answered while processing is blocked");
        assert_eq!(answered.status(), 200);
    }
    assert_eq!(stored_status(&app, "evt_slow_1").await.0, "pending");
    blocker.rollback().await.expect("release");
    let mut done = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while done < 2 {
            let outcome = outcomes.recv().await.expect("worker alive");
            assert_eq!(outcome.status, "succeeded", "{outcome:?}");
            done += 1;
        }
    })
    .await
    .expect("both processed once the lock is gone");
    running.abort();
    assert_eq!(billing_state(&app, &org).await["plan"], "pro");
}

#[tokio::test]
async fn checkout_and_portal_send_the_right_requests() {
    let stripe = FakeStripe::start().await;
    let app = app_with(&stripe, &[("public_url", "https://app.canopy.test")]).await;
    let org = app.signup("bill-checkout").await;
    let checkout = |plan: &str| {
        app.authed(
            Method::POST,
            &org.slug,
            "/v1/billing/checkout",
            &org.tokens.access,
        )
        .json(&json!({"plan": plan}))
        .send()
    };
    // Before any checkout there is no portal.
    let portal = app
        .send_authed(
            Method::POST,
            &org.slug,
            "/v1/billing/portal",
            &org.tokens.access,
            None,
        )
        .await;
    assert_problem(portal, 409, "no_billing_account").await;
    for plan in ["free", "platinum"] {
        let problem = assert_problem(
            checkout(plan).await.expect("request"),
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "plan");
    }
    assert!(stripe.requests().is_empty());

    let response = checkout("pro").await.expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["url"], "https://checkout.stripe.test/c/pay/cs_fake");
    let tenant = org.tenant_id.to_string();
    let customers = stripe.requests_to("/v1/customers");
    assert_eq!(customers.len(), 1);
    let customer = &customers[0];
    assert_eq!(customer.method, "POST");
    assert_eq!(
        customer.authorization.as_deref(),
        Some("Bearer sk_test_canopy_development")
    );
    assert_eq!(customer.form["email"], org.owner_email);
    assert_eq!(customer.form["name"], "Org bill-checkout");
    assert_eq!(customer.form["metadata[tenant_id]"], tenant);
    let sessions = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let form = &sessions[0].form;
    assert_eq!(form["mode"], "subscription");
    assert_eq!(form["customer"], "cus_fake1");
    assert_eq!(form["line_items[0][price]"], "price_pro");
    assert_eq!(form["line_items[0][quantity]"], "1");
    assert_eq!(
        form["success_url"],
        "https://app.canopy.test/billing/success?session_id={CHECKOUT_SESSION_ID}"
    );
    assert_eq!(form["cancel_url"], "https://app.canopy.test/billing/cancel");
    assert_eq!(form["client_reference_id"], tenant);
    assert_eq!(form["metadata[tenant_id]"], tenant);
    assert_eq!(form["subscription_data[metadata][tenant_id]"], tenant);

    // A second checkout reuses the customer.
    assert_eq!(checkout("business").await.expect("request").status(), 200);
    assert_eq!(stripe.requests_to("/v1/customers").len(), 1);
    let sessions = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions[1].form["customer"], "cus_fake1");
    assert_eq!(sessions[1].form["line_items[0][price]"], "price_business");

    let portal = app
        .send_authed(
            Method::POST,
            &org.slug,
            "/v1/billing/portal",
            &org.tokens.access,
            None,
        )
        .await;
    assert_eq!(portal.status(), 200);
    let body: Value = portal.json().await.expect("JSON");
    assert_eq!(body["url"], "https://billing.stripe.test/p/session/fake");
    let portals = stripe.requests_to("/v1/billing_portal/sessions");
    assert_eq!(portals.len(), 1);
    assert_eq!(portals[0].form["customer"], "cus_fake1");
    assert_eq!(
        portals[0].form["return_url"],
        "https://app.canopy.test/billing"
    );

    // Once subscribed, another checkout would bill twice: plans change in the portal.
    let tenant_sub = subscription("sub_ck", "cus_fake1", "active", "price_pro", &tenant);
    let created = event(
        "evt_ck",
        "customer.subscription.created",
        now() - 5,
        tenant_sub,
    );
    assert_eq!(app.deliver(&created).await.status(), 200);
    app.run_jobs().await;
    let problem = assert_problem(
        checkout("business").await.expect("request"),
        409,
        "conflict",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("portal"))
    );
    assert_eq!(stripe.requests_to("/v1/checkout/sessions").len(), 2);

    // Stripe unreachable: 503, retry later.
    stripe.stop();
    let portal = app
        .send_authed(
            Method::POST,
            &org.slug,
            "/v1/billing/portal",
            &org.tokens.access,
            None,
        )
        .await;
    let problem = assert_problem(portal, 503, "dependency_unavailable").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Stripe"))
    );
}

#[tokio::test]
async fn limits_apply_and_a_downgrade_keeps_data_but_restores_free_limits() {
    let plans = r#"[
        {"name": "free", "limits": {"storage_bytes": "1 MiB", "upload_bytes": "1 MiB", "products": 2, "seats": 2}},
        {"name": "pro", "price_ids": ["price_pro"], "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB", "products": 100, "seats": 10}}
    ]"#;
    let app = TestApp::builder().env("plans", plans).spawn().await;
    let org = app.signup("bill-limits").await;
    link_customer(&app, &org, "cus_lim").await;
    let tenant = org.tenant_id.to_string();
    let product = |n: u32| json!({"name": format!("P{n}"), "price": 100, "currency": "USD"});

    app.create_product_ok(&org, &product(1)).await;
    app.create_product_ok(&org, &product(2)).await;
    let response = app
        .create_product(&org.slug, &org.tokens.access, &product(3))
        .await;
    let problem = assert_problem(response, 402, "plan_limit_reached").await;
    assert_eq!(problem["limit"], "products");
    assert_eq!(
        (problem["allowed"].clone(), problem["used"].clone()),
        (json!(2), json!(2))
    );

    // Pro: room for more.
    let t = now() - 50;
    let sub = |status: &str| subscription("sub_l", "cus_lim", status, "price_pro", &tenant);
    app.deliver(&event(
        "evt_l1",
        "customer.subscription.created",
        t,
        sub("active"),
    ))
    .await;
    app.run_jobs().await;
    for n in 3..=4 {
        app.create_product_ok(&org, &product(n)).await;
    }
    app.register_verified(&org.slug, "second@bill-limits.example")
        .await;
    app.register_verified(&org.slug, "third@bill-limits.example")
        .await;

    // Canceled: back to free limits, nothing deleted.
    app.deliver(&event(
        "evt_l2",
        "customer.subscription.deleted",
        t + 10,
        sub("canceled"),
    ))
    .await;
    app.run_jobs().await;
    let state = billing_state(&app, &org).await;
    assert_eq!(state["plan"], "free");
    assert_eq!(state["usage"]["products"], 4);
    assert_eq!(state["usage"]["seats"], 3);
    let response = app
        .create_product(&org.slug, &org.tokens.access, &product(5))
        .await;
    let problem = assert_problem(response, 402, "plan_limit_reached").await;
    assert_eq!(
        (problem["allowed"].clone(), problem["used"].clone()),
        (json!(2), json!(4))
    );
    let bulk = app.bulk_create(&org, &[product(6)]).await;
    assert_problem(bulk, 402, "plan_limit_reached").await;
    let listed: Value = app
        .get_authed(&org.slug, "/v1/products", &org.tokens.access)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        listed["items"].as_array().expect("items").len(),
        4,
        "data kept"
    );
    // Seats: no new member while over the free plan's two.
    let response = app
        .post_as(
            &org.slug,
            "/v1/auth/register",
            &json!({"email": "fourth@bill-limits.example", "password": e2e::auth::PASSWORD, "name": "Four"}),
        )
        .await;
    let problem = assert_problem(response, 402, "plan_limit_reached").await;
    assert_eq!(problem["limit"], "seats");
}

#[tokio::test]
async fn reconciliation_finds_events_that_were_never_delivered() {
    let stripe = FakeStripe::start().await;
    let app = app_with(&stripe, &[]).await;
    let org = app.signup("bill-recon").await;
    link_customer(&app, &org, "cus_recon").await;
    let tenant = org.tenant_id.to_string();
    let delivered = event(
        "evt_r1",
        "invoice.paid",
        now() - 20,
        json!({"id": "in_r", "customer": "cus_recon"}),
    );
    let missed = event(
        "evt_r2",
        "customer.subscription.created",
        now() - 10,
        subscription("sub_r", "cus_recon", "active", "price_pro", &tenant),
    );
    assert_eq!(app.deliver(&delivered).await.status(), 200);
    stripe.set_events(vec![missed, delivered]);

    let mut conn = app.state.db.pool().acquire().await.expect("connection");
    jobs::enqueue(
        &mut conn,
        jobs::NewJob::new(
            <billing::reconcile::Reconcile as jobs::JobKind>::KIND,
            json!({}),
        ),
    )
    .await
    .expect("enqueue");
    drop(conn);
    app.run_jobs().await;

    let listing = stripe.requests_to("/v1/events");
    assert_eq!(listing.len(), 1);
    assert!(listing[0].uri.contains("created"), "{}", listing[0].uri);
    assert_eq!(billing_state(&app, &org).await["plan"], "pro");
    let key = app.admin_key().await;
    let page: Value = app
        .request(Method::GET, "/v1/admin/webhook-events?status=processed")
        .bearer_auth(&key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    let items = page["items"].as_array().expect("items");
    let sources: Vec<(&str, &str)> = items
        .iter()
        .map(|e| {
            (
                e["id"].as_str().expect("id"),
                e["source"].as_str().expect("source"),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [("evt_r2", "reconciliation"), ("evt_r1", "webhook")]
    );
    assert!(items.iter().all(|e| e["tenant_id"] == tenant.as_str()));
    let filtered: Value = app
        .request(
            Method::GET,
            "/v1/admin/webhook-events?type=invoice.paid&limit=1",
        )
        .bearer_auth(&key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(filtered["items"][0]["id"], "evt_r1");
    assert_eq!(filtered["next_cursor"], Value::Null);
    let missing = app
        .request(Method::POST, "/v1/admin/webhook-events/evt_nope/replay")
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_problem(missing, 404, "not_found").await;
}

#[tokio::test]
async fn the_plans_request_rate_is_enforced_per_tenant() {
    let plans = r#"[{"name": "free", "limits": {"storage_bytes": "1 MiB", "upload_bytes": "1 MiB",
                    "requests_per_minute": 5}}]"#;
    let app = TestApp::builder().env("plans", plans).spawn().await;
    let org = app.signup("bill-rate").await;
    let other = app.signup("bill-rate-b").await;
    // Five a minute: within 11 requests (two windows at most) one is refused.
    let mut served = 0;
    let mut refused = None;
    for _ in 0..11 {
        let response = app
            .get_authed(&org.slug, "/v1/me", &org.tokens.access)
            .await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
        served += 1;
    }
    let refused = refused.expect("the sixth request of a minute is refused");
    assert!(served >= 5, "{served} served first");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    let problem = assert_problem(refused, 429, "rate_limited").await;
    assert_eq!(problem["limit"], "requests_per_minute");
    assert_eq!(problem["allowed"], 5);
    // Another tenant has its own count; public endpoints are not counted.
    let theirs = app
        .get_authed(&other.slug, "/v1/me", &other.tokens.access)
        .await;
    assert_eq!(theirs.status(), 200);
    let public = app
        .request(Method::GET, "/v1/tenant")
        .header("x-tenant", &org.slug)
        .send()
        .await
        .expect("request");
    assert_eq!(public.status(), 200);
}

#[tokio::test]
async fn the_end_of_a_replaced_subscription_does_not_end_its_successor() {
    let app = spawn_app().await;
    let org = app.signup("bill-replaced").await;
    link_customer(&app, &org, "cus_rep").await;
    let tenant = org.tenant_id.to_string();
    let t = now() - 60;
    let old = |status: &str| subscription("sub_old", "cus_rep", status, "price_pro", &tenant);
    let new = subscription("sub_new", "cus_rep", "active", "price_business", &tenant);
    for e in [
        event(
            "evt_rep1",
            "customer.subscription.created",
            t,
            old("active"),
        ),
        event("evt_rep2", "customer.subscription.created", t + 10, new),
        event(
            "evt_rep3",
            "customer.subscription.deleted",
            t + 20,
            old("canceled"),
        ),
    ] {
        assert_eq!(app.deliver(&e).await.status(), 200);
    }
    app.run_jobs().await;
    let state = billing_state(&app, &org).await;
    assert_eq!(
        (state["plan"].clone(), state["status"].clone()),
        (json!("business"), json!("active"))
    );
    assert_eq!(stored_status(&app, "evt_rep3").await.0, "ignored");
}

#[tokio::test]
async fn odd_but_signed_payloads_and_ids_are_client_errors_at_worst() {
    let app = spawn_app().await;
    // NUL in a string: PostgreSQL cannot store it, so it is dropped, and the event kept.
    let nul = event(
        "evt_nul",
        "customer.updated",
        now(),
        json!({"id": "cus_n", "description": "a\u{0}b"}),
    );
    assert_eq!(app.deliver(&nul).await.status(), 200);
    let stored: String = sqlx::query_scalar(
        "select payload->'data'->'object'->>'description' from public.webhook_events where id = 'evt_nul'",
    )
    .fetch_one(app.state.db.pool())
    .await
    .expect("stored");
    assert_eq!(stored, "ab");
    let key = app.admin_key().await;
    for path in [
        "/v1/admin/webhook-events/evt%00x/replay",
        "/v1/admin/webhook-events/evt%20x/replay",
    ] {
        let response = app
            .request(Method::POST, path)
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_problem(response, 404, "not_found").await;
    }
    let listing = app
        .request(Method::GET, "/v1/admin/webhook-events?type=a%00b")
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_problem(listing, 400, "invalid_parameter").await;
}

#[tokio::test]
async fn events_of_the_other_mode_or_from_the_future_are_stored_but_never_applied() {
    let app = spawn_app().await;
    let org = app.signup("bill-mode").await;
    link_customer(&app, &org, "cus_mode").await;
    let tenant = org.tenant_id.to_string();
    let why = |id: &'static str| {
        let pool = app.state.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "select last_error from public.webhook_events where id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("stored event")
            .unwrap_or_default()
        }
    };

    // A live-mode event signed with the (test-mode) development secret.
    let mut live = event(
        "evt_mode_live",
        "customer.subscription.created",
        now() - 5,
        subscription("sub_mode", "cus_mode", "active", "price_business", &tenant),
    );
    live["livemode"] = json!(true);
    assert_eq!(app.deliver(&live).await.status(), 200);
    // Dated a day ahead: had it applied, every later event would look stale.
    let future = event(
        "evt_mode_future",
        "customer.subscription.updated",
        now() + 86_400,
        subscription("sub_mode", "cus_mode", "active", "price_business", &tenant),
    );
    assert_eq!(app.deliver(&future).await.status(), 200);
    app.run_jobs().await;
    assert_eq!(billing_state(&app, &org).await["plan"], "free");
    assert_eq!(stored_status(&app, "evt_mode_live").await.0, "ignored");
    assert!(why("evt_mode_live").await.contains("live mode event"));
    assert_eq!(stored_status(&app, "evt_mode_future").await.0, "ignored");
    assert!(
        why("evt_mode_future")
            .await
            .contains("after it was received")
    );

    // An ordinary event after them applies.
    let ordinary = event(
        "evt_mode_now",
        "customer.subscription.updated",
        now() - 1,
        subscription("sub_mode", "cus_mode", "active", "price_pro", &tenant),
    );
    assert_eq!(app.deliver(&ordinary).await.status(), 200);
    app.run_jobs().await;
    assert_eq!(billing_state(&app, &org).await["plan"], "pro");
    assert_eq!(stored_status(&app, "evt_mode_now").await.0, "processed");
}
