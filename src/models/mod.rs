//! The MLPs, the blocks of every family, and the whole network.

pub mod blocks;
pub mod imlp;
pub mod implicit;
pub mod mlp;
pub mod net;
pub mod residual_map;

pub use blocks::Block;
pub use mlp::AnyMlp;
pub use net::MixerNet;
