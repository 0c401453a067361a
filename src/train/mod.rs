//! Training: the optimisation step shared by the trainer and the benchmark.

pub mod step;

pub use step::{train_step, StepOutput, Targets};
