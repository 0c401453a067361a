//! timm's `CosineLRScheduler` as the papers use it: linear warm-up from `warmup_lr` over
//! `warmup` units, cosine from `lr` to `min_lr` over `t_initial` units (warm-up counted inside,
//! timm's default `warmup_prefix = False`), then `min_lr` through the cool-down. Units are epochs
//! (the papers) or optimizer steps (`--sched-on step`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_lr: f64,
    /// Warm-up length in units.
    pub warmup: f64,
    /// Cosine length in units (the number of epochs before cool-down).
    pub t_initial: f64,
}

impl CosineSchedule {
    /// Learning rate at time `t` (units since the start; fractional for per-step use).
    pub fn lr_at(&self, t: f64) -> f64 {
        if t < self.warmup {
            return self.warmup_lr + t * (self.lr - self.warmup_lr) / self.warmup;
        }
        if t >= self.t_initial {
            return self.min_lr;
        }
        self.min_lr
            + 0.5
                * (self.lr - self.min_lr)
                * (1.0 + (std::f64::consts::PI * t / self.t_initial).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_cosine_cooldown() {
        let s = CosineSchedule {
            lr: 5e-4,
            min_lr: 1e-6,
            warmup_lr: 1e-6,
            warmup: 20.0,
            t_initial: 300.0,
        };
        assert_eq!(s.lr_at(0.0), 1e-6);
        assert!((s.lr_at(10.0) - (1e-6 + 10.0 * (5e-4 - 1e-6) / 20.0)).abs() < 1e-15);
        // timm: no warm-up prefix, so epoch 20 is already on the cosine at t = 20.
        let c20 = 1e-6 + 0.5 * (5e-4 - 1e-6) * (1.0 + (std::f64::consts::PI * 20.0 / 300.0).cos());
        assert!((s.lr_at(20.0) - c20).abs() < 1e-15);
        assert!((s.lr_at(150.0) - (1e-6 + 0.5 * (5e-4 - 1e-6))).abs() < 1e-15);
        assert_eq!(s.lr_at(300.0), 1e-6);
        assert_eq!(s.lr_at(305.0), 1e-6, "cool-down epochs stay at min_lr");
        let mut prev = f64::INFINITY;
        for t in 20..300 {
            let lr = s.lr_at(t as f64);
            assert!(lr <= prev);
            prev = lr;
        }
    }
}
