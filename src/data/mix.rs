//! Mixup / CutMix with label smoothing on a whole batch — timm `timm/data/mixup.py`, `Mixup` with
//! `mode='batch'`.
//!
//! One λ per batch: with probability `prob` the batch is mixed, CutMix being chosen with
//! probability `switch_prob` when both alphas are positive; λ ~ Beta(α, α). Sample `i` is mixed
//! with sample `B−1−i` (timm's `x.flip(0)`), which is why the batch must be even-sized. CutMix
//! pastes a box of area ≈ (1−λ) and, with `correct_lam`, recomputes λ from the clipped box so the
//! targets match the pixels actually pasted. Targets are smoothed one-hots mixed with the same λ.

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};

/// Mixup/CutMix settings (defaults: the papers' recipe, docs/models.md "Training recipe"; set
/// `num_classes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixupConfig {
    /// Beta(α, α) for Mixup; 0 disables Mixup.
    pub mixup_alpha: f64,
    /// Beta(α, α) for CutMix; 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// Probability of CutMix instead of Mixup when both are enabled.
    pub switch_prob: f64,
    pub label_smoothing: f64,
    /// Recompute λ from the clipped CutMix box (timm `correct_lam`, default true).
    pub correct_lam: bool,
    pub num_classes: usize,
}

impl Default for MixupConfig {
    fn default() -> Self {
        MixupConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            correct_lam: true,
            num_classes: 0,
        }
    }
}

impl MixupConfig {
    /// The papers' recipe (Mixup 0.8, CutMix 1.0, switch 0.5, smoothing 0.1) for `num_classes`.
    pub fn spec(num_classes: usize) -> Self {
        MixupConfig {
            num_classes,
            ..Default::default()
        }
    }

    /// No mixing, only label smoothing.
    pub fn smoothing_only(num_classes: usize, label_smoothing: f64) -> Self {
        MixupConfig {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            label_smoothing,
            num_classes,
            ..Default::default()
        }
    }
}

/// What [`Mixup::apply`] did to a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct MixOutcome {
    /// `B × num_classes` soft targets, row-major; each row sums to 1.
    pub targets: Vec<f32>,
    /// The (corrected) weight of each sample's own image and label; 1 = not mixed.
    pub lam: f64,
    /// `(y_lo, y_hi, x_lo, x_hi)` of the pasted CutMix box, if CutMix was used.
    pub cutmix_box: Option<(usize, usize, usize, usize)>,
}

/// A validated Mixup/CutMix configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixup {
    cfg: MixupConfig,
}

fn check_labels(labels: &[usize], num_classes: usize) -> Result<()> {
    if num_classes == 0 {
        return Err(DataError::Config(
            "num_classes must be set for soft targets".into(),
        ));
    }
    match labels.iter().find(|&&l| l >= num_classes) {
        Some(l) => Err(DataError::Config(format!(
            "label {l} is out of range for {num_classes} classes"
        ))),
        None => Ok(()),
    }
}

/// timm `mixup_target`: `lam · smooth(y) + (1 − lam) · smooth(y.flip(0))`, `B × num_classes`.
pub fn mixup_target(
    labels: &[usize],
    num_classes: usize,
    lam: f64,
    smoothing: f64,
) -> Result<Vec<f32>> {
    check_labels(labels, num_classes)?;
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let b = labels.len();
    let mut out = vec![0f32; b * num_classes];
    for (i, row) in out.chunks_exact_mut(num_classes.max(1)).enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            let y1 = if labels[i] == k { on } else { off };
            let y2 = if labels[b - 1 - i] == k { on } else { off };
            *v = (y1 * lam + y2 * (1.0 - lam)) as f32;
        }
    }
    Ok(out)
}

/// Label smoothing alone (timm `LabelSmoothingCrossEntropy` targets): on = 1 − ε + ε/K, off = ε/K.
pub fn smooth_targets(labels: &[usize], num_classes: usize, smoothing: f64) -> Result<Vec<f32>> {
    mixup_target(labels, num_classes, 1.0, smoothing)
}

/// timm `rand_bbox`: a box of side `int(side · √(1−λ))` centred uniformly, clipped to the image.
pub fn rand_bbox<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    lam: f64,
    rng: &mut R,
) -> (usize, usize, usize, usize) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let (cut_h, cut_w) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
    let cy = rng.gen_range(0..h.max(1)) as i64;
    let cx = rng.gen_range(0..w.max(1)) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    (
        clip(cy - cut_h / 2, h),
        clip(cy + cut_h / 2, h),
        clip(cx - cut_w / 2, w),
        clip(cx + cut_w / 2, w),
    )
}

/// timm `cutmix_bbox_and_lam`: the box and, with `correct_lam`, λ = 1 − box area / image area.
pub fn cutmix_bbox_and_lam<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    lam: f64,
    correct_lam: bool,
    rng: &mut R,
) -> ((usize, usize, usize, usize), f64) {
    let bbox = rand_bbox(h, w, lam, rng);
    let (yl, yh, xl, xh) = bbox;
    let lam = if correct_lam {
        1.0 - ((yh - yl) * (xh - xl)) as f64 / (h * w).max(1) as f64
    } else {
        lam
    };
    (bbox, lam)
}

impl Mixup {
    /// Validate the configuration.
    pub fn new(cfg: MixupConfig) -> Result<Self> {
        let bad = |m: String| Err(DataError::Config(format!("mixup: {m}")));
        if cfg.num_classes == 0 {
            return bad("num_classes must be set".into());
        }
        for (name, v) in [
            ("mixup_alpha", cfg.mixup_alpha),
            ("cutmix_alpha", cfg.cutmix_alpha),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} {v} must be ≥ 0"));
            }
        }
        for (name, v) in [
            ("prob", cfg.prob),
            ("switch_prob", cfg.switch_prob),
            ("label_smoothing", cfg.label_smoothing),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} {v} is not in [0, 1]"));
            }
        }
        Ok(Mixup { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &MixupConfig {
        &self.cfg
    }

    /// Whether any mixing can happen (otherwise only label smoothing is applied).
    pub fn mixing_enabled(&self) -> bool {
        self.cfg.prob > 0.0 && (self.cfg.mixup_alpha > 0.0 || self.cfg.cutmix_alpha > 0.0)
    }

    /// timm `_params_per_batch`: `(λ, use_cutmix)`.
    fn params<R: Rng + ?Sized>(&self, rng: &mut R) -> (f64, bool) {
        let c = &self.cfg;
        if !self.mixing_enabled() || rng.gen::<f64>() >= c.prob {
            return (1.0, false);
        }
        let beta = |a: f64, rng: &mut R| Beta::new(a, a).map_or(1.0, |d| d.sample(rng));
        if c.mixup_alpha > 0.0 && c.cutmix_alpha > 0.0 {
            let use_cutmix = rng.gen::<f64>() < c.switch_prob;
            let a = if use_cutmix {
                c.cutmix_alpha
            } else {
                c.mixup_alpha
            };
            (beta(a, rng), use_cutmix)
        } else if c.mixup_alpha > 0.0 {
            (beta(c.mixup_alpha, rng), false)
        } else {
            (beta(c.cutmix_alpha, rng), true)
        }
    }

    /// Mix an NCHW batch in place and return its soft targets.
    ///
    /// `shape` is `[B, C, H, W]`; `B` must be even (as timm asserts).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        images: &mut [f32],
        shape: [usize; 4],
        labels: &[usize],
        rng: &mut R,
    ) -> Result<MixOutcome> {
        let [b, c, h, w] = shape;
        if images.len() != b * c * h * w || labels.len() != b {
            return Err(DataError::Config(format!(
                "mixup: batch of shape {shape:?} has {} values and {} labels",
                images.len(),
                labels.len()
            )));
        }
        if !b.is_multiple_of(2) {
            return Err(DataError::Config(format!(
                "mixup: batch size {b} is odd; Mixup/CutMix pairs sample i with B−1−i and needs an \
                 even batch (use an even batch size and drop_last)"
            )));
        }
        check_labels(labels, self.cfg.num_classes)?;
        let (mut lam, use_cutmix) = self.params(rng);
        let mut cutmix_box = None;
        if lam != 1.0 {
            let per = c * h * w;
            let orig = images.to_vec();
            if use_cutmix {
                let (bbox, l) = cutmix_bbox_and_lam(h, w, lam, self.cfg.correct_lam, rng);
                lam = l;
                cutmix_box = Some(bbox);
                let (yl, yh, xl, xh) = bbox;
                for i in 0..b {
                    let j = b - 1 - i;
                    for ch in 0..c {
                        for y in yl..yh {
                            let row = ch * h * w + y * w;
                            images[i * per + row + xl..i * per + row + xh]
                                .copy_from_slice(&orig[j * per + row + xl..j * per + row + xh]);
                        }
                    }
                }
            } else {
                let (l, r) = (lam as f32, (1.0 - lam) as f32);
                for i in 0..b {
                    let j = b - 1 - i;
                    for k in 0..per {
                        images[i * per + k] = orig[i * per + k] * l + orig[j * per + k] * r;
                    }
                }
            }
        }
        let targets = mixup_target(labels, self.cfg.num_classes, lam, self.cfg.label_smoothing)?;
        Ok(MixOutcome {
            targets,
            lam,
            cutmix_box,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const SHAPE: [usize; 4] = [4, 2, 6, 5];

    fn batch() -> Vec<f32> {
        (0..SHAPE.iter().product::<usize>())
            .map(|i| i as f32)
            .collect()
    }

    #[test]
    fn targets_rows_sum_to_one_and_lam_in_range() {
        let m = Mixup::new(MixupConfig::spec(7)).unwrap();
        let mut cutmixes = 0;
        for seed in 0..40 {
            let mut x = batch();
            let out = m
                .apply(
                    &mut x,
                    SHAPE,
                    &[0, 3, 6, 3],
                    &mut ChaCha8Rng::seed_from_u64(seed),
                )
                .unwrap();
            assert!((0.0..=1.0).contains(&out.lam));
            cutmixes += out.cutmix_box.is_some() as usize;
            for row in out.targets.chunks(7) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        assert!((8..32).contains(&cutmixes), "{cutmixes}");
    }

    #[test]
    fn disabled_mixing_reduces_to_label_smoothing() {
        let labels = [1, 0, 2, 2];
        let smooth = smooth_targets(&labels, 3, 0.1).unwrap();
        assert!(
            (smooth[1] - (0.9 + 0.1 / 3.0)).abs() < 1e-6 && (smooth[0] - 0.1 / 3.0).abs() < 1e-6
        );
        for cfg in [
            MixupConfig::smoothing_only(3, 0.1),
            MixupConfig {
                prob: 0.0,
                ..MixupConfig::spec(3)
            },
        ] {
            let mut x = batch();
            let out = Mixup::new(cfg)
                .unwrap()
                .apply(&mut x, SHAPE, &labels, &mut ChaCha8Rng::seed_from_u64(0))
                .unwrap();
            assert_eq!(out.targets, smooth);
            assert_eq!((out.lam, out.cutmix_box), (1.0, None));
            assert_eq!(x, batch());
        }
    }

    #[test]
    fn cutmix_lam_matches_box_area_and_pixels() {
        let cfg = MixupConfig {
            mixup_alpha: 0.0,
            label_smoothing: 0.0,
            ..MixupConfig::spec(5)
        };
        let m = Mixup::new(cfg).unwrap();
        let [b, c, h, w] = SHAPE;
        let per = c * h * w;
        for seed in 0..20 {
            let mut x = batch();
            let labels = [0, 1, 2, 3];
            let out = m
                .apply(&mut x, SHAPE, &labels, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            let (yl, yh, xl, xh) = out.cutmix_box.unwrap();
            let area = ((yh - yl) * (xh - xl)) as f64;
            assert!((out.lam - (1.0 - area / (h * w) as f64)).abs() < 1e-12);
            let orig = batch();
            for i in 0..b {
                for ch in 0..c {
                    for y in 0..h {
                        for xx in 0..w {
                            let k = ch * h * w + y * w + xx;
                            let inside = (yl..yh).contains(&y) && (xl..xh).contains(&xx);
                            let src = if inside { b - 1 - i } else { i };
                            assert_eq!(x[i * per + k], orig[src * per + k]);
                        }
                    }
                }
                let row = &out.targets[i * 5..(i + 1) * 5];
                assert!((row[labels[i]] as f64 - out.lam).abs() < 1e-6);
                assert!((row[labels[b - 1 - i]] as f64 - (1.0 - out.lam)).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn mixup_blends_with_flipped_batch() {
        let cfg = MixupConfig {
            cutmix_alpha: 0.0,
            ..MixupConfig::spec(4)
        };
        let mut x = batch();
        let out = Mixup::new(cfg)
            .unwrap()
            .apply(
                &mut x,
                SHAPE,
                &[0, 1, 2, 3],
                &mut ChaCha8Rng::seed_from_u64(3),
            )
            .unwrap();
        assert!(out.cutmix_box.is_none() && out.lam < 1.0);
        let per = SHAPE[1] * SHAPE[2] * SHAPE[3];
        let orig = batch();
        let want = orig[per + 7] * out.lam as f32 + orig[2 * per + 7] * (1.0 - out.lam) as f32;
        assert_eq!(x[per + 7], want);
    }

    #[test]
    fn odd_batch_and_bad_labels_are_errors() {
        let m = Mixup::new(MixupConfig::spec(3)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut x = vec![0.0; 3 * 2 * 6 * 5];
        let e = m
            .apply(&mut x, [3, 2, 6, 5], &[0, 1, 2], &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("odd"), "{e}");
        let mut x = batch();
        assert!(m.apply(&mut x, SHAPE, &[0, 1, 2, 3], &mut rng).is_err());
        assert!(m.apply(&mut x, SHAPE, &[0, 1], &mut rng).is_err());
        assert!(Mixup::new(MixupConfig::default()).is_err());
        assert!(Mixup::new(MixupConfig {
            prob: 1.5,
            ..MixupConfig::spec(3)
        })
        .is_err());
    }
}
