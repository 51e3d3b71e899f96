//! The job queue against the real PostgreSQL: transactional enqueue, exclusive claims,
//! lapsed leases, backoff and dead letters, tenant isolation, graceful shutdown, and email
//! through a real SMTP server.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use e2e::{TestApp, assert_problem, spawn_app};
use jobs::{Job, JobContext, JobKind, JobOutcome, NewJob, Registry, Worker, WorkerConfig, enqueue};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, oneshot};
use uuid::Uuid;

// The test kinds implement `JobKind` by hand rather than through `declare_job!`: they
// are not production kinds, and the production registry must not be asked to run them.

/// Records every run in `public.job_effects` (a table only these tests create).
#[derive(Serialize, Deserialize)]
struct Count {}

impl JobKind for Count {
    const KIND: &'static str = "test.count";
}

impl Job for Count {
    type Deps = ();

    async fn run(self, ctx: &mut JobContext, _: &()) -> anyhow::Result<()> {
        sqlx::query("insert into public.job_effects (job_id) values ($1)")
            .bind(ctx.id)
            .execute(ctx.control.pool())
            .await?;
        Ok(())
    }
}

/// Always fails.
#[derive(Serialize, Deserialize)]
struct Fail {}

impl JobKind for Fail {
    const KIND: &'static str = "test.fail";
}

impl Job for Fail {
    type Deps = ();

    async fn run(self, ctx: &mut JobContext, _: &()) -> anyhow::Result<()> {
        anyhow::bail!("boom on attempt {}", ctx.attempt)
    }
}

/// Writes `timezone` into its tenant's settings, or into `schema` if given.
#[derive(Serialize, Deserialize)]
struct TenantWrite {
    timezone: Option<String>,
    schema: Option<String>,
}

impl JobKind for TenantWrite {
    const KIND: &'static str = "test.tenant_write";
}

impl Job for TenantWrite {
    type Deps = ();

    async fn run(self, ctx: &mut JobContext, _: &()) -> anyhow::Result<()> {
        let table = match &self.schema {
            Some(schema) => format!(r#""{schema}".settings"#),
            None => "settings".to_owned(),
        };
        sqlx::query(&format!("update {table} set timezone = $1"))
            .bind(self.timezone)
            .execute(&mut **ctx.tenant_tx()?)
            .await?;
        Ok(())
    }
}

/// Waits for the test to let it finish.
#[derive(Serialize, Deserialize)]
struct Block {}

impl JobKind for Block {
    const KIND: &'static str = "test.block";
}

/// Notified when a `Block` job starts; it finishes when the second is notified.
type Gate = Arc<(Notify, Notify)>;

impl Job for Block {
    type Deps = Gate;

    async fn run(self, _: &mut JobContext, gate: &Gate) -> anyhow::Result<()> {
        gate.0.notify_one();
        gate.1.notified().await;
        Ok(())
    }
}

fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        lease: Duration::from_secs(60),
        poll_interval: Duration::from_millis(200),
        shutdown_deadline: Duration::from_secs(10),
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(10),
    }
}

/// A running worker and the means to watch and stop it.
struct Running {
    outcomes: broadcast::Receiver<JobOutcome>,
    /// Outcomes received while waiting for another job's.
    early: Vec<JobOutcome>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), jobs::JobError>>,
}

impl Running {
    fn start(app: &TestApp, registry: Registry, config: WorkerConfig) -> Self {
        let worker = Worker::new(app.state.db.clone(), registry, config);
        let outcomes = worker.outcomes();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Self {
            outcomes,
            early: Vec::new(),
            stop: Some(stop),
            task,
        }
    }

    /// The next outcome of job `id`, within 30 s.
    async fn outcome_of(&mut self, id: Uuid) -> &'static str {
        if let Some(i) = self.early.iter().position(|o| o.id == id) {
            return self.early.remove(i).status;
        }
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let outcome = self.outcomes.recv().await.expect("worker alive");
                if outcome.id == id {
                    return outcome.status;
                }
                self.early.push(outcome);
            }
        })
        .await
        .expect("the job ran within 30 s")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("join")
            .expect("worker stopped cleanly");
    }
}

async fn job_effects_table(app: &TestApp) {
    sqlx::query("create table public.job_effects (job_id uuid not null, at timestamptz not null default now())")
        .execute(app.state.db.pool())
        .await
        .expect("create job_effects");
}

async fn job(app: &TestApp, id: Uuid) -> jobs::JobRecord {
    jobs::get_job(&app.state.db, id).await.expect("job")
}

async fn enqueue_now(app: &TestApp, job: NewJob) -> Uuid {
    let mut conn = app.state.db.pool().acquire().await.expect("conn");
    enqueue(&mut conn, job).await.expect("enqueue")
}

#[tokio::test]
async fn a_job_enqueued_by_a_rolled_back_transaction_never_runs() {
    let app = spawn_app().await;
    job_effects_table(&app).await;
    let tenant = app.create_tenant("acme").await;

    let mut tx = app.state.db.pool().begin().await.expect("begin");
    enqueue(&mut tx, NewJob::new("test.count", json!({})))
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    let mut tenant_tx = app.state.tenant_db.begin(tenant.id).await.expect("begin");
    enqueue(&mut tenant_tx, NewJob::new("test.count", json!({})))
        .await
        .expect("enqueue in tenant tx");
    tenant_tx.rollback().await.expect("rollback");

    // A job enqueued inside a committed tenant transaction belongs to that tenant.
    let mut tenant_tx = app.state.tenant_db.begin(tenant.id).await.expect("begin");
    let tenant_job = enqueue(&mut tenant_tx, NewJob::new("test.count", json!({})))
        .await
        .expect("enqueue");
    tenant_tx.commit().await.expect("commit");
    assert_eq!(job(&app, tenant_job).await.tenant_id, Some(tenant.id.0));

    let sentinel = enqueue_now(&app, NewJob::new("test.count", json!({}))).await;
    let mut worker = Running::start(&app, Registry::new().register::<Count>(()), config());
    let mut pending = vec![tenant_job, sentinel];
    while !pending.is_empty() {
        let outcome = tokio::time::timeout(Duration::from_secs(30), worker.outcomes.recv())
            .await
            .expect("in time")
            .expect("alive");
        assert!(
            pending.contains(&outcome.id),
            "a rolled-back job ran: {outcome:?}"
        );
        assert_eq!(outcome.status, "succeeded");
        pending.retain(|id| *id != outcome.id);
    }
    worker.stop().await;
    let total: i64 = sqlx::query_scalar("select count(*) from public.jobs")
        .fetch_one(app.state.db.pool())
        .await
        .expect("count");
    assert_eq!(total, 2);
}

#[tokio::test]
async fn a_tenant_cannot_enqueue_for_another_tenant() {
    let app = spawn_app().await;
    let (a, b) = (
        app.create_tenant("alpha").await,
        app.create_tenant("bravo").await,
    );
    let mut tx = app.state.tenant_db.begin(a.id).await.expect("begin");
    let err = enqueue(
        &mut tx,
        NewJob::new("test.count", json!({})).for_tenant(b.id),
    )
    .await
    .expect_err("refused");
    assert!(format!("{:?}", err).contains("42501"), "{err:?}");
}

#[tokio::test]
async fn many_workers_run_each_job_exactly_once() {
    let app = spawn_app().await;
    job_effects_table(&app).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(enqueue_now(&app, NewJob::new("test.count", json!({}))).await);
    }
    let mut workers: Vec<Running> = (0..4)
        .map(|_| Running::start(&app, Registry::new().register::<Count>(()), config()))
        .collect();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < ids.len() {
            for worker in &mut workers {
                while let Ok(outcome) = worker.outcomes.try_recv() {
                    assert_eq!(outcome.status, "succeeded");
                    *seen.entry(outcome.id).or_default() += 1;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all jobs ran within 60 s");
    for worker in workers {
        worker.stop().await;
    }
    assert!(seen.values().all(|runs| *runs == 1));
    let effects: Vec<(Uuid, i64)> =
        sqlx::query_as("select job_id, count(*) from public.job_effects group by job_id")
            .fetch_all(app.state.db.pool())
            .await
            .expect("effects");
    assert_eq!(effects.len(), 200);
    assert!(effects.iter().all(|(_, n)| *n == 1), "a job ran twice");
}

#[tokio::test]
async fn a_job_whose_worker_died_runs_again() {
    let app = spawn_app().await;
    job_effects_table(&app).await;
    let id = enqueue_now(&app, NewJob::new("test.count", json!({}))).await;
    // A worker claimed it and died: its lease has lapsed.
    sqlx::query(
        "update public.jobs set status = 'running', attempts = 1, locked_by = 'dead-worker',
         lease_expires_at = now() - interval '1 second' where id = $1",
    )
    .bind(id)
    .execute(app.state.db.pool())
    .await
    .expect("simulate a dead worker");

    let mut worker = Running::start(&app, Registry::new().register::<Count>(()), config());
    assert_eq!(worker.outcome_of(id).await, "succeeded");
    worker.stop().await;
    let record = job(&app, id).await;
    assert_eq!((record.status.as_str(), record.attempts), ("succeeded", 2));
}

#[tokio::test]
async fn failures_back_off_then_die_and_an_operator_can_retry() {
    let app = spawn_app().await;
    let id = enqueue_now(&app, NewJob::new("test.fail", json!({})).max_attempts(3)).await;
    let mut worker = Running::start(&app, Registry::new().register::<Fail>(()), config());
    assert_eq!(worker.outcome_of(id).await, "failed");
    assert_eq!(worker.outcome_of(id).await, "failed");
    assert_eq!(worker.outcome_of(id).await, "dead");
    worker.stop().await;
    let record = job(&app, id).await;
    assert_eq!((record.status.as_str(), record.attempts), ("dead", 3));
    assert_eq!(record.last_error.as_deref(), Some("boom on attempt 3"));
    assert!(record.finished_at.is_some());

    let key = app.admin_key().await;
    let listed: Value = app
        .request(Method::GET, "/v1/admin/jobs?status=dead&kind=test.fail")
        .bearer_auth(&key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["items"][0]["id"], id.to_string());
    assert_eq!(listed["items"][0]["last_error"], "boom on attempt 3");

    let retried = app
        .request(Method::POST, &format!("/v1/admin/jobs/{id}/retry"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(retried.status(), 200);
    let retried: Value = retried.json().await.expect("json");
    assert_eq!(
        (retried["status"].as_str(), retried["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );
    let again = app
        .request(Method::POST, &format!("/v1/admin/jobs/{id}/retry"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_problem(again, 409, "conflict").await;
    let missing = app
        .request(
            Method::POST,
            &format!("/v1/admin/jobs/{}/retry", Uuid::now_v7()),
        )
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_problem(missing, 404, "not_found").await;

    let metrics = app.scrape_metrics().await.text().await.expect("metrics");
    assert!(
        metrics.contains("canopy_jobs{status=\"queued\"} 1"),
        "{metrics}"
    );
}

#[test]
fn backoff_grows_with_attempts() {
    let base = Duration::from_secs(2);
    let max = Duration::from_secs(3600);
    assert!(jobs::backoff(1, base, max) <= base);
    assert!(jobs::backoff(5, base, max) >= base * 8);
}

#[tokio::test]
async fn a_tenant_job_writes_only_in_its_tenant_schema() {
    let app = spawn_app().await;
    let (a, b) = (
        app.create_tenant("alpha").await,
        app.create_tenant("bravo").await,
    );
    let own = enqueue_now(
        &app,
        NewJob::new("test.tenant_write", json!({"timezone": "Europe/Paris"})).for_tenant(a.id),
    )
    .await;
    let crossing = enqueue_now(
        &app,
        NewJob::new(
            "test.tenant_write",
            json!({"timezone": "Evil/Zone", "schema": b.schema_name()}),
        )
        .for_tenant(a.id)
        .max_attempts(1),
    )
    .await;
    let mut worker = Running::start(&app, Registry::new().register::<TenantWrite>(()), config());
    assert_eq!(worker.outcome_of(own).await, "succeeded");
    assert_eq!(worker.outcome_of(crossing).await, "dead");
    worker.stop().await;
    assert!(
        job(&app, crossing)
            .await
            .last_error
            .unwrap_or_default()
            .contains("permission denied")
    );

    let timezone = |tenant: tenancy::TenantId| {
        let db = app.state.tenant_db.clone();
        async move {
            let mut tx = db.begin(tenant).await.expect("begin");
            let tz: String = sqlx::query_scalar("select timezone from settings")
                .fetch_one(&mut *tx)
                .await
                .expect("tz");
            tz
        }
    };
    assert_eq!(timezone(a.id).await, "Europe/Paris");
    assert_eq!(timezone(b.id).await, "UTC");
}

#[tokio::test]
async fn a_suspended_tenants_jobs_wait() {
    let app = spawn_app().await;
    job_effects_table(&app).await;
    let tenant = app.create_tenant("paused").await;
    app.state
        .db
        .set_tenant_status(tenant.id, tenancy::TenantStatus::Suspended)
        .await
        .expect("suspend");
    let waiting = enqueue_now(
        &app,
        NewJob::new("test.count", json!({})).for_tenant(tenant.id),
    )
    .await;
    let sentinel = enqueue_now(&app, NewJob::new("test.count", json!({})).priority(-1)).await;
    let mut worker = Running::start(&app, Registry::new().register::<Count>(()), config());
    assert_eq!(worker.outcome_of(sentinel).await, "succeeded");
    worker.stop().await;
    let record = job(&app, waiting).await;
    assert_eq!((record.status.as_str(), record.attempts), ("queued", 0));
}

#[tokio::test]
async fn unique_jobs_are_enqueued_once() {
    let app = spawn_app().await;
    let first = enqueue_now(&app, NewJob::new("test.count", json!({})).unique("file-1")).await;
    let second = enqueue_now(&app, NewJob::new("test.count", json!({})).unique("file-1")).await;
    let other = enqueue_now(&app, NewJob::new("test.count", json!({})).unique("file-2")).await;
    assert_eq!(first, second);
    assert_ne!(first, other);
}

#[tokio::test]
async fn shutdown_finishes_running_jobs_claims_no_more_and_releases_stragglers() {
    let app = spawn_app().await;
    job_effects_table(&app).await;
    let gate = Arc::new((Notify::new(), Notify::new()));
    let registry = || {
        Registry::new()
            .register::<Count>(())
            .register::<Block>(gate.clone())
    };

    let blocked = enqueue_now(&app, NewJob::new("test.block", json!({}))).await;
    let mut worker = Running::start(
        &app,
        registry(),
        WorkerConfig {
            concurrency: 1,
            ..config()
        },
    );
    gate.0.notified().await;
    let stop = worker.stop.take().expect("stop handle");
    stop.send(()).expect("signal");
    let late = enqueue_now(&app, NewJob::new("test.count", json!({}))).await;
    gate.1.notify_one();
    assert_eq!(worker.outcome_of(blocked).await, "succeeded");
    worker.task.await.expect("join").expect("clean stop");
    assert_eq!(
        job(&app, late).await.status,
        "queued",
        "a stopping worker claimed a new job"
    );

    // A job that outlives the deadline goes back to the queue, its attempt not spent.
    let stuck = enqueue_now(&app, NewJob::new("test.block", json!({}))).await;
    let mut worker = Running::start(
        &app,
        Registry::new().register::<Block>(gate.clone()),
        WorkerConfig {
            concurrency: 1,
            shutdown_deadline: Duration::from_millis(100),
            ..config()
        },
    );
    gate.0.notified().await;
    worker.stop.take().expect("stop").send(()).expect("signal");
    worker.task.await.expect("join").expect("clean stop");
    let record = job(&app, stuck).await;
    assert_eq!((record.status.as_str(), record.attempts), ("queued", 0));
    drop(worker.outcomes);
}

/// Recipients and raw message of one delivery.
type Delivery = (Vec<String>, String);

/// Collects what a real SMTP session delivers.
#[derive(Clone, Default)]
struct Inbox {
    delivered: Arc<Mutex<Vec<Delivery>>>,
    current: Arc<Mutex<(Vec<String>, Vec<u8>)>>,
}

impl mailin_embedded::Handler for Inbox {
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        *self.current.lock().expect("lock") = (to.to_vec(), Vec::new());
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.lock().expect("lock").1.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let (to, body) = std::mem::take(&mut *self.current.lock().expect("lock"));
        self.delivered
            .lock()
            .expect("lock")
            .push((to, String::from_utf8_lossy(&body).into_owned()));
        mailin_embedded::response::OK
    }
}

#[tokio::test]
async fn email_jobs_deliver_through_a_real_smtp_server() {
    let inbox = Inbox::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut server = mailin_embedded::Server::new(inbox.clone());
    server.with_name("smtp.test").with_tcp_listener(listener);
    std::thread::spawn(move || {
        if let Err(error) = server.serve() {
            eprintln!("test SMTP server stopped: {error}");
        }
    });

    let app = TestApp::builder()
        .env("smtp_url", &format!("smtp://127.0.0.1:{port}"))
        .env("email_from", "Canopy <no-reply@canopy.test>")
        .spawn()
        .await;
    let tenant = app.create_tenant("acme").await;
    let mut vars = serde_json::Map::new();
    vars.insert("user_name".into(), json!("Ada"));
    vars.insert(
        "link".into(),
        json!("https://acme.canopy.test/verify?token=t0k3n"),
    );
    vars.insert("expires_in".into(), json!("24 hours"));
    let mut tx = app.state.tenant_db.begin(tenant.id).await.expect("begin");
    let id = enqueue(
        &mut tx,
        email::SendEmail {
            to: "ada@example.com".into(),
            template: email::Template::Verification,
            vars,
            user_id: None,
        }
        .to_job()
        .expect("job"),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");

    let registry = api::startup::job_registry(&app.state).expect("registry");
    let mut worker = Running::start(&app, registry, config());
    assert_eq!(worker.outcome_of(id).await, "succeeded");
    worker.stop().await;

    let delivered = inbox.delivered.lock().expect("lock").clone();
    assert_eq!(delivered.len(), 1);
    let (to, message) = &delivered[0];
    assert_eq!(to, &["ada@example.com".to_owned()]);
    assert!(
        message.contains("Subject: Confirm your email address for Tenant acme"),
        "{message}"
    );
    assert!(
        message.contains("From: \"Tenant acme\" <no-reply@canopy.test>")
            || message.contains("From: Tenant acme <no-reply@canopy.test>"),
        "{message}"
    );
    // Bodies are quoted-printable: `=` travels as `=3D`.
    assert!(
        message.contains("https://acme.canopy.test/verify?token=3Dt0k3n"),
        "{message}"
    );
    assert!(
        message.contains("text/html") && message.contains("text/plain"),
        "{message}"
    );
}

#[tokio::test]
async fn the_development_transport_writes_to_the_outbox() {
    let outbox = std::env::temp_dir().join(format!("canopy-outbox-{}", Uuid::now_v7().simple()));
    let app = TestApp::builder()
        .env("outbox_dir", outbox.to_str().expect("utf-8 path"))
        .spawn()
        .await;
    let mut vars = serde_json::Map::new();
    vars.insert("user_name".into(), json!("Ada"));
    vars.insert("event".into(), json!("Your password was changed."));
    let id = enqueue_now(
        &app,
        email::SendEmail {
            to: "ada@example.com".into(),
            template: email::Template::SecurityNotice,
            vars,
            user_id: None,
        }
        .to_job()
        .expect("job"),
    )
    .await;
    let mut worker = Running::start(
        &app,
        api::startup::job_registry(&app.state).expect("registry"),
        config(),
    );
    assert_eq!(worker.outcome_of(id).await, "succeeded");
    worker.stop().await;
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .expect("outbox exists")
        .collect::<Result<_, _>>()
        .expect("entries");
    assert_eq!(files.len(), 1);
    let message = std::fs::read_to_string(files[0].path()).expect("eml");
    assert!(
        message.contains("Subject: Security notice for your Canopy account"),
        "{message}"
    );
    assert!(message.contains("To: ada@example.com"), "{message}");
    std::fs::remove_dir_all(&outbox).expect("cleanup");
}

#[tokio::test]
async fn every_job_kind_the_code_declares_has_a_handler_in_the_binary_registry() {
    let app = spawn_app().await;
    let declared = jobs::declared_kinds();
    // The declarations of every domain crate are linked in (a kind missing here would
    // escape the check below).
    for kind in [
        "email.send",
        "auth.invitation_email",
        "auth.link_email",
        "auth.password_reset_requested",
        "auth.verification_requested",
        "files.thumbnails",
        "files.delete_objects",
        "files.sweep_orphans",
        "files.sweep_tenant",
        "files.purge_tenant_objects",
        "billing.process_event",
        "billing.reconcile",
        "tenancy.replenish_spares",
        "billing.prune_webhook_events",
        "jobs.prune",
        "auth.prune_tenants",
        "auth.prune_tenant",
    ] {
        assert!(
            declared.contains(&kind),
            "{kind} is not declared: {declared:?}"
        );
    }
    let registry = api::startup::job_registry(&app.state).expect("registry");
    assert_eq!(registry.unregistered(), Vec::<&str>::new());
    for kind in declared {
        assert!(registry.handles(kind), "{kind}");
    }
}
