//! `thumbnail`: Canopy's thumbnails (`storage::images::thumbnails`, both configured sizes
//! from one decode) of a 4000×3000 JPEG and PNG, against `vipsthumbnail` (Debian's
//! `libvips-tools`) making the same sizes from the same files. Medians of several runs.

use std::{
    io::Cursor,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use image::{ImageFormat, RgbImage};
use storage::images::{ImageLimits, thumbnails};

/// The default thumbnail sizes.
const SIZES: [u32; 2] = [128, 512];

/// A photo-like 4000×3000 picture: smooth gradients plus noise, so that it compresses like
/// one (a flat picture would flatter every decoder).
fn picture() -> RgbImage {
    let mut noise: u32 = 0x1234_5678;
    RgbImage::from_fn(4000, 3000, |x, y| {
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let n = (noise % 24) as u8;
        image::Rgb([
            ((x / 16) % 256) as u8 ^ n,
            ((y / 12) % 256) as u8 ^ n,
            (((x + y) / 28) % 256) as u8 ^ n,
        ])
    })
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `thumbnail`.
pub fn thumbnail(runs: usize) -> anyhow::Result<()> {
    let vips = which("vipsthumbnail").context(
        "vipsthumbnail not found: install Debian's libvips-tools for this benchmark's baseline",
    )?;
    let dir = std::env::temp_dir().join(format!("canopy-bench-thumbnail-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let image = picture();
    for (name, format) in [("jpeg", ImageFormat::Jpeg), ("png", ImageFormat::Png)] {
        let mut encoded = Cursor::new(Vec::new());
        image.write_to(&mut encoded, format)?;
        let bytes = encoded.into_inner();
        let path = dir.join(format!("source.{name}"));
        std::fs::write(&path, &bytes)?;

        // Warm-up, then timed runs of each side.
        thumbnails(&bytes, &SIZES, ImageLimits::default())?;
        run_vips(&vips, &path, &dir)?;
        let mut ours = Vec::with_capacity(runs);
        let mut theirs = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            let made = thumbnails(&bytes, &SIZES, ImageLimits::default())?;
            ours.push(start.elapsed());
            anyhow::ensure!(made[1].width == 512 && made[1].height == 384, "wrong size");
            let start = Instant::now();
            run_vips(&vips, &path, &dir)?;
            theirs.push(start.elapsed());
        }
        let (ours, theirs) = (median(ours), median(theirs));
        println!("thumbnail_{name}_bytes: {}", bytes.len());
        println!(
            "thumbnail_{name}_canopy_ms: {:.1}",
            ours.as_secs_f64() * 1000.0
        );
        println!(
            "thumbnail_{name}_vips_ms: {:.1}",
            theirs.as_secs_f64() * 1000.0
        );
        println!(
            "thumbnail_{name}_ratio: {:.3}",
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `vipsthumbnail` making each of [`SIZES`] (one process per size, as a job would run it).
fn run_vips(vips: &Path, source: &Path, dir: &Path) -> anyhow::Result<()> {
    for size in SIZES {
        let out = dir.join(format!("vips-{size}.jpg"));
        let status = Command::new(vips)
            .arg(source)
            .args(["-s", &size.to_string(), "-o"])
            .arg(&out)
            .status()?;
        anyhow::ensure!(status.success(), "vipsthumbnail failed");
    }
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}
