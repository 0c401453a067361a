//! The two run-time choices behind every op: fused CPU kernel or portable composition
//! ([`KernelPath`]), and, for the fused kernels, the widest vector ISA the CPU has ([`Isa`]).
//!
//! Both are process-wide settings, read once from the environment (`IMIXER_KERNELS`,
//! `IMIXER_ISA`) and settable from code ([`set_kernel_path`], [`set_isa`]) — a benchmark or a test
//! that compares the paths sets them before its first forward. Changing them while a forward runs
//! is allowed but makes that forward mix implementations (each op reads the setting once).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use candle_core::{DType, Tensor};

/// Which implementation the layers use where both exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Our fused CPU custom ops (on CPU f32/f64 tensors; other tensors still go portable).
    Fused,
    /// candle's composed ops everywhere: what CUDA runs, and the reference for the fused ops.
    Portable,
}

/// The vector instruction set imixer's fused CPU kernels run with (gemm, which does the matmuls,
/// picks its own microkernels from the CPU's features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The build's baseline (x86-64-v3: 8-lane f32 AVX2 with FMA; the compiler's choice elsewhere).
    Baseline,
    /// AVX-512 F/BW/DQ/VL: 16-lane f32 registers, on CPUs that report all four.
    Avx512,
}

impl KernelPath {
    /// `fused` or `portable` (the values of `IMIXER_KERNELS`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "fused" => Ok(Self::Fused),
            "portable" => Ok(Self::Portable),
            other => Err(format!(
                "IMIXER_KERNELS={other:?} is not a kernel path: use `fused` (the default) or `portable`"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fused => "fused",
            Self::Portable => "portable",
        }
    }
}

impl Isa {
    /// The widest ISA this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Self::Avx512;
            }
        }
        Self::Baseline
    }

    /// `avx2` (the baseline) or `avx512` (the values of `IMIXER_ISA`); asking for more than the
    /// CPU has is an error, since the kernels would die on an illegal instruction.
    pub fn parse(s: &str) -> Result<Self, String> {
        let wanted = match s.trim() {
            "avx2" | "baseline" => Self::Baseline,
            "avx512" => Self::Avx512,
            other => {
                return Err(format!(
                    "IMIXER_ISA={other:?} is not an ISA: use `avx2` or `avx512` (default: the widest the CPU has)"
                ))
            }
        };
        if wanted > Self::detect() {
            return Err(format!(
                "IMIXER_ISA={s}: this CPU does not report AVX-512 F/BW/DQ/VL; use `avx2` or unset IMIXER_ISA"
            ));
        }
        Ok(wanted)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "avx2",
            Self::Avx512 => "avx512",
        }
    }
}

/// The precision of the matmuls (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (golden-exact with the reference).
    #[default]
    Fp32,
    /// Autocast in PyTorch's sense: every model matmul (forward and backward) takes bfloat16
    /// inputs and accumulates in f32; weights, optimizer state, LayerNorm statistics, the loss
    /// and the spectral-norm power iteration and σ stay f32, and so do the matmul outputs.
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "fp32" | "f32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "precision {other:?} is not one of `fp32` (the default) or `bf16`"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

std::thread_local! {
    /// This thread's [`with_precision`] override of the process-wide setting, if any.
    static SCOPED_PRECISION: std::cell::Cell<Option<Precision>> = const { std::cell::Cell::new(None) };
}

/// The current matmul precision: this thread's [`with_precision`] scope if it is in one, else the
/// process-wide setting (f32 unless [`crate::kernels::set_precision`] said otherwise). Ops read it
/// once, on the thread that builds them.
#[inline]
pub fn precision() -> Precision {
    if let Some(p) = SCOPED_PRECISION.with(std::cell::Cell::get) {
        return p;
    }
    match PRECISION.load(Ordering::Relaxed) {
        1 => Precision::Bf16,
        _ => Precision::Fp32,
    }
}

/// Runs `f` with the ops this thread builds at precision `p`, leaving the process-wide setting
/// (and every other thread) alone. Why: a unit test that compares a bf16 op against its f32
/// peer must not switch the whole process, where the tests beside it expect f32 bits.
pub fn with_precision<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    /// Restores the enclosing scope's setting even if `f` panics.
    struct Restore(Option<Precision>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED_PRECISION.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED_PRECISION.with(|s| s.replace(Some(p))));
    f()
}

/// Sets the matmul precision of every following op in the process and returns the one before
/// (`kernels::set_precision` adds the one-time note on how the CPU runs bf16).
pub fn swap_precision(p: Precision) -> Precision {
    match PRECISION.swap(u8::from(p == Precision::Bf16), Ordering::Relaxed) {
        1 => Precision::Bf16,
        _ => Precision::Fp32,
    }
}

/// The CPU's feature flags as `lscpu` names them (read from `/proc/cpuinfo`: the standard
/// library's AMX detection is not stable Rust).
pub fn cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().skip(2).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The CPU's vendor as `/proc/cpuinfo` names it (`GenuineIntel`, `AuthenticAMD`; empty where
/// the file says nothing).
pub fn cpu_vendor() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("vendor_id"))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

const UNSET: u8 = 0;

static PATH: AtomicU8 = AtomicU8::new(UNSET);
static ISA: AtomicU8 = AtomicU8::new(UNSET);

fn path_code(p: KernelPath) -> u8 {
    match p {
        KernelPath::Fused => 1,
        KernelPath::Portable => 2,
    }
}

fn isa_code(i: Isa) -> u8 {
    match i {
        Isa::Baseline => 1,
        Isa::Avx512 => 2,
    }
}

/// Reads `IMIXER_KERNELS` and `IMIXER_ISA`, so that a bad value is an error at start-up instead
/// of a warning at the first op. The command-line tool calls this before anything else.
pub fn init_from_env() -> Result<(KernelPath, Isa), String> {
    let path = match std::env::var("IMIXER_KERNELS") {
        Ok(v) => KernelPath::parse(&v)?,
        Err(_) => KernelPath::Fused,
    };
    let isa = match std::env::var("IMIXER_ISA") {
        Ok(v) => Isa::parse(&v)?,
        Err(_) => Isa::detect(),
    };
    set_kernel_path(path);
    set_isa(isa);
    Ok((path, isa))
}

/// The environment's setting, or the default with a warning on a bad value (library callers
/// that never ran [`init_from_env`]).
fn from_env_or_default<T: Copy>(var: &str, parse: fn(&str) -> Result<T, String>, default: T) -> T {
    match std::env::var(var) {
        Ok(v) => parse(&v).unwrap_or_else(|e| {
            eprintln!("warning: {e}; using the default");
            default
        }),
        Err(_) => default,
    }
}

/// The current kernel path.
pub fn kernel_path() -> KernelPath {
    match PATH.load(Ordering::Relaxed) {
        1 => KernelPath::Fused,
        2 => KernelPath::Portable,
        _ => {
            let p = from_env_or_default("IMIXER_KERNELS", KernelPath::parse, KernelPath::Fused);
            // A concurrent first call reads the same environment: either store is the same value.
            PATH.store(path_code(p), Ordering::Relaxed);
            p
        }
    }
}

pub fn set_kernel_path(p: KernelPath) {
    PATH.store(path_code(p), Ordering::Relaxed);
}

/// The ISA the fused kernels use now.
#[inline]
pub fn isa() -> Isa {
    match ISA.load(Ordering::Relaxed) {
        1 => Isa::Baseline,
        2 => Isa::Avx512,
        _ => {
            let i = from_env_or_default("IMIXER_ISA", Isa::parse, Isa::detect());
            ISA.store(isa_code(i), Ordering::Relaxed);
            i
        }
    }
}

/// Caps the fused kernels at `isa` (never above what the CPU reports: a wider request is
/// lowered to [`Isa::detect`], since running it would be an illegal instruction).
pub fn set_isa(isa: Isa) {
    ISA.store(isa_code(isa.min(Isa::detect())), Ordering::Relaxed);
}

static FUSED_CALLS: AtomicU64 = AtomicU64::new(0);

/// Whether the fused CPU kernel runs on `t`: a CPU tensor of a dtype our kernels are written for,
/// with the fused path selected. Everything else takes the portable composition.
pub fn fused(t: &Tensor) -> bool {
    let yes = t.device().is_cpu()
        && matches!(t.dtype(), DType::F32 | DType::F64)
        && kernel_path() == KernelPath::Fused;
    if yes {
        FUSED_CALLS.fetch_add(1, Ordering::Relaxed);
    }
    yes
}

/// How many times a layer has chosen a fused kernel in this process: a test that forces the
/// portable path checks that this stays put, i.e. that no layer bypasses the choice.
pub fn fused_calls() -> u64 {
    FUSED_CALLS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope sets this thread's precision only, nests, and ends with its closure — also when
    /// the closure panics.
    #[test]
    fn a_precision_scope_is_this_threads_alone() {
        let global = precision();
        with_precision(Precision::Bf16, || {
            assert_eq!(precision(), Precision::Bf16);
            let other = std::thread::spawn(precision).join().unwrap();
            assert_eq!(other, global, "the scope leaked to another thread");
            with_precision(Precision::Fp32, || assert_eq!(precision(), Precision::Fp32));
            assert_eq!(precision(), Precision::Bf16);
        });
        assert_eq!(precision(), global);
        let panicked = std::panic::catch_unwind(|| {
            with_precision(Precision::Bf16, || panic!("inside the scope"));
        });
        assert!(panicked.is_err());
        assert_eq!(precision(), global);
    }

    #[test]
    fn names_parse_back() {
        for p in [KernelPath::Fused, KernelPath::Portable] {
            assert_eq!(KernelPath::parse(p.name()), Ok(p));
        }
        assert!(KernelPath::parse("gpu")
            .unwrap_err()
            .contains("`fused` (the default) or `portable`"));
        assert_eq!(Isa::parse("avx2"), Ok(Isa::Baseline));
        assert!(Isa::parse("sse9").is_err());
        match Isa::detect() {
            Isa::Avx512 => assert_eq!(Isa::parse("avx512"), Ok(Isa::Avx512)),
            Isa::Baseline => assert!(Isa::parse("avx512").unwrap_err().contains("AVX-512")),
        }
    }
}
