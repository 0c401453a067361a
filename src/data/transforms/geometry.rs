//! Pixel primitives on HWC `u8` images: resize, crop, pad, flip, affine warp, and the random
//! crop-parameter samplers of torchvision.
//!
//! Resampling follows PIL (what torchvision/timm use on PIL images): pixel centres sit at
//! `i + 0.5`; resize convolves with the filter of [`Interpolation`] (triangle or a = −0.5 cubic),
//! its support stretched by the downscale factor (antialiasing), in PIL's 8-bit fixed point;
//! affine warps sample bilinearly or with PIL's a = −1 4 × 4 cubic and fill points whose centre
//! maps outside the source. Checked against Pillow: resize (both filters), rotate, shear and
//! translate outputs are bit-identical.

use rand::Rng;

pub use super::interpolation::Interpolation;
use crate::data::RawImage;

/// Python's `round()` (ties to even), used wherever torchvision/timm write `int(round(x))`.
#[inline]
pub fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `random.uniform(lo, hi)` / `torch.empty(1).uniform_(lo, hi)`; never panics, even for `lo == hi`.
#[inline]
pub fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// Fixed-point precision of PIL's 8-bit resampling (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// PIL's resize filters (`Resample.c`): the kernel and its support at scale 1.
impl Interpolation {
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    /// `bilinear_filter` (the triangle) or `bicubic_filter` (Keys' cubic with a = −0.5).
    fn kernel(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => (1.0 - x).max(0.0),
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output index, the first
/// contributing input index and the fixed-point weights. The cubic has negative lobes, so weights
/// round half away from zero, as PIL's do.
fn resize_coeffs(in_size: usize, out_size: usize, filter: Interpolation) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let ss = 1.0 / filter_scale;
    let one = (1u64 << PRECISION_BITS) as f64;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = (center - support + 0.5).max(0.0) as usize;
            let hi = ((center + support + 0.5) as usize).clamp(lo + 1, in_size.max(lo + 1));
            let mut w: Vec<f64> = (lo..hi)
                .map(|x| filter.kernel((x as f64 - center + 0.5) * ss))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum != 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            let fixed = w
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i64
                    } else {
                        (0.5 + v * one) as i64
                    }
                })
                .collect();
            (lo.min(in_size - 1), fixed)
        })
        .collect()
}

/// Round PIL's fixed-point accumulator back to `u8`.
#[inline]
fn fixed_to_u8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass: every row of `src` (`w` pixels) to `coeffs.len()` pixels.
fn resample_rows(src: &[u8], w: usize, c: usize, coeffs: &[(usize, Vec<i64>)]) -> Vec<u8> {
    let out_w = coeffs.len();
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; src.len() / (w * c) * out_w * c];
    for (row, out_row) in src.chunks_exact(w * c).zip(out.chunks_exact_mut(out_w * c)) {
        for ((start, ws), px) in coeffs.iter().zip(out_row.chunks_exact_mut(c)) {
            let taps = &row[start * c..(start + ws.len()) * c];
            for (ch, v) in px.iter_mut().enumerate() {
                let acc = ws
                    .iter()
                    .zip(taps.chunks_exact(c))
                    .fold(half, |a, (wt, t)| a + wt * t[ch] as i64);
                *v = fixed_to_u8(acc);
            }
        }
    }
    out
}

/// Vertical pass: rows of `row_len` bytes, `coeffs.len()` output rows.
fn resample_cols(src: &[u8], row_len: usize, coeffs: &[(usize, Vec<i64>)]) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; coeffs.len() * row_len];
    let mut acc = vec![0i64; row_len];
    for ((start, ws), out_row) in coeffs.iter().zip(out.chunks_exact_mut(row_len)) {
        acc.fill(half);
        for (k, wt) in ws.iter().enumerate() {
            let r = start + k;
            for (a, &v) in acc.iter_mut().zip(&src[r * row_len..(r + 1) * row_len]) {
                *a += wt * v as i64;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = fixed_to_u8(a);
        }
    }
    out
}

/// Resize to `out_w × out_h` with PIL's antialiased `filter` (what torchvision `Resize` /
/// `RandomResizedCrop` do on PIL images): horizontal pass, then vertical, in PIL's fixed point
/// with a `u8` intermediate. Same size is an exact copy. A zero target size yields an empty image.
pub fn resize(img: &RawImage, out_w: usize, out_h: usize, filter: Interpolation) -> RawImage {
    let c = img.channels;
    if img.width == 0 || img.height == 0 || out_w == 0 || out_h == 0 || c == 0 {
        return RawImage::filled(out_w, out_h, c, &[0]);
    }
    let (w, h) = (img.width, img.height);
    let mut data = if out_w != w {
        resample_rows(&img.data, w, c, &resize_coeffs(w, out_w, filter))
    } else {
        img.data.clone()
    };
    if out_h != h {
        data = resample_cols(&data, out_w * c, &resize_coeffs(h, out_h, filter));
    }
    RawImage {
        width: out_w,
        height: out_h,
        channels: c,
        data,
    }
}

/// Crop the `h × w` window whose top-left corner is (`top`, `left`); parts outside the source are
/// zero (torchvision pads with 0 when a crop exceeds the image).
pub fn crop(img: &RawImage, top: isize, left: isize, h: usize, w: usize) -> RawImage {
    let c = img.channels;
    let mut out = vec![0u8; h * w * c];
    for y in 0..h {
        let sy = top + y as isize;
        if sy < 0 || sy >= img.height as isize {
            continue;
        }
        for x in 0..w {
            let sx = left + x as isize;
            if sx < 0 || sx >= img.width as isize {
                continue;
            }
            let src = img.offset(sx as usize, sy as usize);
            out[(y * w + x) * c..(y * w + x + 1) * c].copy_from_slice(&img.data[src..src + c]);
        }
    }
    RawImage {
        width: w,
        height: h,
        channels: c,
        data: out,
    }
}

/// Zero-pad `p` pixels on every side (torchvision `Pad(p, fill=0)`).
pub fn pad(img: &RawImage, p: usize) -> RawImage {
    let p_i = p as isize;
    crop(img, -p_i, -p_i, img.height + 2 * p, img.width + 2 * p)
}

/// Mirror left–right.
pub fn hflip(img: &RawImage) -> RawImage {
    let c = img.channels;
    let mut out = img.clone();
    for y in 0..img.height {
        for x in 0..img.width {
            let dst = out.offset(x, y);
            let src = img.offset(img.width - 1 - x, y);
            out.data[dst..dst + c].copy_from_slice(&img.data[src..src + c]);
        }
    }
    out
}

/// torchvision `CenterCrop` offsets: `int(round((H − h) / 2))`, or the negative padding when the
/// image is smaller than the crop.
pub fn center_offset(size: usize, crop_size: usize) -> isize {
    if size >= crop_size {
        py_round((size - crop_size) as f64 / 2.0) as isize
    } else {
        -(((crop_size - size) / 2) as isize)
    }
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer one
/// `int(size · long / short)`. Returns `(width, height)`.
pub fn shorter_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    if width <= height {
        (
            size,
            (size as f64 * height as f64 / width.max(1) as f64) as usize,
        )
    } else {
        (
            (size as f64 * width as f64 / height.max(1) as f64) as usize,
            size,
        )
    }
}

/// torchvision `RandomResizedCrop.get_params`: returns `(top, left, h, w)`.
///
/// Ten tries of an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`; if
/// none fits, the largest centred crop whose aspect ratio is clamped into `ratio`.
pub fn rrc_params<R: Rng + ?Sized>(
    rng: &mut R,
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = py_round((target_area * aspect).sqrt()) as usize;
        let h = py_round((target_area / aspect).sqrt()) as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (min_r, max_r) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < min_r {
        (width, py_round(width as f64 / min_r) as usize)
    } else if in_ratio > max_r {
        (py_round(height as f64 * max_r) as usize, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.clamp(1, width.max(1)), h.clamp(1, height.max(1)));
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// PIL `Image.transform(size, AFFINE, m, filter, fillcolor=fill)`: output pixel centre
/// `(x + .5, y + .5)` samples the source at `(m0·x + m1·y + m2, m3·x + m4·y + m5)`; points
/// outside the source take `fill`.
pub fn warp_affine(img: &RawImage, m: [f64; 6], fill: &[u8], filter: Interpolation) -> RawImage {
    let (w, h, c) = (img.width, img.height, img.channels);
    let mut out = RawImage::filled(w, h, c, fill);
    if w == 0 || h == 0 {
        return out;
    }
    let (wf, hf) = (w as f64, h as f64);
    for (y, out_row) in out.data.chunks_exact_mut(w * c).enumerate() {
        let yo = y as f64 + 0.5;
        for (x, px) in out_row.chunks_exact_mut(c).enumerate() {
            let xo = x as f64 + 0.5;
            let xi = m[0] * xo + m[1] * yo + m[2];
            let yi = m[3] * xo + m[4] * yo + m[5];
            if !(0.0..wf).contains(&xi) || !(0.0..hf).contains(&yi) {
                continue;
            }
            match filter {
                Interpolation::Bilinear => sample_bilinear(img, xi, yi, px),
                Interpolation::Bicubic => sample_bicubic(img, xi, yi, px),
            }
        }
    }
    out
}

/// PIL `bilinear_filter*` at source point (`xi`, `yi`), which lies inside the image.
fn sample_bilinear(img: &RawImage, xi: f64, yi: f64, px: &mut [u8]) {
    let (w, h, c) = (img.width, img.height, img.channels);
    // xs, ys ≥ −0.5, so truncating xs + 1 is floor(xs) + 1 (cheaper than `floor`)
    let (xs, ys) = (xi - 0.5, yi - 0.5);
    let (fx, fy) = ((xs + 1.0) as isize - 1, (ys + 1.0) as isize - 1);
    let (dx, dy) = (xs - fx as f64, ys - fy as f64);
    // neighbours, clamped to the image like PIL's XCLIP/YCLIP (fx, fy ≥ −1 here)
    let x0 = fx.max(0) as usize;
    let x1 = ((fx + 1) as usize).min(w - 1);
    let y0 = fy.max(0) as usize;
    let y1 = ((fy + 1) as usize).min(h - 1);
    let (r0, r1) = (y0 * w * c, y1 * w * c);
    let src = &img.data;
    for (ch, v) in px.iter_mut().enumerate() {
        let p00 = src[r0 + x0 * c + ch] as f64;
        let p01 = src[r0 + x1 * c + ch] as f64;
        let p10 = src[r1 + x0 * c + ch] as f64;
        let p11 = src[r1 + x1 * c + ch] as f64;
        let top = p00 + (p01 - p00) * dx;
        let bot = p10 + (p11 - p10) * dx;
        *v = (top + (bot - top) * dy).clamp(0.0, 255.0) as u8;
    }
}

/// PIL's `BICUBIC` macro: the a = −1 cubic through `v1..v4` at offset `d` ∈ [0, 1) past `v2`,
/// evaluated in PIL's order of operations.
#[inline]
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    v2 + d * (p2 + d * (p3 + d * p4))
}

/// PIL `bicubic_filter*` at source point (`xi`, `yi`), which lies inside the image: the 4 × 4
/// neighbourhood, clamped to the image (PIL's XCLIP, and its row fallbacks, which amount to
/// clamping rows too), one cubic per row then one across rows, clipped to [0, 255] and truncated.
fn sample_bicubic(img: &RawImage, xi: f64, yi: f64, px: &mut [u8]) {
    let (w, h, c) = (img.width, img.height, img.channels);
    let (xs, ys) = (xi - 0.5, yi - 0.5);
    let (fx, fy) = (xs.floor(), ys.floor());
    let (dx, dy) = (xs - fx, ys - fy);
    let clamp = |v: f64, k: isize, n: usize| (v as isize - 1 + k).clamp(0, n as isize - 1) as usize;
    let cols: [usize; 4] = std::array::from_fn(|k| clamp(fx, k as isize, w) * c);
    let rows: [usize; 4] = std::array::from_fn(|k| clamp(fy, k as isize, h) * w * c);
    let src = &img.data;
    for (ch, v) in px.iter_mut().enumerate() {
        let row = |r: usize| {
            let p = |k: usize| src[r + cols[k] + ch] as f64;
            cubic(p(0), p(1), p(2), p(3), dx)
        };
        let s = cubic(row(rows[0]), row(rows[1]), row(rows[2]), row(rows[3]), dy);
        *v = if s <= 0.0 {
            0
        } else if s >= 255.0 {
            255
        } else {
            s as u8
        };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(w: usize, h: usize, c: usize) -> RawImage {
        let data = (0..w * h * c).map(|i| (i * 11 % 256) as u8).collect();
        RawImage::new(w, h, c, data).unwrap()
    }

    #[test]
    fn resize_keeps_constant_images_and_identity() {
        let img = RawImage::filled(7, 5, 3, &[10, 20, 30]);
        let r = resize(&img, 13, 3, Interpolation::Bilinear);
        assert_eq!((r.width, r.height), (13, 3));
        assert!(r.data.chunks(3).all(|p| p == [10, 20, 30]));
        let img = ramp(6, 4, 1);
        assert_eq!(resize(&img, 6, 4, Interpolation::Bilinear), img);
    }

    #[test]
    fn resize_downscale_by_two_averages_pairs() {
        // 4 → 2 with the antialiased triangle filter: weights 1/8, 3/8, 3/8, 1/8 around centres.
        let img = RawImage::new(4, 1, 1, vec![0, 0, 100, 100]).unwrap();
        let r = resize(&img, 2, 1, Interpolation::Bilinear);
        // centre 1.0 → taps x=0,1,2 with weights .75,.75,.25 (renormalised at the edge) → 14.3
        // centre 3.0 → taps x=1,2,3 with weights .25,.75,.75 → 85.7
        assert_eq!(r.data, vec![14, 86]);
    }

    /// Pillow 9.4 `img.resize(size, BILINEAR)` of the 6×5 "L" image used in `ops` tests.
    #[test]
    fn resize_is_bit_identical_to_pil() {
        let data: Vec<u8> = (0..30)
            .map(|i| ((i * 37 + (i / 6) * 11) % 256) as u8)
            .collect();
        let im = RawImage::new(6, 5, 1, data).unwrap();
        let down = [73, 56, 109, 161, 203, 86, 73, 125, 188, 150, 53, 89];
        assert_eq!(resize(&im, 4, 3, Interpolation::Bilinear).data, down);
        let up = resize(&im, 9, 7, Interpolation::Bilinear);
        assert_eq!(
            &up.data[..12],
            &[0, 19, 43, 68, 93, 117, 142, 167, 185, 133, 79, 30]
        );
        assert_eq!(
            &up.data[50..],
            &[38, 63, 88, 106, 164, 183, 207, 232, 129, 25, 50, 75, 93]
        );
    }

    /// The 6×5 "L" image of the PIL tests, and a 7×5 RGB one whose channels differ
    /// (`scripts/pil_interpolation_reference.py` builds the same two).
    pub(crate) fn pil_test_images() -> (RawImage, RawImage) {
        let gray = (0..30).map(|i| ((i * 37 + (i / 6) * 11) % 256) as u8);
        let rgb = (0..105).map(|i| ((i * 53 + (i / 21) * 29 + (i % 3) * 71) % 256) as u8);
        (
            RawImage::new(6, 5, 1, gray.collect()).unwrap(),
            RawImage::new(7, 5, 3, rgb.collect()).unwrap(),
        )
    }

    /// Pillow 13.0 `img.resize(size, BICUBIC)` (`scripts/pil_interpolation_reference.py`):
    /// downscales (support stretched 1.5× and 3×), upscales, one axis only, and RGB.
    #[test]
    fn resize_bicubic_is_bit_identical_to_pil() {
        let (gray, rgb) = pil_test_images();
        let bicubic = |im: &RawImage, w, h| resize(im, w, h, Interpolation::Bicubic).data;
        let cases: [(&RawImage, usize, usize, &[u8]); 6] = [
            (
                &gray,
                4,
                3,
                &[69, 48, 114, 166, 218, 77, 66, 128, 192, 160, 40, 89],
            ),
            (
                &gray,
                9,
                7,
                &[
                    0, 8, 45, 70, 94, 118, 143, 171, 188, 141, 71, 7, 53, 83, 106, 131, 159, 176,
                    255, 164, 55, 43, 60, 87, 112, 140, 157, 208, 240, 222, 53, 31, 71, 96, 124,
                    141, 191, 229, 210, 20, 4, 56, 80, 108, 125, 173, 199, 202, 124, 60, 30, 60,
                    89, 106, 161, 177, 211, 255, 136, 8, 45, 77, 94,
                ],
            ),
            (&gray, 2, 2, &[88, 118, 158, 74]),
            (
                &gray,
                11,
                5,
                &[
                    0, 8, 31, 52, 72, 93, 113, 133, 154, 177, 188, 251, 175, 34, 11, 49, 70, 90,
                    110, 131, 154, 165, 207, 227, 254, 163, 33, 31, 67, 87, 108, 131, 142, 184,
                    204, 231, 140, 10, 8, 44, 64, 85, 108, 119, 161, 172, 195, 229, 242, 129, 15,
                    28, 62, 85, 96,
                ],
            ),
            (
                &rgb,
                3,
                4,
                &[
                    76, 109, 148, 150, 153, 135, 113, 125, 99, 118, 126, 100, 140, 131, 136, 112,
                    96, 153, 103, 109, 166, 127, 126, 131, 95, 162, 136, 118, 163, 137, 115, 127,
                    109, 167, 114, 153,
                ],
            ),
            (
                &rgb,
                10,
                8,
                &[
                    0, 122, 255, 94, 52, 214, 154, 51, 127, 53, 194, 45, 179, 111, 171, 211, 132,
                    203, 110, 255, 102, 23, 193, 15, 95, 100, 87, 207, 38, 199, 43, 184, 194, 70,
                    123, 135, 105, 83, 86, 114, 124, 106, 146, 135, 138, 173, 162, 166, 175, 186,
                    167, 97, 110, 78, 95, 92, 79, 128, 109, 121, 132, 246, 117, 60, 195, 49, 49,
                    114, 41, 176, 48, 168, 108, 159, 100, 130, 191, 122, 241, 106, 233, 173, 20,
                    173, 92, 80, 90, 43, 180, 34, 224, 143, 209, 165, 79, 141, 95, 54, 71, 74, 138,
                    65, 144, 110, 137, 174, 135, 158, 133, 201, 131, 51, 112, 221, 80, 69, 195,
                    146, 66, 125, 209, 137, 196, 154, 67, 193, 90, 41, 150, 67, 131, 61, 138, 104,
                    127, 168, 125, 152, 127, 197, 124, 38, 191, 208, 69, 121, 183, 140, 53, 119,
                    106, 228, 82, 38, 172, 182, 30, 89, 242, 157, 29, 156, 89, 140, 71, 112, 162,
                    103, 222, 94, 214, 148, 221, 148, 69, 213, 67, 25, 145, 16, 168, 141, 153, 110,
                    183, 170, 61, 184, 152, 81, 95, 76, 113, 96, 100, 134, 124, 127, 146, 156, 138,
                    198, 176, 179, 155, 127, 139, 86, 68, 78, 230, 63, 224, 181, 175, 162, 93, 247,
                    69, 11, 160, 3, 137, 59, 130, 159, 91, 151, 76, 217, 68, 219, 135, 211, 218,
                    48, 210, 148, 0, 140,
                ],
            ),
        ];
        for (im, w, h, want) in cases {
            assert_eq!(
                bicubic(im, w, h),
                want,
                "{}x{} -> {w}x{h}",
                im.width,
                im.height
            );
        }
        // The cubic overshoots: clipped, never wrapped.
        let edge = RawImage::new(4, 1, 1, vec![0, 0, 255, 255]).unwrap();
        let up = bicubic(&edge, 16, 1);
        assert!(up.contains(&0) && up.contains(&255));
        assert!(up.windows(2).all(|p| p[0] <= p[1]), "{up:?}");
        // …and differs from bilinear, which the same call with the other filter gives.
        assert_ne!(
            bicubic(&gray, 9, 7),
            resize(&gray, 9, 7, Interpolation::Bilinear).data
        );
        assert_eq!(resize(&gray, 6, 5, Interpolation::Bicubic), gray);
    }

    #[test]
    fn crop_pad_and_flip() {
        let img = ramp(4, 3, 2);
        let c = crop(&img, 1, 2, 2, 2);
        assert_eq!(
            &c.data[0..2],
            &img.data[img.offset(2, 1)..img.offset(2, 1) + 2]
        );
        let p = pad(&img, 2);
        assert_eq!((p.width, p.height), (8, 7));
        assert_eq!(&p.data[p.offset(2, 2)..p.offset(2, 2) + 2], &img.data[0..2]);
        assert_eq!(p.data[0], 0);
        let f = hflip(&img);
        assert_eq!(
            &f.data[0..2],
            &img.data[img.offset(3, 0)..img.offset(3, 0) + 2]
        );
        assert_eq!(hflip(&f), img);
    }

    #[test]
    fn rrc_full_scale_unit_ratio_is_whole_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            rrc_params(&mut rng, 9, 9, (1.0, 1.0), (1.0, 1.0)),
            (0, 0, 9, 9)
        );
        // impossible request falls back to a centred crop with the ratio clamped
        let p = rrc_params(&mut rng, 40, 10, (5.0, 5.0), (1.0, 1.0));
        assert_eq!(p, (0, 15, 10, 10));
        for _ in 0..100 {
            let (t, l, h, w) = rrc_params(&mut rng, 17, 11, (0.08, 1.0), (0.75, 4.0 / 3.0));
            assert!(t + h <= 11 && l + w <= 17 && h > 0 && w > 0);
        }
    }

    #[test]
    fn warp_identity_and_translation() {
        let img = ramp(5, 4, 3);
        assert_eq!(
            warp_affine(
                &img,
                [1., 0., 0., 0., 1., 0.],
                &[128],
                Interpolation::Bilinear
            ),
            img
        );
        // shift content left by one pixel: output x samples input x + 1; last column is fill
        let s = warp_affine(
            &img,
            [1., 0., 1., 0., 1., 0.],
            &[128, 129, 130],
            Interpolation::Bilinear,
        );
        assert_eq!(
            &s.data[s.offset(0, 2)..s.offset(0, 2) + 3],
            &img.data[img.offset(1, 2)..img.offset(1, 2) + 3]
        );
        assert_eq!(
            &s.data[s.offset(4, 2)..s.offset(4, 2) + 3],
            &[128, 129, 130]
        );
    }

    #[test]
    fn center_offsets_follow_torchvision() {
        assert_eq!(center_offset(256, 224), 16);
        assert_eq!(center_offset(5, 2), 2); // round(1.5) = 2
        assert_eq!(center_offset(7, 2), 2); // round(2.5) = 2 (ties to even)
        assert_eq!(center_offset(2, 5), -1);
        assert_eq!(shorter_side_size(32, 64, 16), (16, 32));
        assert_eq!(shorter_side_size(300, 200, 256), (384, 256));
    }
}
