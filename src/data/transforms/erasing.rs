//! timm `RandomErasing` (`timm/data/random_erasing.py`) with `mode='pixel'`, `max_count=1`.
//!
//! Runs on the *normalised* CHW tensor (timm applies it after `Normalize`), so the per-pixel
//! N(0, 1) noise it paints matches the statistics of normalised data.

use rand::Rng;
use rand_distr::StandardNormal;

use super::geometry::{py_round, uniform};
use super::Image;

/// Random-erasing parameters (timm defaults except the probability, which the recipe sets).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomErasing {
    /// Probability of erasing anything at all.
    pub prob: f64,
    /// Erased area as a fraction of the image: uniform in `[min_area, max_area]`.
    pub min_area: f64,
    pub max_area: f64,
    /// Aspect ratio log-uniform in `[min_aspect, 1 / min_aspect]`.
    pub min_aspect: f64,
}

impl RandomErasing {
    /// timm defaults (`min_area` 0.02, `max_area` 1/3, `min_aspect` 0.3) with probability `prob`.
    pub fn new(prob: f64) -> Self {
        RandomErasing {
            prob,
            min_area: 0.02,
            max_area: 1.0 / 3.0,
            min_aspect: 0.3,
        }
    }

    /// timm `RandomErasing._erase`: returns the erased `(top, left, h, w)`, if any.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        img: &mut Image,
        rng: &mut R,
    ) -> Option<(usize, usize, usize, usize)> {
        if rng.gen::<f64>() > self.prob {
            return None;
        }
        let area = (img.h * img.w) as f64;
        let (log_lo, log_hi) = (self.min_aspect.ln(), (1.0 / self.min_aspect).ln());
        for _ in 0..10 {
            let target_area = uniform(rng, self.min_area, self.max_area) * area;
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let h = py_round((target_area * aspect).sqrt()) as usize;
            let w = py_round((target_area / aspect).sqrt()) as usize;
            if w < img.w && h < img.h {
                let top = rng.gen_range(0..=img.h - h);
                let left = rng.gen_range(0..=img.w - w);
                // torch fills a (C, h, w) tensor with normal_(): channel-major order
                for c in 0..img.c {
                    for y in top..top + h {
                        for x in left..left + w {
                            img.data[(c * img.h + y) * img.w + x] = rng.sample(StandardNormal);
                        }
                    }
                }
                return Some((top, left, h, w));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn erases_exactly_one_rectangle_of_plausible_size() {
        let mut hits = 0;
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut img = Image {
                c: 3,
                h: 20,
                w: 24,
                data: vec![7.0; 3 * 20 * 24],
            };
            let Some((t, l, h, w)) = RandomErasing::new(1.0).apply(&mut img, &mut rng) else {
                continue;
            };
            hits += 1;
            let area = (h * w) as f64 / (20.0 * 24.0);
            assert!(
                area <= 0.34 + 0.1 && t + h <= 20 && l + w <= 24,
                "{t} {l} {h} {w}"
            );
            for c in 0..3 {
                for y in 0..20 {
                    for x in 0..24 {
                        let v = img.data[(c * 20 + y) * 24 + x];
                        let inside = (t..t + h).contains(&y) && (l..l + w).contains(&x);
                        assert_eq!(v == 7.0, !inside, "pixel ({c},{y},{x})");
                    }
                }
            }
        }
        assert!(hits >= 45, "{hits}");
        let mut img = Image {
            c: 1,
            h: 8,
            w: 8,
            data: vec![1.0; 64],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(RandomErasing::new(0.0).apply(&mut img, &mut rng), None);
        assert!(img.data.iter().all(|&v| v == 1.0));
    }
}
