//! PNG figures with plotters: training curves, confusion matrices, generic line charts.
//! Every figure is drawn to a temporary file and renamed into place.
//!
//! Text uses an embedded DejaVu Sans (plotters' `ab_glyph` backend): no fontconfig/freetype
//! system libraries, so the binary draws its figures on any machine.

use std::path::{Path, PathBuf};

use crate::files::FileError;

mod error_bars;
pub use error_bars::{error_bars, Band, ErrorSeries};

use plotters::prelude::*;
use thiserror::Error;

/// Why a figure could not be drawn.
#[derive(Debug, Error)]
pub enum PlotError {
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// plotters failed while drawing or encoding the PNG.
    #[error("cannot draw {}: {problem}", path.display())]
    Draw { path: PathBuf, problem: String },
    /// The finished figure could not be moved into place.
    #[error(transparent)]
    File(#[from] FileError),
}

impl PlotError {
    fn draw(path: &Path, problem: impl std::fmt::Display) -> Self {
        PlotError::Draw {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        }
    }
}

/// Result alias of the figures.
pub type Result<T> = std::result::Result<T, PlotError>;

/// One named curve of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Registers the embedded font once per process.
fn ensure_font() -> Result<()> {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *FONT.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

pub(crate) fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plot.png");
    path.with_file_name(format!(".{name}.{}.tmp.png", std::process::id()))
}

/// Moves a drawn figure into place, or removes the temporary file of a failed one.
pub(crate) fn finish(tmp: &Path, path: &Path, drawn: Result<()>) -> Result<()> {
    let moved = drawn.and_then(|()| {
        std::fs::rename(tmp, path)
            .map_err(|e| FileError::new(format!("move {} to", tmp.display()), path, e).into())
    });
    if moved.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    moved
}

/// Draws side-by-side line charts (one panel per entry) into one PNG.
pub fn line_panels(path: &Path, panels: &[(&str, &str, &str, Vec<Series>)]) -> Result<()> {
    ensure_font()?;
    let tmp = temp_path(path);
    let drawn = (|| -> Result<()> {
        let width = 520 * panels.len().max(1) as u32;
        let root = BitMapBackend::new(&tmp, (width, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError::draw(path, e))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (area, (title, xlabel, ylabel, series)) in areas.iter().zip(panels) {
            let pts = series.iter().flat_map(|s| s.points.iter());
            let (mut x0, mut x1, mut y0, mut y1) = (
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
            );
            for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
            if !x0.is_finite() {
                (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
            }
            if x1 <= x0 {
                x1 = x0 + 1.0;
            }
            let pad = ((y1 - y0) * 0.05).max(1e-9);
            let mut chart = ChartBuilder::on(area)
                .caption(*title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
                .map_err(|e| PlotError::draw(path, e))?;
            chart
                .configure_mesh()
                .x_desc(*xlabel)
                .y_desc(*ylabel)
                .draw()
                .map_err(|e| PlotError::draw(path, e))?;
            for (i, s) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| PlotError::draw(path, e))?
                    .label(s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| PlotError::draw(path, e))?;
        }
        root.present().map_err(|e| PlotError::draw(path, e))?;
        Ok(())
    })();
    finish(&tmp, path, drawn)
}

/// A confusion matrix as a heat map (rows: true class, columns: predicted), row-normalised.
pub fn confusion_matrix(path: &Path, confusion: &[Vec<usize>], classes: &[String]) -> Result<()> {
    ensure_font()?;
    let k = confusion.len().max(1);
    let tmp = temp_path(path);
    let drawn = (|| -> Result<()> {
        let root = BitMapBackend::new(&tmp, (760, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError::draw(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("confusion matrix (row-normalised)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(90)
            .y_label_area_size(120)
            .build_cartesian_2d(0..k, 0..k)
            .map_err(|e| PlotError::draw(path, e))?;
        let name = |i: &usize| classes.get(*i).cloned().unwrap_or_else(|| i.to_string());
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(k)
            .y_labels(k)
            .x_label_formatter(&name)
            .y_label_formatter(&|i| name(&(k - 1 - *i)))
            .x_desc("predicted")
            .y_desc("true")
            .draw()
            .map_err(|e| PlotError::draw(path, e))?;
        let cells = confusion.iter().enumerate().flat_map(|(t, row)| {
            let total = row.iter().sum::<usize>().max(1) as f64;
            row.iter()
                .enumerate()
                .map(move |(p, &c)| (t, p, c as f64 / total))
        });
        chart
            .draw_series(cells.map(|(t, p, v)| {
                let shade = (255.0 * (1.0 - v)) as u8;
                Rectangle::new(
                    [(p, k - 1 - t), (p + 1, k - t)],
                    RGBColor(shade, shade, 255).filled(),
                )
            }))
            .map_err(|e| PlotError::draw(path, e))?;
        root.present().map_err(|e| PlotError::draw(path, e))?;
        Ok(())
    })();
    finish(&tmp, path, drawn)
}
