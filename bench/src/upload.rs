//! `upload`: a 1 GiB file through `POST /v1/files` (multipart, streamed to the bucket in
//! parts) against a direct `PutObject` of the same file to the same S3 server. Reports
//! both throughputs, their ratio, and the growth of this process's resident memory (server
//! and client together) while the upload runs.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use e2e::TestApp;
use reqwest::multipart::{Form, Part};
use storage::ObjectKey;
use tokio::io::AsyncWriteExt;

/// Resident memory of this process, in bytes.
pub(crate) fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Samples the resident memory every 20 ms until stopped; returns the peak.
pub(crate) fn watch_rss() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss()));
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        while !stopping.load(Ordering::Relaxed) {
            peak.fetch_max(rss(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, task)
}

/// A `size`-byte PDF-headed file of pseudo-random bytes (incompressible, like real data).
async fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut written = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    while written < size {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        if written == 0 {
            chunk[..9].copy_from_slice(b"%PDF-1.7\n");
        }
        let n = (size - written).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).await?;
        written += n as u64;
    }
    file.flush().await?;
    Ok(())
}

async fn file_body(path: &Path) -> anyhow::Result<reqwest::Body> {
    let file = tokio::fs::File::open(path).await?;
    Ok(reqwest::Body::wrap_stream(
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024),
    ))
}

/// `upload`.
pub async fn upload(size_mib: u64) -> anyhow::Result<()> {
    let size = size_mib << 20;
    let app = TestApp::builder()
        .env(
            "plans",
            r#"[{"name": "free", "limits": {"storage_bytes": "100 GiB", "upload_bytes": "8 GiB"}}]"#,
        )
        .spawn()
        .await;
    let org = app.signup("bench-upload").await;
    let path: PathBuf =
        std::env::temp_dir().join(format!("canopy-bench-upload-{}", std::process::id()));
    make_file(&path, size)
        .await
        .context("writing the test file")?;
    let result = run(&app, &org, &path, size).await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

async fn run(app: &TestApp, org: &e2e::auth::Signup, path: &Path, size: u64) -> anyhow::Result<()> {
    // Baseline: the same file straight to the bucket, one PutObject.
    let store = &app.state.storage;
    let key = ObjectKey::from_stored(format!("bench/upload-{}", std::process::id()));
    let started = Instant::now();
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(key.as_str())
        .content_type("application/pdf")
        .body(ByteStream::from_path(path).await?)
        .send()
        .await
        .context("direct PutObject")?;
    let direct = started.elapsed();
    store.delete(&key).await?;

    // Warm the server's paths with a small upload, then measure.
    let warm = app
        .upload(
            &org.slug,
            &org.tokens.access,
            b"%PDF-1.7\nwarm".to_vec(),
            "w.pdf",
            "application/pdf",
        )
        .await;
    anyhow::ensure!(warm.status() == 201, "warm-up upload: {}", warm.status());
    let baseline_rss = rss();
    let (stop, peak) = watch_rss();
    let part = Part::stream_with_length(file_body(path).await?, size)
        .file_name("big.pdf")
        .mime_str("application/pdf")?;
    let started = Instant::now();
    let response = app
        .authed(
            reqwest::Method::POST,
            &org.slug,
            "/v1/files",
            &org.tokens.access,
        )
        .multipart(Form::new().part("file", part))
        .send()
        .await?;
    let through_api = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status == 201, "upload failed: {status} {body}");
    anyhow::ensure!(body["size"] == size, "stored {} bytes", body["size"]);

    let mib = size as f64 / (1024.0 * 1024.0);
    let direct_rate = mib / direct.as_secs_f64();
    let api_rate = mib / through_api.as_secs_f64();
    println!("upload_size_mib: {mib:.0}");
    println!("upload_direct_put_seconds: {:.2}", direct.as_secs_f64());
    println!("upload_direct_put_mib_per_s: {direct_rate:.1}");
    println!("upload_canopy_seconds: {:.2}", through_api.as_secs_f64());
    println!("upload_canopy_mib_per_s: {api_rate:.1}");
    println!(
        "upload_rss_growth_mib: {:.1}",
        peak.saturating_sub(baseline_rss) as f64 / (1024.0 * 1024.0)
    );
    println!("upload_ratio: {:.3}", api_rate / direct_rate);
    Ok(())
}
