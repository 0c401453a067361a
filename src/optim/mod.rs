//! Optimisation: AdamW with timm's parameter groups.

pub mod adamw;
pub mod clip;

pub use adamw::{AdamW, AdamWConfig};
