//! Images, decoded safely: dimensions come from the header alone and are checked against
//! [`ImageLimits`] before any pixel is decoded (a 50-byte PNG declaring 100000×100000
//! pixels is refused at once, with no allocation), and decoding itself runs under a memory
//! cap.
//!
//! Thumbnails of a JPEG are decoded at reduced size by `jpeg-decoder`, whose IDCT can scale
//! by 1/2, 1/4 or 1/8: the smallest scale still at least as large as the biggest thumbnail
//! is used, so the final resize only shrinks. CMYK, lossless and other JPEGs that
//! `jpeg-decoder` cannot scale, and all other formats, are decoded at full size by the
//! `image` crate under `image::Limits` (its JPEG decoder ignores `max_alloc`: a JPEG's
//! estimated decode is checked against it instead). Transparent images are laid over
//! white. Each thumbnail is resized with a SIMD resizer (`fast_image_resize`), turned
//! upright by the EXIF orientation and encoded afresh as JPEG, so no metadata of the
//! original (GPS included) survives. Everything here is CPU work: call it on the blocking
//! pool.

use std::{
    io::Cursor,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use bytes::Bytes;

use fast_image_resize::{
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    images::{Image, ImageRef},
};
use image::{
    ColorType, DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageFormat,
    ImageReader, Limits, RgbImage, codecs::jpeg::JpegEncoder, metadata::Orientation,
};
use jpeg_decoder::{CodingProcess, PixelFormat};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Caps on what an image may be.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Widest accepted, in pixels.
    pub max_width: u32,
    /// Tallest accepted, in pixels.
    pub max_height: u32,
    /// Most memory the decoder may allocate, in bytes.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_width: 16_384,
            max_height: 16_384,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

impl ImageLimits {
    fn decoder_limits(self) -> Limits {
        let mut limits = Limits::default();
        limits.max_image_width = Some(self.max_width);
        limits.max_image_height = Some(self.max_height);
        limits.max_alloc = Some(self.max_alloc);
        limits
    }
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Its declared dimensions pass the limits.
    #[error("the image is {width}×{height} pixels, more than allowed")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// It cannot be decoded (corrupt, truncated, empty, not an image).
    #[error("the image cannot be decoded: {0}")]
    Corrupt(String),
    /// Decoding it would take more memory than the whole [`DecodeBudget`].
    #[error(
        "the image is too large to decode: it needs about {} MiB of memory, more than the {} MiB decode budget",
        needed.div_ceil(1 << 20),
        budget >> 20
    )]
    OverBudget {
        /// Bytes its decode needs, estimated.
        needed: u64,
        /// The whole budget, in bytes.
        budget: u64,
    },
}

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))
}

/// The image's dimensions from its header, checked against `limits` (no pixel decoded).
pub fn dimensions(bytes: &[u8], limits: ImageLimits) -> Result<Dimensions, ImageError> {
    let (width, height) = reader(bytes)?
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("zero-sized image".to_owned()));
    }
    if width > limits.max_width || height > limits.max_height {
        return Err(ImageError::TooLarge { width, height });
    }
    Ok(Dimensions { width, height })
}

/// One thumbnail.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    /// The size asked for (longest edge at most this).
    pub size: u32,
    /// Actual width.
    pub width: u32,
    /// Actual height.
    pub height: u32,
    /// JPEG bytes, without metadata.
    pub jpeg: Vec<u8>,
}

/// Fits `width`×`height` into a `size` square, never enlarging.
fn fit(width: u32, height: u32, size: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= size {
        return (width, height);
    }
    let scale = |edge: u32| {
        u32::try_from(u64::from(edge) * u64::from(size) / u64::from(longest))
            .unwrap_or(1)
            .max(1)
    };
    (scale(width), scale(height))
}

/// Thumbnails of the image in `bytes`, one per entry of `sizes` (longest edge, upright
/// after the EXIF orientation), as metadata-free JPEG. This decodes at once, whatever
/// memory it takes (at most about [`decode_estimate`], or [`full_decode_estimate`] for a
/// JPEG the scaled decoder gives up on): a server calls [`thumbnails_within`] instead,
/// which waits for that memory in the [`DecodeBudget`].
pub fn thumbnails(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Vec<Thumbnail>, ImageError> {
    dimensions(bytes, limits)?;
    match scaled_thumbnails(bytes, sizes, limits)? {
        Some(thumbs) => Ok(thumbs),
        None => full_thumbnails(bytes, sizes, limits),
    }
}

/// The thumbnails of a JPEG decoded at reduced scale by `jpeg-decoder` (memory: its
/// [`decode_estimate`]), or `None` when the image is not a JPEG or is one for
/// [`decode_full`], which `jpeg-decoder` may only find out while decoding.
fn scaled_thumbnails(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Option<Vec<Thumbnail>>, ImageError> {
    if reader(bytes)?.format() != Some(ImageFormat::Jpeg) {
        return Ok(None);
    }
    // jpeg-decoder is fuzzed, but a panic in it must still come out as a refusal.
    let scaled = catch_unwind(AssertUnwindSafe(|| {
        decode_jpeg_scaled(bytes, sizes, limits)
    }))
    .unwrap_or_else(|_| Err(ImageError::Corrupt("the JPEG decoder failed".to_owned())))?;
    scaled.map(|decoded| render(&decoded, sizes)).transpose()
}

/// The thumbnails of the image decoded whole by the `image` crate (memory: its
/// [`full_decode_estimate`]). Its JPEG decoder does not enforce `max_alloc`, so a JPEG
/// whose estimated decode exceeds it is refused here, before decoding.
fn full_thumbnails(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Vec<Thumbnail>, ImageError> {
    if reader(bytes)?.format() == Some(ImageFormat::Jpeg) {
        let (decoder, _) = full_decode_cost(bytes, sizes, limits)?;
        if decoder > limits.max_alloc {
            return Err(ImageError::Corrupt(format!(
                "decoding would take about {decoder} bytes, more than the {} allowed",
                limits.max_alloc
            )));
        }
    }
    render(&decode_full(bytes, limits)?, sizes)
}

/// Decoded pixels, before orientation, ready to be resized: 8 bits per channel, 1 to 4
/// channels as decoded (grey, grey and alpha, RGB, RGBA), any alpha already laid over
/// white (and then opaque), so that no copy of the whole image is ever made.
struct Decoded {
    /// The pixels, row by row, as stored (before the EXIF orientation).
    pixels: Vec<u8>,
    /// Their layout.
    pixel: PixelType,
    /// Width and height of `pixels`.
    size: (u32, u32),
    /// Width and height of the picture within `pixels`, from its top left corner: when
    /// the IDCT scaled the image, the last column and row may be only partly picture.
    content: (f64, f64),
    /// The image's full width and height, as stored.
    full: (u32, u32),
    /// What turns it upright.
    orientation: Orientation,
}

impl Decoded {
    #[cfg(test)]
    fn dimensions(&self) -> (u32, u32) {
        self.size
    }
}

fn corrupt(e: image::ImageError) -> ImageError {
    ImageError::Corrupt(e.to_string())
}

/// Each thumbnail's width and height, as stored (before the EXIF orientation), for an
/// image stored `full` (width, height). Fitting into a square does not depend on which
/// edge is upright, so neither does this: the orientation, which a JPEG may only reveal
/// past its frame header, is needed only once the thumbnails are resized.
fn targets(full: (u32, u32), sizes: &[u32]) -> impl Iterator<Item = (u32, u32)> + '_ {
    sizes.iter().map(move |&size| fit(full.0, full.1, size))
}

/// Bytes per pixel of `pixel` (one of the 8-bit layouts [`Decoded`] holds).
fn channels(pixel: PixelType) -> u64 {
    match pixel {
        PixelType::U8 => 1,
        PixelType::U8x2 => 2,
        PixelType::U8x3 => 3,
        _ => 4,
    }
}

/// The layout an 8-bit image of `color` is resized in, and the bytes per pixel of the
/// 8-bit copy made first when `color` is not 8-bit (0 when it is).
fn layout(color: ColorType) -> (PixelType, u64) {
    match color {
        ColorType::L8 => (PixelType::U8, 0),
        ColorType::La8 => (PixelType::U8x2, 0),
        ColorType::Rgb8 => (PixelType::U8x3, 0),
        ColorType::Rgba8 => (PixelType::U8x4, 0),
        ColorType::L16 => (PixelType::U8, 1),
        ColorType::La16 => (PixelType::U8x2, 2),
        other if other.has_alpha() => (PixelType::U8x4, 4),
        _ => (PixelType::U8x3, 3),
    }
}

/// The whole image, decoded by the `image` crate into its own layout (16-bit and float
/// images are brought to 8 bits).
fn decode_full(bytes: &[u8], limits: ImageLimits) -> Result<Decoded, ImageError> {
    let mut reader = reader(bytes)?;
    reader.limits(limits.decoder_limits());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let size = (image.width(), image.height());
    let (pixel, _) = layout(image.color());
    let mut pixels = match (image, pixel) {
        (DynamicImage::ImageLuma8(i), _) => i.into_raw(),
        (DynamicImage::ImageLumaA8(i), _) => i.into_raw(),
        (DynamicImage::ImageRgb8(i), _) => i.into_raw(),
        (DynamicImage::ImageRgba8(i), _) => i.into_raw(),
        (other, PixelType::U8) => other.into_luma8().into_raw(),
        (other, PixelType::U8x2) => other.into_luma_alpha8().into_raw(),
        (other, PixelType::U8x4) => other.into_rgba8().into_raw(),
        (other, _) => other.into_rgb8().into_raw(),
    };
    over_white(&mut pixels, pixel);
    Ok(Decoded {
        pixels,
        pixel,
        size,
        content: (f64::from(size.0), f64::from(size.1)),
        full: size,
        orientation,
    })
}

/// Lays the pixels of an alpha layout over white, in place (they are opaque afterwards).
fn over_white(pixels: &mut [u8], pixel: PixelType) {
    let width = match pixel {
        PixelType::U8x2 => 2,
        PixelType::U8x4 => 4,
        _ => return,
    };
    for pixel in pixels.chunks_exact_mut(width) {
        let (colour, alpha) = pixel.split_at_mut(width - 1);
        let a = u32::from(alpha[0]);
        for channel in colour {
            // c·α + 255·(1 − α), α in 255ths, rounded.
            let mixed = (u32::from(*channel) * a + 255 * (255 - a) + 127) / 255;
            *channel = u8::try_from(mixed).unwrap_or(u8::MAX);
        }
        alpha[0] = u8::MAX;
    }
}

/// The orientation in a JPEG's EXIF data (from its TIFF header on).
fn exif_orientation(exif: Option<&[u8]>) -> Orientation {
    exif.and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// How `jpeg-decoder` will decode a JPEG for thumbnails of `sizes`.
struct JpegScale {
    /// The IDCT scale, in eighths.
    eighths: u32,
    /// Width and height decoded.
    output: (u32, u32),
    /// Width and height of the image.
    full: (u32, u32),
    /// Grey or RGB.
    pixel: PixelType,
    /// Bytes the decoder needs at its peak.
    needed: u64,
}

/// The smallest IDCT scale (1/8, 1/4, 1/2 or 1) that still covers the largest thumbnail,
/// and what decoding at it takes, or `None` when the JPEG is one for [`decode_full`]:
/// CMYK, lossless, or using a feature `jpeg-decoder` lacks.
fn jpeg_scale(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Option<JpegScale>, ImageError> {
    let corrupt = |e: jpeg_decoder::Error| ImageError::Corrupt(e.to_string());
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    match decoder.read_info() {
        Ok(()) => {}
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(corrupt(e)),
    }
    let info = decoder
        .info()
        .ok_or_else(|| ImageError::Corrupt("no JPEG frame header".to_owned()))?;
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8)
        || info.coding_process == CodingProcess::Lossless
    {
        return Ok(None);
    }
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if width > limits.max_width || height > limits.max_height {
        return Err(ImageError::TooLarge { width, height });
    }
    let (need_width, need_height) =
        targets((width, height), sizes).fold((1, 1), |(w, h), (tw, th)| (w.max(tw), h.max(th)));
    // Output is ⌈size·eighths/8⌉, the picture itself size·eighths/8: that must cover the need.
    let mut eighths = [1, 2, 4, 8]
        .into_iter()
        .find(|&e| width * e >= 8 * need_width && height * e >= 8 * need_height)
        .unwrap_or(8);
    let mut output = (width, height);
    if eighths < 8 {
        output = (
            (width * eighths).div_ceil(8),
            (height * eighths).div_ceil(8),
        );
        let edge = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        // jpeg-decoder picks the smallest scale reaching the request in *either* axis: for
        // images under 8 pixels on a side that may not be ours, so decode at full size then.
        if decoder
            .scale(edge(output.0), edge(output.1))
            .map_err(corrupt)?
            != (edge(output.0), edge(output.1))
        {
            eighths = 8;
            output = (width, height);
        }
    }
    let (pixel, channels) = if info.pixel_format == PixelFormat::RGB24 {
        (PixelType::U8x3, 3)
    } else {
        (PixelType::U8, 1)
    };
    // Planes, decoder output and a copy; a progressive JPEG also keeps every DCT
    // coefficient (2 bytes per sample, at full size whatever the scale).
    let pixels = u64::from(output.0) * u64::from(output.1);
    let mut needed = pixels * (2 * channels + 3);
    if info.coding_process == CodingProcess::DctProgressive {
        needed += (u64::from(width) + 31) * (u64::from(height) + 31) * channels * 2;
    }
    Ok(Some(JpegScale {
        eighths,
        output,
        full: (width, height),
        pixel,
        needed,
    }))
}

/// The JPEG decoded by `jpeg-decoder` at the scale [`jpeg_scale`] picks, or `None` when it
/// is one for [`decode_full`].
fn decode_jpeg_scaled(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Option<Decoded>, ImageError> {
    let Some(scale) = jpeg_scale(bytes, sizes, limits)? else {
        return Ok(None);
    };
    if scale.needed > limits.max_alloc {
        return Err(ImageError::Corrupt(format!(
            "decoding would take about {} bytes, more than the {} allowed",
            scale.needed, limits.max_alloc
        )));
    }
    let corrupt = |e: jpeg_decoder::Error| ImageError::Corrupt(e.to_string());
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    decoder.read_info().map_err(corrupt)?;
    let edge = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    let (width, height) = if scale.eighths < 8 {
        (edge(scale.output.0), edge(scale.output.1))
    } else {
        (u16::MAX, u16::MAX)
    };
    decoder.scale(width, height).map_err(corrupt)?;
    let pixels = match decoder.decode() {
        Ok(samples) => samples,
        Err(jpeg_decoder::Error::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(corrupt(e)),
    };
    let expected = u64::from(scale.output.0) * u64::from(scale.output.1) * channels(scale.pixel);
    if pixels.len() as u64 != expected {
        return Err(ImageError::Corrupt(
            "JPEG decoded to an unexpected size".to_owned(),
        ));
    }
    let content = |edge: u32| f64::from(edge * scale.eighths) / 8.0;
    Ok(Some(Decoded {
        pixels,
        pixel: scale.pixel,
        size: scale.output,
        content: (content(scale.full.0), content(scale.full.1)),
        full: scale.full,
        // All of the EXIF data by now, also what comes past the frame header: the scale
        // did not depend on it (see `targets`).
        orientation: exif_orientation(decoder.exif_data()),
    }))
}

/// Resizes, turns upright and encodes one thumbnail per size.
fn render(decoded: &Decoded, sizes: &[u32]) -> Result<Vec<Thumbnail>, ImageError> {
    let resize_error = |e: fast_image_resize::ResizeError| ImageError::Corrupt(e.to_string());
    let (width, height) = decoded.size;
    let source = ImageRef::new(width, height, &decoded.pixels, decoded.pixel)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut resizer = Resizer::new();
    // Alpha is already laid over white: no premultiplied copy of the source is needed.
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .use_alpha(false)
        .crop(0.0, 0.0, decoded.content.0, decoded.content.1);
    targets(decoded.full, sizes)
        .zip(sizes)
        .map(|((w, h), &size)| {
            let mut target = Image::new(w, h, decoded.pixel);
            resizer
                .resize(&source, &mut target, &options)
                .map_err(resize_error)?;
            let stored = to_rgb(w, h, target.into_vec(), decoded.pixel)?;
            let mut thumbnail = DynamicImage::ImageRgb8(stored);
            thumbnail.apply_orientation(decoded.orientation);
            let (width, height) = (thumbnail.width(), thumbnail.height());
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut jpeg, 82)
                .write_image(thumbnail.as_bytes(), width, height, ExtendedColorType::Rgb8)
                .map_err(corrupt)?;
            Ok(Thumbnail {
                size,
                width,
                height,
                jpeg,
            })
        })
        .collect()
}

/// A resized image of one of [`Decoded`]'s layouts as RGB (any alpha is opaque by now).
fn to_rgb(
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    pixel: PixelType,
) -> Result<RgbImage, ImageError> {
    let rgb = match pixel {
        PixelType::U8x3 => pixels,
        PixelType::U8 => pixels.iter().flat_map(|&l| [l; 3]).collect(),
        PixelType::U8x2 => pixels.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        _ => pixels
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    };
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| ImageError::Corrupt("resized to the wrong size".to_owned()))
}

/// Memory the resizing and encoding of [`render`] takes for a `size` image of `pixel`
/// layout: the convolution's intermediate image (the source's width × the tallest
/// thumbnail's height, vertical pass first), and per thumbnail its pixels, RGB copy,
/// upright copy and JPEG, plus the filter coefficients.
fn render_cost(size: (u32, u32), full: (u32, u32), sizes: &[u32], pixel: PixelType) -> u64 {
    let bytes = channels(pixel);
    let (mut tallest, mut thumbs) = (0u64, 0u64);
    for (w, h) in targets(full, sizes) {
        tallest = tallest.max(u64::from(h));
        thumbs += u64::from(w) * u64::from(h) * (bytes + 9);
    }
    let coefficients = (u64::from(size.0) + u64::from(size.1)) * 64;
    u64::from(size.0) * tallest * bytes + thumbs + coefficients + RENDER_SLACK
}

/// Fixed allowance of [`decode_estimate`] for what no formula there counts (decoder
/// state, tables, small buffers).
const RENDER_SLACK: u64 = 2 * 1024 * 1024;

/// Memory that making thumbnails of `sizes` from `bytes` takes at its peak, in bytes,
/// judged from the header alone (nothing is decoded): the encoded bytes, the buffer the
/// decoder fills (width × height × bytes per pixel of what it outputs: a 1-bit PNG comes
/// out as 8-bit grey, so one byte per pixel), the decoder's own buffers, an 8-bit copy of
/// 16-bit images, and the resizing (`render_cost`). JPEGs are counted at the IDCT scale
/// they will be decoded at; one that `jpeg-decoder` turns out not to support only while
/// decoding (a feature met past the frame header) is then decoded whole, which
/// [`thumbnails_within`] reserves apart, at its [`full_decode_estimate`].
pub fn decode_estimate(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<u64, ImageError> {
    dimensions(bytes, limits)?;
    match scaled_decode_estimate(bytes, sizes, limits)? {
        Some(needed) => Ok(needed),
        None => full_decode_estimate(bytes, sizes, limits),
    }
}

/// The [`decode_estimate`] of a JPEG decoded at reduced scale, or `None` for an image
/// decoded whole.
fn scaled_decode_estimate(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Option<u64>, ImageError> {
    if reader(bytes)?.format() != Some(ImageFormat::Jpeg) {
        return Ok(None);
    }
    let scale = catch_unwind(AssertUnwindSafe(|| jpeg_scale(bytes, sizes, limits)))
        .unwrap_or_else(|_| Err(ImageError::Corrupt("the JPEG decoder failed".to_owned())))?;
    Ok(scale.map(|scale| {
        let render = render_cost(scale.output, scale.full, sizes, scale.pixel);
        bytes.len() as u64 + scale.needed + render
    }))
}

/// Memory that making thumbnails of `sizes` from `bytes` takes when the image is decoded
/// whole by the `image` crate (a JPEG included, whatever scale it could be decoded at), as
/// [`decode_estimate`] counts it.
pub fn full_decode_estimate(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<u64, ImageError> {
    let (decoder, render) = full_decode_cost(bytes, sizes, limits)?;
    Ok(bytes.len() as u64 + decoder + render)
}

/// What decoding `bytes` whole takes: the decoder's buffers (its output included) and the
/// 8-bit copy, then the resizing.
fn full_decode_cost(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<(u64, u64), ImageError> {
    let Dimensions { width, height } = dimensions(bytes, limits)?;
    let mut reader = reader(bytes)?;
    let format = reader.format();
    reader.limits(limits.decoder_limits());
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let color = decoder.color_type();
    let pixels = u64::from(width) * u64::from(height);
    let decoded = pixels * u64::from(color.bytes_per_pixel());
    let (pixel, copy) = layout(color);
    let internal = match format {
        // A frame not covering the screen is decoded apart first (RGBA).
        Some(ImageFormat::Gif) => pixels * 4,
        // VP8's planes or VP8L's 32-bit pixels, and the alpha plane.
        Some(ImageFormat::WebP) => pixels * 6,
        // JPEGs decoded whole (CMYK, lossless, …): the decoder's planes and coefficients.
        Some(ImageFormat::Jpeg) => pixels * 12,
        // PNG: a couple of rows.
        _ => u64::from(width) * 8 * 4,
    };
    let render = render_cost((width, height), (width, height), sizes, pixel);
    Ok((decoded + pixels * copy + internal, render))
}

/// Memory shared by every decode of a process: a decode waits until its
/// [`decode_estimate`] fits beside the others', and one that could never fit is refused
/// ([`ImageError::OverBudget`]). Counted in KiB; clones share the budget.
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    permits: Arc<Semaphore>,
    kib: u32,
}

/// Memory reserved in a [`DecodeBudget`], given back when dropped.
#[derive(Debug)]
pub struct DecodeReservation {
    _permits: OwnedSemaphorePermit,
}

impl DecodeBudget {
    /// A budget of `bytes` (at least 1 KiB, at most 4 TiB).
    pub fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.kib) * 1024
    }

    /// Waits until `bytes` are free and reserves them; refuses what exceeds the whole
    /// budget.
    pub async fn reserve(&self, bytes: u64) -> Result<DecodeReservation, ImageError> {
        let over = || ImageError::OverBudget {
            needed: bytes,
            budget: self.bytes(),
        };
        let kib = u32::try_from(bytes.div_ceil(1024))
            .map_err(|_| over())?
            .max(1);
        if kib > self.kib {
            return Err(over());
        }
        let permits = self
            .permits
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| over())?;
        Ok(DecodeReservation { _permits: permits })
    }
}

/// The image's stored dimensions and its [`thumbnails`], made on the blocking pool once
/// its [`decode_estimate`] is reserved in `budget` (held until the decode is over, even if
/// the caller stops waiting). A JPEG that cannot be decoded at the scale reserved for is
/// decoded whole only under a reservation of its [`full_decode_estimate`], refused like any
/// other when that exceeds the whole budget: no decode outgrows what it reserved.
pub async fn thumbnails_within(
    budget: &DecodeBudget,
    bytes: Bytes,
    sizes: Vec<u32>,
    limits: ImageLimits,
) -> Result<(Dimensions, Vec<Thumbnail>), ImageError> {
    let stored = dimensions(&bytes, limits)?;
    let sizes: Arc<[u32]> = sizes.into();
    if let Some(needed) = scaled_decode_estimate(&bytes, &sizes, limits)? {
        let reservation = budget.reserve(needed).await?;
        let made = on_blocking_pool(
            reservation,
            bytes.clone(),
            sizes.clone(),
            limits,
            scaled_thumbnails,
        )
        .await?;
        if let Some(thumbs) = made {
            return Ok((stored, thumbs));
        }
        // The scaled reservation is given back before the whole one is waited for: a
        // decode holding part of the budget while waiting for more could wait forever on
        // another doing the same.
    }
    let needed = full_decode_estimate(&bytes, &sizes, limits)?;
    let reservation = budget.reserve(needed).await?;
    let thumbs = on_blocking_pool(reservation, bytes, sizes, limits, full_thumbnails).await?;
    Ok((stored, thumbs))
}

/// A decode of [`thumbnails_within`]: bytes, sizes and limits in, its result out.
type DecodeJob<T> = fn(&[u8], &[u32], ImageLimits) -> Result<T, ImageError>;

/// Runs `job` on the blocking pool, holding `reservation` until it is over.
async fn on_blocking_pool<T: Send + 'static>(
    reservation: DecodeReservation,
    bytes: Bytes,
    sizes: Arc<[u32]>,
    limits: ImageLimits,
    job: DecodeJob<T>,
) -> Result<T, ImageError> {
    // The decode keeps the caller's span (the job's), so whatever it logs names the file.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let _reservation = reservation;
        tracing::debug!(bytes = bytes.len(), "decoding an image");
        job(&bytes, &sizes, limits)
    })
    .await
    .unwrap_or_else(|_| Err(ImageError::Corrupt("the decoder failed".to_owned())))
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Rgba, RgbaImage};

    use super::*;

    fn encoded(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// A real 1×1 PNG whose header then claims `width`×`height` (with a valid CRC).
    fn pixel_bomb(width: u32, height: u32) -> Vec<u8> {
        let mut png = encoded(1, 1, ImageFormat::Png);
        // Signature (8), IHDR length (4), "IHDR" (4), width, height, … CRC after 13 bytes.
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// An APP1 EXIF segment (marker and all) carrying only `orientation`.
    fn exif_segment(orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&u16::try_from(tiff.len() + 8).unwrap().to_be_bytes());
        segment.extend_from_slice(b"Exif\0\0");
        segment.extend_from_slice(&tiff);
        segment
    }

    /// `jpeg` with `segment` (marker and all) inserted right after its frame header.
    fn after_frame_header(jpeg: &[u8], segment: &[u8]) -> Vec<u8> {
        let mut at = 2;
        loop {
            assert_eq!(jpeg[at], 0xFF, "a marker at {at}");
            let marker = jpeg[at + 1];
            let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
            at += 2 + length;
            if marker == 0xC0 || marker == 0xC2 {
                break;
            }
        }
        [&jpeg[..at], segment, &jpeg[at..]].concat()
    }

    /// `jpeg` with an APP1 EXIF segment carrying `orientation` and a GPS pointer.
    fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&2u16.to_be_bytes());
        // Orientation (0x0112), SHORT, 1 value.
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        // GPSInfo IFD pointer (0x8825), LONG: present only to be stripped.
        tiff.extend_from_slice(&[0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0]);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn decoded_size(jpeg: &[u8]) -> (u32, u32) {
        image::load_from_memory(jpeg)
            .unwrap()
            .to_rgb8()
            .dimensions()
    }

    #[test]
    fn a_pixel_bomb_is_refused_from_its_header() {
        let bomb = pixel_bomb(100_000, 100_000);
        assert!(bomb.len() < 100);
        assert_eq!(
            dimensions(&bomb, ImageLimits::default()),
            Err(ImageError::TooLarge {
                width: 100_000,
                height: 100_000
            })
        );
        assert!(matches!(
            thumbnails(&bomb, &[128], ImageLimits::default()),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn corrupt_truncated_and_empty_images_are_errors_not_panics() {
        let png = encoded(64, 64, ImageFormat::Png);
        let jpeg = encoded(64, 64, ImageFormat::Jpeg);
        for bytes in [
            &png[..png.len() / 2],
            &jpeg[..jpeg.len() / 3],
            &b""[..],
            &b"\x89PNG\r\n\x1a\nnot really"[..],
            &b"\xFF\xD8\xFF\xE0garbage"[..],
        ] {
            assert!(
                matches!(
                    thumbnails(bytes, &[32], ImageLimits::default()),
                    Err(ImageError::Corrupt(_))
                ),
                "{} bytes",
                bytes.len()
            );
        }
    }

    #[test]
    fn thumbnails_fit_the_size_and_never_enlarge() {
        let png = encoded(300, 200, ImageFormat::Png);
        let made = thumbnails(&png, &[128, 512], ImageLimits::default()).unwrap();
        assert_eq!((made[0].width, made[0].height), (128, 85));
        assert_eq!(decoded_size(&made[0].jpeg), (128, 85));
        assert_eq!((made[1].width, made[1].height), (300, 200));
        assert_eq!(decoded_size(&made[1].jpeg), (300, 200));
    }

    #[test]
    fn exif_orientation_is_applied_and_metadata_dropped() {
        let jpeg = with_exif(&encoded(300, 200, ImageFormat::Jpeg), 6);
        assert!(jpeg.windows(4).any(|w| w == b"Exif"));
        let made = thumbnails(&jpeg, &[128], ImageLimits::default()).unwrap();
        // Orientation 6 turns the picture a quarter: it is taller than wide now.
        assert_eq!((made[0].width, made[0].height), (85, 128));
        assert_eq!(decoded_size(&made[0].jpeg), (85, 128));
        assert!(!made[0].jpeg.windows(4).any(|w| w == b"Exif"));
    }

    /// A JPEG whose top-left quarter is red and the rest blue.
    fn quartered_jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            if x < width / 2 && y < height / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut bytes = Cursor::new(Vec::new());
        image
            .write_to(&mut bytes, ImageFormat::Jpeg)
            .expect("encodes");
        bytes.into_inner()
    }

    fn decoded(jpeg: &[u8]) -> RgbImage {
        image::load_from_memory(jpeg).unwrap().to_rgb8()
    }

    fn is_red(pixel: image::Rgb<u8>) -> bool {
        pixel[0] > 200 && pixel[1] < 60 && pixel[2] < 60
    }

    #[test]
    fn large_jpegs_are_decoded_at_the_smallest_sufficient_scale() {
        let jpeg = quartered_jpeg(2000, 1500);
        let limits = ImageLimits::default();
        for (sizes, stored) in [
            (&[128][..], (250, 188)),
            (&[128, 400][..], (500, 375)),
            (&[1000][..], (1000, 750)),
            (&[1001][..], (2000, 1500)),
        ] {
            let scaled = decode_jpeg_scaled(&jpeg, sizes, limits).unwrap().unwrap();
            assert_eq!(scaled.dimensions(), stored, "{sizes:?}");
            assert_eq!(scaled.full, (2000, 1500));
        }
        let made = thumbnails(&jpeg, &[128, 400, 1000], limits).unwrap();
        let sizes: Vec<_> = made.iter().map(|t| (t.width, t.height)).collect();
        assert_eq!(sizes, [(128, 96), (400, 300), (1000, 750)]);
        for thumbnail in &made {
            let image = decoded(&thumbnail.jpeg);
            assert_eq!(image.dimensions(), (thumbnail.width, thumbnail.height));
            let (w, h) = image.dimensions();
            assert!(is_red(*image.get_pixel(w / 4, h / 4)));
            assert!(!is_red(*image.get_pixel(3 * w / 4, 3 * h / 4)));
        }
    }

    #[test]
    fn jpegs_too_narrow_for_the_decoders_scale_choice_are_decoded_whole() {
        // 1×128 is needed: 1/4 would do, but jpeg-decoder reaches a 1-pixel width at 1/8.
        let jpeg = encoded(4, 1000, ImageFormat::Jpeg);
        let scaled = decode_jpeg_scaled(&jpeg, &[128], ImageLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(scaled.dimensions(), (4, 1000));
        let made = thumbnails(&jpeg, &[128], ImageLimits::default()).unwrap();
        assert_eq!((made[0].width, made[0].height), (1, 128));
        assert_eq!(decoded_size(&made[0].jpeg), (1, 128));
    }

    #[test]
    fn scaled_jpegs_still_follow_the_exif_orientation() {
        let jpeg = with_exif(&quartered_jpeg(2000, 1500), 6);
        let scaled = decode_jpeg_scaled(&jpeg, &[128], ImageLimits::default())
            .unwrap()
            .unwrap();
        // Turned a quarter, 96×128 is needed of a 1500×2000 picture: 1/8 does.
        assert_eq!(scaled.dimensions(), (250, 188));
        let made = thumbnails(&jpeg, &[128], ImageLimits::default()).unwrap();
        assert_eq!((made[0].width, made[0].height), (96, 128));
        assert!(!made[0].jpeg.windows(4).any(|w| w == b"Exif"));
        let image = decoded(&made[0].jpeg);
        assert_eq!(image.dimensions(), (96, 128));
        // A quarter turn clockwise takes the top-left corner to the top right.
        assert!(is_red(*image.get_pixel(72, 32)));
        assert!(!is_red(*image.get_pixel(24, 32)));
    }

    #[tokio::test]
    async fn exif_past_the_frame_header_still_decodes_scaled() {
        // jpeg-decoder's header pass stops at the frame header: this orientation is seen
        // only while decoding, once the scale is picked. The scale holds either way round.
        let jpeg = after_frame_header(&quartered_jpeg(2000, 1500), &exif_segment(6));
        let limits = ImageLimits::default();
        let scaled = decode_jpeg_scaled(&jpeg, &[128], limits).unwrap().unwrap();
        assert_eq!(scaled.dimensions(), (250, 188));
        assert_eq!(scaled.orientation, Orientation::Rotate90);
        let estimate = decode_estimate(&jpeg, &[128], limits).unwrap();
        assert!(estimate < 4 << 20, "{estimate}");
        // Within a budget that a whole decode (~45 MB) would not fit in.
        let budget = DecodeBudget::new(8 << 20);
        let (stored, made) = thumbnails_within(&budget, jpeg.into(), vec![128], limits)
            .await
            .unwrap();
        assert_eq!((stored.width, stored.height), (2000, 1500));
        assert_eq!((made[0].width, made[0].height), (96, 128));
        let image = decoded(&made[0].jpeg);
        assert!(is_red(*image.get_pixel(72, 32)));
        assert!(!is_red(*image.get_pixel(24, 32)));
    }

    #[tokio::test]
    async fn a_jpeg_the_scaled_decoder_gives_up_on_reserves_its_whole_decode() {
        // A DHP (hierarchical) segment past the frame header: jpeg-decoder reports it
        // unsupported only while decoding, the image crate skips it and decodes whole.
        let jpeg = after_frame_header(&quartered_jpeg(2000, 1500), &[0xFF, 0xDE, 0, 2]);
        let limits = ImageLimits::default();
        assert!(decode_jpeg_scaled(&jpeg, &[128], limits).unwrap().is_none());
        let scaled = decode_estimate(&jpeg, &[128], limits).unwrap();
        let whole = full_decode_estimate(&jpeg, &[128], limits).unwrap();
        assert!(scaled < 4 << 20, "{scaled}");
        assert!(whole > 2000 * 1500 * 15, "{whole}");
        // Room for the scaled decode only: refused, not decoded whole under 4 MiB.
        let budget = DecodeBudget::new(16 << 20);
        let refused = thumbnails_within(&budget, jpeg.clone().into(), vec![128], limits)
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            ImageError::OverBudget {
                needed: whole,
                budget: 16 << 20
            }
        );
        assert!(
            refused.to_string().contains("too large to decode"),
            "{refused}"
        );
        // Nothing is left reserved.
        assert!(budget.reserve(16 << 20).await.is_ok());
        // With room for it, the whole decode goes ahead.
        let roomy = DecodeBudget::new(128 << 20);
        let (_, made) = thumbnails_within(&roomy, jpeg.clone().into(), vec![128], limits)
            .await
            .unwrap();
        assert_eq!((made[0].width, made[0].height), (128, 96));
        let image = decoded(&made[0].jpeg);
        assert!(is_red(*image.get_pixel(32, 24)));
        assert!(!is_red(*image.get_pixel(96, 72)));
        // Decoded at once, the whole decode still keeps to max_alloc.
        let tight = ImageLimits {
            max_alloc: whole / 2,
            ..limits
        };
        assert!(matches!(
            thumbnails(&jpeg, &[128], tight),
            Err(ImageError::Corrupt(_))
        ));
    }

    #[test]
    fn grayscale_jpegs_are_scaled_too() {
        let gray = GrayImage::from_fn(1200, 800, |x, _| {
            image::Luma([if x < 600 { 30 } else { 220 }])
        });
        let mut bytes = Cursor::new(Vec::new());
        gray.write_to(&mut bytes, ImageFormat::Jpeg).unwrap();
        let jpeg = bytes.into_inner();
        let scaled = decode_jpeg_scaled(&jpeg, &[100], ImageLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(scaled.dimensions(), (150, 100));
        let made = thumbnails(&jpeg, &[100], ImageLimits::default()).unwrap();
        assert_eq!((made[0].width, made[0].height), (100, 66));
        let image = decoded(&made[0].jpeg);
        let [r, g, b] = image.get_pixel(10, 30).0;
        assert!(r < 50 && g < 50 && b < 50, "{r} {g} {b}");
        let [r, g, b] = image.get_pixel(90, 30).0;
        assert!(r > 200 && g > 200 && b > 200, "{r} {g} {b}");
    }

    #[test]
    fn truncated_and_over_budget_large_jpegs_are_corrupt() {
        let jpeg = quartered_jpeg(2000, 1500);
        for cut in [jpeg.len() / 2, jpeg.len() - 10, 400] {
            assert!(
                matches!(
                    thumbnails(&jpeg[..cut], &[128], ImageLimits::default()),
                    Err(ImageError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        // 1/8 scale needs ~560 kB: refused under 100 kB before decoding.
        let tight = ImageLimits {
            max_alloc: 100_000,
            ..ImageLimits::default()
        };
        assert!(matches!(
            thumbnails(&jpeg, &[128], tight),
            Err(ImageError::Corrupt(_))
        ));
    }

    #[test]
    fn transparency_is_laid_over_white() {
        // Left half fully transparent (black underneath), right half opaque red.
        let rgba = RgbaImage::from_fn(64, 32, |x, _| {
            if x < 32 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([255, 0, 0, 255])
            }
        });
        let mut bytes = Cursor::new(Vec::new());
        rgba.write_to(&mut bytes, ImageFormat::Png).unwrap();
        let made = thumbnails(&bytes.into_inner(), &[32], ImageLimits::default()).unwrap();
        let image = decoded(&made[0].jpeg);
        assert_eq!(image.dimensions(), (32, 16));
        let [r, g, b] = image.get_pixel(4, 8).0;
        assert!(r > 240 && g > 240 && b > 240, "{r} {g} {b}");
        assert!(is_red(*image.get_pixel(28, 8)));
        // Half-transparent black is mid grey.
        let mut half = [0, 0, 0, 128, 10, 20, 30, 255];
        over_white(&mut half, PixelType::U8x4);
        assert_eq!(half, [127, 127, 127, 255, 10, 20, 30, 255]);
        let mut grey = [0, 0, 200, 255];
        over_white(&mut grey, PixelType::U8x2);
        assert_eq!(grey, [255, 255, 200, 255]);
    }

    /// A `width`×`height` 1-bit grey PNG, all black: tiny encoded, huge decoded.
    fn one_bit_png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::One);
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header().unwrap();
        let row = vec![0u8; width.div_ceil(8) as usize];
        let mut stream = writer.stream_writer().unwrap();
        for _ in 0..height {
            std::io::Write::write_all(&mut stream, &row).unwrap();
        }
        stream.finish().unwrap();
        writer.finish().unwrap();
        bytes
    }

    #[test]
    fn estimates_count_the_decoded_buffer_not_the_file() {
        const MIB: u64 = 1 << 20;
        let sizes = [128, 512];
        // 16384² at 1 bit: ~65 KiB of file, decoded as 8-bit grey (256 MiB), resized
        // through a 16384×512 intermediate (8 MiB).
        let bomb = one_bit_png(16_384, 16_384);
        assert!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
        let estimate = decode_estimate(&bomb, &sizes, ImageLimits::default()).unwrap();
        assert!(estimate >= 264 * MIB, "{estimate}");
        assert!(estimate <= 272 * MIB, "{estimate}");
        // RGBA counts four bytes a pixel, RGB three.
        let rgba = {
            let mut bytes = Cursor::new(Vec::new());
            RgbaImage::new(1000, 1000)
                .write_to(&mut bytes, ImageFormat::Png)
                .unwrap();
            bytes.into_inner()
        };
        let rgb = encoded(1000, 1000, ImageFormat::Png);
        let (rgba, rgb) = (
            decode_estimate(&rgba, &sizes, ImageLimits::default()).unwrap(),
            decode_estimate(&rgb, &sizes, ImageLimits::default()).unwrap(),
        );
        assert!(rgba > rgb + 900_000, "{rgba} vs {rgb}");
        assert!(rgb >= 3_000_000, "{rgb}");
        // A JPEG is counted at the scale it is decoded at: 1/8 of 2000×1500 for 128 px.
        let jpeg = quartered_jpeg(2000, 1500);
        let small = decode_estimate(&jpeg, &[128], ImageLimits::default()).unwrap();
        let large = decode_estimate(&jpeg, &[1001], ImageLimits::default()).unwrap();
        assert!(small < 4 * MIB, "{small}");
        assert!(large > 2000 * 1500 * 3, "{large}");
        // Headers declaring too much are refused before any estimate.
        assert!(matches!(
            decode_estimate(&pixel_bomb(100_000, 10), &sizes, ImageLimits::default()),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_one_bit_png_is_resized_as_grey() {
        let png = one_bit_png(300, 200);
        let made = thumbnails(&png, &[128], ImageLimits::default()).unwrap();
        assert_eq!((made[0].width, made[0].height), (128, 85));
        let image = decoded(&made[0].jpeg);
        let [r, g, b] = image.get_pixel(60, 40).0;
        assert!(r < 20 && g < 20 && b < 20, "{r} {g} {b}");
    }

    #[tokio::test]
    async fn decodes_share_one_budget() {
        use futures_util::FutureExt;
        let budget = DecodeBudget::new(10 * 1024 * 1024);
        assert_eq!(budget.bytes(), 10 * 1024 * 1024);
        // More than the whole budget: refused at once, never waited for.
        assert_eq!(
            budget
                .reserve(11 * 1024 * 1024)
                .now_or_never()
                .unwrap()
                .unwrap_err(),
            ImageError::OverBudget {
                needed: 11 * 1024 * 1024,
                budget: 10 * 1024 * 1024
            }
        );
        let first = budget.reserve(6 * 1024 * 1024).await.unwrap();
        let beside = budget.reserve(4 * 1024 * 1024).now_or_never();
        assert!(matches!(beside, Some(Ok(_))), "what fits beside goes ahead");
        drop(beside);
        // A clone is the same budget: the second waits for the first to end.
        let other = budget.clone();
        let mut second = Box::pin(other.reserve(6 * 1024 * 1024));
        assert!((&mut second).now_or_never().is_none());
        drop(first);
        assert!(second.now_or_never().is_some_and(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn an_image_over_the_whole_budget_is_refused_without_decoding() {
        let png = one_bit_png(4096, 4096);
        let budget = DecodeBudget::new(8 * 1024 * 1024);
        let refused = thumbnails_within(
            &budget,
            png.clone().into(),
            vec![128],
            ImageLimits::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(refused, ImageError::OverBudget { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("decode budget"), "{refused}");
        let roomy = DecodeBudget::new(64 * 1024 * 1024);
        let (stored, thumbs) =
            thumbnails_within(&roomy, png.into(), vec![128], ImageLimits::default())
                .await
                .unwrap();
        assert_eq!((stored.width, stored.height), (4096, 4096));
        assert_eq!((thumbs[0].width, thumbs[0].height), (128, 128));
    }

    #[tokio::test]
    async fn decoding_logs_within_the_callers_span() {
        use tracing_subscriber::fmt::MakeWriter;
        // What the subscriber writes, shared with the test (which outlives it).
        let written: &'static std::sync::Mutex<Vec<u8>> = Box::leak(Box::default());
        // Global: the decode runs on the blocking pool's threads, not on this one.
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(move || written.make_writer())
                .finish(),
        )
        .unwrap();
        let png = encoded(64, 48, ImageFormat::Png);
        let span = tracing::info_span!("job", file_id = "f-7");
        let made = tracing::Instrument::instrument(
            thumbnails_within(
                &DecodeBudget::new(16 << 20),
                png.into(),
                vec![32],
                ImageLimits::default(),
            ),
            span,
        )
        .await
        .unwrap();
        assert_eq!((made.1[0].width, made.1[0].height), (32, 24));
        let log = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("decoding an image"))
            .unwrap_or_else(|| panic!("the decode is logged: {log}"));
        assert!(line.contains("job{file_id=\"f-7\"}"), "{line}");
    }
}
