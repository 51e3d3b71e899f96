//! Images, decoded safely: dimensions come from the header alone and are checked against
//! [`ImageLimits`] before any pixel is decoded (a 50-byte PNG declaring 100000×100000
//! pixels is refused at once, with no allocation), and decoding itself runs under
//! `image::Limits` (width, height and allocation caps). Thumbnails apply the EXIF
//! orientation, are resized with a SIMD resizer (`fast_image_resize`) and encoded afresh as
//! JPEG, so no metadata of the original (GPS included) survives. Everything here is CPU
//! work: call it on the blocking pool.

use std::io::Cursor;

use fast_image_resize::{
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    images::{Image, ImageRef},
};
use image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageReader, Limits,
    codecs::jpeg::JpegEncoder, metadata::Orientation,
};

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
/// after the EXIF orientation), as metadata-free JPEG.
pub fn thumbnails(
    bytes: &[u8],
    sizes: &[u32],
    limits: ImageLimits,
) -> Result<Vec<Thumbnail>, ImageError> {
    dimensions(bytes, limits)?;
    let corrupt = |e: image::ImageError| ImageError::Corrupt(e.to_string());
    let mut reader = reader(bytes)?;
    reader.limits(limits.decoder_limits());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    let rgb = image.into_rgb8();
    let (width, height) = rgb.dimensions();
    let source = ImageRef::new(width, height, rgb.as_raw(), PixelType::U8x3)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    sizes
        .iter()
        .map(|&size| {
            let (w, h) = fit(width, height, size);
            let mut target = Image::new(w, h, PixelType::U8x3);
            resizer
                .resize(&source, &mut target, &options)
                .map_err(|e| ImageError::Corrupt(e.to_string()))?;
            let mut jpeg = Vec::new();
            JpegEncoder::new_with_quality(&mut jpeg, 82)
                .write_image(target.buffer(), w, h, ExtendedColorType::Rgb8)
                .map_err(corrupt)?;
            Ok(Thumbnail {
                size,
                width: w,
                height: h,
                jpeg,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use image::{ImageFormat, RgbImage};

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
}
