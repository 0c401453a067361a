//! One image: its pixels in memory ([`RawImage`]) and reading it from a file, within a pixel
//! limit that a small file declaring a huge canvas cannot get around.

use std::fs;
use std::path::Path;

use super::error::{DataError, Result};

/// One decoded image: `height × width × channels` interleaved (HWC) `u8`, as images are stored on
/// disk and as PIL hands them to torchvision/timm transforms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawImage {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl RawImage {
    /// Checked constructor: `data.len()` must equal `width·height·channels`.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * channels {
            return Err(DataError::InvalidImage(format!(
                "{width}x{height}x{channels} image needs {} bytes, got {}",
                width * height * channels,
                data.len()
            )));
        }
        Ok(RawImage {
            width,
            height,
            channels,
            data,
        })
    }

    /// An image of one colour (`fill` is cycled over the channels).
    pub fn filled(width: usize, height: usize, channels: usize, fill: &[u8]) -> Self {
        let px: Vec<u8> = (0..channels)
            .map(|c| fill.get(c % fill.len().max(1)).copied().unwrap_or(0))
            .collect();
        let data = px.repeat(width * height);
        RawImage {
            width,
            height,
            channels,
            data,
        }
    }

    /// Byte offset of pixel (x, y), channel 0.
    #[inline]
    pub fn offset(&self, x: usize, y: usize) -> usize {
        (y * self.width + x) * self.channels
    }
}

/// Default of the largest image decoded, in pixels (8192 × 8192): a small PNG can declare a
/// huge canvas, and decoding it costs width × height × channels bytes per loader worker.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 1 << 26;

/// Environment variable that raises (or lowers) [`DEFAULT_MAX_IMAGE_PIXELS`].
pub const MAX_IMAGE_PIXELS_ENV: &str = "IMIXER_MAX_IMAGE_PIXELS";

/// The decoded-image limit in pixels (`IMIXER_MAX_IMAGE_PIXELS`, else the default).
pub fn max_image_pixels() -> u64 {
    std::env::var(MAX_IMAGE_PIXELS_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_IMAGE_PIXELS)
}

fn open_image(path: &Path) -> Result<image::ImageReader<std::io::BufReader<fs::File>>> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| DataError::io(path, e, "Check that the file exists and is readable"))
}

/// Width and height of an image file from its header alone, checked against the pixel limit.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let (w, h) = open_image(path)?
        .into_dimensions()
        .map_err(|error| DataError::Decode {
            path: path.to_path_buf(),
            error,
        })?;
    within_pixel_limit(path, w, h, max_image_pixels())?;
    if w == 0 || h == 0 {
        return Err(DataError::format(
            path,
            "image has zero width or height",
            "Remove the file from the dataset",
        ));
    }
    Ok((w, h))
}

/// Decode one image file to 8-bit RGB.
///
/// The format is sniffed from the content first (a JPEG saved as `.png` still loads), falling back
/// to the extension. Images over the pixel limit ([`max_image_pixels`]) are refused from their
/// header, before anything is decoded.
pub fn decode_image(path: &Path) -> Result<RawImage> {
    let (w, h) = image_dimensions(path)?;
    let mut reader = open_image(path)?;
    // The header said w × h; the decoder may not allocate much beyond that (16-bit RGBA).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(u64::from(w) * u64::from(h) * 8 + (1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|error| DataError::Decode {
        path: path.to_path_buf(),
        error,
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    RawImage::new(w as usize, h as usize, 3, rgb.into_raw())
}

/// The pixel limit applied to an image of `width × height`; the error says how to raise it.
pub(crate) fn within_pixel_limit(path: &Path, width: u32, height: u32, limit: u64) -> Result<()> {
    if u64::from(width) * u64::from(height) > limit {
        return Err(DataError::format(
            path,
            format!("image is {width}×{height}, more than the limit of {limit} pixels"),
            format!("Shrink it, remove it, or set {MAX_IMAGE_PIXELS_ENV}=N to raise the limit"),
        ));
    }
    Ok(())
}
