//! Helpers for tests of users and sessions: sign-up, registration with verification,
//! login, reading the links the service emails, and running queued jobs.

use std::time::Duration;

use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::TestApp;

/// A password that meets the policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// An organization made through `POST /v1/signup`, with its owner's first tokens.
#[derive(Debug, Clone)]
pub struct Signup {
    /// Tenant id.
    pub tenant_id: Uuid,
    /// Tenant slug (sent as `X-Tenant`).
    pub slug: String,
    /// The owner's id.
    pub owner_id: Uuid,
    /// The owner's email.
    pub owner_email: String,
    /// The owner's tokens.
    pub tokens: Tokens,
}

/// An access and refresh token pair.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// JWT.
    pub access: String,
    /// Opaque refresh token.
    pub refresh: String,
}

impl Tokens {
    /// Reads the `{access_token, refresh_token}` of a response body.
    pub fn from_json(body: &Value) -> Self {
        Self {
            access: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }
}

impl TestApp {
    /// Signs up tenant `slug` with owner `owner@<slug>.example`.
    pub async fn signup(&self, slug: &str) -> Signup {
        let email = format!("owner@{slug}.example");
        let response = self
            .post_json(
                "/v1/signup",
                &json!({
                    "tenant_slug": slug,
                    "tenant_name": format!("Org {slug}"),
                    "email": email,
                    "password": PASSWORD,
                    "name": "Owner",
                }),
            )
            .await;
        assert_eq!(response.status(), 201, "signup of {slug}");
        let body: Value = response.json().await.expect("JSON");
        Signup {
            tenant_id: body["tenant"]["id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("uuid"),
            slug: slug.to_owned(),
            owner_id: body["user"]["id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("uuid"),
            owner_email: email,
            tokens: Tokens::from_json(&body["tokens"]),
        }
    }

    /// `POST path` with a JSON body as tenant `tenant`.
    pub async fn post_as(&self, tenant: &str, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .header("x-tenant", tenant)
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    /// `method path` as tenant `tenant` with bearer token `access`.
    pub fn authed(
        &self,
        method: Method,
        tenant: &str,
        path: &str,
        access: &str,
    ) -> reqwest::RequestBuilder {
        self.request(method, path)
            .header("x-tenant", tenant)
            .bearer_auth(access)
    }

    /// `GET path` as tenant `tenant` with bearer token `access`.
    pub async fn get_authed(&self, tenant: &str, path: &str, access: &str) -> Response {
        self.authed(Method::GET, tenant, path, access)
            .send()
            .await
            .expect("request failed")
    }

    /// `POST /v1/auth/login`.
    pub async fn login(&self, tenant: &str, email: &str, password: &str) -> Response {
        self.post_as(
            tenant,
            "/v1/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Logs in and returns the tokens (asserting success).
    pub async fn login_ok(&self, tenant: &str, email: &str, password: &str) -> Tokens {
        let response = self.login(tenant, email, password).await;
        assert_eq!(response.status(), 200, "login of {email}");
        Tokens::from_json(&response.json().await.expect("JSON"))
    }

    /// `POST /v1/auth/refresh`.
    pub async fn refresh(&self, tenant: &str, refresh: &str) -> Response {
        self.post_as(
            tenant,
            "/v1/auth/refresh",
            &json!({ "refresh_token": refresh }),
        )
        .await
    }

    /// Registers `email` in `tenant` (opening registration first, as the owner
    /// [`TestApp::signup`] made), follows the verification link, and returns the user id.
    pub async fn register_verified(&self, tenant: &str, email: &str) -> Uuid {
        self.open_registration_as_owner(tenant).await;
        let response = self
            .post_as(
                tenant,
                "/v1/auth/register",
                &json!({ "email": email, "password": PASSWORD, "name": "Member" }),
            )
            .await;
        assert_eq!(response.status(), 202, "register {email}");
        let token = self
            .emailed_token(email, "verification")
            .await
            .expect("a verification email");
        let response = self
            .post_as(tenant, "/v1/auth/verify-email", &json!({ "token": token }))
            .await;
        assert_eq!(response.status(), 200, "verify {email}");
        let body: Value = response.json().await.expect("JSON");
        body["id"].as_str().expect("id").parse().expect("uuid")
    }

    /// The emails queued for `to` (newest first), as `(template, vars)`.
    pub async fn emails_to(&self, to: &str) -> Vec<(String, Value)> {
        let rows: Vec<Value> = sqlx::query_scalar(
            "select payload from public.jobs
             where kind = 'email.send' and payload->>'to' = $1
             order by created_at desc, id desc",
        )
        .bind(to)
        .fetch_all(self.state.db.pool())
        .await
        .expect("query jobs");
        rows.into_iter()
            .map(|p| {
                (
                    p["template"].as_str().unwrap_or_default().to_owned(),
                    p["vars"].clone(),
                )
            })
            .collect()
    }

    /// The `token` of the link in the newest `template` email queued for `to`.
    pub async fn emailed_token(&self, to: &str, template: &str) -> Option<String> {
        let emails = self.emails_to(to).await;
        let (_, vars) = emails.into_iter().find(|(t, _)| t == template)?;
        let link = url::Url::parse(vars["link"].as_str()?).ok()?;
        link.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    }

    /// Runs every due job with this binary's handlers, until none is left.
    pub async fn run_jobs(&self) {
        let registry = api::startup::job_registry(&self.state).expect("job registry");
        let worker = api::startup::worker(&self.state, registry);
        let mut outcomes = worker.outcomes();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        loop {
            let pending: i64 = sqlx::query_scalar(
                "select count(*) from public.jobs
                 where status = 'running' or (status in ('queued', 'failed') and run_at <= now())",
            )
            .fetch_one(self.state.db.pool())
            .await
            .expect("count jobs");
            if pending == 0 {
                break;
            }
            // Woken by each finished job (or, at worst, re-checked every poll interval).
            let _ = tokio::time::timeout(Duration::from_secs(1), outcomes.recv()).await;
        }
        let _ = stop.send(());
        running.await.expect("worker task").expect("worker");
    }

    /// Runs `sql` (with `$1` bound to `id`) in tenant `tenant`'s schema as the login role,
    /// to set up states the API does not offer (an expired link, a lapsed lock).
    pub async fn tenant_sql(&self, tenant: Uuid, sql: &str, id: Option<Uuid>) -> u64 {
        let schema = tenancy::TenantId(tenant).schema_name();
        let mut conn = self.state.db.pool().acquire().await.expect("connection");
        sqlx::query(&format!(r#"set search_path to "{schema}""#))
            .execute(&mut *conn)
            .await
            .expect("search path");
        let query = sqlx::query(sql);
        let query = match id {
            Some(id) => query.bind(id),
            None => query,
        };
        let done = query.execute(&mut *conn).await.expect("tenant sql");
        sqlx::query("reset search_path")
            .execute(&mut *conn)
            .await
            .expect("reset");
        done.rows_affected()
    }

    /// Audit events of tenant `tenant` named `event`, oldest first.
    pub async fn audit_events(&self, tenant: Uuid, event: &str) -> Vec<Value> {
        let schema = tenancy::TenantId(tenant).schema_name();
        sqlx::query_scalar(&format!(
            r#"select jsonb_build_object('actor_id', actor_id, 'subject_id', subject_id,
                      'session_id', session_id, 'ip', host(ip), 'user_agent', user_agent,
                      'details', details, 'occurred_at', occurred_at)
               from "{schema}".audit_events where event = $1 order by id"#
        ))
        .bind(event)
        .fetch_all(self.state.db.pool())
        .await
        .expect("audit events")
    }
}

/// A Redis server of the test's own, on a free port, that the test may stop or flush
/// without disturbing other tests. Killed on drop.
pub struct PrivateRedis {
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` (installed by `deploy/local/up.sh`) and waits until it answers.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (deploy/local/up.sh installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).expect("url");
        // Readiness is a condition to poll: the server answers PING once it listens.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answered = match client.get_multiplexed_async_connection().await {
                Ok(mut conn) => redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if answered {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            url,
            child: Some(child),
        }
    }

    /// Runs one command.
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.expect("redis command")
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
