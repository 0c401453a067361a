//! Mean ± std against a numeric setting: one line with error bars per series, and reference
//! bands (mean ± std of settings without that field, e.g. other model families) across the
//! whole width. The figure of every sweep plot.

use std::path::Path;

use plotters::prelude::*;

use super::{ensure_font, finish, temp_path, PlotError, Result};

/// One line: (x, mean, std) points.
pub struct ErrorSeries {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// A horizontal reference band: mean ± std.
pub struct Band {
    pub name: String,
    pub mean: f64,
    pub std: f64,
}

/// Draws `series` and `bands` into `path`. With `log_x`, x is drawn as log10 and x = 0 (λ = 0)
/// one decade left of the smallest positive value, which the axis label says.
pub fn error_bars(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    log_x: bool,
    series: &[ErrorSeries],
    bands: &[Band],
) -> Result<()> {
    ensure_font()?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let min_pos = xs
        .clone()
        .filter(|x| *x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let has_zero = log_x && xs.clone().any(|x| x <= 0.0);
    let zero_at = if min_pos.is_finite() {
        min_pos.log10().floor() - 1.0
    } else {
        0.0
    };
    let tx = |x: f64| {
        if !log_x {
            x
        } else if x > 0.0 {
            x.log10()
        } else {
            zero_at
        }
    };
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for s in series {
        for &(x, m, sd) in &s.points {
            x0 = x0.min(tx(x));
            x1 = x1.max(tx(x));
            y0 = y0.min(m - sd);
            y1 = y1.max(m + sd);
        }
    }
    for b in bands {
        y0 = y0.min(b.mean - b.std);
        y1 = y1.max(b.mean + b.std);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let xpad = ((x1 - x0) * 0.05).max(0.25);
    let ypad = ((y1 - y0) * 0.08).max(1e-6);
    // Headroom for the legend (upper right), so that it covers no data: about one line of the
    // 540-px figure per entry.
    let entries = (series.len() + bands.len()) as f64;
    let legend = (y1 - y0 + 2.0 * ypad) * (0.05 * entries + 0.04);
    let (x0, x1, y0, y1) = (x0 - xpad, x1 + xpad, y0 - ypad, y1 + ypad + legend);
    let xdesc = match (log_x, has_zero) {
        (true, true) => format!("{xlabel} (log scale; 0 drawn at the left end)"),
        (true, false) => format!("{xlabel} (log scale)"),
        _ => xlabel.to_string(),
    };
    let tmp = temp_path(path);
    let drawn = (|| -> Result<()> {
        let root = BitMapBackend::new(&tmp, (860, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError::draw(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| PlotError::draw(path, e))?;
        let xfmt = |v: &f64| {
            if !log_x {
                format!("{v}")
            } else if has_zero && (*v - zero_at).abs() < 1e-9 {
                "0".to_string()
            } else if (*v - v.round()).abs() < 1e-9 {
                format!("1e{}", v.round())
            } else {
                String::new()
            }
        };
        let ticks = if log_x {
            ((x1 - x0).ceil() as usize + 1).max(2)
        } else {
            10
        };
        chart
            .configure_mesh()
            .x_desc(xdesc)
            .y_desc(ylabel)
            .x_labels(ticks)
            .x_label_formatter(&xfmt)
            .draw()
            .map_err(|e| PlotError::draw(path, e))?;
        for (i, b) in bands.iter().enumerate() {
            let color = Palette99::pick(series.len() + i).to_rgba();
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, b.mean - b.std), (x1, b.mean + b.std)],
                    color.mix(0.18).filled(),
                )))
                .map_err(|e| PlotError::draw(path, e))?;
            chart
                .draw_series(LineSeries::new(
                    [(x0, b.mean), (x1, b.mean)],
                    color.stroke_width(2),
                ))
                .map_err(|e| PlotError::draw(path, e))?
                .label(b.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64, f64)> =
                s.points.iter().map(|&(x, m, sd)| (tx(x), m, sd)).collect();
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(x, m, _)| (x, m)),
                    color.stroke_width(2),
                ))
                .map_err(|e| PlotError::draw(path, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&(x, m, sd)| {
                    ErrorBar::new_vertical(x, m - sd, m, m + sd, color.stroke_width(2), 8)
                }))
                .map_err(|e| PlotError::draw(path, e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| PlotError::draw(path, e))?;
        root.present().map_err(|e| PlotError::draw(path, e))?;
        Ok(())
    })();
    finish(&tmp, path, drawn)
}
