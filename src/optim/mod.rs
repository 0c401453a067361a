//! Optimisation: AdamW with timm's parameter groups.

pub mod adamw;

pub use adamw::{AdamW, AdamWConfig};
