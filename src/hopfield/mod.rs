//! The Hopfield side of the papers: Lagrangians and their activations, hierarchical associative
//! memories (HAM) with energy and dynamics, and the energy of SymMixer blocks.
//!
//! A layer with convex Lagrangian L has activation g = ∇L(x). A HAM made of layers and dense
//! synapses has the energy
//!
//! E = Σ_layers [x·g − L(x)] − Σ_synapses g_bᵀ ξ g_a,
//!
//! whose derivative with respect to a layer's activation is ∂E/∂g_l = x_l − I_l (I_l: the input
//! current from the synapses). The dynamics τ dx/dt = I − x = −∂E/∂g never increase E when the
//! couplings are symmetric, because dE/dt = −τ⁻¹ Σ (∂E/∂g)ᵀ ∇²L (∂E/∂g) ≤ 0 for convex L.
//!
//! Everything here is f64 on plain slices: the properties are exact identities, checked to
//! round-off.

pub mod energy_metaformer;
pub mod ham;
pub mod lagrangian;
pub mod mixer_energy;
pub mod ode;

pub use ham::{Ham, Layer, Synapse};
pub use lagrangian::Lagrangian;
