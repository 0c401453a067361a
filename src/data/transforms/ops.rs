//! The image operations of timm's RandAugment, re-implemented after the PIL calls timm makes
//! (`ImageOps.*`, `ImageEnhance.*`, `Image.transform`/`rotate`) on HWC `u8` images with 1 (L) or
//! 3 (RGB) channels. Each op is a small pure function; randomness lives in `randaugment.rs`.

use super::geometry::{warp_affine, Interpolation};
use crate::data::RawImage;

/// Apply one 256-entry lookup table per channel (`Image.point`); a single table serves all.
fn point_per_channel(img: &RawImage, luts: &[[u8; 256]]) -> RawImage {
    let mut out = img.clone();
    let c = img.channels.max(1);
    for px in out.data.chunks_exact_mut(c) {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = luts[ch.min(luts.len() - 1)][*v as usize];
        }
    }
    out
}

/// Apply the same lookup table to every channel.
fn point(img: &RawImage, lut: &[u8; 256]) -> RawImage {
    let mut out = img.clone();
    for v in out.data.iter_mut() {
        *v = lut[*v as usize];
    }
    out
}

/// Per-channel 256-bin histograms.
fn histograms(img: &RawImage) -> Vec<[u32; 256]> {
    let c = img.channels.max(1);
    let mut h = vec![[0u32; 256]; c];
    for px in img.data.chunks_exact(c) {
        for (ch, &v) in px.iter().enumerate() {
            h[ch][v as usize] += 1;
        }
    }
    h
}

/// `ImageOps.invert`.
pub fn invert(img: &RawImage) -> RawImage {
    point(img, &std::array::from_fn(|i| 255 - i as u8))
}

/// `ImageOps.solarize(img, thresh)`: values ≥ `thresh` are inverted (256 = no-op).
pub fn solarize(img: &RawImage, thresh: u32) -> RawImage {
    point(
        img,
        &std::array::from_fn(|i| {
            if (i as u32) < thresh {
                i as u8
            } else {
                255 - i as u8
            }
        }),
    )
}

/// timm `solarize_add`: values below `thresh` get `add` added (saturating at 255).
pub fn solarize_add(img: &RawImage, add: i32, thresh: u32) -> RawImage {
    point(
        img,
        &std::array::from_fn(|i| {
            if (i as u32) < thresh {
                (i as i32 + add).clamp(0, 255) as u8
            } else {
                i as u8
            }
        }),
    )
}

/// `ImageOps.posterize(img, bits)`: keep the `bits` most significant bits (timm: ≥ 8 is a no-op).
pub fn posterize(img: &RawImage, bits: u32) -> RawImage {
    if bits >= 8 {
        return img.clone();
    }
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    point(img, &std::array::from_fn(|i| i as u8 & mask))
}

/// `ImageOps.autocontrast(img)` (cutoff 0): stretch each channel's [min, max] to [0, 255].
pub fn autocontrast(img: &RawImage) -> RawImage {
    let luts: Vec<[u8; 256]> = histograms(img)
        .iter()
        .map(|h| {
            let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
            let hi = h.iter().rposition(|&n| n > 0).unwrap_or(0);
            if hi <= lo {
                return std::array::from_fn(|i| i as u8);
            }
            let scale = 255.0 / (hi - lo) as f64;
            let offset = -(lo as f64) * scale;
            std::array::from_fn(|i| (i as f64 * scale + offset).clamp(0.0, 255.0) as u8)
        })
        .collect();
    point_per_channel(img, &luts)
}

/// `ImageOps.equalize(img)`: PIL's histogram equalisation per channel.
pub fn equalize(img: &RawImage) -> RawImage {
    let luts: Vec<[u8; 256]> = histograms(img)
        .iter()
        .map(|h| {
            let identity = std::array::from_fn(|i| i as u8);
            let nonzero: Vec<u32> = h.iter().copied().filter(|&n| n > 0).collect();
            if nonzero.len() <= 1 {
                return identity;
            }
            let total: u32 = nonzero.iter().sum();
            let step = (total - nonzero[nonzero.len() - 1]) / 255;
            if step == 0 {
                return identity;
            }
            let mut n = step / 2;
            let mut lut = [0u8; 256];
            for (i, slot) in lut.iter_mut().enumerate() {
                *slot = (n / step).min(255) as u8;
                n += h[i];
            }
            lut
        })
        .collect();
    point_per_channel(img, &luts)
}

/// PIL's RGB→L conversion (ITU-R 601-2 luma, fixed-point as in `Convert.c`).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(degenerate, img, factor)` as `ImageEnhance` uses it: interpolate (factor in
/// [0, 1]) or extrapolate, clip, truncate.
fn blend(degenerate: &RawImage, img: &RawImage, factor: f64) -> RawImage {
    let f = factor as f32;
    let data = degenerate
        .data
        .iter()
        .zip(&img.data)
        .map(|(&d, &v)| (d as f32 + f * (v as f32 - d as f32)).clamp(0.0, 255.0) as u8)
        .collect();
    RawImage {
        data,
        ..img.clone()
    }
}

/// Per-pixel luma broadcast to the image's channels (`img.convert("L").convert(mode)`).
fn grayscale_like(img: &RawImage) -> RawImage {
    if img.channels != 3 {
        return img.clone();
    }
    let mut out = img.clone();
    for px in out.data.chunks_exact_mut(3) {
        let l = luma(px[0], px[1], px[2]);
        px.fill(l);
    }
    out
}

/// `ImageEnhance.Color`: blend with the grayscale version (a no-op on gray images).
pub fn color(img: &RawImage, factor: f64) -> RawImage {
    blend(&grayscale_like(img), img, factor)
}

/// `ImageEnhance.Contrast`: blend with a flat image of the mean luma, `int(mean + 0.5)`.
pub fn contrast(img: &RawImage, factor: f64) -> RawImage {
    let gray = grayscale_like(img);
    let c = img.channels.max(1);
    let n = (gray.data.len() / c).max(1);
    let sum: u64 = gray.data.iter().step_by(c).map(|&v| v as u64).sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    let degenerate = RawImage::filled(img.width, img.height, img.channels, &[mean]);
    blend(&degenerate, img, factor)
}

/// `ImageEnhance.Brightness`: blend with black.
pub fn brightness(img: &RawImage, factor: f64) -> RawImage {
    let black = RawImage::filled(img.width, img.height, img.channels, &[0]);
    blend(&black, img, factor)
}

/// `ImageEnhance.Sharpness`: blend with `ImageFilter.SMOOTH` (3×3 kernel 1 1 1 / 1 5 1 / 1 1 1,
/// ÷13, rounded; border pixels copied unchanged as in PIL's `ImagingFilter3x3`).
pub fn sharpness(img: &RawImage, factor: f64) -> RawImage {
    let (w, h, c) = (img.width, img.height, img.channels);
    let mut smooth = img.clone();
    if w >= 3 && h >= 3 {
        let row = w * c;
        let src = &img.data;
        for y in 1..h - 1 {
            let (above, mid, below) = (
                &src[(y - 1) * row..y * row],
                &src[y * row..(y + 1) * row],
                &src[(y + 1) * row..(y + 2) * row],
            );
            let out = &mut smooth.data[y * row..(y + 1) * row];
            for i in c..row - c {
                let ring = above[i - c] as u32
                    + above[i] as u32
                    + above[i + c] as u32
                    + mid[i - c] as u32
                    + mid[i + c] as u32
                    + below[i - c] as u32
                    + below[i] as u32
                    + below[i + c] as u32;
                let acc = ring + 5 * mid[i] as u32;
                out[i] = (acc as f32 / 13.0 + 0.5).min(255.0) as u8;
            }
        }
    }
    blend(&smooth, img, factor)
}

/// PIL `Image.rotate(degrees, filter, fillcolor=fill)`: counter-clockwise about the centre,
/// same canvas size.
pub fn rotate(img: &RawImage, degrees: f64, fill: &[u8], filter: Interpolation) -> RawImage {
    let angle = degrees.rem_euclid(360.0);
    if angle == 0.0 {
        return img.clone();
    }
    let a = -angle.to_radians();
    let r15 = |v: f64| (v * 1e15).round() / 1e15; // PIL rounds the matrix to 15 decimals
    let (cos, sin) = (r15(a.cos()), r15(a.sin()));
    let (cx, cy) = (img.width as f64 / 2.0, img.height as f64 / 2.0);
    let m2 = cos * -cx + sin * -cy + cx;
    let m5 = -sin * -cx + cos * -cy + cy;
    warp_affine(img, [cos, sin, m2, -sin, cos, m5], fill, filter)
}

/// timm `shear_x`: affine `(1, factor, 0, 0, 1, 0)`.
pub fn shear_x(img: &RawImage, factor: f64, fill: &[u8], filter: Interpolation) -> RawImage {
    warp_affine(img, [1.0, factor, 0.0, 0.0, 1.0, 0.0], fill, filter)
}

/// timm `shear_y`: affine `(1, 0, 0, factor, 1, 0)`.
pub fn shear_y(img: &RawImage, factor: f64, fill: &[u8], filter: Interpolation) -> RawImage {
    warp_affine(img, [1.0, 0.0, 0.0, factor, 1.0, 0.0], fill, filter)
}

/// timm `translate_x_rel`: shift by `pct · width` pixels (positive moves content left).
pub fn translate_x_rel(img: &RawImage, pct: f64, fill: &[u8], filter: Interpolation) -> RawImage {
    let pixels = pct * img.width as f64;
    warp_affine(img, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill, filter)
}

/// timm `translate_y_rel`: shift by `pct · height` pixels (positive moves content up).
pub fn translate_y_rel(img: &RawImage, pct: f64, fill: &[u8], filter: Interpolation) -> RawImage {
    let pixels = pct * img.height as f64;
    warp_affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill, filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(data: Vec<u8>, c: usize) -> RawImage {
        let n = data.len() / c;
        RawImage::new(n, 1, c, data).unwrap()
    }

    #[test]
    fn lut_ops_match_pil() {
        let g = img(vec![0, 50, 127, 128, 200, 255], 1);
        assert_eq!(invert(&g).data, vec![255, 205, 128, 127, 55, 0]);
        assert_eq!(solarize(&g, 128).data, vec![0, 50, 127, 127, 55, 0]);
        assert_eq!(solarize(&g, 256), g);
        assert_eq!(
            solarize_add(&g, 100, 128).data,
            vec![100, 150, 227, 128, 200, 255]
        );
        assert_eq!(posterize(&g, 2).data, vec![0, 0, 64, 128, 192, 192]);
        assert_eq!(posterize(&g, 0).data, vec![0; 6]);
        assert_eq!(posterize(&g, 8), g);
    }

    #[test]
    fn autocontrast_stretches_each_channel() {
        let rgb = img(vec![50, 0, 7, 100, 255, 7], 3);
        // PIL computes int(100·5.1 − 255) = int(254.99999999999997) = 254, and so do we.
        assert_eq!(autocontrast(&rgb).data, vec![0, 0, 7, 254, 255, 7]);
    }

    #[test]
    fn equalize_matches_pil_reference() {
        // h: 10→2, 20→1, 30→1; step = (4 − 1) // 255 = 0 → PIL returns the image unchanged.
        let small = img(vec![10, 10, 20, 30], 1);
        assert_eq!(equalize(&small), small);
        // 255 × 0, 255 × 1, 1 × 2: step = (511 − 1) // 255 = 2, n starts at 1:
        // lut[0] = 1 // 2 = 0, lut[1] = 256 // 2 = 128, lut[2] = 511 // 2 = 255.
        let mut data = vec![0u8; 255];
        data.extend(vec![1u8; 255]);
        data.push(2);
        let e = equalize(&img(data, 1));
        assert_eq!((e.data[0], e.data[300], e.data[510]), (0, 128, 255));
    }

    #[test]
    fn enhance_ops_identity_at_factor_one_and_degenerate_at_zero() {
        let rgb = img((0..30).map(|i| (i * 8) as u8).collect(), 3);
        for op in [color, contrast, brightness, sharpness] {
            assert_eq!(op(&rgb, 1.0), rgb);
        }
        assert!(brightness(&rgb, 0.0).data.iter().all(|&v| v == 0));
        let flat = contrast(&rgb, 0.0);
        assert!(flat.data.iter().all(|&v| v == flat.data[0]));
        let gray = color(&rgb, 0.0);
        assert!(gray.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        assert_eq!(luma(255, 255, 255), 255);
    }

    #[test]
    fn rotate_180_is_a_point_reflection() {
        let data: Vec<u8> = (0..12).collect();
        let im = RawImage::new(4, 3, 1, data.clone()).unwrap();
        let r = rotate(&im, 180.0, &[0], Interpolation::Bilinear);
        let rev: Vec<u8> = data.into_iter().rev().collect();
        assert_eq!(r.data, rev);
        assert_eq!(rotate(&im, 360.0, &[0], Interpolation::Bilinear), im);
    }

    /// Pillow 13.0 with `resample=BICUBIC` (its a = −1 4 × 4 cubic) and fill 128
    /// (`scripts/pil_interpolation_reference.py`).
    #[test]
    fn geometric_ops_bicubic_are_bit_identical_to_pil() {
        use crate::data::transforms::geometry::tests::pil_test_images;
        let (gray, rgb) = pil_test_images();
        let bc = Interpolation::Bicubic;
        let rotate17: [u8; 30] = [
            128, 64, 95, 126, 162, 173, 44, 0, 72, 94, 127, 150, 241, 132, 30, 57, 86, 120, 193,
            255, 42, 15, 42, 87, 175, 202, 217, 162, 0, 128,
        ];
        let shear_x02: [u8; 30] = [
            3, 43, 80, 117, 154, 187, 164, 0, 65, 102, 141, 167, 255, 137, 14, 83, 125, 128, 245,
            67, 11, 64, 107, 128, 194, 252, 38, 47, 89, 128,
        ];
        let translate_x03: [u8; 30] = [
            63, 100, 137, 178, 128, 128, 31, 77, 114, 155, 128, 128, 68, 45, 91, 132, 128, 128, 45,
            22, 68, 109, 128, 128, 255, 59, 36, 86, 128, 128,
        ];
        let rgb_rotate_m23: [u8; 105] = [
            128, 128, 128, 59, 214, 61, 94, 86, 69, 103, 161, 95, 243, 87, 235, 128, 128, 128, 128,
            128, 128, 222, 132, 206, 169, 18, 136, 92, 82, 74, 111, 147, 104, 176, 187, 173, 116,
            165, 99, 69, 104, 61, 72, 205, 132, 30, 55, 245, 86, 123, 69, 201, 69, 193, 159, 192,
            138, 151, 16, 206, 73, 129, 56, 181, 200, 157, 52, 162, 96, 110, 88, 74, 124, 157, 114,
            130, 187, 179, 28, 125, 243, 162, 55, 129, 128, 128, 128, 128, 128, 128, 181, 26, 174,
            107, 166, 100, 213, 192, 175, 62, 200, 47, 128, 128, 128,
        ];
        assert_eq!(rotate(&gray, 17.0, &[128], bc).data, rotate17);
        assert_eq!(shear_x(&gray, 0.2, &[128], bc).data, shear_x02);
        assert_eq!(translate_x_rel(&gray, 0.3, &[128], bc).data, translate_x03);
        assert_eq!(rotate(&rgb, -23.0, &[128; 3], bc).data, rgb_rotate_m23);
        assert_ne!(
            rotate(&gray, 17.0, &[128], Interpolation::Bilinear).data,
            rotate17
        );
    }

    /// Outputs of Pillow 9.4 on a 6×5 "L" image (`Image.frombytes('L', (6, 5), data)`), with
    /// `resample=BILINEAR, fillcolor=128` for the geometric ops.
    #[test]
    fn geometric_and_sharpness_ops_are_bit_identical_to_pil() {
        let data: Vec<u8> = (0..30)
            .map(|i| ((i * 37 + (i / 6) * 11) % 256) as u8)
            .collect();
        let im = RawImage::new(6, 5, 1, data).unwrap();
        let rotate17 = [
            128, 61, 96, 126, 155, 166, 55, 36, 64, 93, 122, 144, 210, 137, 32, 60, 89, 118, 204,
            226, 68, 36, 56, 85, 182, 193, 196, 151, 31, 128,
        ];
        let shear_x02 = [
            3, 40, 77, 114, 151, 185, 167, 25, 62, 99, 136, 162, 228, 137, 46, 83, 120, 128, 212,
            70, 30, 67, 104, 128, 197, 234, 40, 52, 89, 128,
        ];
        let sharp17 = [
            0, 37, 74, 111, 148, 185, 233, 0, 37, 88, 125, 162, 210, 255, 0, 65, 102, 139, 187,
            251, 0, 28, 79, 116, 164, 201, 238, 19, 56, 93,
        ];
        assert_eq!(
            rotate(&im, 17.0, &[128], Interpolation::Bilinear).data,
            rotate17
        );
        assert_eq!(
            shear_x(&im, 0.2, &[128], Interpolation::Bilinear).data,
            shear_x02
        );
        assert_eq!(sharpness(&im, 1.7).data, sharp17);
    }
}
