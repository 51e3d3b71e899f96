//! `webhooks`: signed Stripe events (`invoice.paid` for a tenant's customer), each
//! delivered 5 times concurrently to `POST /webhooks/stripe`, against HMAC verification
//! alone in a loop over the same bodies. Reports accepted events and deliveries per
//! second and the answers' latency, then drains the processing jobs and checks that every event was stored once,
//! queued once and applied once.

use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::json;

use crate::tenancy::bench_app;

const SECRET: &str = "whsec_canopy_development";

/// `webhooks`.
pub async fn webhooks(events: usize, copies: usize, connections: usize) -> anyhow::Result<()> {
    let app = bench_app(20).await?;
    let org = app.signup("bench-webhooks").await;
    sqlx::query("update public.tenants set stripe_customer_id = 'cus_bench' where id = $1")
        .bind(org.tenant_id)
        .execute(app.state.db.pool())
        .await?;
    let created = chrono::Utc::now().timestamp() - 60;
    let bodies: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            serde_json::to_vec(&json!({
                "id": format!("evt_bench_{i}"), "object": "event", "type": "invoice.paid",
                "created": created, "livemode": false,
                "data": {"object": {"id": format!("in_{i}"), "object": "invoice", "customer": "cus_bench"}}
            }))
        })
        .collect::<Result<_, _>>()?;

    // Baseline: verification alone.
    let signed: Vec<String> = bodies
        .iter()
        .map(|b| billing::signature::header(&[SECRET], created + 60, b))
        .collect();
    let started = Instant::now();
    for (body, header) in bodies.iter().zip(&signed) {
        billing::signature::verify(Some(header), body, &[SECRET], created + 60)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_rate = events as f64 / started.elapsed().as_secs_f64();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let url = format!("{}/webhooks/stripe", app.address);
    let started = Instant::now();
    let deliveries = bodies.iter().flat_map(|body| {
        (0..copies).map(|_| {
            let client = client.clone();
            let url = url.clone();
            let body = body.clone();
            async move {
                let sent = Instant::now();
                let signature =
                    billing::signature::header(&[SECRET], chrono::Utc::now().timestamp(), &body);
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("stripe-signature", signature)
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "status {}", response.status());
                Ok::<_, anyhow::Error>(sent.elapsed())
            }
        })
    });
    let mut results = futures_util::stream::iter(deliveries).buffer_unordered(connections);
    let mut accepted = 0usize;
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    while let Some(result) = results.next().await {
        let took = result.context("a delivery failed")?;
        latency.saturating_record(took.as_micros() as u64);
        accepted += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Exactly one effect per event.
    let stored: i64 = sqlx::query_scalar("select count(*) from public.webhook_events")
        .fetch_one(app.state.db.pool())
        .await?;
    let queued: i64 =
        sqlx::query_scalar("select count(*) from public.jobs where kind = 'billing.process_event'")
            .fetch_one(app.state.db.pool())
            .await?;
    anyhow::ensure!(stored as usize == events, "{stored} events stored");
    anyhow::ensure!(queued as usize == events, "{queued} jobs queued");
    let drain = Instant::now();
    app.run_jobs().await;
    let drain_seconds = drain.elapsed().as_secs_f64();
    let processed: i64 = sqlx::query_scalar(
        "select count(*) from public.webhook_events where status in ('processed', 'ignored') and attempts = 1",
    )
    .fetch_one(app.state.db.pool())
    .await?;
    anyhow::ensure!(
        processed as usize == events,
        "{processed} events processed once"
    );

    let event_rate = events as f64 / elapsed;
    println!("webhooks_events: {events}");
    println!("webhooks_deliveries: {accepted}");
    println!(
        "webhooks_deliveries_per_s: {:.0}",
        accepted as f64 / elapsed
    );
    println!("webhooks_events_per_s: {event_rate:.0}");
    println!(
        "webhooks_answer_p50_ms: {:.1}",
        latency.value_at_quantile(0.5) as f64 / 1000.0
    );
    println!(
        "webhooks_answer_p99_ms: {:.1}",
        latency.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!(
        "webhooks_processing_events_per_s: {:.0}",
        events as f64 / drain_seconds
    );
    println!("webhooks_effects_per_event: 1");
    println!("webhooks_verify_only_events_per_s: {verify_rate:.0}");
    println!("webhooks_ratio: {:.4}", event_rate / verify_rate);
    Ok(())
}
