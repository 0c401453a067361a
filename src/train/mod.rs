//! Training: configuration, schedule, the optimisation step, the loop, evaluation, checkpoints.

pub mod config;
pub mod eval;
pub mod metrics;
pub mod schedule;
pub mod state;
pub mod step;
pub mod trainer;

pub use config::TrainConfig;
pub use metrics::EpochMetrics;
pub use step::{train_step, StepOutput, Targets};
pub use trainer::{train, RunOptions, TrainSummary};
