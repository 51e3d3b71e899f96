//! Faults of the services under load. The app reaches PostgreSQL through a
//! [`FaultProxy`], which can break every connection and refuse new ones, as a stopped
//! server would, while the shared local services keep serving every other test.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use e2e::{TestApp, auth::Signup, database_addr, fault::FaultProxy, redis_addr};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenancy::TenantId;
use tokio::sync::mpsc;
use uuid::Uuid;

/// When a request started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Outage,
    After,
}

impl Phase {
    fn of(raw: u8) -> Self {
        match raw {
            0 => Self::Before,
            1 => Self::Outage,
            _ => Self::After,
        }
    }
}

/// One answer of the load.
#[derive(Debug)]
struct Outcome {
    /// When the request started.
    phase: Phase,
    /// When its answer came (a request waiting for a connection when the database comes
    /// back may still succeed).
    ended: Phase,
    status: StatusCode,
    /// The problem's `code` of an error.
    code: Option<String>,
    retry_after: bool,
    /// The product a `201` created.
    created: Option<Uuid>,
}

/// An app reaching its database through a [`FaultProxy`], with short waits: a second for a
/// pooled connection, five for a request.
async fn app_behind_database_proxy() -> (FaultProxy, TestApp) {
    let proxy = FaultProxy::start(database_addr()).await;
    let app = TestApp::builder()
        .env("database_acquire_timeout", "1s")
        .env("request_timeout", "5s")
        .database_via(proxy.addr)
        .spawn()
        .await;
    (proxy, app)
}

/// Creates products and lists them, one request after the other, reporting every answer.
async fn load(
    app: Arc<TestApp>,
    org: Arc<Signup>,
    worker: usize,
    phase: Arc<AtomicU8>,
    outcomes: mpsc::UnboundedSender<Outcome>,
) {
    for i in 0.. {
        let started = Phase::of(phase.load(Ordering::SeqCst));
        let request = async {
            if i % 2 == 0 {
                let body =
                    json!({"name": format!("Load {worker}-{i}"), "price": 100, "currency": "USD"});
                app.send_authed(
                    Method::POST,
                    &org.slug,
                    "/v1/products",
                    &org.tokens.access,
                    Some(&body),
                )
                .await
            } else {
                app.get_authed(&org.slug, "/v1/products?limit=5", &org.tokens.access)
                    .await
            }
        };
        // Past the request deadline (5 s) with room to spare: an answer that never comes
        // is reported as a hang.
        let Ok(response) = tokio::time::timeout(Duration::from_secs(10), request).await else {
            let hung = Outcome {
                phase: started,
                ended: Phase::of(phase.load(Ordering::SeqCst)),
                status: StatusCode::GATEWAY_TIMEOUT,
                code: Some("no answer within 10 s".to_owned()),
                retry_after: false,
                created: None,
            };
            let _ = outcomes.send(hung);
            return;
        };
        let status = response.status();
        let retry_after = response.headers().contains_key("retry-after");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let outcome = Outcome {
            phase: started,
            ended: Phase::of(phase.load(Ordering::SeqCst)),
            status,
            code: body["code"].as_str().map(str::to_owned),
            retry_after,
            created: (status == StatusCode::CREATED)
                .then(|| body["id"].as_str().and_then(|id| id.parse().ok()))
                .flatten(),
        };
        if outcomes.send(outcome).is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_database_outage_under_load_answers_503_and_loses_no_accepted_write() {
    let (proxy, app) = app_behind_database_proxy().await;
    let org = Arc::new(app.signup("outage").await);
    let app = Arc::new(app);
    let phase = Arc::new(AtomicU8::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(load(app.clone(), org.clone(), w, phase.clone(), tx.clone())))
        .collect();
    drop(tx);

    // Served; then the database goes away until the outage has answered a few requests
    // that started after it began; then it comes back until requests succeed again.
    let mut outcomes = Vec::new();
    let seen = |outcomes: &[Outcome], p: Phase, only_ok: bool| {
        outcomes
            .iter()
            .filter(|o| o.phase == p && o.ended == p && (!only_ok || o.status.is_success()))
            .count()
    };
    // The whole scenario is bounded: a process that never recovers fails the test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(o) = tokio::time::timeout_at(deadline, rx.recv())
        .await
        .expect("the scenario ended within a minute")
    {
        let current = Phase::of(phase.load(Ordering::SeqCst));
        outcomes.push(o);
        match current {
            Phase::Before if seen(&outcomes, Phase::Before, true) >= 8 => {
                // Cut first: a request that starts in the outage finds it.
                proxy.cut().await;
                phase.store(1, Ordering::SeqCst);
            }
            Phase::Outage if seen(&outcomes, Phase::Outage, false) >= 8 => {
                // The phase first: a request that starts in it may still find the outage.
                phase.store(2, Ordering::SeqCst);
                proxy.restore();
            }
            Phase::After if seen(&outcomes, Phase::After, true) >= 8 => break,
            _ => {}
        }
    }
    drop(rx);
    for worker in workers {
        worker.abort();
    }

    for o in &outcomes {
        assert_ne!(o.status, StatusCode::INTERNAL_SERVER_ERROR, "{o:?}");
        assert!(
            o.status.is_success() || o.status == StatusCode::SERVICE_UNAVAILABLE,
            "{o:?}"
        );
        if o.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                matches!(
                    o.code.as_deref(),
                    Some("dependency_unavailable" | "request_timeout")
                ),
                "{o:?}"
            );
        }
    }
    // Everything that started and ended during the outage was refused, with a time to
    // come back.
    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.phase == Phase::Outage && o.ended == Phase::Outage)
        .collect();
    assert!(during.len() >= 8);
    for o in &during {
        assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE, "{o:?}");
        assert_eq!(o.code.as_deref(), Some("dependency_unavailable"), "{o:?}");
        assert!(o.retry_after, "{o:?}");
    }

    // Every accepted write is in the database, the same process serving again.
    let created: Vec<Uuid> = outcomes.iter().filter_map(|o| o.created).collect();
    assert!(created.len() >= 4, "{created:?}");
    let mut tx = app
        .state
        .tenant_db
        .begin(TenantId(org.tenant_id))
        .await
        .expect("tenant tx");
    let stored: i64 = sqlx::query_scalar("select count(*) from products where id = any($1)")
        .bind(&created)
        .fetch_one(&mut *tx)
        .await
        .expect("count products");
    tx.commit().await.expect("commit");
    assert_eq!(stored, created.len() as i64);
}

#[tokio::test]
async fn a_partition_ends_requests_by_their_deadline_and_the_pool_recovers_without_leaks() {
    let (proxy, app) = app_behind_database_proxy().await;
    let org = app.signup("partition").await;
    let product = json!({"name": "Before", "price": 100, "currency": "USD"});
    app.create_product_ok(&org, &product).await;

    // Nothing crosses any more, yet no connection closes: more requests than the pool
    // holds, each answered 503 by its deadline (a client that waited 10 s calls it a hang).
    proxy.stall();
    let answers = futures_util::future::join_all((0..8).map(|i| {
        let (app, org) = (&app, &org);
        async move {
            let request = async {
                if i % 2 == 0 {
                    let body =
                        json!({"name": format!("During {i}"), "price": 100, "currency": "USD"});
                    app.create_product(&org.slug, &org.tokens.access, &body)
                        .await
                } else {
                    app.get_authed(&org.slug, "/v1/products?limit=5", &org.tokens.access)
                        .await
                }
            };
            let response = tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .expect("answered by the deadline");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["code"].as_str().map(str::to_owned))
        }
    }))
    .await;
    for (status, code) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{code:?}");
        assert!(
            matches!(
                code.as_deref(),
                Some("dependency_unavailable" | "request_timeout")
            ),
            "{code:?}"
        );
    }

    // Back: the same process serves (the pool replaces the connections the partition
    // broke), and once nothing is in flight every open connection is idle again.
    proxy.restore();
    let after = json!({"name": "After", "price": 100, "currency": "USD"});
    let mut created = None;
    for _ in 0..5 {
        let response = app
            .create_product(&org.slug, &org.tokens.access, &after)
            .await;
        if response.status() == StatusCode::CREATED {
            created = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(created.is_some(), "served again after the partition");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pool = app.state.db.status();
        if pool.idle == pool.size {
            assert!(pool.size <= pool.max, "{pool:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections still busy with nothing in flight: {pool:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_ban_during_a_redis_outage_bites_on_every_instance_after_it() {
    let proxy = FaultProxy::start(redis_addr()).await;
    let app = TestApp::builder()
        .env("redis_url", &format!("redis://{}", proxy.addr))
        .spawn()
        .await;
    let sibling = app.spawn_twin().await;
    let org = app.signup("redis-out").await;
    let viewer = app.role_id(&org, "viewer").await;
    let email = "banned@redis-out.example";
    let (user, tokens) = app.user_with_roles(&org, email, &[viewer]).await;
    // The tenant's list is ready in Redis (so it is trusted when Redis answers).
    let ready = format!("canopy:t:{}:revoked:ready", org.tenant_id);
    let client = redis::Client::open(format!("redis://{}", redis_addr())).expect("redis");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        for instance in [&app, &sibling] {
            let me = instance
                .get_authed(&org.slug, "/v1/me", &tokens.access)
                .await;
            assert_eq!(me.status(), 200);
        }
        let listed: bool = redis::cmd("EXISTS")
            .arg(&ready)
            .query_async(&mut redis)
            .await
            .expect("exists");
        if listed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the list was never rebuilt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Redis is gone for both instances: checks read the database, logins are refused
    // (their throttles fail closed), and a ban commits there.
    proxy.cut().await;
    for instance in [&app, &sibling] {
        let listing = instance
            .get_authed(&org.slug, "/v1/products", &org.tokens.access)
            .await;
        assert_eq!(listing.status(), 200);
    }
    e2e::assert_problem(
        app.login(&org.slug, &org.owner_email, e2e::auth::PASSWORD)
            .await,
        503,
        "dependency_unavailable",
    )
    .await;
    let banned = app
        .send_authed(
            Method::PATCH,
            &org.slug,
            &format!("/v1/users/{user}"),
            &org.tokens.access,
            Some(&json!({"status": "banned"})),
        )
        .await;
    assert_eq!(banned.status(), 200);
    for instance in [&app, &sibling] {
        let me = instance
            .get_authed(&org.slug, "/v1/me", &tokens.access)
            .await;
        e2e::assert_problem(me, 401, "invalid_token").await;
    }

    // Redis is back and answers both instances, with a ready list that has not heard of
    // the ban (as when its write still waits for its next retry: the entries are removed
    // here, whether or not the retry got through): the ban bites on both all the same.
    proxy.restore();
    for instance in [&app, &sibling] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while instance.get("/health/ready").await.status() != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let session = e2e::auth::session_of(&tokens.access);
    let _: () = redis::cmd("DEL")
        .arg(format!("canopy:t:{}:revoked:user:{user}", org.tenant_id))
        .arg(format!(
            "canopy:t:{}:revoked:session:{session}",
            org.tenant_id
        ))
        .query_async(&mut redis)
        .await
        .expect("del");
    for instance in [&app, &sibling] {
        let me = instance
            .get_authed(&org.slug, "/v1/me", &tokens.access)
            .await;
        e2e::assert_problem(me, 401, "invalid_token").await;
        let owner = instance
            .get_authed(&org.slug, "/v1/me", &org.tokens.access)
            .await;
        assert_eq!(owner.status(), 200);
    }
}
