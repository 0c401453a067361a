//! imixer — the Hopfield-derived Mixer family (iMixer, ParaMixer / SymMixer / AsymMixer) and the
//! vanilla MLP-Mixer baselines on [candle](https://github.com/huggingface/candle), equal to the
//! authors' PyTorch code (the reference tensors in `tests/golden/`). The models and their
//! equations: `docs/models.md`.
//!
//! # Architecture
//!
//! ```text
//! imixer binary: src/main.rs + src/cli/ (argument parsing and printing, one file per subcommand)
//!  ├─ train ── data (readers, augmentation, deterministic loader) ── optim (AdamW)
//!  │    └──── models (MLPs, iMLP + solvers, blocks, MixerNet) ── layers (ops) ── kernels (CPU)
//!  ├─ eval / predict / inspect ── analysis (spectral norms, fixed points, symmetry)
//!  ├─ dynamics / energy-demo ── hopfield (Lagrangians, energies, RK45)
//!  ├─ sweep ── runs `train` per setting × seed, statistics over seeds
//!  ├─ export ── checkpoint (any format → model-only safetensors)
//!  └─ bench (timed steps)              plot (PNG figures) is shared by all of them
//! config + registry: what a model is;   params + checkpoint: its named tensors on disk
//! device (cpu | cuda[:N]);   threads (one call sizes every pool)
//! ```
//!
//! The library has no command line: the CLI is the binary's. Library functions return typed
//! errors (thiserror) that callers match on, one per module: [`data::DataError`],
//! [`device::DeviceError`], [`checkpoint::CheckpointError`] (with [`checkpoint::torch::TorchError`]
//! for malformed PyTorch files), [`train::TrainError`], [`sweep::SweepError`],
//! [`plot::PlotError`], [`bench::BenchError`] and [`files::FileError`]; each wraps the errors of
//! the modules it calls, so a caller can look through to the cause.
//!
//! A model is a [`ModelConfig`] (every knob, serialisable) built into a [`MixerNet`] whose
//! parameters carry the reference `state_dict` names, so checkpoints move between PyTorch and
//! imixer by name. Each layer calls one op; the op, not the model, chooses between a fused CPU
//! kernel with a hand-written backward and the same function composed from candle's operations,
//! which runs on any candle device. Every random choice is a function of the seed and the
//! position in the run, so a run is reproducible bit for bit and resumable after any interruption.
//!
//! Module map (one concept per module):
//! - [`config`]: the serde model configuration — every architectural knob.
//! - [`registry`]: the reference model names (`mixer_s16_224`, `asymmixer_s16_224_l01`, …).
//! - [`layers`]: building blocks (LayerNorm, Linear with a fused [`layers::Epilogue`], the GELU
//!   MLP [`layers::gelu_mlp()`], soft spectral normalisation, drop-path, patch embedding) and the state a forward carries
//!   ([`layers::ForwardCtx`]: mode and RNG, spectral-norm updates committed once, an observer
//!   that records only what it is asked for). Every layer acts on the last axis and has one
//!   `forward`; the blocks bring the token axis last for token mixing.
//! - [`kernels`]: the CPU kernels (AVX2/AVX-512 chosen at run time, bf16 on AMX or AVX512-BF16
//!   through oneDNN) and the one switch between them and the portable candle compositions.
//! - [`models`]: the MLPs, the iMLP's residual map F and solvers, the blocks of each family and
//!   the whole network.
//! - [`params`]: named parameters and buffers in reference state_dict order, initialisation.
//! - [`checkpoint`]: safetensors load/save under the reference names, atomically; reading of
//!   PyTorch `torch.save` files without Python, and model settings read off tensor shapes.
//! - [`optim`]: AdamW with timm's parameter groups.
//! - [`sweep`]: grids of training settings × seeds, run side by side and resumably, with mean ±
//!   std per setting and error-bar plots.
//! - [`device`]: `cpu` / `cuda[:N]` from their names, with errors that say what to do.
//! - [`threads`]: the thread count of every pool, as one call.
//! - [`files`]: atomic writes (temporary file, fsync, rename) for everything imixer saves.

pub mod analysis;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod files;
pub mod hopfield;
pub mod kernels;
pub mod layers;
pub mod models;
pub mod optim;
pub mod params;
pub mod plot;
pub mod registry;
pub mod sweep;
pub mod threads;
pub mod train;

pub use config::{Family, IMixerConfig, ModelConfig};
pub use models::MixerNet;
