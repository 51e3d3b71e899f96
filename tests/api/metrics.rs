//! `/metrics`: Prometheus exposition of request counts, latencies and pool gauges.

use e2e::spawn_app;

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = spawn_app().await;
    for _ in 0..3 {
        assert_eq!(app.get("/health/live").await.status(), 200);
    }
    assert_eq!(app.get("/problems/not_found").await.status(), 200);
    assert_eq!(app.get("/no/such/thing").await.status(), 404);
    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.status(),
        200,
        "{}",
        ready.text().await.unwrap_or_default()
    );

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.expect("body");

    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in:\n{text}"))
    };
    assert!(
        line(r#"canopy_http_requests_total{method="GET",route="/health/live",status="200"}"#)
            .ends_with(" 3")
    );
    // Parameterised routes are labelled by their template, not the raw path.
    assert!(
        line(r#"canopy_http_requests_total{method="GET",route="/problems/:code",status="200"}"#)
            .ends_with(" 1")
    );
    assert!(
        line(r#"canopy_http_requests_total{method="GET",route="unmatched",status="404"}"#)
            .ends_with(" 1")
    );
    assert!(line(r#"canopy_http_request_duration_seconds_count{method="GET",route="/health/live",status="200"}"#).ends_with(" 3"));
    assert!(line(r#"canopy_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/health/live",status="200"}"#).ends_with(" 3"));
    assert!(line("canopy_db_pool_max_connections").ends_with(" 5"));
    line(r#"canopy_db_pool_connections{state="idle"}"#);
    line(r#"canopy_redis_pool_connections{state="busy"}"#);
    assert!(text.trim_end().ends_with("# EOF"));
}
