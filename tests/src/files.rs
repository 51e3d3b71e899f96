//! Helpers for tests of files: images made on the spot (plain, with EXIF, bombs), uploads
//! through the API, and the objects a tenant has in the bucket.

use std::io::Cursor;

use image::{ImageFormat, RgbImage};
use reqwest::{
    Method, Response,
    multipart::{Form, Part},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{TestApp, auth::Signup};

/// A `width`×`height` image in `format` whose pixels depend on `seed` (distinct seeds,
/// distinct bytes: no accidental dedupe).
pub fn image_bytes(width: u32, height: u32, seed: u8, format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            seed.wrapping_mul(37).wrapping_add((x / 7) as u8),
        ])
    });
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encode");
    bytes.into_inner()
}

/// A PNG (see [`image_bytes`]).
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    image_bytes(width, height, seed, ImageFormat::Png)
}

/// A JPEG (see [`image_bytes`]).
pub fn jpeg(width: u32, height: u32, seed: u8) -> Vec<u8> {
    image_bytes(width, height, seed, ImageFormat::Jpeg)
}

/// A `width`×`height` PNG of 1 bit per pixel (grey), black but for a pattern on its first
/// row that depends on `seed`: a few KiB of file for hundreds of MiB decoded (decoders
/// give 8 bits a pixel at least).
pub fn one_bit_png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().expect("PNG header");
    let mut stream = writer.stream_writer().expect("PNG stream");
    let mut row = vec![0u8; width.div_ceil(8) as usize];
    row[0] = seed;
    for y in 0..height {
        std::io::Write::write_all(&mut stream, &row).expect("PNG row");
        if y == 0 {
            row[0] = 0;
        }
    }
    stream.finish().expect("PNG data");
    writer.finish().expect("PNG end");
    bytes
}

/// A real 1×1 PNG whose header then claims `width`×`height` (with a valid CRC).
pub fn pixel_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut png = png(1, 1, 0);
    // Signature (8), IHDR length (4), "IHDR" (4), width, height, … CRC after 13 bytes.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `jpeg` with an APP1 EXIF segment carrying `orientation`, a GPS block and a camera
/// model, all of which a thumbnail must not keep.
pub fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&3u16.to_be_bytes());
    // Orientation (0x0112), SHORT, 1 value.
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    // Model (0x0110), ASCII, 4 bytes inline: "GPS!".
    tiff.extend_from_slice(&[0x01, 0x10, 0, 2, 0, 0, 0, 4]);
    tiff.extend_from_slice(b"GPS!");
    // GPSInfo IFD pointer (0x8825), LONG, pointing at an empty IFD right after this one.
    tiff.extend_from_slice(&[0x88, 0x25, 0, 4, 0, 0, 0, 1]);
    let gps_offset = 8 + 2 + 3 * 12 + 4;
    tiff.extend_from_slice(&(gps_offset as u32).to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend_from_slice(&tiff);
    let length = u16::try_from(segment.len() + 2).expect("short segment");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&segment);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Whether `bytes` contain `needle`.
pub fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

impl TestApp {
    /// `POST /v1/files` as `access` with `bytes` as the `file` field, named `file_name`
    /// and declared as `content_type`.
    pub async fn upload(
        &self,
        tenant: &str,
        access: &str,
        bytes: Vec<u8>,
        file_name: &str,
        content_type: &str,
    ) -> Response {
        let part = Part::bytes(bytes)
            .file_name(file_name.to_owned())
            .mime_str(content_type)
            .expect("a valid media type");
        self.authed(Method::POST, tenant, "/v1/files", access)
            .multipart(Form::new().part("file", part))
            .send()
            .await
            .expect("request failed")
    }

    /// Uploads as the owner of `org`, asserting a 201; returns the file.
    pub async fn upload_ok(&self, org: &Signup, bytes: Vec<u8>, file_name: &str) -> Value {
        let content_type = match file_name.rsplit_once('.').map(|(_, e)| e) {
            Some("png") => "image/png",
            Some("jpg") => "image/jpeg",
            Some("pdf") => "application/pdf",
            _ => "application/octet-stream",
        };
        let response = self
            .upload(
                &org.slug,
                &org.tokens.access,
                bytes,
                file_name,
                content_type,
            )
            .await;
        assert_eq!(response.status(), 201, "upload of {file_name}");
        response.json().await.expect("JSON")
    }

    /// `GET /v1/files/{id}` as the owner of `org`.
    pub async fn file(&self, org: &Signup, id: &str) -> Response {
        self.get_authed(&org.slug, &format!("/v1/files/{id}"), &org.tokens.access)
            .await
    }

    /// Every key in the bucket under tenant `tenant`'s prefix, sorted.
    pub async fn objects_of(&self, tenant: Uuid) -> Vec<String> {
        let prefix = storage::ObjectKey::tenant_prefix(tenancy::TenantId(tenant));
        let mut keys = self.state.storage.list(&prefix).await.expect("list");
        keys.sort();
        keys
    }

    /// Follows a 302 to its presigned URL; returns the object's response.
    pub async fn follow(&self, response: Response) -> Response {
        assert_eq!(response.status(), 302, "a redirect");
        let location = response
            .headers()
            .get("location")
            .expect("Location")
            .to_str()
            .expect("ASCII")
            .to_owned();
        reqwest::get(location).await.expect("presigned GET")
    }
}

/// A `len`-byte PDF (magic bytes, then filler depending on `seed`).
pub fn pdf(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n".to_vec();
    bytes.extend(
        (0..len.saturating_sub(bytes.len())).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)),
    );
    bytes
}
