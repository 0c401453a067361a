//! Resampling filters, and the per-image choice timm makes between them in training.
//!
//! timm resizes and warps PIL images, so the filters are PIL's: `BILINEAR` (triangle, support 1)
//! and `BICUBIC` (Keys' cubic convolution, support 2). PIL's resize uses the cubic with a = −0.5
//! and, like the triangle, stretches its support by the downscale factor (antialiasing); PIL's
//! affine warps use a 4 × 4 cubic with a = −1 and no antialiasing. [`super::geometry`] implements
//! both exactly as Pillow does.
//!
//! timm's defaults for the papers' recipe: training draws bilinear or bicubic uniformly per image
//! (`--train-interpolation random`, `RandomResizedCropAndInterpolation`), and so does every
//! geometric RandAugment op; evaluation resizes with bicubic (the models' pretrained config).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::DataError;

/// A resampling filter (PIL `Image.Resampling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// PIL `BILINEAR`. The default of a configuration that names none: every run saved before
    /// the field existed resampled this way.
    #[default]
    Bilinear,
    /// PIL `BICUBIC`.
    Bicubic,
}

impl Interpolation {
    /// Both filters, in timm's `_RANDOM_INTERPOLATION` order (the order a random draw indexes).
    pub const ALL: [Interpolation; 2] = [Interpolation::Bilinear, Interpolation::Bicubic];

    /// The command-line and configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        }
    }
}

impl fmt::Display for Interpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Interpolation {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            _ => Err(DataError::Config(format!(
                "unknown interpolation '{s}'; expected bilinear or bicubic"
            ))),
        }
    }
}

/// The training pipeline's filter: a fixed one, or timm's `random` (one uniform draw between
/// bilinear and bicubic per resize and per geometric RandAugment op).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainInterpolation {
    /// Always bilinear; the default of a configuration that names none (runs saved before the
    /// field existed), and it draws no random number, so those runs resume identically.
    #[default]
    Bilinear,
    Bicubic,
    /// timm `random`: `random.choice((BILINEAR, BICUBIC))` at every use.
    Random,
}

impl TrainInterpolation {
    /// The filter for one use. Only `Random` draws from `rng` (one draw), so the fixed choices
    /// leave the augmentation stream exactly as it was before interpolation became selectable.
    pub fn pick<R: Rng + ?Sized>(self, rng: &mut R) -> Interpolation {
        match self {
            TrainInterpolation::Bilinear => Interpolation::Bilinear,
            TrainInterpolation::Bicubic => Interpolation::Bicubic,
            TrainInterpolation::Random => Interpolation::ALL[rng.gen_range(0..2)],
        }
    }

    /// The command-line and configuration name.
    pub fn name(self) -> &'static str {
        match self {
            TrainInterpolation::Bilinear => "bilinear",
            TrainInterpolation::Bicubic => "bicubic",
            TrainInterpolation::Random => "random",
        }
    }
}

impl From<Interpolation> for TrainInterpolation {
    fn from(i: Interpolation) -> Self {
        match i {
            Interpolation::Bilinear => TrainInterpolation::Bilinear,
            Interpolation::Bicubic => TrainInterpolation::Bicubic,
        }
    }
}

impl fmt::Display for TrainInterpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TrainInterpolation {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        if s.trim().eq_ignore_ascii_case("random") {
            return Ok(TrainInterpolation::Random);
        }
        s.parse::<Interpolation>().map(Into::into).map_err(|_| {
            DataError::Config(format!(
                "unknown train interpolation '{s}'; expected bilinear, bicubic or random"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for i in Interpolation::ALL {
            assert_eq!(i.name().parse::<Interpolation>().unwrap(), i);
        }
        for t in [
            TrainInterpolation::Bilinear,
            TrainInterpolation::Bicubic,
            TrainInterpolation::Random,
        ] {
            assert_eq!(t.to_string().parse::<TrainInterpolation>().unwrap(), t);
        }
        assert_eq!(
            " BiCubic ".parse::<Interpolation>().unwrap(),
            Interpolation::Bicubic
        );
        let e = "random".parse::<Interpolation>().unwrap_err().to_string();
        assert!(e.contains("random") && e.contains("bicubic"), "{e}");
        let e = "lanczos".parse::<TrainInterpolation>().unwrap_err();
        assert!(e.to_string().contains("lanczos"), "{e}");
    }

    #[test]
    fn fixed_choices_draw_nothing_and_random_draws_both() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let before = rng.clone();
        assert_eq!(
            TrainInterpolation::Bicubic.pick(&mut rng),
            Interpolation::Bicubic
        );
        assert_eq!(
            TrainInterpolation::Bilinear.pick(&mut rng),
            Interpolation::Bilinear
        );
        assert_eq!(
            rng, before,
            "a fixed filter must leave the stream untouched"
        );
        let picks: Vec<Interpolation> = (0..200)
            .map(|_| TrainInterpolation::Random.pick(&mut rng))
            .collect();
        let bicubic = picks
            .iter()
            .filter(|&&p| p == Interpolation::Bicubic)
            .count();
        assert!((70..130).contains(&bicubic), "{bicubic} of 200");
    }

    #[test]
    fn serde_names_are_lowercase_and_default_is_bilinear() {
        #[derive(Deserialize, Serialize)]
        struct T {
            #[serde(default)]
            a: Interpolation,
            #[serde(default)]
            b: TrainInterpolation,
        }
        let t: T = toml::from_str("").unwrap();
        assert_eq!(
            (t.a, t.b),
            (Interpolation::Bilinear, TrainInterpolation::Bilinear)
        );
        let t: T = toml::from_str("a = \"bicubic\"\nb = \"random\"").unwrap();
        assert_eq!(
            (t.a, t.b),
            (Interpolation::Bicubic, TrainInterpolation::Random)
        );
        assert!(toml::from_str::<T>("a = \"random\"").is_err());
    }
}
