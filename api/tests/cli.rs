//! The `canopy` binary as an operator meets it: help, configuration errors, migrate,
//! serve with JSON logs, and a clean exit on SIGTERM. Needs the local PostgreSQL.

#![expect(
    unused_crate_dependencies,
    reason = "a test target sees all of the package's dependencies; the library is checked"
)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_canopy");

fn canopy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("canopy runs")
}

#[test]
fn help_explains_every_command() {
    let out = canopy(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "migrate", "openapi"] {
        assert!(text.contains(command), "{text}");
    }
    let serve = String::from_utf8_lossy(&canopy(&["serve", "--help"], &[]).stdout).into_owned();
    assert!(
        serve.contains("SIGTERM") && serve.contains("CANOPY_BIND"),
        "{serve}"
    );
    let migrate = String::from_utf8_lossy(&canopy(&["migrate", "--help"], &[]).stdout).into_owned();
    assert!(migrate.contains("Idempotent"), "{migrate}");
}

#[test]
fn invalid_configuration_stops_with_one_clear_line() {
    for (var, value) in [
        ("CANOPY_BIND", "not-an-address"),
        ("CANOPY_DATABASE_URL", "mysql://root:hunter2@db/x"),
        ("CANOPY_REQUEST_TIMEOUT", "soon"),
    ] {
        let out = canopy(&["serve"], &[(var, value)]);
        assert_eq!(out.status.code(), Some(78), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(var) && stderr.contains("expected"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("hunter2"),
            "{stderr}"
        );
    }
    let out = canopy(&["serve"], &[("CANOPY_ENVIRONMENT", "production")]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CANOPY_S3_SECRET_ACCESS_KEY is required")
    );
}

#[test]
fn openapi_needs_no_configuration() {
    let out = canopy(&["openapi"], &[("CANOPY_BIND", "garbage")]);
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["info"]["title"], "Canopy");
}

struct Database {
    name: String,
    admin: String,
    url: String,
}

impl Database {
    async fn create() -> Self {
        let admin = std::env::var("CANOPY_DATABASE_URL")
            .unwrap_or_else(|_| api::settings::DEFAULT_DATABASE_URL.into());
        let name = format!("canopy_cli_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable (deploy/local/up.sh)");
        sqlx::query(&format!(r#"create database "{name}""#))
            .execute(&mut conn)
            .await
            .expect("create db");
        let mut url = url::Url::parse(&admin).expect("url");
        url.set_path(&name);
        Self {
            name,
            admin,
            url: url.to_string(),
        }
    }

    async fn drop(self) {
        // Tenant roles are cluster-wide and outlive the database: collect them first. Every
        // tenant or spare schema (the server's workers build spares) is named after its role.
        let mut conn = PgConnection::connect(&self.url).await.expect("test db");
        let roles: Vec<String> = sqlx::query_scalar(
            "select nspname::text from pg_namespace where nspname ~ '^t_[0-9a-f]{32}$'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("tenant roles");
        conn.close().await.expect("close");
        let mut conn = PgConnection::connect(&self.admin).await.expect("admin");
        // Not `with (force)`: PostgreSQL 15 refuses it to a non-superuser while an
        // autovacuum worker is in the database. Every client of it has exited; a plain drop
        // stops autovacuum itself.
        sqlx::query(&format!(r#"drop database "{}""#, self.name))
            .execute(&mut conn)
            .await
            .expect("drop db");
        for role in roles {
            sqlx::query(&format!(r#"drop role "{role}""#))
                .execute(&mut conn)
                .await
                .expect("drop role");
        }
    }
}

/// Kills the server if the test fails before it stops it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads stderr lines of a child on a thread, so the test can wait for one with a bound.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_log(lines: &mpsc::Receiver<String>, message: &str) -> Value {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no `{message}` log line"));
        let Ok(json) = serde_json::from_str::<Value>(&line) else {
            panic!("log line is not JSON: {line}");
        };
        if json["message"] == message {
            return json;
        }
    }
}

#[tokio::test]
async fn migrate_then_serve_logs_json_and_stops_on_sigterm() {
    let db = Database::create().await;
    let env = [
        ("CANOPY_DATABASE_URL", db.url.as_str()),
        ("CANOPY_BIND", "127.0.0.1:0"),
        ("CANOPY_METRICS_BIND", "127.0.0.1:0"),
        ("CANOPY_LOG_FORMAT", "json"),
    ];

    let refused = canopy(&["serve"], &env);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("run `canopy migrate`"), "{stderr}");

    for _ in 0..2 {
        let migrated = canopy(&["migrate"], &env);
        assert!(
            migrated.status.success(),
            "{}",
            String::from_utf8_lossy(&migrated.stderr)
        );
    }

    // Tenant and key administration from the command line.
    let key = canopy(&["admin", "create-key", "--name", "ops"], &env);
    assert!(key.status.success());
    let stdout = String::from_utf8_lossy(&key.stdout);
    let last = stdout.lines().last().expect("a line");
    assert!(last.starts_with("cnp_") && last.len() == 68, "{stdout}");

    let created = canopy(
        &["tenant", "create", "--slug", "cli-co", "--name", "CLI Co"],
        &env,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let text = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(
        text.contains("slug:    cli-co") && text.contains("schema:  t_"),
        "{text}"
    );
    let hostile = canopy(
        &["tenant", "create", "--slug", "x\";drop", "--name", "n"],
        &env,
    );
    assert_eq!(hostile.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&hostile.stderr).contains("slug must be lowercase"));
    let listed = String::from_utf8_lossy(&canopy(&["tenant", "list"], &env).stdout).into_owned();
    assert!(listed.contains("\tcli-co\tactive\tCLI Co"), "{listed}");
    let suspended = String::from_utf8_lossy(&canopy(&["tenant", "suspend", "cli-co"], &env).stdout)
        .into_owned();
    assert!(suspended.contains("status:  suspended"), "{suspended}");
    let resumed =
        String::from_utf8_lossy(&canopy(&["tenant", "resume", "cli-co"], &env).stdout).into_owned();
    assert!(resumed.contains("status:  active"), "{resumed}");
    let missing = canopy(&["tenant", "show", "no-such-co"], &env);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no tenant `no-such-co`"));
    let migrated = canopy(&["migrate"], &env);
    let report = String::from_utf8_lossy(&migrated.stderr);
    assert!(
        report.contains("tenant migrations: 0 migrated, 1 already current, 0 failed"),
        "{report}"
    );
    // No worker has run yet, so no spare was built to migrate.
    assert!(
        report.contains("spare schemas: 0 migrated, 0 already current, 0 dropped"),
        "{report}"
    );

    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("serve starts"));
    let lines = stderr_lines(&mut child.0);
    let listening = wait_for_log(&lines, "listening");
    let url = listening["url"].as_str().expect("url field").to_owned();
    let addr = url.trim_start_matches("http://").to_owned();

    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: cli-test-1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let completed = wait_for_log(&lines, "request completed");

    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .write_all(b"GET /v1/tenant HTTP/1.1\r\nHost: localhost\r\nX-Tenant: cli-co\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut tenant_response = String::new();
    stream.read_to_string(&mut tenant_response).expect("read");
    assert!(
        tenant_response.starts_with("HTTP/1.1 200"),
        "{tenant_response}"
    );
    let tenant_log = wait_for_log(&lines, "request completed");
    assert!(
        tenant_log["span"]["tenant_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{tenant_log}"
    );
    assert_eq!(tenant_log["span"]["route"], "/v1/tenant");
    let span = &completed["span"];
    assert_eq!(span["request_id"], "cli-test-1", "{completed}");
    assert_eq!(span["method"], "GET");
    assert_eq!(span["route"], "/health/live");
    assert_eq!(span["status"], 200);
    assert!(span["latency_ms"].is_number(), "{completed}");
    assert_eq!(completed["level"], "INFO");

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_for_log(&lines, "shutdown complete");
    let status = child.0.wait().expect("exit status");
    assert!(status.success(), "{status}");
    db.drop().await;
}
