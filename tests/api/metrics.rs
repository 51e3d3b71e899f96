//! `/metrics`: Prometheus exposition of request counts, latencies and pool gauges, on a
//! listener of its own (the public port does not serve it), in `canopy serve` and in
//! `canopy worker`.

use std::time::Duration;

use e2e::{TestApp, assert_problem, spawn_app};
use jobs::NewJob;

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

    let response = app.scrape_metrics().await;
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

#[tokio::test]
async fn the_public_port_does_not_serve_metrics() {
    let app = spawn_app().await;
    assert_problem(app.get("/metrics").await, 404, "not_found").await;
    let scraped = app.scrape_metrics().await;
    assert_eq!(scraped.status(), 200);
    // The scrape is not a request of the API.
    let text = scraped.text().await.expect("body");
    assert!(!text.contains(r#"route="/metrics""#), "{text}");
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
}

#[tokio::test]
async fn the_metrics_listener_can_be_turned_off() {
    let app = TestApp::builder().env("metrics_bind", "off").spawn().await;
    assert_eq!(app.metrics_port, None);
    assert_eq!(app.get("/health/live").await.status(), 200);
}

#[tokio::test]
async fn a_worker_process_serves_its_job_figures() {
    let app = spawn_app().await;
    // `canopy worker` as the binary runs it, in process, on this test's database.
    let worker = api::startup::WorkerProcess::build(app.settings.clone())
        .await
        .expect("worker starts");
    let port = worker.metrics_port().expect("metrics listener");
    let mut observed = worker.state().metrics.jobs_observed();
    let mut conn = app.state.db.pool().acquire().await.expect("connection");
    jobs::enqueue(
        &mut conn,
        NewJob::new(
            <files::jobs::SweepOrphans as jobs::JobKind>::KIND,
            serde_json::json!({}),
        ),
    )
    .await
    .expect("enqueue");
    drop(conn);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(
        Duration::from_secs(30),
        observed.wait_for(|runs| *runs >= 1),
    )
    .await
    .expect("the job ran within 30 s")
    .expect("metrics alive");

    let text = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        text.lines()
            .any(|l| l
                == r#"canopy_job_runs_total{kind="files.sweep_orphans",outcome="succeeded"} 1"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"canopy_jobs{status="succeeded"} 1"#),
        "{text}"
    );
    let _ = stop.send(());
    running.await.expect("worker task").expect("worker");
}
