//! bf16 matmuls on the CPU's bf16 units — AMX tiles, or AVX512-BF16 on AMD — through oneDNN
//! loaded at run time.
//!
//! Why oneDNN: it is the matmul library of the field for these units (PyTorch's AMP reaches them
//! through it too), and Debian ships it (`libdnnl2`). gemm, which does every f32 matmul, has no
//! bf16 kernels, and tile or `vdpbf16ps` kernels written by hand would be a second gemm.
//!
//! Why loaded at run time (`dlopen` of `libdnnl.so.2`) and not linked: one binary must run on
//! every x86-64-v3 CPU, with or without the library. Only a CPU whose bf16 unit pays
//! ([`unit_for`]: AMX-BF16, or AVX512-BF16 on an AMD core), with the library installed and oneDNN
//! confirming that it runs kernels for that unit, takes this path. The handful of C entry points
//! used here are declared by hand below: no maintained Rust binding of oneDNN exists, and these
//! are the stable C ABI of oneDNN 2.x (the `.so.2` soname).
//!
//! What a call computes: the f32 operands rounded to bf16 (round to nearest even, exactly
//! [`super::rounding::round_to_bf16`]) and multiplied with f32 accumulation, into an f32 result —
//! the same products as the f32 gemm on rounded operands, summed in oneDNN's order. The
//! conversion to bf16 is ours, one pass per operand; oneDNN then reads half the bytes.
//!
//! Threads: this oneDNN build runs on OpenMP. Each call sets the calling thread's OpenMP thread
//! count to candle's thread count for that thread, so a data-parallel shard's lane (one thread)
//! runs its matmuls serially instead of starting a second team on cores its sibling uses.
//! Primitives use a user-managed scratchpad, the calling thread's own buffer, so that two shards
//! may run the same primitive at once (with oneDNN's library-managed scratchpad they would share
//! one).
//!
//! Operands are packed ([`Packed`]) to dense row- or column-major bf16 first, since a padded
//! stride sends oneDNN to a slow kernel. A shape whose primitive oneDNN would not run with its
//! brgemm (AMX/AVX-512) kernels is answered "not taken", and the caller multiplies the rounded
//! operands with gemm: the same products, so only speed depends on which ran.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::cpu::PAR_CHUNK;
use super::rounding::{bf16_bits, bf16_value};
use super::simd_kernel;

type Status = c_int;
type Handle = *mut c_void;

/// `dnnl_memory_desc_t`, an opaque struct of 696 bytes in oneDNN 2.x, which the library fills
/// and reads by pointer; room to spare so that a larger struct of a later 2.x still fits.
#[repr(C, align(8))]
struct MemoryDesc([u8; 2048]);

/// `dnnl_matmul_desc_t` (2,800 bytes in oneDNN 2.x), with the same spare room.
#[repr(C, align(8))]
struct MatmulDesc([u8; 8192]);

/// `dnnl_exec_arg_t`.
#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

const DNNL_SUCCESS: Status = 0;
const DNNL_CPU: c_int = 1;
const DNNL_BF16: c_int = 2;
const DNNL_F32: c_int = 3;
const DNNL_STREAM_IN_ORDER: c_uint = 1;
const DNNL_SCRATCHPAD_MODE_USER: c_int = 1;
const DNNL_QUERY_IMPL_INFO_STR: c_int = 8;
const DNNL_QUERY_SCRATCHPAD_MD: c_int = 136;
const DNNL_ARG_SRC: c_int = 1;
const DNNL_ARG_DST: c_int = 17;
const DNNL_ARG_WEIGHTS: c_int = 33;
const DNNL_ARG_SCRATCHPAD: c_int = 80;
/// `dnnl_cpu_isa_avx512_core_amx`: AVX-512 with AMX-BF16 and AMX-INT8 (a bit mask: each ISA's
/// bits include those of the ISAs below it).
const DNNL_ISA_AMX: c_int = 0x3e7;
/// `dnnl_cpu_isa_avx512_core_bf16`: AVX-512 with `vdpbf16ps`.
const DNNL_ISA_AVX512_BF16: c_int = 0xe7;

/// The bf16 matrix unit oneDNN runs the matmuls on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Intel's AMX-BF16 tiles (`brg:avx512_core_amx`).
    Amx,
    /// AVX512-BF16's `vdpbf16ps` (`brg:avx512_core_bf16`), taken on AMD CPUs only: see
    /// [`unit_for_this_cpu`].
    Avx512Bf16,
}

impl Unit {
    /// The name `imixer bench` reports (`onednn-amx`, `onednn-avx512-bf16`).
    pub fn engine_name(self) -> &'static str {
        match self {
            Self::Amx => "onednn-amx",
            Self::Avx512Bf16 => "onednn-avx512-bf16",
        }
    }

    /// What a user reads: "AMX-BF16 tiles", "AVX512-BF16 units".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Amx => "AMX-BF16 tiles",
            Self::Avx512Bf16 => "AVX512-BF16 units",
        }
    }

    fn isa(self) -> c_int {
        match self {
            Self::Amx => DNNL_ISA_AMX,
            Self::Avx512Bf16 => DNNL_ISA_AVX512_BF16,
        }
    }
}

/// The unit that pays on a CPU with these `lscpu` flags and this vendor, or why none does.
///
/// AMX pays: 2.2–3.7× gemm's f32 rate per thread on the channel and cifar-s products
/// (BENCHMARKS.md, "bf16 on AMX tiles"). AVX512-BF16 without AMX depends on the core. On an Intel
/// Xeon (family 6, model 207) oneDNN's bf16 matmul ran at half its own f32 rate: one 512-bit
/// `vdpbf16ps` per cycle does no more multiply-adds than its two 512-bit FMA pipes. An AMD Zen 4
/// core retires one 512-bit FMA per cycle (two 256-bit pipes) but also one 512-bit `vdpbf16ps`,
/// which is twice the multiply-adds: there it ran at 1.45–1.94× gemm's f32 per thread
/// (BENCHMARKS.md, "bf16 on AVX512-BF16 units"). Zen 4 is the first AMD core with AVX512-BF16,
/// so every AMD CPU that reports it takes this path.
pub fn unit_for(flags: &[String], vendor: &str) -> Result<Unit, String> {
    let has = |f: &str| flags.iter().any(|x| x == f);
    if has("amx_bf16") {
        Ok(Unit::Amx)
    } else if has("avx512_bf16") && vendor == "AuthenticAMD" {
        Ok(Unit::Avx512Bf16)
    } else if has("avx512_bf16") {
        Err(
            "this CPU has AVX512-BF16 but no AMX, and on Intel CPUs those units were measured \
             slower than f32 FMA (BENCHMARKS.md)"
                .into(),
        )
    } else {
        Err("this CPU reports neither AMX-BF16 nor AVX512-BF16".into())
    }
}

/// [`unit_for`] this CPU.
pub fn unit_for_this_cpu() -> Result<Unit, String> {
    unit_for(
        &super::dispatch::cpu_flags(),
        &super::dispatch::cpu_vendor(),
    )
}

/// The oneDNN entry points this module calls.
struct Api {
    memory_desc_init_by_strides:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, *const i64) -> Status,
    memory_desc_get_size: unsafe extern "C" fn(*const MemoryDesc) -> usize,
    matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    attr_set_scratchpad_mode: unsafe extern "C" fn(Handle, c_int) -> Status,
    attr_set_post_ops: unsafe extern "C" fn(Handle, Handle) -> Status,
    post_ops_create: unsafe extern "C" fn(*mut Handle) -> Status,
    post_ops_destroy: unsafe extern "C" fn(Handle) -> Status,
    post_ops_append_sum: unsafe extern "C" fn(Handle, f32) -> Status,
    pd_create: unsafe extern "C" fn(*mut Handle, *const c_void, Handle, Handle, Handle) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    pd_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    pd_query_md: unsafe extern "C" fn(Handle, c_int, c_int) -> *const MemoryDesc,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, c_uint) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    memory_create: unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, Handle) -> Status,
    memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    effective_isa: unsafe extern "C" fn() -> c_int,
    /// OpenMP's, from the runtime oneDNN links (found through the library's handle).
    omp_set_num_threads: unsafe extern "C" fn(c_int),
}

/// The loaded library and its CPU engine.
struct OneDnn {
    api: Api,
    unit: Unit,
    engine: Handle,
    /// Compiled primitives by shape; `None` for shapes oneDNN would not run on brgemm.
    primitives: Mutex<HashMap<Key, Option<Arc<Primitive>>>>,
    /// Kept loaded for the life of the process (the function pointers point into it).
    _library: libloading::Library,
}

// SAFETY: the engine handle is only passed to oneDNN calls, and oneDNN documents engines as
// safe to use from several threads at once; the primitive map is behind a Mutex and the
// function pointers are plain code addresses.
unsafe impl Send for OneDnn {}
unsafe impl Sync for OneDnn {}

/// A matmul's geometry: dst (m × n, row-major) = lhs (m × k) · rhs (k × n), operands given by
/// their row and column strides in elements; `accumulate` adds to dst instead of overwriting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs_strides: [usize; 2],
    pub rhs_strides: [usize; 2],
    pub accumulate: bool,
}

impl Key {
    /// Elements of an operand's slice that its strides reach.
    fn span(rows: usize, cols: usize, [rs, cs]: [usize; 2]) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    }
    pub fn lhs_span(&self) -> usize {
        Self::span(self.m, self.k, self.lhs_strides)
    }
    pub fn rhs_span(&self) -> usize {
        Self::span(self.k, self.n, self.rhs_strides)
    }
}

struct Primitive {
    handle: Handle,
    /// Its descriptor, kept for the scratchpad's memory descriptor (owned by it).
    pd: Handle,
    /// Descriptors of the three operands, for the memory objects of a call.
    lhs: MemoryDesc,
    rhs: MemoryDesc,
    dst: MemoryDesc,
    scratchpad_bytes: usize,
}

// SAFETY: a primitive is immutable after creation, and oneDNN documents that one primitive may
// be executed from several threads at once; each call brings its own scratchpad (user mode), so
// executions share no mutable state.
unsafe impl Send for Primitive {}
unsafe impl Sync for Primitive {}

impl Drop for Primitive {
    fn drop(&mut self) {
        if let Some(lib) = library() {
            // SAFETY: both handles came from their `_create` calls and are dropped once, here.
            unsafe {
                (lib.api.primitive_destroy)(self.handle);
                (lib.api.pd_destroy)(self.pd);
            }
        }
    }
}

/// The library, loaded on first use; `None` when this CPU or machine cannot run the oneDNN path
/// (no bf16 unit that pays, no `libdnnl.so.2`, oneDNN not confirming the unit, or
/// `IMIXER_ONEDNN=off`).
fn library() -> Option<&'static OneDnn> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    static LIB: OnceLock<Option<OneDnn>> = OnceLock::new();
    LIB.get_or_init(|| match load() {
        Ok(lib) => Some(lib),
        Err(why) => {
            *UNAVAILABLE.lock().unwrap_or_else(|e| e.into_inner()) = why;
            None
        }
    })
    .as_ref()
}

static UNAVAILABLE: Mutex<String> = Mutex::new(String::new());

static ENABLED: AtomicBool = AtomicBool::new(true);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Whether bf16 matmuls run on the CPU's bf16 unit through oneDNN now: the library is usable and
/// [`set_enabled`] has not turned the path off.
pub fn available() -> bool {
    ENABLED.load(Ordering::Relaxed) && library().is_some()
}

/// The unit the bf16 matmuls run on through oneDNN now, or `None` where [`available`] is false.
pub fn unit() -> Option<Unit> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    library().map(|lib| lib.unit)
}

/// Turns the oneDNN path on or off for the following matmuls (a test or benchmark compares it with
/// the gemm path on the same CPU); on is the default where the library is usable.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// How many matmuls oneDNN has run in this process: tests check that the oneDNN path really ran.
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// Why the oneDNN path is off (empty while it is on or not yet looked for).
pub fn why_unavailable() -> String {
    let _ = library();
    UNAVAILABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// The library's file name, or `IMIXER_ONEDNN`'s value: a path, or `off` to keep the bf16 units
/// unused.
fn library_name() -> Option<String> {
    match std::env::var("IMIXER_ONEDNN") {
        Ok(v) if v.trim() == "off" => None,
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => Some("libdnnl.so.2".to_string()),
    }
}

fn load() -> Result<OneDnn, String> {
    let unit = unit_for_this_cpu()?;
    let name = library_name().ok_or("IMIXER_ONEDNN=off")?;
    // SAFETY: loading runs the library's initialisers; libdnnl's (and its OpenMP runtime's)
    // only set up their own globals. The symbols are declared with the signatures of
    // oneDNN 2.x's C API (`dnnl.h`) and OpenMP's `omp_set_num_threads`.
    unsafe {
        let library = libloading::Library::new(&name).map_err(|e| {
            format!(
                "{name} could not be loaded ({e}); install Debian's libdnnl2 to use the {}",
                unit.describe()
            )
        })?;
        macro_rules! sym {
            ($name:literal) => {
                *library
                    .get(concat!($name, "\0").as_bytes())
                    .map_err(|e| format!("{name} has no {}: {e}", $name))?
            };
        }
        let api = Api {
            memory_desc_init_by_strides: sym!("dnnl_memory_desc_init_by_strides"),
            memory_desc_get_size: sym!("dnnl_memory_desc_get_size"),
            matmul_desc_init: sym!("dnnl_matmul_desc_init"),
            attr_create: sym!("dnnl_primitive_attr_create"),
            attr_destroy: sym!("dnnl_primitive_attr_destroy"),
            attr_set_scratchpad_mode: sym!("dnnl_primitive_attr_set_scratchpad_mode"),
            attr_set_post_ops: sym!("dnnl_primitive_attr_set_post_ops"),
            post_ops_create: sym!("dnnl_post_ops_create"),
            post_ops_destroy: sym!("dnnl_post_ops_destroy"),
            post_ops_append_sum: sym!("dnnl_post_ops_append_sum"),
            pd_create: sym!("dnnl_primitive_desc_create"),
            pd_destroy: sym!("dnnl_primitive_desc_destroy"),
            pd_query: sym!("dnnl_primitive_desc_query"),
            pd_query_md: sym!("dnnl_primitive_desc_query_md"),
            primitive_create: sym!("dnnl_primitive_create"),
            primitive_destroy: sym!("dnnl_primitive_destroy"),
            primitive_execute: sym!("dnnl_primitive_execute"),
            engine_create: sym!("dnnl_engine_create"),
            stream_create: sym!("dnnl_stream_create"),
            stream_wait: sym!("dnnl_stream_wait"),
            memory_create: sym!("dnnl_memory_create"),
            memory_destroy: sym!("dnnl_memory_destroy"),
            effective_isa: sym!("dnnl_get_effective_cpu_isa"),
            omp_set_num_threads: sym!("omp_set_num_threads"),
        };
        let isa = (api.effective_isa)();
        if isa & unit.isa() != unit.isa() {
            return Err(format!(
                "{name} runs ISA {isa:#x}, not the {} (ONEDNN_MAX_CPU_ISA may cap it)",
                unit.describe()
            ));
        }
        let mut engine: Handle = std::ptr::null_mut();
        check(
            (api.engine_create)(&mut engine, DNNL_CPU, 0),
            "engine_create",
        )?;
        Ok(OneDnn {
            api,
            unit,
            engine,
            primitives: Mutex::new(HashMap::new()),
            _library: library,
        })
    }
}

fn check(status: Status, what: &str) -> Result<(), String> {
    if status == DNNL_SUCCESS {
        Ok(())
    } else {
        Err(format!("oneDNN {what} failed with status {status}"))
    }
}

impl OneDnn {
    /// A 2-D memory descriptor of `rows × cols` with the given strides.
    fn desc(
        &self,
        rows: usize,
        cols: usize,
        strides: [usize; 2],
        dtype: c_int,
    ) -> Result<MemoryDesc, String> {
        let mut md = MemoryDesc([0; 2048]);
        let mut dims = [0i64; 12];
        let mut st = [0i64; 12];
        dims[..2].copy_from_slice(&[rows as i64, cols as i64]);
        st[..2].copy_from_slice(&[strides[0] as i64, strides[1] as i64]);
        // SAFETY: `md` is writable and larger than the library's descriptor; dims and strides
        // are `dnnl_dims_t` arrays (12 × int64) of which ndims = 2 are read.
        check(
            unsafe {
                (self.api.memory_desc_init_by_strides)(
                    &mut md,
                    2,
                    dims.as_ptr(),
                    dtype,
                    st.as_ptr(),
                )
            },
            "memory_desc_init_by_strides",
        )?;
        Ok(md)
    }

    /// The primitive for `key`, compiled on first use; `None` when oneDNN would not run it on
    /// its brgemm kernels (a reference kernel would be far slower than gemm).
    fn primitive(&self, key: Key) -> Option<Arc<Primitive>> {
        let mut map = self.primitives.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_insert_with(|| self.create(key).ok().flatten().map(Arc::new))
            .clone()
    }

    fn create(&self, key: Key) -> Result<Option<Primitive>, String> {
        let lhs = self.desc(key.m, key.k, key.lhs_strides, DNNL_BF16)?;
        let rhs = self.desc(key.k, key.n, key.rhs_strides, DNNL_BF16)?;
        let dst = self.desc(key.m, key.n, [key.n, 1], DNNL_F32)?;
        let mut op = MatmulDesc([0; 8192]);
        let api = &self.api;
        // SAFETY: every pointer passed is to a live local of the declared type; handles created
        // here are destroyed here, except the primitive, which `Primitive` owns.
        unsafe {
            check(
                (api.matmul_desc_init)(&mut op, &lhs, &rhs, std::ptr::null(), &dst),
                "matmul_desc_init",
            )?;
            let mut attr: Handle = std::ptr::null_mut();
            check((api.attr_create)(&mut attr), "primitive_attr_create")?;
            let mut post_ops: Handle = std::ptr::null_mut();
            let configured = check(
                (api.attr_set_scratchpad_mode)(attr, DNNL_SCRATCHPAD_MODE_USER),
                "set_scratchpad_mode",
            )
            .and_then(|()| {
                if !key.accumulate {
                    return Ok(());
                }
                check((api.post_ops_create)(&mut post_ops), "post_ops_create")?;
                check(
                    (api.post_ops_append_sum)(post_ops, 1.0),
                    "post_ops_append_sum",
                )?;
                check((api.attr_set_post_ops)(attr, post_ops), "set_post_ops")
            });
            let mut pd: Handle = std::ptr::null_mut();
            let made = configured.and_then(|()| {
                check(
                    (api.pd_create)(
                        &mut pd,
                        (&op as *const MatmulDesc).cast(),
                        attr,
                        self.engine,
                        std::ptr::null_mut(),
                    ),
                    "primitive_desc_create",
                )
            });
            if !post_ops.is_null() {
                (api.post_ops_destroy)(post_ops);
            }
            (api.attr_destroy)(attr);
            made?;
            let mut info: *const c_char = std::ptr::null();
            let on_brgemm = (api.pd_query)(
                pd,
                DNNL_QUERY_IMPL_INFO_STR,
                0,
                (&mut info as *mut *const c_char).cast(),
            ) == DNNL_SUCCESS
                && !info.is_null()
                && CStr::from_ptr(info).to_string_lossy().starts_with("brg");
            let scratch = (api.pd_query_md)(pd, DNNL_QUERY_SCRATCHPAD_MD, 0);
            let scratchpad_bytes = if scratch.is_null() {
                0
            } else {
                (api.memory_desc_get_size)(scratch)
            };
            let mut handle: Handle = std::ptr::null_mut();
            let created = if on_brgemm {
                check((api.primitive_create)(&mut handle, pd), "primitive_create")
            } else {
                Err(String::new())
            };
            if created.is_err() {
                (api.pd_destroy)(pd);
                return if on_brgemm {
                    created.map(|()| None)
                } else {
                    Ok(None)
                };
            }
            Ok(Some(Primitive {
                handle,
                pd,
                lhs,
                rhs,
                dst,
                scratchpad_bytes,
            }))
        }
    }

    /// Runs `prim` on bf16 operands into `dst`.
    /// Runs `prim`. `dst` must point to m·n f32 elements (read first when the primitive
    /// accumulates, else only written); `lhs` and `rhs` are the packed operands.
    fn execute(
        &self,
        prim: &Primitive,
        lhs: &[u16],
        rhs: &[u16],
        scratchpad: &mut Vec<u8>,
        dst: *mut f32,
    ) -> Result<(), String> {
        if scratchpad.len() < prim.scratchpad_bytes {
            scratchpad.resize(prim.scratchpad_bytes, 0);
        }
        CALLS.fetch_add(1, Ordering::Relaxed);
        thread_local! {
            static STREAM: std::cell::Cell<Handle> = const { std::cell::Cell::new(std::ptr::null_mut()) };
        }
        let api = &self.api;
        // SAFETY: each memory object wraps a buffer that outlives the call, and oneDNN touches
        // only its descriptor's extent: the dense m·k and k·n operands (the callers check their
        // lengths), the m·n dst (the caller's contract), at least the queried scratchpad size.
        // oneDNN only reads SRC and WEIGHTS, so handing it pointers from shared slices is sound.
        // The objects are destroyed before return.
        // The stream is this thread's own, created once.
        unsafe {
            let mut stream = STREAM.with(|s| s.get());
            if stream.is_null() {
                check(
                    (api.stream_create)(&mut stream, self.engine, DNNL_STREAM_IN_ORDER),
                    "stream_create",
                )?;
                STREAM.with(|s| s.set(stream));
            }
            (api.omp_set_num_threads)(candle_core::utils::get_num_threads().max(1) as c_int);
            let mut memories: Vec<Handle> = Vec::with_capacity(4);
            let mut args = Vec::with_capacity(4);
            let mut wrap =
                |arg: c_int, md: *const MemoryDesc, data: *mut c_void| -> Result<(), String> {
                    let mut mem: Handle = std::ptr::null_mut();
                    check(
                        (api.memory_create)(&mut mem, md, self.engine, data),
                        "memory_create",
                    )?;
                    memories.push(mem);
                    args.push(ExecArg { arg, memory: mem });
                    Ok(())
                };
            let wrapped = wrap(
                DNNL_ARG_SRC,
                &prim.lhs as *const MemoryDesc,
                lhs.as_ptr().cast_mut().cast(),
            )
            .and_then(|()| {
                wrap(
                    DNNL_ARG_WEIGHTS,
                    &prim.rhs as *const MemoryDesc,
                    rhs.as_ptr().cast_mut().cast(),
                )
            })
            .and_then(|()| wrap(DNNL_ARG_DST, &prim.dst as *const MemoryDesc, dst.cast()))
            .and_then(|()| {
                if prim.scratchpad_bytes > 0 {
                    let md = (api.pd_query_md)(prim.pd, DNNL_QUERY_SCRATCHPAD_MD, 0);
                    wrap(DNNL_ARG_SCRATCHPAD, md, scratchpad.as_mut_ptr().cast())
                } else {
                    Ok(())
                }
            });
            let ran = wrapped
                .and_then(|()| {
                    check(
                        (api.primitive_execute)(
                            prim.handle,
                            stream,
                            args.len() as c_int,
                            args.as_ptr(),
                        ),
                        "primitive_execute",
                    )
                })
                .and_then(|()| check((api.stream_wait)(stream), "stream_wait"));
            for m in memories {
                (api.memory_destroy)(m);
            }
            ran
        }
    }
}

simd_kernel! {
    /// out[i] = the bf16 bits of x[i], rounded to nearest even.
    fn to_bf16_block(x: &[f32], out: &mut [MaybeUninit<u16>]) {
        for (o, &x) in out.iter_mut().zip(x) {
            o.write(bf16_bits(x));
        }
    }
}

/// The dense strides an operand is packed to: row-major when its rows are contiguous,
/// column-major when its columns are (a transposed view), row-major otherwise. oneDNN's brgemm
/// kernels take both dense layouts; a padded stride (as the `[W | b]` weight of the fused linear
/// layer had before c65967f) would send it to a slower kernel.
fn dense_strides(rows: usize, cols: usize, [rs, cs]: [usize; 2]) -> [usize; 2] {
    if cs != 1 && rs == 1 {
        [1, rows]
    } else {
        [cols, 1]
    }
}

/// The f32 matrix `src` (`rows × cols` with strides `from`) as bf16 bits with the dense strides
/// `to` (from [`dense_strides`]), lines in parallel when this thread may use more than one.
/// `src` must reach the strides' span ([`Packed::new`] checks it).
fn pack(src: &[f32], rows: usize, cols: usize, from: [usize; 2], to: [usize; 2]) -> Vec<u16> {
    // Lines are the contiguous direction of the packed layout.
    let (lines, len, line_stride, elem_stride) = if to == [cols, 1] {
        (rows, cols, from[0], from[1])
    } else {
        (cols, rows, from[1], from[0])
    };
    let mut out = Vec::with_capacity(lines * len);
    let line = |i: usize, o: &mut [MaybeUninit<u16>]| {
        let start = i * line_stride;
        if elem_stride == 1 {
            to_bf16_block(&src[start..start + len], o);
        } else {
            for (j, o) in o.iter_mut().enumerate() {
                o.write(bf16_bits(src[start + j * elem_stride]));
            }
        }
    };
    let spare = &mut out.spare_capacity_mut()[..lines * len];
    if len > 0 {
        if candle_core::utils::get_num_threads() > 1 && lines * len >= PAR_CHUNK {
            let per_task = (PAR_CHUNK / len).max(1);
            spare
                .par_chunks_mut(per_task * len)
                .enumerate()
                .for_each(|(t, block)| {
                    for (i, o) in block.chunks_mut(len).enumerate() {
                        line(t * per_task + i, o);
                    }
                });
        } else {
            for (i, o) in spare.chunks_mut(len).enumerate() {
                line(i, o);
            }
        }
    }
    // SAFETY: the capacity is at least lines·len, and the loops above wrote every element of
    // its first lines·len: the chunks of `len` cover it exactly, each chunk is one line, and
    // both line variants write all `len` elements of their chunk.
    unsafe { out.set_len(lines * len) };
    out
}

/// An f32 matrix packed as bf16 bits in a dense layout, ready for [`product_packed`] and [`accumulate_packed`]; packing once
/// lets one operand serve several products (a gradient `g` is the left operand of both `g W` and,
/// as the same bytes read column-major, `gᵀ x`).
pub struct Packed {
    pub bits: Vec<u16>,
    pub rows: usize,
    pub cols: usize,
    /// Dense strides: `[cols, 1]` or `[1, rows]`.
    pub strides: [usize; 2],
}

impl Packed {
    /// `src` (`rows × cols` with `strides`, from its first element) rounded to bf16 and packed.
    pub fn new(
        src: &[f32],
        rows: usize,
        cols: usize,
        strides: [usize; 2],
    ) -> candle_core::Result<Self> {
        if src.len() < Key::span(rows, cols, strides) {
            candle_core::bail!(
                "bf16 pack: {} elements for a {rows}×{cols} matrix with strides {strides:?}",
                src.len()
            );
        }
        let dense = dense_strides(rows, cols, strides);
        Ok(Self {
            bits: pack(src, rows, cols, strides, dense),
            rows,
            cols,
            strides: dense,
        })
    }

    /// The transpose: the same bytes read with swapped strides.
    pub fn t(&self) -> PackedRef<'_> {
        PackedRef {
            bits: &self.bits,
            rows: self.cols,
            cols: self.rows,
            strides: [self.strides[1], self.strides[0]],
        }
    }

    pub fn as_ref(&self) -> PackedRef<'_> {
        PackedRef {
            bits: &self.bits,
            rows: self.rows,
            cols: self.cols,
            strides: self.strides,
        }
    }
}

/// A view of a [`Packed`] matrix, possibly transposed.
#[derive(Clone, Copy)]
pub struct PackedRef<'a> {
    bits: &'a [u16],
    rows: usize,
    cols: usize,
    strides: [usize; 2],
}

impl PackedRef<'_> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn strides(&self) -> [usize; 2] {
        self.strides
    }

    /// The values as f32, in the same layout: exact, since a bf16 value is an f32 whose lower
    /// 16 bits are zero.
    pub fn to_f32(&self) -> Vec<f32> {
        self.bits.iter().map(|&b| bf16_value(b)).collect()
    }
}

thread_local! {
    /// The thread's reusable scratchpad (grown, never zeroed again). Taken out for the length of
    /// a call and put back after, so that a call nested on the same thread (rayon may run
    /// another shard's task while this one waits) gets a fresh one instead of a double borrow.
    static SCRATCHPAD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The primitive for dense operands of these shapes, or `None` (path off, empty, or not brgemm).
fn dense_primitive(
    m: usize,
    n: usize,
    k: usize,
    lhs_strides: [usize; 2],
    rhs_strides: [usize; 2],
    accumulate: bool,
) -> Option<(&'static OneDnn, Arc<Primitive>)> {
    let lib = library()?;
    if m == 0 || n == 0 || k == 0 {
        return None;
    }
    let key = Key {
        m,
        n,
        k,
        lhs_strides,
        rhs_strides,
        accumulate,
    };
    Some((lib, lib.primitive(key)?))
}

/// lhs · rhs of packed operands into a new row-major f32 matrix, or `None` when the oneDNN path
/// does not take this shape (the caller multiplies another way).
pub fn product_packed(
    lhs: PackedRef<'_>,
    rhs: PackedRef<'_>,
) -> candle_core::Result<Option<Vec<f32>>> {
    let (m, n) = (lhs.rows, rhs.cols);
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    if !run_packed(lhs, rhs, dst.as_mut_ptr(), false)? {
        return Ok(None);
    }
    // SAFETY: the capacity is m·n, and a matmul primitive without the sum post-op writes every
    // element of its m × n destination when it returns success (`run_packed` returned true),
    // so all m·n elements are initialised.
    unsafe { dst.set_len(m * n) };
    Ok(Some(dst))
}

/// dst (m × n, row-major) += lhs · rhs of packed operands; `false`, touching nothing, when the
/// oneDNN path does not take this shape.
pub fn accumulate_packed(
    lhs: PackedRef<'_>,
    rhs: PackedRef<'_>,
    dst: &mut [f32],
) -> candle_core::Result<bool> {
    if dst.len() < lhs.rows * rhs.cols {
        candle_core::bail!(
            "onednn product: destination shorter than {}×{}",
            lhs.rows,
            rhs.cols
        );
    }
    run_packed(lhs, rhs, dst.as_mut_ptr(), true)
}

/// The shared body of [`product_packed`] and [`accumulate_packed`]: `dst` points to m·n f32
/// elements, initialised when `accumulate`.
fn run_packed(
    lhs: PackedRef<'_>,
    rhs: PackedRef<'_>,
    dst: *mut f32,
    accumulate: bool,
) -> candle_core::Result<bool> {
    if lhs.cols != rhs.rows {
        candle_core::bail!(
            "onednn product: {}×{} · {}×{}",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        );
    }
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if lhs.bits.len() < m * k || rhs.bits.len() < k * n {
        candle_core::bail!("onednn product: packed operands shorter than their shapes");
    }
    let Some((lib, prim)) = dense_primitive(m, n, k, lhs.strides, rhs.strides, accumulate) else {
        return Ok(false);
    };
    let mut scratchpad = SCRATCHPAD.with(|s| s.take());
    let ran = lib.execute(&prim, lhs.bits, rhs.bits, &mut scratchpad, dst);
    SCRATCHPAD.with(|s| s.set(scratchpad));
    ran.map_err(candle_core::Error::Msg)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rounding::round_slice;

    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) as f32 * 1e-9).sin() * 3.0)
            .collect()
    }

    /// AMX wins on any vendor; AVX512-BF16 alone only on AMD; no bf16 flag, no unit.
    #[test]
    fn the_unit_follows_the_flags_and_the_vendor() {
        let flags = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let amx = flags(&["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]);
        let bf16 = flags(&["avx2", "avx512f", "avx512_bf16"]);
        let none = flags(&["avx2", "fma", "avx512f"]);
        assert_eq!(unit_for(&amx, "GenuineIntel"), Ok(Unit::Amx));
        assert_eq!(unit_for(&bf16, "AuthenticAMD"), Ok(Unit::Avx512Bf16));
        assert!(unit_for(&bf16, "GenuineIntel")
            .unwrap_err()
            .contains("measured slower than f32 FMA"));
        for vendor in ["GenuineIntel", "AuthenticAMD", ""] {
            assert!(unit_for(&none, vendor)
                .unwrap_err()
                .contains("neither AMX-BF16 nor AVX512-BF16"));
        }
        // oneDNN's ISA values are bit masks: AMX's includes AVX512-BF16's, not the other way.
        assert_eq!(DNNL_ISA_AMX & DNNL_ISA_AVX512_BF16, DNNL_ISA_AVX512_BF16);
        assert_ne!(DNNL_ISA_AVX512_BF16 & DNNL_ISA_AMX, DNNL_ISA_AMX);
    }

    /// The reference: f64 sums of the bf16-rounded operands' products.
    fn reference(key: Key, dst0: &[f32], a: &[f32], b: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (ra, rb) = (round_slice(a), round_slice(b));
        let mut want = vec![0f64; key.m * key.n];
        let mut magnitude = vec![0f64; key.m * key.n];
        for i in 0..key.m {
            for j in 0..key.n {
                let (mut s, mut mag) = (0f64, 0f64);
                for p in 0..key.k {
                    let x = ra[i * key.lhs_strides[0] + p * key.lhs_strides[1]] as f64;
                    let y = rb[p * key.rhs_strides[0] + j * key.rhs_strides[1]] as f64;
                    s += x * y;
                    mag += (x * y).abs();
                }
                let start = if key.accumulate {
                    dst0[i * key.n + j] as f64
                } else {
                    0.0
                };
                want[i * key.n + j] = start + s;
                magnitude[i * key.n + j] = start.abs() + mag;
            }
        }
        (want, magnitude)
    }

    /// On a CPU where the oneDNN path runs, every layout the layers use (row-major, transposed,
    /// padded by a bias column, accumulating) gives the products of the rounded operands up to
    /// f32 summation order; packed operands and their transposes give the same results.
    #[test]
    fn onednn_products_equal_the_rounded_operands_products() -> candle_core::Result<()> {
        if !available() {
            eprintln!(
                "oneDNN path not available here ({}): skipped",
                why_unavailable()
            );
            return Ok(());
        }
        let before = calls();
        let (m, n, k) = (37, 19, 70);
        let layouts = [
            ([k, 1], [n, 1]),
            ([1, m], [1, k]),
            ([k + 1, 1], [1, k + 1]),
            ([k, 1], [1, k]),
        ];
        for (lhs_strides, rhs_strides) in layouts {
            for accumulate in [false, true] {
                let key = Key {
                    m,
                    n,
                    k,
                    lhs_strides,
                    rhs_strides,
                    accumulate,
                };
                let a = values(1, key.lhs_span());
                let b = values(2, key.rhs_span());
                let dst0 = values(3, m * n);
                let mut dst = dst0.clone();
                let pa = Packed::new(&a, m, k, lhs_strides)?;
                let pb = Packed::new(&b, k, n, rhs_strides)?;
                if accumulate {
                    assert!(
                        accumulate_packed(pa.as_ref(), pb.as_ref(), &mut dst)?,
                        "{key:?} did not run on oneDNN"
                    );
                } else {
                    dst = product_packed(pa.as_ref(), pb.as_ref())?.expect("a oneDNN shape");
                }
                let (want, magnitude) = reference(key, &dst0, &a, &b);
                for ((g, w), mag) in dst.iter().zip(&want).zip(&magnitude) {
                    let tol = 1e-6 * mag.max(1.0);
                    assert!((*g as f64 - w).abs() <= tol, "{key:?}: {g} vs {w}");
                }
                if !accumulate {
                    // The same product again gives the same bits (a cached primitive).
                    let product =
                        product_packed(pa.as_ref(), pb.as_ref())?.expect("a oneDNN shape");
                    assert_eq!(product, dst, "{key:?}: a second product differs");
                    // (a b)ᵀ = bᵀ aᵀ through the transposed views of the same packed bytes.
                    let t = product_packed(pb.t(), pa.t())?.expect("a oneDNN shape");
                    for i in 0..m {
                        for j in 0..n {
                            let (x, y) = (t[j * m + i] as f64, want[i * n + j]);
                            assert!((x - y).abs() <= 1e-6 * magnitude[i * n + j].max(1.0));
                        }
                    }
                }
            }
        }
        assert!(calls() > before);
        Ok(())
    }

    #[test]
    fn packing_checks_lengths_and_rounds_like_the_bf16_cast() -> candle_core::Result<()> {
        assert!(Packed::new(&[1.0; 5], 2, 3, [3, 1]).is_err());
        let x = values(4, 12);
        let p = Packed::new(&x, 3, 4, [1, 3])?;
        assert_eq!(p.strides, [1, 3]);
        let rounded = round_slice(&x);
        for (bits, r) in p.bits.iter().zip(&rounded) {
            assert_eq!((*bits as u32) << 16, r.to_bits());
        }
        Ok(())
    }
}
