//! `/health/live` and `/health/ready` against real and broken dependencies.

use e2e::{TestApp, admin_database_url, assert_problem, spawn_app};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn liveness_answers_ok() {
    let app = spawn_app().await;
    let response = app.get("/health/live").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn readiness_checks_postgres_redis_and_the_bucket() {
    let app = spawn_app().await;
    let response = app.get("/health/ready").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"]["status"], "up");
    assert_eq!(body["checks"]["redis"]["status"], "up");
    assert_eq!(body["checks"]["s3"]["status"], "up");
    assert!(body["checks"]["postgres"]["latency_ms"].is_number());
}

#[tokio::test]
async fn readiness_names_s3_when_the_bucket_is_missing_or_unreachable() {
    for (key, value) in [
        ("s3_bucket", "no-such-bucket"),
        ("s3_endpoint", "http://127.0.0.1:1"),
    ] {
        let app = TestApp::builder().env(key, value).spawn().await;
        let body = assert_problem(app.get("/health/ready").await, 503, "not_ready").await;
        assert_eq!(body["checks"]["s3"]["status"], "down", "{key}: {body}");
        assert!(
            body["checks"]["s3"]["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert_eq!(body["checks"]["postgres"]["status"], "up", "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("s3")));
    }
}

#[tokio::test]
async fn readiness_names_redis_when_it_is_unreachable() {
    // Port 1 on loopback: nothing listens there, so every connection is refused.
    let app = TestApp::builder()
        .env("redis_url", "redis://127.0.0.1:1")
        .spawn()
        .await;
    let body = assert_problem(app.get("/health/ready").await, 503, "not_ready").await;
    assert_eq!(body["checks"]["redis"]["status"], "down", "{body}");
    assert!(
        body["checks"]["redis"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(body["checks"]["postgres"]["status"], "up", "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("redis")));
}

#[tokio::test]
async fn readiness_names_postgres_when_its_database_disappears() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/ready").await.status(), 200);

    let mut admin = PgConnection::connect(&admin_database_url())
        .await
        .expect("admin connection");
    // Not `drop database … with (force)`: that refuses (as a non-superuser) whenever an
    // autovacuum worker happens to be in the database. Closing the door, ending the app's
    // own connections and dropping makes PostgreSQL end autovacuum itself.
    let name = &app.db.name;
    for sql in [
        format!(r#"alter database "{name}" allow_connections false"#),
        format!(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = '{name}' and usename = current_user and pid <> pg_backend_pid()"
        ),
        format!(r#"drop database "{name}""#),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.expect(&sql);
    }

    let body = assert_problem(app.get("/health/ready").await, 503, "not_ready").await;
    assert_eq!(body["checks"]["postgres"]["status"], "down", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "up", "{body}");
}
