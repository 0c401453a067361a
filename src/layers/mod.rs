//! Layers shared by every family. The elementwise and normalisation kernels are candle custom ops
//! (`ops`) with hand-written backward passes: candle's own fused LayerNorm has no backward, and
//! composing these from primitive ops costs several full passes over memory each.

pub mod bias;
pub mod context;
pub mod drop_path;
pub mod gelu;
pub mod gelu_mlp;
pub mod layer_norm;
pub mod linear;
pub mod linear_epilogue;
pub mod patch_embed;
pub mod sn_state;
pub mod spectral_norm;
pub mod token_mean;
pub mod transpose;

pub use context::{ForwardCtx, Mode, Observe, Observer, SolverStats};
pub use drop_path::{add_residual_branch, drop_path};
pub use gelu::gelu;
pub use gelu_mlp::gelu_mlp;
pub use layer_norm::{Emit, LayerNorm};
pub use linear::{Epilogue, Linear};
pub use patch_embed::PatchEmbed;
pub use spectral_norm::SoftSpectralNorm;
pub use token_mean::mean_tokens;
pub use transpose::{add_transposed, transpose12};
