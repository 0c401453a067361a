//! `--precision` and `--device`: where and how a command that runs a model runs it. One flattened
//! group, so eval, predict, inspect and bench say the same thing and apply it the same way.

use candle_core::Device;
use clap::Args;

use imixer::kernels::Precision;

#[derive(Args, Clone, Debug)]
pub struct ExecArgs {
    /// Matmul precision: fp32 (default) or bf16 (bfloat16 matmul inputs, f32 accumulation).
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// Compute device: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ExecArgs {
    /// Sets the process's matmul precision and opens the device; a device this build or
    /// machine lacks is an error that says what to do.
    pub fn apply(&self) -> anyhow::Result<Device> {
        imixer::kernels::set_precision(self.precision);
        Ok(imixer::device::open(&self.device)?)
    }
}
