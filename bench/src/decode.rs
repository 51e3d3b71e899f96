//! `decode_peak`: thumbnails of several 16384×16384 1-bit PNGs at once (tens of KiB each,
//! 256 MiB each once decoded as 8-bit grey), through `storage::images::thumbnails_within`
//! (what the `files.thumbnails` job calls once it has the original) under the decode
//! budget of `CANOPY_DECODE_MEMORY`, against the bound the README states: the budget plus
//! the originals in memory plus a fixed overhead. Then, for comparison, the same decodes
//! without the budget (`thumbnails` on as many blocking threads). Reports the growth of
//! this process's resident memory in both runs; the ratio is the budgeted growth to the
//! bound.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use storage::images::{DecodeBudget, ImageLimits, decode_estimate, thumbnails, thumbnails_within};

use crate::upload::{rss, watch_rss};

/// The default thumbnail sizes.
const SIZES: [u32; 2] = [128, 512];

/// What a decoding process holds beyond the budget and the originals (allocator slack,
/// blocking threads, the runtime), as the README states it.
pub const FIXED_OVERHEAD: u64 = 32 << 20;

const MIB: f64 = 1024.0 * 1024.0;

/// `decode_peak` with `images` concurrent decodes.
pub async fn decode_peak(images: usize) -> anyhow::Result<()> {
    let budget_bytes = api::settings::Settings::load(None)
        .context("settings")?
        .files
        .decode_memory;
    let sources: Vec<Bytes> = (0..images)
        .map(|i| Bytes::from(e2e::files::one_bit_png(16_384, 16_384, i as u8 + 1)))
        .collect();
    let limits = ImageLimits::default();
    let estimate = decode_estimate(&sources[0], &SIZES, limits)?;
    let originals: u64 = sources.iter().map(|s| s.len() as u64).sum();

    let budget = DecodeBudget::new(budget_bytes);
    let baseline = rss();
    let (stop, peak) = watch_rss();
    let start = Instant::now();
    let tasks: Vec<_> = sources
        .iter()
        .map(|bytes| {
            let (budget, bytes) = (budget.clone(), bytes.clone());
            tokio::spawn(
                async move { thumbnails_within(&budget, bytes, SIZES.to_vec(), limits).await },
            )
        })
        .collect();
    for task in tasks {
        let (_, thumbs) = task.await??;
        anyhow::ensure!(thumbs[1].width == 512, "wrong size");
    }
    let budgeted_seconds = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let budgeted = peak.await?.saturating_sub(baseline);

    let baseline = rss();
    let (stop, peak) = watch_rss();
    let start = Instant::now();
    let tasks: Vec<_> = sources
        .iter()
        .map(|bytes| {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || thumbnails(&bytes, &SIZES, limits))
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let unbudgeted_seconds = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let unbudgeted = peak.await?.saturating_sub(baseline);

    let bound = budget_bytes + originals + FIXED_OVERHEAD;
    println!("decode_peak_images: {images}");
    println!(
        "decode_peak_file_kib: {:.1}",
        sources[0].len() as f64 / 1024.0
    );
    println!("decode_peak_estimate_mib: {:.1}", estimate as f64 / MIB);
    println!("decode_peak_budget_mib: {:.1}", budget_bytes as f64 / MIB);
    println!("decode_peak_unbudgeted_seconds: {unbudgeted_seconds:.2}");
    println!(
        "decode_peak_unbudgeted_rss_growth_mib: {:.1}",
        unbudgeted as f64 / MIB
    );
    println!("decode_peak_seconds: {budgeted_seconds:.2}");
    println!("decode_peak_bound_mib: {:.1}", bound as f64 / MIB);
    println!("decode_peak_rss_growth_mib: {:.1}", budgeted as f64 / MIB);
    println!("decode_peak_ratio: {:.3}", budgeted as f64 / bound as f64);
    Ok(())
}
