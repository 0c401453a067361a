//! Training: configuration, schedule, the optimisation step, the loop, evaluation, checkpoints.

pub mod config;
pub mod device_batches;
pub mod ema;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod lr_scale;
pub mod metrics;
pub mod schedule;
pub mod shards;
pub mod state;
pub mod step;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Interrupted, TrainError};
pub use metrics::EpochMetrics;
pub use shards::Shards;
pub use step::{forward_backward, train_step, BatchGrads, StepOutput, Targets};
pub use trainer::{train, RunOptions, TrainSummary};
