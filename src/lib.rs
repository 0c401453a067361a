//! imixer — the Hopfield-derived Mixer family (iMixer, ParaMixer / SymMixer / AsymMixer) and the
//! vanilla MLP-Mixer baselines on candle, exactly equal to the PyTorch reference.
//!
//! Module map (one concept per module):
//! - [`config`]: the serde model configuration — every architectural knob.
//! - [`registry`]: the reference model names (`mixer_s16_224`, `asymmixer_s16_224_l01`, …).
//! - [`layers`]: building blocks (fused LayerNorm / GELU ops, linear maps on either axis, soft
//!   spectral normalisation, drop-path, patch embedding).
//! - [`models`]: the MLPs, the blocks of each family and the whole network.
//! - [`params`]: named parameters and buffers in reference state_dict order, initialisation.
//! - [`checkpoint`]: safetensors load/save under the reference names, atomically.
//! - [`optim`]: AdamW with timm's parameter groups.

pub mod analysis;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod hopfield;
pub mod layers;
pub mod models;
pub mod optim;
pub mod params;
pub mod plot;
pub mod registry;
pub mod train;

pub use config::{Family, IMixerConfig, ModelConfig};
pub use models::MixerNet;
