//! `--device cpu|cuda[:N]`: the compute device, parsed once with errors that say what to do.
//!
//! On the CPU the layers run the fused kernels; on CUDA they run the portable candle composition
//! (`crate::kernels`), the path the golden suite also checks on the CPU (`IMIXER_KERNELS=portable`).
//! Data-parallel shards (`train::Shards`) split a batch over CPU cores; on a GPU a batch runs as
//! one shard.

use candle_core::Device;

/// Why a `--device` value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device {0:?} is not a device: use `cpu`, `cuda` or `cuda:N` (N = GPU index)")]
    Unknown(String),
    #[error(
        "--device {0}: this imixer was built without CUDA support; build it with \
         `source scripts/cuda_env.sh && cargo build --release --features cuda`, or use --device cpu"
    )]
    NoCudaSupport(String),
    #[error(
        "--device {spec}: no usable NVIDIA GPU ({reason}); check the driver with `nvidia-smi`, \
         or use --device cpu"
    )]
    NoGpu { spec: String, reason: String },
}

/// Where to run, as given on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device: a clear error when this build has no CUDA support or the GPU cannot be
    /// opened. A panic inside the driver bindings is caught and becomes the same error (the
    /// default panic hook may still print its message first).
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(DeviceError::NoCudaSupport(self.to_string()));
                }
                // candle's CUDA back end can panic inside the driver bindings when no driver is
                // loaded; turn that into the same error as a returned failure.
                let opened = std::panic::catch_unwind(|| Device::new_cuda(n));
                match opened {
                    Ok(Ok(dev)) => Ok(dev),
                    Ok(Err(e)) => Err(DeviceError::NoGpu {
                        spec: self.to_string(),
                        reason: e.to_string(),
                    }),
                    Err(_) => Err(DeviceError::NoGpu {
                        spec: self.to_string(),
                        reason: "the CUDA driver could not be loaded".to_string(),
                    }),
                }
            }
        }
    }
}

/// Parses and opens `spec` (a `--device` value).
pub fn open(spec: &str) -> Result<Device, DeviceError> {
    spec.parse::<DeviceSpec>()?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_to_use() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["tpu", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("`cpu`, `cuda` or `cuda:N`"), "{bad}: {e}");
        }
        assert!(open("cpu").unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_the_fix() {
        let e = open("cuda:0").unwrap_err().to_string();
        assert!(
            e.contains("built without CUDA support") && e.contains("--features cuda"),
            "{e}"
        );
    }
}
