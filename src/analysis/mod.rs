//! Diagnostics of trained models for the papers' questions: spectral norms and the Lipschitz
//! bound of each iMLP, fixed-point convergence on real inputs, and weight symmetry of every MLP.

pub mod fixed_point;
pub mod spectral;
pub mod symmetry;
