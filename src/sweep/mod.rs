//! `imixer sweep`: a grid (or list) of training settings × seeds, run side by side, resumable,
//! with the mean ± std of every setting and plots of a metric against a setting.
//!
//! - [`spec`]: the sweep file;
//! - [`plan`]: its runs, with stable directory names;
//! - [`runner`]: runs them as `imixer train` processes within a thread budget;
//! - [`results`]: `results.jsonl` and the statistics over seeds;
//! - [`report`]: `summary.md` and the figures.

pub mod error;
pub mod plan;
pub mod report;
pub mod results;
pub mod runner;
pub mod spec;

pub use error::SweepError;
pub use runner::{run_sweep, SweepOptions, SweepOutcome};
pub use spec::SweepSpec;
