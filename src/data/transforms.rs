//! Per-image train and eval pipelines, mirroring timm's `create_transform`.
//!
//! Train (timm `transforms_imagenet_train`): spatial augmentation (RandomResizedCrop, or the cheap
//! RandomCrop-with-padding for 28×28/32×32 data) → horizontal flip → RandAugment on `u8` →
//! `ToTensor` + `Normalize` → RandomErasing on the normalised tensor. The resize and
//! RandAugment's geometric ops resample with the train interpolation (bilinear, bicubic, or
//! timm's `random`, drawn per use).
//!
//! Eval (timm `transforms_imagenet_eval`): resize the shorter side to `⌊size / crop_pct⌋`
//! (256·size/224, i.e. crop_pct 0.875; docs/models.md "Training recipe") with the eval
//! interpolation (bicubic in the papers' recipe) → centre crop `size × size` → normalise.
//!
//! All randomness comes from the `Rng` the caller passes in, so a loader can give every sample its
//! own seeded generator and get identical results whatever thread runs it.

pub mod erasing;
pub mod geometry;
pub mod interpolation;
pub mod ops;
pub mod randaugment;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use erasing::RandomErasing;
pub use interpolation::{Interpolation, TrainInterpolation};
pub use randaugment::{AugOp, RandAugment};

use self::geometry::{center_offset, crop, hflip, pad, resize, rrc_params, shorter_side_size};
use super::{DataError, RawImage, Result};

/// A transformed image: CHW `f32`, ready to be stacked into an NCHW batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// The geometric part of the train pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpatialAug {
    /// timm `RandomResizedCropAndInterpolation(size, scale, ratio)`: torchvision's crop
    /// parameters, then a resize with the train interpolation.
    RandomResizedCrop {
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    /// torchvision `RandomCrop(size, padding)` with zero padding; images not already
    /// `size × size` are resized to it first.
    RandomCrop { padding: usize },
    /// No geometric augmentation: just resize to `size × size` (identity when already that size).
    None,
}

impl SpatialAug {
    /// `RandomResizedCrop` with torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3).
    pub fn random_resized_crop() -> Self {
        SpatialAug::RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// `RandomCrop(padding)`, or no geometric augmentation for padding 0 (an unpadded crop of an
    /// image already at the target size is the identity).
    pub fn random_crop(padding: usize) -> Self {
        match padding {
            0 => SpatialAug::None,
            padding => SpatialAug::RandomCrop { padding },
        }
    }
}

/// torchvision `Normalize(mean, std)` after `ToTensor` (`v / 255`). A single mean/std value is
/// broadcast to all channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    fn check(&self, channels: usize) -> Result<()> {
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(DataError::Config(format!(
                    "normalisation {name} has {} values but the model has {channels} input channels (give 1 or {channels})",
                    v.len()
                )));
            }
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(DataError::Config(format!(
                "normalisation std {:?} must be non-zero",
                self.std
            )));
        }
        Ok(())
    }

    /// HWC `u8` → normalised CHW `f32`.
    pub fn apply(&self, img: &RawImage) -> Result<Image> {
        self.check(img.channels)?;
        let (c, h, w) = (img.channels, img.height, img.width);
        let mut data = vec![0f32; c * h * w];
        for (ch, plane) in data.chunks_exact_mut((h * w).max(1)).enumerate() {
            let mean = self.mean[ch.min(self.mean.len() - 1)];
            let std = self.std[ch.min(self.std.len() - 1)];
            // ToTensor (v / 255) then Normalize, as a per-channel lookup table
            let lut: [f32; 256] = std::array::from_fn(|v| (v as f32 / 255.0 - mean) / std);
            for (o, px) in plane.iter_mut().zip(img.data.chunks_exact(c)) {
                *o = lut[px[ch] as usize];
            }
        }
        Ok(Image { c, h, w, data })
    }
}

/// Check an input image and convert it to `in_chans` channels (gray is replicated to RGB; RGB is
/// reduced to PIL's "L" luma), so 1-channel Fashion-MNIST can feed a 3-channel model and back.
pub fn to_channels(img: &RawImage, in_chans: usize) -> Result<RawImage> {
    if img.width == 0 || img.height == 0 || img.data.len() != img.width * img.height * img.channels
    {
        return Err(DataError::InvalidImage(format!(
            "{}x{}x{} image with {} bytes",
            img.width,
            img.height,
            img.channels,
            img.data.len()
        )));
    }
    match (img.channels, in_chans) {
        (a, b) if a == b && (a == 1 || a == 3) => Ok(img.clone()),
        (1, 3) => Ok(RawImage {
            channels: 3,
            data: img.data.iter().flat_map(|&v| [v, v, v]).collect(),
            ..*img
        }),
        (3, 1) => Ok(RawImage {
            channels: 1,
            data: img
                .data
                .chunks_exact(3)
                .map(|p| ops::luma(p[0], p[1], p[2]))
                .collect(),
            ..*img
        }),
        (a, b) => Err(DataError::InvalidImage(format!(
            "cannot convert a {a}-channel image to {b} channels (only 1 and 3 are supported)"
        ))),
    }
}

/// Smallest eval `crop_pct`: the resize before the centre crop is at most 10× the model's size.
pub const MIN_CROP_PCT: f64 = 0.1;

/// Largest transform output side (the model's `img_size` limit).
pub const MAX_IMAGE_SIZE: usize = crate::config::limits::MAX_IMG_SIZE;

fn check_size(image_size: usize, in_chans: usize) -> Result<()> {
    if image_size == 0 {
        return Err(DataError::Config("image size must be positive".into()));
    }
    if image_size > MAX_IMAGE_SIZE {
        return Err(DataError::Config(format!(
            "image size {image_size} exceeds the limit {MAX_IMAGE_SIZE}"
        )));
    }
    if in_chans != 1 && in_chans != 3 {
        return Err(DataError::Config(format!(
            "in_chans must be 1 or 3, got {in_chans}"
        )));
    }
    Ok(())
}

/// Training-time augmentation pipeline (serde-serialisable; unspecified fields take the
/// papers' recipe defaults at 224×224 RGB, docs/models.md "Training recipe").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainTransform {
    pub image_size: usize,
    pub in_chans: usize,
    pub spatial: SpatialAug,
    /// Horizontal flip probability.
    pub hflip: f64,
    /// timm RandAugment config string, e.g. `rand-m9-mstd0.5-inc1`; absent = off. (Field-level
    /// default: `None` is not written to TOML, so the container default, the papers' recipe's
    /// RandAugment, would otherwise turn it back on when a saved config is read.)
    #[serde(default)]
    pub rand_augment: Option<RandAugment>,
    /// RandomErasing probability (pixel mode); 0 = off.
    pub random_erase: f64,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Filter of the resize and of RandAugment's rotate/shear/translate (timm
    /// `--train-interpolation`). Field-level default bilinear: configurations saved before the
    /// field existed resampled that way and resume identically (the container default, the
    /// papers' recipe's `random`, would change them).
    #[serde(default)]
    pub interpolation: TrainInterpolation,
}

impl Default for TrainTransform {
    fn default() -> Self {
        TrainTransform::spec(224, 3)
    }
}

impl TrainTransform {
    /// The papers' training recipe (docs/models.md "Training recipe"): RandomResizedCrop
    /// (0.08–1, 3/4–4/3), flip 0.5, `rand-m9-mstd0.5-inc1`, random erasing 0.25,
    /// mean = std = 0.5, and timm's default `random` interpolation.
    pub fn spec(image_size: usize, in_chans: usize) -> Self {
        TrainTransform {
            image_size,
            in_chans,
            spatial: SpatialAug::random_resized_crop(),
            hflip: 0.5,
            rand_augment: Some(RandAugment::parse("rand-m9-mstd0.5-inc1").expect("valid literal")),
            random_erase: 0.25,
            mean: vec![0.5],
            std: vec![0.5],
            interpolation: TrainInterpolation::Random,
        }
    }

    /// Cheap recipe for small native-resolution data (28×28, 32×32): RandomCrop with `padding`
    /// (none for 0), flip 0.5, no RandAugment, no erasing, mean = std = 0.5, bilinear (at native
    /// size nothing is resized; the filter only matters to RandAugment's warps, if enabled).
    pub fn small(image_size: usize, in_chans: usize, padding: usize) -> Self {
        TrainTransform {
            spatial: SpatialAug::random_crop(padding),
            rand_augment: None,
            random_erase: 0.0,
            interpolation: TrainInterpolation::Bilinear,
            ..TrainTransform::spec(image_size, in_chans)
        }
    }

    /// Check the settings (called by `apply`; call it early to fail before training starts).
    pub fn validate(&self) -> Result<()> {
        check_size(self.image_size, self.in_chans)?;
        self.normalize().check(self.in_chans)?;
        for (name, p) in [("hflip", self.hflip), ("random_erase", self.random_erase)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(DataError::Config(format!(
                    "{name} probability {p} is not in [0, 1]"
                )));
            }
        }
        if let SpatialAug::RandomCrop { padding } = self.spatial {
            if padding > self.image_size {
                return Err(DataError::Config(format!(
                    "crop padding {padding} is larger than the image size {} (--crop-padding must be ≤ the model's img_size)",
                    self.image_size
                )));
            }
        }
        if let SpatialAug::RandomResizedCrop { scale, ratio } = self.spatial {
            let ok = 0.0 < scale.0 && scale.0 <= scale.1 && 0.0 < ratio.0 && ratio.0 <= ratio.1;
            if !ok || !scale.1.is_finite() || !ratio.1.is_finite() {
                return Err(DataError::Config(format!(
                    "RandomResizedCrop needs 0 < scale.0 ≤ scale.1 and 0 < ratio.0 ≤ ratio.1, got {scale:?} {ratio:?}"
                )));
            }
        }
        Ok(())
    }

    fn normalize(&self) -> Normalize {
        Normalize {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// Augment one image. Deterministic given the state of `rng`.
    pub fn apply<R: Rng + ?Sized>(&self, raw: &RawImage, rng: &mut R) -> Result<Image> {
        self.validate()?;
        let size = self.image_size;
        let mut img = to_channels(raw, self.in_chans)?;
        img = match self.spatial {
            SpatialAug::RandomResizedCrop { scale, ratio } => {
                // timm draws the crop, then the filter
                let (top, left, h, w) = rrc_params(rng, img.width, img.height, scale, ratio);
                let filter = self.interpolation.pick(rng);
                resize(
                    &crop(&img, top as isize, left as isize, h, w),
                    size,
                    size,
                    filter,
                )
            }
            SpatialAug::RandomCrop { padding } => {
                let filter = self.interpolation.pick(rng);
                let padded = pad(&resize(&img, size, size, filter), padding);
                let top = rng.gen_range(0..=padded.height - size);
                let left = rng.gen_range(0..=padded.width - size);
                crop(&padded, top as isize, left as isize, size, size)
            }
            SpatialAug::None => resize(&img, size, size, self.interpolation.pick(rng)),
        };
        if self.hflip > 0.0 && rng.gen::<f64>() < self.hflip {
            img = hflip(&img);
        }
        if let Some(ra) = &self.rand_augment {
            img = ra.apply(&img, self.interpolation, rng);
        }
        let mut out = self.normalize().apply(&img)?;
        if self.random_erase > 0.0 {
            RandomErasing::new(self.random_erase).apply(&mut out, rng);
        }
        Ok(out)
    }
}

/// Evaluation pipeline: resize shorter side to `⌊size / crop_pct⌋`, centre crop, normalise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalTransform {
    pub image_size: usize,
    pub in_chans: usize,
    /// timm `crop_pct`; the papers' recipe: 224/256 = 0.875. Use 1.0 for native-resolution
    /// small data.
    pub crop_pct: f64,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Filter of the resize before the centre crop (timm `--interpolation`; the papers' models
    /// evaluate with bicubic). Field-level default bilinear, for the same reason as
    /// [`TrainTransform::interpolation`].
    #[serde(default)]
    pub interpolation: Interpolation,
}

impl Default for EvalTransform {
    fn default() -> Self {
        EvalTransform::spec(224, 3)
    }
}

impl EvalTransform {
    /// The papers' eval: crop_pct 0.875, bicubic, mean = std = 0.5.
    pub fn spec(image_size: usize, in_chans: usize) -> Self {
        EvalTransform {
            image_size,
            in_chans,
            crop_pct: 0.875,
            mean: vec![0.5],
            std: vec![0.5],
            interpolation: Interpolation::Bicubic,
        }
    }

    /// Check the settings (called by `apply`).
    pub fn validate(&self) -> Result<()> {
        check_size(self.image_size, self.in_chans)?;
        if !(MIN_CROP_PCT..=1.0).contains(&self.crop_pct) {
            return Err(DataError::Config(format!(
                "crop_pct {} must be in [{MIN_CROP_PCT}, 1] (the image is resized to size / crop_pct before the centre crop)",
                self.crop_pct
            )));
        }
        Normalize {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
        .check(self.in_chans)
    }

    /// Transform one image (no randomness).
    pub fn apply(&self, raw: &RawImage) -> Result<Image> {
        self.validate()?;
        let size = self.image_size;
        let img = to_channels(raw, self.in_chans)?;
        let scale_size = ((size as f64 / self.crop_pct).floor() as usize).max(1);
        let (w, h) = shorter_side_size(img.width, img.height, scale_size);
        let img = resize(&img, w.max(1), h.max(1), self.interpolation);
        let top = center_offset(img.height, size);
        let left = center_offset(img.width, size);
        let img = crop(&img, top, left, size, size);
        Normalize {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
        .apply(&img)
    }
}

/// Either pipeline, as the loader takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Transform {
    Train(TrainTransform),
    Eval(EvalTransform),
}

impl Transform {
    /// Apply the pipeline (eval ignores `rng`).
    pub fn apply<R: Rng + ?Sized>(&self, raw: &RawImage, rng: &mut R) -> Result<Image> {
        match self {
            Transform::Train(t) => t.apply(raw, rng),
            Transform::Eval(t) => t.apply(raw),
        }
    }

    /// `(channels, height, width)` of every output image.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        match self {
            Transform::Train(t) => (t.in_chans, t.image_size, t.image_size),
            Transform::Eval(t) => (t.in_chans, t.image_size, t.image_size),
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        match self {
            Transform::Train(t) => t.validate(),
            Transform::Eval(t) => t.validate(),
        }
    }
}

impl From<TrainTransform> for Transform {
    fn from(t: TrainTransform) -> Self {
        Transform::Train(t)
    }
}

impl From<EvalTransform> for Transform {
    fn from(t: EvalTransform) -> Self {
        Transform::Eval(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn picture(w: usize, h: usize, c: usize) -> RawImage {
        let data = (0..w * h * c)
            .map(|i| ((i * 29 + i / 7) % 256) as u8)
            .collect();
        RawImage::new(w, h, c, data).unwrap()
    }

    fn plain(size: usize, in_chans: usize) -> TrainTransform {
        TrainTransform {
            spatial: SpatialAug::None,
            hflip: 0.0,
            rand_augment: None,
            random_erase: 0.0,
            interpolation: TrainInterpolation::Bilinear,
            ..TrainTransform::spec(size, in_chans)
        }
    }

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn normalize_values() {
        let img = RawImage::new(2, 1, 3, vec![0, 255, 51, 255, 0, 102]).unwrap();
        let n = Normalize {
            mean: vec![0.5, 0.0, 0.2],
            std: vec![0.5, 1.0, 0.4],
        };
        let out = n.apply(&img).unwrap();
        assert_eq!((out.c, out.h, out.w), (3, 1, 2));
        let want = [-1.0, 1.0, 1.0, 0.0, 0.0, 0.5]; // CHW: R0 R1 G0 G1 B0 B1
        for (a, b) in out.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", out.data);
        }
        assert!(Normalize {
            mean: vec![0.5; 2],
            std: vec![0.5]
        }
        .apply(&img)
        .is_err());
        assert!(Normalize {
            mean: vec![0.5],
            std: vec![0.0]
        }
        .apply(&img)
        .is_err());
    }

    #[test]
    fn spec_pipeline_is_deterministic_and_shaped() {
        let t = TrainTransform::spec(24, 3);
        let img = picture(32, 32, 3);
        let a = t.apply(&img, &mut rng(3)).unwrap();
        assert_eq!(a, t.apply(&img, &mut rng(3)).unwrap());
        assert_ne!(a, t.apply(&img, &mut rng(4)).unwrap());
        assert_eq!((a.c, a.h, a.w, a.data.len()), (3, 24, 24, 3 * 24 * 24));
        // gray input to an RGB model and RGB input to a gray model
        let g = t.apply(&picture(28, 28, 1), &mut rng(0)).unwrap();
        assert_eq!(g.data.len(), 3 * 24 * 24);
        let t1 = TrainTransform::spec(16, 1);
        assert_eq!(t1.apply(&img, &mut rng(0)).unwrap().data.len(), 16 * 16);
    }

    #[test]
    fn rrc_full_scale_square_is_identity() {
        let t = TrainTransform {
            spatial: SpatialAug::RandomResizedCrop {
                scale: (1.0, 1.0),
                ratio: (1.0, 1.0),
            },
            ..plain(12, 3)
        };
        let img = picture(12, 12, 3);
        let want = plain(12, 3).normalize().apply(&img).unwrap();
        for s in 0..5 {
            assert_eq!(t.apply(&img, &mut rng(s)).unwrap(), want);
        }
    }

    #[test]
    fn flip_probability_one_mirrors() {
        let img = picture(5, 4, 1);
        let t = TrainTransform {
            hflip: 1.0,
            ..plain(5, 1)
        };
        let out = t.apply(&img, &mut rng(0)).unwrap();
        let want = plain(5, 1)
            .apply(&geometry::hflip(&img), &mut rng(0))
            .unwrap();
        assert_eq!(out, want);
        assert_eq!(out.data[0], (img.data[4] as f32 / 255.0 - 0.5) / 0.5);
        let flips = (0..200)
            .filter(|&s| {
                TrainTransform {
                    hflip: 0.5,
                    ..plain(5, 1)
                }
                .apply(&img, &mut rng(s))
                .unwrap()
                    == out
            })
            .count();
        assert!((70..130).contains(&flips), "{flips}");
    }

    #[test]
    fn random_crop_with_padding_shifts_by_at_most_padding() {
        let img = picture(8, 8, 1);
        let t = TrainTransform {
            spatial: SpatialAug::RandomCrop { padding: 2 },
            ..plain(8, 1)
        };
        let base = plain(8, 1).apply(&img, &mut rng(0)).unwrap();
        let zero = (0.0 - 0.5) / 0.5;
        let mut saw_shift = false;
        for s in 0..30 {
            let out = t.apply(&img, &mut rng(s)).unwrap();
            // find the shift (dy, dx) in [-2, 2]² that explains the output
            let explains = |dy: isize, dx: isize| {
                (0..8).all(|y| {
                    (0..8).all(|x| {
                        let (sy, sx) = (y as isize + dy, x as isize + dx);
                        let v = out.data[y * 8 + x];
                        if (0..8).contains(&sy) && (0..8).contains(&sx) {
                            v == base.data[sy as usize * 8 + sx as usize]
                        } else {
                            v == zero
                        }
                    })
                })
            };
            let found: Vec<(isize, isize)> = (-2..=2)
                .flat_map(|dy| (-2..=2).map(move |dx| (dy, dx)))
                .filter(|&(dy, dx)| explains(dy, dx))
                .collect();
            assert!(!found.is_empty(), "seed {s}");
            saw_shift |= !found.contains(&(0, 0));
        }
        assert!(saw_shift);
    }

    #[test]
    fn eval_identity_and_spec_resize_crop() {
        let img = picture(28, 28, 1);
        let t = EvalTransform {
            crop_pct: 1.0,
            ..EvalTransform::spec(28, 1)
        };
        let out = t.apply(&img).unwrap();
        assert_eq!(out, plain(28, 1).apply(&img, &mut rng(0)).unwrap());
        // The papers' eval: 224 → resize to 256, centre crop 224. A 256×320 image is already
        // at scale.
        let big = picture(320, 256, 3);
        let out = EvalTransform::spec(224, 3).apply(&big).unwrap();
        assert_eq!((out.c, out.h, out.w), (3, 224, 224));
        let crop_ref = geometry::crop(&big, 16, 48, 224, 224);
        assert_eq!(out, plain(224, 3).normalize().apply(&crop_ref).unwrap());
    }

    #[test]
    fn random_interpolation_draws_the_filter_after_the_crop() {
        let img = picture(37, 29, 3);
        let rrc = |interpolation| TrainTransform {
            spatial: SpatialAug::random_resized_crop(),
            interpolation,
            ..plain(16, 3)
        };
        let (mut bilinear, mut bicubic) = (0, 0);
        for s in 0..24 {
            let random = rrc(TrainInterpolation::Random)
                .apply(&img, &mut rng(s))
                .unwrap();
            // Same crop (drawn first), then one of the two filters.
            let a = rrc(TrainInterpolation::Bilinear).apply(&img, &mut rng(s));
            let b = rrc(TrainInterpolation::Bicubic).apply(&img, &mut rng(s));
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_ne!(a, b, "seed {s}: the filters must differ on this image");
            if random == a {
                bilinear += 1;
            } else {
                assert_eq!(random, b, "seed {s}");
                bicubic += 1;
            }
        }
        assert!(bilinear >= 4 && bicubic >= 4, "{bilinear} vs {bicubic}");
    }

    #[test]
    fn eval_resizes_with_its_interpolation() {
        let img = picture(7, 5, 3);
        for filter in Interpolation::ALL {
            let t = EvalTransform {
                crop_pct: 1.0,
                interpolation: filter,
                ..EvalTransform::spec(4, 3)
            };
            // shorter side 5 → 4, longer 7 → int(4·7/5) = 5; centre crop 4×4 at left round(0.5) = 0
            let want = geometry::crop(&geometry::resize(&img, 5, 4, filter), 0, 0, 4, 4);
            let want = plain(4, 3).normalize().apply(&want).unwrap();
            assert_eq!(t.apply(&img).unwrap(), want, "{filter}");
        }
        assert_eq!(
            EvalTransform::spec(224, 3).interpolation,
            Interpolation::Bicubic
        );
    }

    /// Configurations written before the interpolation fields existed name none: they must read
    /// back as bilinear (what they ran with), not as the papers' recipe's random / bicubic.
    #[test]
    fn configs_without_interpolation_stay_bilinear() {
        let mut train = toml::Table::try_from(TrainTransform::spec(24, 3)).unwrap();
        let mut eval = toml::Table::try_from(EvalTransform::spec(224, 3)).unwrap();
        assert_eq!(
            train.remove("interpolation").unwrap().as_str(),
            Some("random")
        );
        assert_eq!(
            eval.remove("interpolation").unwrap().as_str(),
            Some("bicubic")
        );
        let train: TrainTransform = toml::Value::Table(train).try_into().unwrap();
        let eval: EvalTransform = toml::Value::Table(eval).try_into().unwrap();
        assert_eq!(train.interpolation, TrainInterpolation::Bilinear);
        assert_eq!(eval.interpolation, Interpolation::Bilinear);
        // The old config is the explicit bilinear pipeline (whose filter draws no random number:
        // `interpolation::tests`), and it differs from the papers' `random`.
        let img = picture(40, 30, 3);
        let t = TrainTransform {
            interpolation: TrainInterpolation::Bilinear,
            ..TrainTransform::spec(24, 3)
        };
        assert_eq!(train, t);
        let (mut r, mut r2) = (rng(11), rng(11));
        let a = t.apply(&img, &mut r).unwrap();
        let random = TrainTransform {
            interpolation: TrainInterpolation::Random,
            ..t.clone()
        };
        assert_ne!(random.apply(&img, &mut r2).unwrap(), a, "random draws more");
    }

    #[test]
    fn erasing_in_pipeline_only_touches_a_rectangle() {
        let img = picture(16, 16, 3);
        let t = TrainTransform {
            random_erase: 1.0,
            ..plain(16, 3)
        };
        let base = plain(16, 3).apply(&img, &mut rng(0)).unwrap();
        let out = t.apply(&img, &mut rng(9)).unwrap();
        let changed: Vec<usize> = (0..base.data.len())
            .filter(|&i| base.data[i] != out.data[i])
            .collect();
        assert!(!changed.is_empty());
        let (ys, xs): (Vec<usize>, Vec<usize>) =
            changed.iter().map(|&i| ((i / 16) % 16, i % 16)).unzip();
        let (y0, y1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
        let (x0, x1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        // every pixel of the bounding box is changed in all 3 channels: a filled rectangle
        assert_eq!(changed.len(), 3 * (y1 - y0 + 1) * (x1 - x0 + 1));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let t = TrainTransform::spec(8, 3);
        let mut r = rng(0);
        let empty = RawImage {
            width: 0,
            height: 0,
            channels: 3,
            data: vec![],
        };
        assert!(t.apply(&empty, &mut r).is_err());
        let four = RawImage::filled(2, 2, 4, &[1]);
        assert!(t.apply(&four, &mut r).is_err());
        let lying = RawImage {
            width: 4,
            height: 4,
            channels: 3,
            data: vec![0; 5],
        };
        assert!(t.apply(&lying, &mut r).is_err());
        assert!(TrainTransform {
            in_chans: 2,
            ..t.clone()
        }
        .apply(&picture(4, 4, 3), &mut r)
        .is_err());
        assert!(TrainTransform {
            hflip: 2.0,
            ..t.clone()
        }
        .validate()
        .is_err());
        assert!(EvalTransform {
            crop_pct: 0.0,
            ..EvalTransform::spec(8, 3)
        }
        .apply(&picture(4, 4, 3))
        .is_err());
        // Out-of-range numbers are configuration errors, found before any image is touched:
        // crop_pct 1e-300 would resize to a size that overflows, 100 to 1×1, and a padding of a
        // million pixels would allocate terabytes.
        for crop_pct in [1e-300, 1e-9, 0.09, 1.01, 100.0, f64::NAN, f64::INFINITY] {
            let e = EvalTransform {
                crop_pct,
                ..EvalTransform::spec(224, 3)
            };
            let err = e.validate().unwrap_err().to_string();
            assert!(err.contains("crop_pct"), "{err}");
        }
        let huge_pad = TrainTransform {
            spatial: SpatialAug::RandomCrop { padding: 1_000_000 },
            ..t.clone()
        };
        let err = huge_pad.validate().unwrap_err().to_string();
        assert!(err.contains("--crop-padding"), "{err}");
        assert!(TrainTransform {
            spatial: SpatialAug::RandomCrop { padding: 8 },
            ..t.clone()
        }
        .validate()
        .is_ok());
        // 1×1 images through the full pipeline
        assert!(t.apply(&picture(1, 1, 3), &mut r).is_ok());
        assert!(EvalTransform::spec(8, 1).apply(&picture(1, 1, 1)).is_ok());
    }
}
