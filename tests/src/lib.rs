//! Test harness: [`spawn_app`] starts the real app in-process on a random port against the
//! real PostgreSQL and Redis, in a database of its own that is dropped afterwards.
//!
//! The services are those `deploy/local/up.sh` starts; `CANOPY_DATABASE_URL` and
//! `CANOPY_REDIS_URL` point elsewhere when set.

// Its (empty) unit-test target sees the dev-dependencies of the test binary.
#![cfg_attr(
    test,
    expect(
        unused_crate_dependencies,
        reason = "the test binary's dev-dependencies"
    )
)]

use std::{collections::BTreeMap, sync::Arc};

use anyhow::Context;
use api::{Application, Settings};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::{sync::oneshot, task::JoinHandle};

pub mod api_keys;
pub mod auth;
pub mod fault;
pub mod files;
pub mod membership;
pub mod mfa;
pub mod products;
pub mod rbac;
pub mod stripe;
pub mod test_api;

pub use test_api::Gate;

/// The database tests create their own databases with.
pub fn admin_database_url() -> String {
    std::env::var("CANOPY_DATABASE_URL")
        .unwrap_or_else(|_| api::settings::DEFAULT_DATABASE_URL.to_owned())
}

/// The address of the PostgreSQL server of [`admin_database_url`] (for a
/// [`fault::FaultProxy`] in front of it).
pub fn database_addr() -> std::net::SocketAddr {
    socket_addr_of(&admin_database_url(), 5432)
}

/// The address of the Redis server tests use (for a [`fault::FaultProxy`] in front of it).
pub fn redis_addr() -> std::net::SocketAddr {
    socket_addr_of(&redis_url(), 6379)
}

fn socket_addr_of(url: &str, default_port: u16) -> std::net::SocketAddr {
    let url = url::Url::parse(url).expect("service URL");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port = url.port().unwrap_or(default_port);
    format!("{host}:{port}")
        .parse()
        .expect("a numeric host in the service URL")
}

fn redis_url() -> String {
    std::env::var("CANOPY_REDIS_URL")
        .unwrap_or_else(|_| api::settings::DEFAULT_REDIS_URL.to_owned())
}

/// The plan catalog of test apps (see [`TestAppBuilder`]).
pub const TEST_PLANS: &str = r#"[
    {"name": "free", "limits": {"storage_bytes": "1 GiB", "upload_bytes": "10 MiB"}},
    {"name": "pro", "price_ids": ["price_pro"],
     "limits": {"storage_bytes": "50 GiB", "upload_bytes": "200 MiB", "products": 10000, "seats": 25}},
    {"name": "business", "price_ids": ["price_business"],
     "limits": {"storage_bytes": "1 TiB", "upload_bytes": "5 GiB"}}
]"#;

/// A running app and the handles a test needs.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The bound port.
    pub port: u16,
    /// The port of the `/metrics` listener (`None` with `metrics_bind=off`).
    pub metrics_port: Option<u16>,
    /// A client with no default headers and no redirects followed.
    pub client: reqwest::Client,
    /// The app's state (pools, settings, metrics).
    pub state: api::AppState,
    /// Hooks of the test-only endpoints under `/__test`.
    pub gate: Arc<Gate>,
    /// This test's database (shared with sibling apps).
    pub db: Arc<TestDatabase>,
    /// The settings the app runs with.
    pub settings: Settings,
    /// The `CANOPY_*` variables those settings came from (for a `canopy` process of the
    /// same configuration, as the benchmarks start).
    pub env: BTreeMap<String, String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Options for [`TestApp`]s that need non-default settings.
#[derive(Default)]
pub struct TestAppBuilder {
    env: BTreeMap<String, String>,
    database_via: Option<std::net::SocketAddr>,
}

impl TestAppBuilder {
    /// Sets `CANOPY_<key>` for this app only.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(
            format!("CANOPY_{}", key.to_ascii_uppercase()),
            value.to_owned(),
        );
        self
    }

    /// Connects the app to its database through `proxy` (a [`fault::FaultProxy`] to
    /// [`database_addr`]) instead of directly.
    pub fn database_via(mut self, proxy: std::net::SocketAddr) -> Self {
        self.database_via = Some(proxy);
        self
    }

    /// Creates the database, migrates it, and starts the app.
    pub async fn spawn(self) -> TestApp {
        self.try_spawn().await.expect("test app failed to start")
    }

    async fn try_spawn(self) -> anyhow::Result<TestApp> {
        let db = Arc::new(TestDatabase::create().await?);
        let mut env = self.env;
        if let Some(proxy) = self.database_via {
            let mut url = url::Url::parse(&db.url)?;
            url.set_ip_host(proxy.ip())
                .map_err(|()| anyhow::anyhow!("cannot set the host of {url}"))?;
            url.set_port(Some(proxy.port()))
                .map_err(|()| anyhow::anyhow!("cannot set the port of {url}"))?;
            env.insert("CANOPY_DATABASE_URL".to_owned(), url.to_string());
        }
        Self::start(db, env).await
    }

    async fn start(
        db: Arc<TestDatabase>,
        overrides: BTreeMap<String, String>,
    ) -> anyhow::Result<TestApp> {
        let mut env = BTreeMap::from([
            ("CANOPY_DATABASE_URL".to_owned(), db.url.clone()),
            ("CANOPY_REDIS_URL".to_owned(), redis_url()),
            ("CANOPY_BIND".to_owned(), "127.0.0.1:0".to_owned()),
            ("CANOPY_DATABASE_MAX_CONNECTIONS".to_owned(), "5".to_owned()),
            ("CANOPY_REDIS_POOL_SIZE".to_owned(), "4".to_owned()),
            // Tests that need workers start their own, with their own handlers.
            ("CANOPY_WORKERS".to_owned(), "0".to_owned()),
            // No pool of spare schemas (and so no replenishing job after each provisioning):
            // tests count schemas, roles and jobs. Tests of the pool set their own.
            ("CANOPY_TENANT_SPARES".to_owned(), "0".to_owned()),
            (
                "CANOPY_OUTBOX_DIR".to_owned(),
                std::env::temp_dir()
                    .join(format!("canopy-outbox-{}", uuid::Uuid::now_v7().simple()))
                    .display()
                    .to_string(),
            ),
            // Every test signs up from 127.0.0.1 through the same Redis.
            (
                "CANOPY_SIGNUP_IP_MAX_REQUESTS".to_owned(),
                "100000".to_owned(),
            ),
            // The same for the general limits; tests of them set their own, and send from
            // addresses of their own through a trusted proxy.
            (
                "CANOPY_RATE_LIMIT_IP_PER_SECOND".to_owned(),
                "1000000".to_owned(),
            ),
            (
                "CANOPY_RATE_LIMIT_IP_PER_MINUTE".to_owned(),
                "1000000".to_owned(),
            ),
            (
                "CANOPY_RATE_LIMIT_USER_PER_SECOND".to_owned(),
                "1000000".to_owned(),
            ),
            (
                "CANOPY_RATE_LIMIT_USER_PER_MINUTE".to_owned(),
                "1000000".to_owned(),
            ),
            // Tests run in parallel: each app's metrics listener on a port of its own.
            ("CANOPY_METRICS_BIND".to_owned(), "127.0.0.1:0".to_owned()),
            // Two hashing threads whatever the machine, so parallel tests stay responsive.
            ("CANOPY_PASSWORD_HASH_THREADS".to_owned(), "2".to_owned()),
            // The default catalog, with a free plan that counts no products, seats or requests:
            // tests make many of each. Tests of limits set a catalog of their own.
            ("CANOPY_PLANS".to_owned(), TEST_PLANS.to_owned()),
        ]);
        env.extend(overrides);
        let settings = Settings::from_env_map(&env).context("test settings")?;
        let env_for_test = env.clone();

        let migrator = api::startup::build_state(settings.clone())?;
        migrator
            .db
            .migrate()
            .await
            .context("migrating the test database")?;
        migrator.db.close().await;

        let gate = Arc::new(Gate::default());
        let settings_for_test = settings.clone();
        let app = Application::build(settings)
            .await?
            .with_extra_routes(test_api::routes(gate.clone()));
        let port = app.port();
        let metrics_port = app.metrics_port();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Ok(TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            metrics_port,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            state,
            gate,
            db,
            settings: settings_for_test,
            env: env_for_test,
            shutdown: Some(tx),
            server: Some(server),
        })
    }
}

/// Starts an app with default settings. See the crate docs.
pub async fn spawn_app() -> TestApp {
    TestAppBuilder::default().spawn().await
}

impl TestApp {
    /// Options for a non-default app.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// A request to `path` on this app.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("request failed")
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    /// `GET /metrics` on the app's metrics listener.
    pub async fn scrape_metrics(&self) -> Response {
        let port = self.metrics_port.expect("the metrics listener is on");
        self.client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics request failed")
    }

    /// Another app on the same database and Redis, as a second server instance would be.
    pub async fn spawn_sibling(&self) -> TestApp {
        TestAppBuilder::start(self.db.clone(), BTreeMap::new())
            .await
            .expect("sibling app failed to start")
    }

    /// Another instance with exactly this one's settings (its database and Redis URLs
    /// included, so through the same [`fault::FaultProxy`] when there is one).
    pub async fn spawn_twin(&self) -> TestApp {
        TestAppBuilder::start(self.db.clone(), self.env.clone())
            .await
            .expect("twin app failed to start")
    }

    /// A fresh platform API key.
    pub async fn admin_key(&self) -> String {
        self.state
            .db
            .create_api_key("test")
            .await
            .expect("create api key")
            .key
    }

    /// Provisions a tenant through the library (fast path for tests that need tenants).
    pub async fn create_tenant(&self, slug: &str) -> tenancy::Tenant {
        let slug = tenancy::TenantSlug::parse(slug).expect("valid slug");
        self.state
            .db
            .create_tenant(&slug, &format!("Tenant {slug}"))
            .await
            .expect("create tenant")
    }

    /// `GET path` as tenant `tenant` (slug or id) through `X-Tenant`.
    pub async fn get_as(&self, tenant: &str, path: &str) -> Response {
        self.request(Method::GET, path)
            .header("x-tenant", tenant)
            .send()
            .await
            .expect("request failed")
    }

    /// Signals shutdown and waits for the server to finish serving in-flight requests.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }

    /// Whether the server task has returned.
    pub fn server_finished(&self) -> bool {
        self.server.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// Asserts an RFC 9457 problem response and returns its body.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "unexpected status for {}",
        response.url()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id header")
        .to_owned();
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("/problems/{code}"), "{body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    body
}

/// A database created for one test and dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// URL to connect to it.
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub async fn create() -> anyhow::Result<Self> {
        let admin = admin_database_url();
        let name = format!("canopy_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .with_context(|| "cannot reach PostgreSQL; run deploy/local/up.sh first".to_owned())?;
        sqlx::query(&format!(r#"create database "{name}""#))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let mut url = url::Url::parse(&admin)?;
        url.set_path(&name);
        Ok(Self {
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let url = self.url.clone();
        // Drop runs inside the test's runtime, which cannot block on itself.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_database(&name, &url))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// Drops the database `name` (at `url`) and the tenant roles its schemas had.
///
/// Not `drop database … with (force)`: it signals every backend of the database, and
/// PostgreSQL 15 refuses the whole drop when one of them is an autovacuum worker (which runs
/// as no role, so the non-superuser login role is not "a member of the role whose process
/// is being terminated"); a database with many new tables (a benchmark's) nearly always has
/// one. Instead: no new connections, terminate this role's own leftover connections (and
/// wait for them), then a plain `drop database`, which stops autovacuum workers itself.
async fn drop_database(name: &str, url: &str) -> anyhow::Result<()> {
    // Roles are cluster-wide: collect the tenant roles before the database goes. Every
    // tenant or spare schema is named after its role; the registry names the tenants' too.
    let mut roles: Vec<String> = Vec::new();
    if let Ok(mut conn) = PgConnection::connect(url).await {
        for sql in [
            "select nspname::text from pg_namespace where nspname ~ '^t_[0-9a-f]{32}$'",
            "select role_name from public.tenants",
        ] {
            let found: Vec<String> = sqlx::query_scalar(sql)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
            roles.extend(found);
        }
        conn.close().await?;
    }
    roles.sort_unstable();
    roles.dedup();
    let mut conn = PgConnection::connect(&admin_database_url()).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if exists {
        sqlx::query(&format!(
            r#"alter database "{name}" with allow_connections false"#
        ))
        .execute(&mut conn)
        .await?;
        // A plain drop waits 5 s for other backends and then fails: try a few times.
        let mut attempt = 0;
        loop {
            sqlx::query(
                "select pg_terminate_backend(pid, 5000) from pg_stat_activity
                 where datname = $1 and usename = current_user and backend_type = 'client backend'
                   and pid <> pg_backend_pid()",
            )
            .bind(name)
            .execute(&mut conn)
            .await?;
            match sqlx::query(&format!(r#"drop database if exists "{name}""#))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(error) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("retrying the drop of test database {name}: {error}");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    for role in roles
        .iter()
        .filter(|r| r.starts_with("t_") && r[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        sqlx::query(&format!(r#"drop role if exists "{role}""#))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}
