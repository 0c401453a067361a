//! Adaptive Dormand–Prince RK5(4) for the continuous-time Hopfield dynamics.
//!
//! Written here because the ODE crates of the ecosystem either pin old `nalgebra` versions or need
//! fixed-size state types; this is ~60 lines, tested on an exact solution.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OdeOptions {
    pub rtol: f64,
    pub atol: f64,
    pub h0: f64,
    pub max_steps: usize,
}

impl Default for OdeOptions {
    fn default() -> Self {
        Self {
            rtol: 1e-7,
            atol: 1e-9,
            h0: 1e-3,
            max_steps: 100_000,
        }
    }
}

/// Integrates y′ = f(t, y) from y(0) = y0 to t_end; returns every accepted (t, y).
pub fn rk45(
    f: impl Fn(f64, &[f64]) -> Vec<f64>,
    y0: &[f64],
    t_end: f64,
    o: &OdeOptions,
) -> Vec<(f64, Vec<f64>)> {
    const C: [f64; 7] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
    const A: [[f64; 6]; 7] = [
        [0.0; 6],
        [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
        [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
        [
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
            0.0,
            0.0,
        ],
        [
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
            0.0,
        ],
        [
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ];
    const B5: [f64; 7] = [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ];
    const B4: [f64; 7] = [
        5179.0 / 57600.0,
        0.0,
        7571.0 / 16695.0,
        393.0 / 640.0,
        -92097.0 / 339200.0,
        187.0 / 2100.0,
        1.0 / 40.0,
    ];
    let n = y0.len();
    let (mut t, mut y, mut h) = (0.0, y0.to_vec(), o.h0);
    let mut out = vec![(0.0, y.clone())];
    for _ in 0..o.max_steps {
        if t >= t_end {
            break;
        }
        h = h.min(t_end - t);
        let mut k: Vec<Vec<f64>> = Vec::with_capacity(7);
        for s in 0..7 {
            let ys: Vec<f64> = (0..n)
                .map(|i| y[i] + h * (0..s).map(|j| A[s][j] * k[j][i]).sum::<f64>())
                .collect();
            k.push(f(t + C[s] * h, &ys));
        }
        let y5: Vec<f64> = (0..n)
            .map(|i| y[i] + h * (0..7).map(|s| B5[s] * k[s][i]).sum::<f64>())
            .collect();
        let y4: Vec<f64> = (0..n)
            .map(|i| y[i] + h * (0..7).map(|s| B4[s] * k[s][i]).sum::<f64>())
            .collect();
        // RMS of the scaled local error estimate |y5 − y4| / (atol + rtol·|y|).
        let err = ((0..n)
            .map(|i| ((y5[i] - y4[i]) / (o.atol + o.rtol * y[i].abs().max(y5[i].abs()))).powi(2))
            .sum::<f64>()
            / n.max(1) as f64)
            .sqrt();
        if err <= 1.0 {
            t += h;
            y = y5;
            out.push((t, y.clone()));
        }
        let factor = if err == 0.0 {
            5.0
        } else {
            (0.9 * err.powf(-0.2)).clamp(0.2, 5.0)
        };
        h *= factor;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_decay_and_oscillator_are_exact_to_tolerance() {
        let sol = rk45(|_, y| vec![-y[0]], &[1.0], 3.0, &OdeOptions::default());
        let (t, y) = sol.last().unwrap();
        assert!((t - 3.0).abs() < 1e-12);
        assert!((y[0] - (-3.0f64).exp()).abs() < 1e-7);
        let sol = rk45(
            |_, y| vec![y[1], -y[0]],
            &[0.0, 1.0],
            6.0,
            &OdeOptions::default(),
        );
        let (t, y) = sol.last().unwrap();
        assert!((y[0] - t.sin()).abs() < 1e-6 && (y[1] - t.cos()).abs() < 1e-6);
        assert!(
            sol.len() < 500,
            "adaptive steps expected, took {}",
            sol.len()
        );
    }
}
