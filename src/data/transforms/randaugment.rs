//! timm's RandAugment (`timm/data/auto_augment.py`, `rand_augment_transform`), op for op.
//!
//! A config string `rand-m9-mstd0.5-inc1` means: magnitude 9 (of 10), Gaussian magnitude noise of
//! std 0.5, the "increasing" op set (every op gets stronger as the magnitude grows). Per image,
//! `n` ops are drawn uniformly *with replacement*; each is applied with probability `p`, with its
//! own noisy magnitude clipped to `[0, mmax]` and, for signed ops, a random sign, then, for the
//! geometric ops under `random` interpolation, the filter — exactly the RNG draws timm's
//! `AugmentOp.__call__` makes, in the same order.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::geometry::uniform;
use super::interpolation::{Interpolation, TrainInterpolation};
use super::ops::*;
use crate::data::{DataError, RawImage, Result};

/// timm `_LEVEL_DENOM`: magnitudes are expressed in tenths of the maximum.
pub const LEVEL_DENOM: f64 = 10.0;
/// Fill colour of geometric ops (timm `img_mean` for mean 0.5: `round(255·0.5)` = 128).
pub const FILL: [u8; 3] = [128, 128, 128];
/// timm `translate_pct` default for `TranslateXRel`/`TranslateYRel`.
pub const TRANSLATE_PCT: f64 = 0.45;

/// The ops of timm's RandAugment sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AugOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    PosterizeIncreasing,
    Solarize,
    SolarizeIncreasing,
    SolarizeAdd,
    Color,
    ColorIncreasing,
    Contrast,
    ContrastIncreasing,
    Brightness,
    BrightnessIncreasing,
    Sharpness,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

use AugOp::*;

/// timm `_RAND_TRANSFORMS` (used without `inc1`).
pub const RAND_TRANSFORMS: [AugOp; 15] = [
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    Posterize,
    Solarize,
    SolarizeAdd,
    Color,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
];

/// timm `_RAND_INCREASING_TRANSFORMS` (used with `inc1`, as in the papers' recipe: docs/models.md
/// "Training recipe").
pub const RAND_INCREASING_TRANSFORMS: [AugOp; 15] = [
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    PosterizeIncreasing,
    SolarizeIncreasing,
    SolarizeAdd,
    ColorIncreasing,
    ContrastIncreasing,
    BrightnessIncreasing,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
];

/// A geometric op of `ops`: image, signed argument, fill, filter.
type Warp = fn(&RawImage, f64, &[u8], Interpolation) -> RawImage;

/// timm `_randomly_negate`: `-v if random.random() > 0.5 else v`.
fn randomly_negate<R: Rng + ?Sized>(v: f64, rng: &mut R) -> f64 {
    if rng.gen::<f64>() > 0.5 {
        -v
    } else {
        v
    }
}

/// Apply `op` at (already noised and clipped) magnitude `level`, mapping it to the op's argument
/// with timm's `*_level_to_arg` functions. Signed ops draw their sign from `rng`; the geometric
/// ops then pick their filter from `filter` (timm's `_check_args_tf`, called inside the op after
/// the level function has drawn the sign; only `random` draws).
pub fn apply_op<R: Rng + ?Sized>(
    op: AugOp,
    img: &RawImage,
    level: f64,
    filter: TrainInterpolation,
    rng: &mut R,
) -> RawImage {
    let fill = &FILL[..img.channels.clamp(1, 3)];
    let l = level / LEVEL_DENOM;
    let enhance = l * 1.8 + 0.1; // _enhance_level_to_arg: [0.1, 1.9]
    let solarize_thresh = ((l * 256.0) as u32).min(256); // _solarize_level_to_arg
    match op {
        AutoContrast => autocontrast(img),
        Equalize => equalize(img),
        Invert => invert(img),
        Rotate => {
            let degrees = randomly_negate(l * 30.0, rng);
            rotate(img, degrees, fill, filter.pick(rng))
        }
        Posterize => posterize(img, (l * 4.0) as u32),
        PosterizeIncreasing => posterize(img, (4 - (l * 4.0) as i64).max(0) as u32),
        Solarize => solarize(img, solarize_thresh),
        SolarizeIncreasing => solarize(img, 256 - solarize_thresh),
        SolarizeAdd => solarize_add(img, ((l * 110.0) as i32).min(128), 128),
        Color => color(img, enhance),
        Contrast => contrast(img, enhance),
        Brightness => brightness(img, enhance),
        Sharpness => sharpness(img, enhance),
        ColorIncreasing | ContrastIncreasing | BrightnessIncreasing | SharpnessIncreasing => {
            // _enhance_increasing_level_to_arg: 1 ± 0.9·l, kept ≥ 0.1
            let f = (1.0 + randomly_negate(l * 0.9, rng)).max(0.1);
            let f_op = match op {
                ColorIncreasing => color,
                ContrastIncreasing => contrast,
                BrightnessIncreasing => brightness,
                _ => sharpness,
            };
            f_op(img, f)
        }
        ShearX | ShearY | TranslateXRel | TranslateYRel => {
            let (max, warp): (f64, Warp) = match op {
                ShearX => (0.3, shear_x),
                ShearY => (0.3, shear_y),
                TranslateXRel => (TRANSLATE_PCT, translate_x_rel),
                _ => (TRANSLATE_PCT, translate_y_rel),
            };
            let arg = randomly_negate(l * max, rng);
            warp(img, arg, fill, filter.pick(rng))
        }
    }
}

/// A parsed RandAugment config. Serialises as its config string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RandAugment {
    config: String,
    /// `n`: ops per image (default 2).
    pub num_ops: usize,
    /// `m`: magnitude in `[0, mmax]` (default 10).
    pub magnitude: f64,
    /// `mstd`: std of the Gaussian magnitude noise; `inf` (from `mstd` > 100) = uniform in [0, m].
    pub magnitude_std: f64,
    /// `mmax`: upper clip of the noisy magnitude (timm default 10).
    pub magnitude_max: f64,
    /// `p`: probability of applying each chosen op (default 0.5).
    pub prob: f64,
    /// `inc1`: use the increasing op set.
    pub increasing: bool,
}

impl RandAugment {
    /// Parse a timm config string (`rand-m9-mstd0.5-inc1`, optionally `-n2`, `-mmax10`, `-p0.5`).
    ///
    /// Differences from timm: `inc0` means *not* increasing (timm's `bool("0")` is true), and
    /// unknown or valueless sections are errors instead of being skipped silently; op-set (`t…`)
    /// and weight (`w…`) sections are not supported.
    pub fn parse(config: &str) -> Result<Self> {
        let bad = |msg: String| {
            DataError::Config(format!(
                "RandAugment config '{config}': {msg} (expected e.g. 'rand-m9-mstd0.5-inc1')"
            ))
        };
        let mut parts = config.trim().split('-');
        if parts.next() != Some("rand") {
            return Err(bad("must start with 'rand'".into()));
        }
        let mut ra = RandAugment {
            config: config.trim().to_string(),
            num_ops: 2,
            magnitude: LEVEL_DENOM,
            magnitude_std: 0.0,
            magnitude_max: LEVEL_DENOM,
            prob: 0.5,
            increasing: false,
        };
        for section in parts.filter(|s| !s.is_empty()) {
            let split = section
                .find(|c: char| c.is_ascii_digit())
                .ok_or_else(|| bad(format!("section '{section}' has no numeric value")))?;
            let (key, val) = section.split_at(split);
            let num = |v: &str| -> Result<f64> {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| {
                        bad(format!("'{v}' in '{section}' is not a non-negative number"))
                    })
            };
            match key {
                "m" => ra.magnitude = num(val)?,
                "mstd" => {
                    let s = num(val)?;
                    ra.magnitude_std = if s > 100.0 { f64::INFINITY } else { s };
                }
                "mmax" => {
                    let m = num(val)?;
                    // timm: `magnitude_max or _LEVEL_DENOM`, so 0 means the default
                    ra.magnitude_max = if m > 0.0 { m } else { LEVEL_DENOM };
                }
                "n" => {
                    ra.num_ops = val
                        .parse()
                        .map_err(|_| bad(format!("'{val}' in '{section}' is not an op count")))?
                }
                "p" => {
                    let p = num(val)?;
                    if p > 1.0 {
                        return Err(bad(format!("probability {p} is above 1")));
                    }
                    ra.prob = p;
                }
                "inc" => ra.increasing = num(val)? != 0.0,
                _ => return Err(bad(format!("unknown or unsupported section '{section}'"))),
            }
        }
        Ok(ra)
    }

    /// The config string this was parsed from.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The op set in use.
    pub fn ops(&self) -> &'static [AugOp; 15] {
        if self.increasing {
            &RAND_INCREASING_TRANSFORMS
        } else {
            &RAND_TRANSFORMS
        }
    }

    /// timm `AugmentOp.__call__`: the probability gate, then magnitude noise and clipping.
    /// Returns `None` when the op is skipped.
    fn sample_level<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<f64> {
        if self.prob < 1.0 && rng.gen::<f64>() > self.prob {
            return None;
        }
        let mut m = self.magnitude;
        if self.magnitude_std == f64::INFINITY {
            m = uniform(rng, 0.0, m);
        } else if self.magnitude_std > 0.0 {
            m += self.magnitude_std * rng.sample::<f64, _>(StandardNormal);
        }
        Some(m.clamp(0.0, self.magnitude_max))
    }

    /// timm `RandAugment.__call__`: draw `n` ops with replacement, then run each; geometric ops
    /// resample with `filter` (timm passes the train interpolation down unless it is `random`,
    /// in which case every op draws its own).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        img: &RawImage,
        filter: TrainInterpolation,
        rng: &mut R,
    ) -> RawImage {
        let ops = self.ops();
        let chosen: Vec<AugOp> = (0..self.num_ops)
            .map(|_| ops[rng.gen_range(0..ops.len())])
            .collect();
        let mut out = img.clone();
        for op in chosen {
            if let Some(level) = self.sample_level(rng) {
                out = apply_op(op, &out, level, filter, rng);
            }
        }
        out
    }
}

impl FromStr for RandAugment {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        RandAugment::parse(s)
    }
}

impl TryFrom<String> for RandAugment {
    type Error = DataError;
    fn try_from(s: String) -> Result<Self> {
        RandAugment::parse(&s)
    }
}

impl From<RandAugment> for String {
    fn from(ra: RandAugment) -> String {
        ra.config
    }
}

impl fmt::Display for RandAugment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const BILINEAR: TrainInterpolation = TrainInterpolation::Bilinear;

    fn test_image(c: usize) -> RawImage {
        let (w, h) = (13, 9);
        let data = (0..w * h * c).map(|i| ((i * 37) % 251) as u8).collect();
        RawImage::new(w, h, c, data).unwrap()
    }

    #[test]
    fn parses_the_spec_string_and_options() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1").unwrap();
        assert_eq!((ra.num_ops, ra.magnitude, ra.magnitude_std), (2, 9.0, 0.5));
        assert_eq!(
            (ra.magnitude_max, ra.prob, ra.increasing),
            (10.0, 0.5, true)
        );
        assert_eq!(ra.ops()[4], PosterizeIncreasing);
        let ra = RandAugment::parse("rand-n3-m15-mmax20-p0.7-mstd101").unwrap();
        assert_eq!(
            (ra.num_ops, ra.magnitude, ra.magnitude_max),
            (3, 15.0, 20.0)
        );
        assert_eq!((ra.prob, ra.increasing), (0.7, false));
        assert!(ra.magnitude_std.is_infinite());
        assert_eq!(ra.ops()[4], Posterize);
        for bad in [
            "",
            "auto-m9",
            "rand-m",
            "rand-x3",
            "rand-p2",
            "rand-mnine",
            "rand-w0",
            "rand-m-1",
        ] {
            assert!(RandAugment::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_round_trips_as_string() {
        let ra: RandAugment = "rand-m9-mstd0.5-inc1".parse().unwrap();
        assert_eq!(String::from(ra.clone()), "rand-m9-mstd0.5-inc1");
        assert_eq!(RandAugment::try_from(String::from(ra.clone())).unwrap(), ra);
        // the serde derive goes through the same parser
        use serde::de::value::{Error, StrDeserializer};
        let de = |s: &'static str| RandAugment::deserialize(StrDeserializer::<Error>::new(s));
        assert_eq!(de("rand-m9-mstd0.5-inc1").unwrap(), ra);
        assert!(de("rand-bogus1").is_err());
    }

    #[test]
    fn every_op_keeps_shape_on_gray_and_rgb() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for c in [1, 3] {
            let img = test_image(c);
            for op in RAND_TRANSFORMS.iter().chain(&RAND_INCREASING_TRANSFORMS) {
                for level in [0.0, 4.5, 10.0, 30.0] {
                    let out = apply_op(*op, &img, level, TrainInterpolation::Random, &mut rng);
                    assert_eq!(
                        (out.width, out.height, out.channels, out.data.len()),
                        (img.width, img.height, c, img.data.len()),
                        "{op:?} level {level}"
                    );
                }
            }
            // degenerate sizes must not panic either
            for (w, h) in [(1, 1), (2, 1), (0, 0)] {
                let tiny = RawImage::filled(w, h, c, &[9]);
                for op in RAND_TRANSFORMS.iter().chain(&RAND_INCREASING_TRANSFORMS) {
                    assert_eq!(
                        apply_op(*op, &tiny, 7.0, TrainInterpolation::Random, &mut rng)
                            .data
                            .len(),
                        w * h * c
                    );
                }
            }
        }
    }

    #[test]
    fn magnitude_zero_is_identity_where_timm_is() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let identity_ops = [
            Rotate,
            SolarizeIncreasing,
            SolarizeAdd,
            ColorIncreasing,
            ContrastIncreasing,
            BrightnessIncreasing,
            SharpnessIncreasing,
            ShearX,
            ShearY,
            TranslateXRel,
            TranslateYRel,
        ];
        for c in [1, 3] {
            let img = test_image(c);
            for op in identity_ops {
                assert_eq!(
                    apply_op(op, &img, 0.0, TrainInterpolation::Bicubic, &mut rng),
                    img,
                    "{op:?}"
                );
            }
            // …and these are not identities at magnitude 0 in timm either
            assert_ne!(
                apply_op(PosterizeIncreasing, &img, 0.0, BILINEAR, &mut rng),
                img
            ); // keeps 4 bits
            assert_ne!(apply_op(Invert, &img, 0.0, BILINEAR, &mut rng), img);
            assert_ne!(apply_op(Solarize, &img, 0.0, BILINEAR, &mut rng), img); // threshold 0
        }
    }

    #[test]
    fn full_policy_is_deterministic_and_changes_images() {
        let ra = RandAugment::parse("rand-m9-mstd0.5-inc1-p1").unwrap();
        let img = test_image(3);
        let a = ra.apply(&img, BILINEAR, &mut ChaCha8Rng::seed_from_u64(5));
        let b = ra.apply(&img, BILINEAR, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!(a, b);
        let changed = (0..20)
            .filter(|&s| ra.apply(&img, BILINEAR, &mut ChaCha8Rng::seed_from_u64(s)) != img)
            .count();
        assert!(changed >= 15, "{changed}");
        // p0 never applies anything
        let off = RandAugment::parse("rand-m9-p0").unwrap();
        assert_eq!(
            off.apply(&img, BILINEAR, &mut ChaCha8Rng::seed_from_u64(5)),
            img
        );
    }
}
