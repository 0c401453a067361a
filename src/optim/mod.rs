//! Optimisation: AdamW with timm's parameter groups.

pub mod adamw;
pub mod adamw_kernels;
pub mod clip;

pub use adamw::{AdamW, AdamWConfig};
