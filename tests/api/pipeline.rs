//! Request plumbing: request ids, security headers, CORS, deadlines, graceful shutdown.

use e2e::{TestApp, assert_problem, spawn_app};
use reqwest::Method;

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;

    let supplied = app
        .request(Method::GET, "/health/live")
        .header("x-request-id", "client-abc-123")
        .send()
        .await
        .expect("request");
    assert_eq!(supplied.headers()["x-request-id"], "client-abc-123");

    let generated = app.get("/health/live").await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let again = app.get("/health/live").await;
    assert_ne!(again.headers()["x-request-id"].to_str().expect("ascii"), id);

    // An id that would pollute logs or headers is replaced, not echoed.
    let hostile = app
        .request(Method::GET, "/health/live")
        .header("x-request-id", "a b\"<script>")
        .send()
        .await
        .expect("request");
    let replaced = hostile.headers()["x-request-id"].to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(replaced).is_ok(), "{replaced}");
}

#[tokio::test]
async fn responses_carry_security_headers() {
    let app = spawn_app().await;
    for path in ["/health/live", "/no/such/route"] {
        let response = app.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(
            headers["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert_eq!(headers["cache-control"], "no-store");
    }
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::builder()
        .env("cors_origins", "https://app.example.com")
        .spawn()
        .await;
    let preflight = |origin: &'static str| {
        app.request(Method::OPTIONS, "/health/live")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.expect("request");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    let denied = preflight("https://evil.example").await.expect("request");
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(denied.status().is_client_error());
}

#[tokio::test]
async fn slow_requests_hit_the_deadline() {
    let app = TestApp::builder()
        .env("request_timeout", "300ms")
        .spawn()
        .await;
    // The handler waits for a release that never comes; only the deadline can end it.
    let body = assert_problem(app.get("/__test/wait").await, 503, "request_timeout").await;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("0.3 s")),
        "{body}"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut app = e2e::spawn_app().await;
    let url = format!("{}/__test/wait", app.address);
    let client = app.client.clone();
    let in_flight = tokio::spawn(async move { client.get(url).send().await });

    app.gate.entered.notified().await;
    let gate = app.gate.clone();
    let port = app.port;
    let shutdown = {
        tokio::spawn(async move {
            let result = app.shutdown().await;
            (result, app)
        })
    };
    // Once the listener is closed the shutdown is under way; it must still be waiting for
    // the in-flight request.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener closed on shutdown");
    assert!(
        !shutdown.is_finished(),
        "server stopped before its in-flight request finished"
    );
    gate.release.notify_one();

    let response = in_flight
        .await
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "\"released\"");

    let (result, app) = shutdown.await.expect("join");
    result.expect("server shut down cleanly");
    assert!(app.server_finished());
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
}
