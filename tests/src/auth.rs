//! Helpers for tests of users and sessions: sign-up, registration with verification,
//! login, reading the links the service emails (from the development outbox, as a user
//! would), and running queued jobs.

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

    /// Asks for a reset link for `email` in `tenant` (`forgot-password`, 202), then uses the
    /// emailed token to set `password`: the answer of `reset-password`.
    pub async fn reset_password_by_email(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
    ) -> Response {
        let forgot = self
            .post_as(
                tenant,
                "/v1/auth/forgot-password",
                &json!({ "email": email }),
            )
            .await;
        assert_eq!(forgot.status(), 202, "forgot-password for {email}");
        let token = self
            .emailed_token(email, "password_reset")
            .await
            .expect("a reset link");
        self.post_as(
            tenant,
            "/v1/auth/reset-password",
            &json!({ "token": token, "password": password }),
        )
        .await
    }

    /// Asserts that `tokens` of `tenant` are dead: the access token is refused (401
    /// `invalid_token` on `GET /v1/me`) and so is refreshing.
    pub async fn assert_tokens_dead(&self, tenant: &str, tokens: &Tokens) {
        let me = self.get_authed(tenant, "/v1/me", &tokens.access).await;
        crate::assert_problem(me, 401, "invalid_token").await;
        let refreshed = self.refresh(tenant, &tokens.refresh).await;
        crate::assert_problem(refreshed, 401, "invalid_token").await;
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

    /// The emails sent to `to` (newest first, by when their job was enqueued), as
    /// `(template, message)`; `message` holds the `subject`, the plain `text` and, when the
    /// text has one, the `link`. Runs the due jobs first, then reads the development outbox
    /// (`CANOPY_OUTBOX_DIR`): what a user receives, not what a job payload says.
    pub async fn emails_to(&self, to: &str) -> Vec<(String, Value)> {
        self.run_jobs().await;
        let wanted = identity::email::email_key(to);
        let mut sent: Vec<(Uuid, String, Value)> = self
            .outbox()
            .into_iter()
            .filter(|m| identity::email::email_key(&m.to) == wanted)
            .map(|m| (m.job, m.template, m.message))
            .collect();
        let jobs: Vec<Uuid> = sent.iter().map(|(job, _, _)| *job).collect();
        let order: Vec<Uuid> = sqlx::query_scalar(
            "select id from public.jobs where id = any($1) order by created_at desc, id desc",
        )
        .bind(&jobs)
        .fetch_all(self.state.db.pool())
        .await
        .expect("query jobs");
        // A message whose job is gone (deleted with an erased user) sorts last.
        sent.sort_by_key(|(job, _, _)| order.iter().position(|id| id == job).unwrap_or(usize::MAX));
        sent.into_iter().map(|(_, t, m)| (t, m)).collect()
    }

    /// The `token` of the link in the newest `template` email sent to `to` (see
    /// [`Self::emails_to`]).
    pub async fn emailed_token(&self, to: &str, template: &str) -> Option<String> {
        let emails = self.emails_to(to).await;
        let (_, message) = emails.into_iter().find(|(t, _)| t == template)?;
        let link = url::Url::parse(message["link"].as_str()?).ok()?;
        link.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    }

    /// Every message in this app's outbox, in no particular order.
    pub fn outbox(&self) -> Vec<OutboxMessage> {
        let Ok(entries) = std::fs::read_dir(&self.settings.email.outbox_dir) else {
            return Vec::new();
        };
        entries
            .map(|e| e.expect("outbox entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .map(|p| OutboxMessage::parse(&std::fs::read_to_string(&p).expect("read eml")))
            .collect()
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

/// One message of the development outbox, as `lettre` wrote it.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// The `To` address.
    pub to: String,
    /// `X-Canopy-Template`.
    pub template: String,
    /// `X-Canopy-Job`: the job that sent it.
    pub job: Uuid,
    /// `{subject, text, link}` (`link` only when the text has one).
    pub message: Value,
    /// The decoded `text/html` part (empty when there is none).
    pub html: String,
    /// Every header, continuation lines joined.
    pub headers: Vec<(String, String)>,
    /// The whole file.
    pub raw: String,
}

impl OutboxMessage {
    /// Parses an `.eml` file: headers, and the decoded `text/plain` part.
    pub fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").expect("headers and body");
        let headers = unfold(head);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let boundary = header("Content-Type")
            .split_once("boundary=")
            .map(|(_, b)| b.trim_matches('"').to_owned())
            .expect("a multipart message");
        let part = |wanted: &str| {
            body.split(&format!("--{boundary}")).find_map(|part| {
                let (head, content) = part.trim_start_matches("\r\n").split_once("\r\n\r\n")?;
                let headers = unfold(head);
                let value = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_ascii_lowercase())
                        .unwrap_or_default()
                };
                value("Content-Type")
                    .starts_with(wanted)
                    .then(|| decode(&value("Content-Transfer-Encoding"), content))
            })
        };
        let text = part("text/plain").expect("a text/plain part");
        let html = part("text/html").unwrap_or_default();
        let link = text
            .split_whitespace()
            .find(|w| w.starts_with("http") && w.contains("token="))
            .map(str::to_owned);
        let to = header("To");
        let to = match (to.find('<'), to.rfind('>')) {
            (Some(start), Some(end)) if start < end => to[start + 1..end].to_owned(),
            _ => to.trim().to_owned(),
        };
        Self {
            to,
            template: header("X-Canopy-Template"),
            job: header("X-Canopy-Job").parse().expect("X-Canopy-Job"),
            message: json!({ "subject": header("Subject"), "text": text, "link": link }),
            html,
            headers: headers.clone(),
            raw: raw.to_owned(),
        }
    }
}

impl OutboxMessage {
    /// The value of header `name` (case-insensitive), if the message has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `(name, value)` of each header in `head`, continuation lines joined.
fn unfold(head: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line.trim_start());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

/// A MIME part's content, decoded.
fn decode(encoding: &str, content: &str) -> String {
    match encoding {
        "quoted-printable" => String::from_utf8(
            quoted_printable::decode(content.trim_end(), quoted_printable::ParseMode::Robust)
                .expect("quoted-printable"),
        )
        .expect("utf-8"),
        "base64" => {
            use base64::Engine;
            let joined: String = content.split_whitespace().collect();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(joined)
                    .expect("base64"),
            )
            .expect("utf-8")
        }
        _ => content.to_owned(),
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

/// The session id (`sid`) an access token carries (read, not verified).
pub fn session_of(access: &str) -> Uuid {
    use base64::Engine as _;
    let payload = access.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("claims");
    claims["sid"].as_str().expect("sid").parse().expect("uuid")
}
