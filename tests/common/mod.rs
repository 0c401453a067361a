//! Helpers of the training integration tests: tiny configurations, writers for the real on-disk
//! data formats (the crate's own writers are `#[cfg(test)]` and so unreachable from here),
//! checkpoint comparison and running the `imixer` binary with a time limit.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use flate2::write::GzEncoder;
use flate2::Compression;
use imixer::config::{Family, IMixerConfig, ModelConfig};
use imixer::data::DatasetKind;
use imixer::train::state::{RunState, STATE_KEY};
use imixer::train::TrainConfig;

pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The real Fashion-MNIST directory; panics with instructions when it is not installed.
pub fn fashion_dir() -> PathBuf {
    let dir = PathBuf::from(FASHION_MNIST_DIR);
    let have = |stem: &str| dir.join(format!("{stem}.gz")).is_file() || dir.join(stem).is_file();
    let all = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    .iter()
    .all(|s| have(s));
    assert!(
        all,
        "Fashion-MNIST is not installed at {FASHION_MNIST_DIR}: these tests need the real data set \
         (`apt-get install dataset-fashion-mnist`, as .ci/run does)"
    );
    dir
}

/// One compute thread per process: the machine has 2 cores and the test harness already runs two
/// tests at a time. Must run before any tensor operation of the test; `Once` makes every other
/// test wait until the variables are set.
pub fn single_thread() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        imixer::threads::set_threads(1);
    });
}

/// A tiny model of `family`: D = 32, 2 blocks, (img/patch)² tokens; iMixer with 1 fixed-point
/// step and 1 power iteration.
pub fn tiny_model(
    family: Family,
    img_size: usize,
    in_chans: usize,
    patch_size: usize,
) -> ModelConfig {
    ModelConfig {
        family,
        img_size,
        in_chans,
        patch_size,
        embed_dim: 32,
        depth: 2,
        num_classes: 10,
        imixer: IMixerConfig {
            n_iter: 1,
            n_power: 1,
            ..IMixerConfig::default()
        },
        ..ModelConfig::default()
    }
}

/// A Fashion-MNIST run of the tiny `family` model writing to `out`.
pub fn fmnist_config(family: Family, out: &Path) -> TrainConfig {
    TrainConfig {
        model_config: Some(tiny_model(family, 28, 1, 7)),
        data_dir: Some(fashion_dir()),
        out: out.to_path_buf(),
        workers: 1,
        threads: 1,
        batch_size: 32,
        eval_batch_size: 250,
        ..TrainConfig::defaults_for(DatasetKind::FashionMnist)
    }
}

/// `imixer.train_state` of a checkpoint.
pub fn run_state(path: &Path) -> RunState {
    let f = imixer::checkpoint::read(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e:#}", path.display()));
    let s = f
        .metadata
        .get(STATE_KEY)
        .unwrap_or_else(|| panic!("{} has no {STATE_KEY}", path.display()));
    serde_json::from_str(s).unwrap()
}

/// Tensors of two checkpoints that differ in dtype, shape or any bit (names present in only one
/// file included), plus the number of (model, optimizer) tensors of `a`.
pub fn tensor_differences(a: &Path, b: &Path) -> (Vec<String>, usize, usize) {
    let dev = Device::Cpu;
    let fa = imixer::checkpoint::read(a, &dev).unwrap();
    let fb = imixer::checkpoint::read(b, &dev).unwrap();
    let na: BTreeSet<&String> = fa.tensors.keys().collect();
    let nb: BTreeSet<&String> = fb.tensors.keys().collect();
    let mut differing: Vec<String> = na
        .symmetric_difference(&nb)
        .map(|n| format!("{n} (in one file only)"))
        .collect();
    let bits = |t: &candle_core::Tensor| -> Vec<u64> {
        let flat = t.flatten_all().unwrap();
        match t.dtype() {
            DType::F32 => flat
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            // Every other dtype converts to f64 exactly.
            _ => flat
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .into_iter()
                .map(f64::to_bits)
                .collect(),
        }
    };
    let (mut model, mut opt) = (0, 0);
    for name in na.intersection(&nb) {
        let (ta, tb) = (&fa.tensors[*name], &fb.tensors[*name]);
        if name.starts_with(imixer::checkpoint::TRAIN_STATE_PREFIX) {
            opt += 1;
        } else {
            model += 1;
        }
        if ta.dtype() != tb.dtype() || ta.dims() != tb.dims() {
            differing.push(format!(
                "{name} ({:?}{:?} vs {:?}{:?})",
                ta.dtype(),
                ta.dims(),
                tb.dtype(),
                tb.dims()
            ));
            continue;
        }
        let (va, vb) = (bits(ta), bits(tb));
        if va != vb {
            let n = va.iter().zip(&vb).filter(|(x, y)| x != y).count();
            differing.push(format!("{name} ({n}/{} elements)", va.len()));
        }
    }
    (differing, model, opt)
}

/// Asserts that two checkpoints hold the same tensor names, dtypes, shapes and bits, and that
/// both carry optimizer moments. Returns the (model, optimizer) tensor counts compared.
pub fn assert_bit_identical(a: &Path, b: &Path) -> (usize, usize) {
    let (differing, model, opt) = tensor_differences(a, b);
    assert!(
        differing.is_empty(),
        "{} and {} differ in {} tensors: {}",
        a.display(),
        b.display(),
        differing.len(),
        differing.join(", ")
    );
    assert!(model > 0, "no model tensors in {}", a.display());
    assert!(opt > 0, "no optimizer moments in {}", a.display());
    (model, opt)
}

/// Lines of `metrics.jsonl` as JSON values.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let p = run.join("metrics.jsonl");
    let text =
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad metrics line {l}: {e}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The `imixer` binary.

/// The binary, with its decoded-image cache in a folder of the test build, so that tests never
/// write to the user's cache.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imixer"));
    cmd.env(
        imixer::data::image_check::CACHE_DIR_ENV,
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-cache"),
    );
    cmd
}

/// A finished binary run.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics, showing both streams, unless the run succeeded.
    pub fn ok(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.no_panic(what)
    }

    /// Panics unless the run failed with a non-zero exit code (not a signal) and no panic.
    pub fn failed(self, what: &str) -> Self {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "{what} should fail with an exit code, got {}:\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.no_panic(what)
    }

    fn no_panic(self, what: &str) -> Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "{what} panicked:\n{}",
            self.stderr
        );
        self
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// A running binary whose output streams are drained in the background (no pipe can fill up).
pub struct Running {
    pub child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    started: Instant,
}

pub fn spawn(cmd: &mut Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the imixer binary");
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    Running {
        child,
        out: Some(out),
        err: Some(err),
        started: Instant::now(),
    }
}

impl Running {
    /// Whether the process has exited (reaps it when it has).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits at most `limit` (since start); on time-out kills the process and panics.
    pub fn finish(mut self, limit: Duration, what: &str) -> Output {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return self.collect(status);
            }
            if self.started.elapsed() > limit {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                let o = self.collect(status);
                panic!(
                    "{what} did not finish within {limit:?}; killed it.\nstdout:\n{}\nstderr:\n{}",
                    o.stdout, o.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (on Unix `Child::kill` sends SIGKILL) and wait.
    pub fn kill(mut self) -> Output {
        self.child.kill().expect("kill");
        let status = self.child.wait().expect("wait");
        self.collect(status)
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: self.out.take().unwrap().join().unwrap(),
            stderr: self.err.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Running {
    /// A panicking test never leaves a training process behind.
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary with `args` to completion within `limit`.
pub fn run_bin<S: AsRef<std::ffi::OsStr>>(args: &[S], limit: Duration) -> Output {
    let what = format!(
        "imixer {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    spawn(bin().args(args)).finish(limit, &what)
}

// ---------------------------------------------------------------------------------------------
// Writers for the real on-disk formats.

/// IDX3 u8 image file (magic 0x00000803) of `rows × cols` images.
pub fn idx_images_bytes(images: &[Vec<u8>], rows: u32, cols: u32) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 0x03];
    out.extend_from_slice(&(images.len() as u32).to_be_bytes());
    out.extend_from_slice(&rows.to_be_bytes());
    out.extend_from_slice(&cols.to_be_bytes());
    for img in images {
        assert_eq!(img.len(), (rows * cols) as usize);
        out.extend_from_slice(img);
    }
    out
}

/// IDX1 u8 label file (magic 0x00000801).
pub fn idx_labels_bytes(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 0x01];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A `len`-byte image of class `label` (a class-dependent gradient plus per-image noise).
pub fn pattern(len: usize, label: usize, i: usize) -> Vec<u8> {
    (0..len)
        .map(|p| ((p * (label + 1) * 3 + i * 29 + (p * p + i) % 17) % 256) as u8)
        .collect()
}

/// A (Fashion-)MNIST directory: the four train-/t10k- IDX files, gzipped or raw.
pub fn write_idx_dataset(dir: &Path, n_train: usize, n_test: usize, gz: bool) {
    fs::create_dir_all(dir).unwrap();
    let suffix = if gz { ".gz" } else { "" };
    for (prefix, n, salt) in [("train", n_train, 0), ("t10k", n_test, 1000)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let imgs: Vec<Vec<u8>> = (0..n)
            .map(|i| pattern(28 * 28, labels[i] as usize, i + salt))
            .collect();
        let mut ib = idx_images_bytes(&imgs, 28, 28);
        let mut lb = idx_labels_bytes(&labels);
        if gz {
            ib = gzip(&ib);
            lb = gzip(&lb);
        }
        fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")), ib).unwrap();
        fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")), lb).unwrap();
    }
}

/// CIFAR records: label byte(s) then 3072 bytes of CHW planar 32×32 RGB.
pub fn cifar_records(labels: &[Vec<u8>], salt: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        out.extend_from_slice(l);
        out.extend(pattern(3 * 32 * 32, *l.last().unwrap() as usize, i + salt));
    }
    out
}

/// `root/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin` + `batches.meta.txt` with
/// `names`; returns the batches directory.
pub fn write_cifar10(root: &Path, per_file: usize, n_test: usize, names: &[String]) -> PathBuf {
    let dir = root.join("cifar-10-batches-bin");
    fs::create_dir_all(&dir).unwrap();
    for f in 1..=5 {
        let labels: Vec<Vec<u8>> = (0..per_file).map(|r| vec![((f + r) % 10) as u8]).collect();
        fs::write(
            dir.join(format!("data_batch_{f}.bin")),
            cifar_records(&labels, f * 100),
        )
        .unwrap();
    }
    let labels: Vec<Vec<u8>> = (0..n_test).map(|r| vec![(r % 10) as u8]).collect();
    fs::write(dir.join("test_batch.bin"), cifar_records(&labels, 7)).unwrap();
    let mut meta = names.join("\n");
    meta.push_str("\n\n"); // the real file ends with a blank line
    fs::write(dir.join("batches.meta.txt"), meta).unwrap();
    dir
}

/// `root/cifar-100-binary/{train,test}.bin` (coarse, fine label bytes); returns that directory.
pub fn write_cifar100(root: &Path, n_train: usize, n_test: usize) -> PathBuf {
    let dir = root.join("cifar-100-binary");
    fs::create_dir_all(&dir).unwrap();
    let rec = |i: usize| vec![((i % 100) / 5) as u8, (i % 100) as u8];
    fs::write(
        dir.join("train.bin"),
        cifar_records(&(0..n_train).map(rec).collect::<Vec<_>>(), 0),
    )
    .unwrap();
    fs::write(
        dir.join("test.bin"),
        cifar_records(&(0..n_test).map(|i| rec(i * 7)).collect::<Vec<_>>(), 5000),
    )
    .unwrap();
    dir
}

/// One CIFAR python-version batch as Python 2's `cPickle.dump(batch, f, 2)` wrote it: a dict
/// of `str` keys (`SHORT_BINSTRING`), the label lists (`APPENDS`), and `data`, a uint8 numpy
/// array `(N, 3072)` pickled as `_reconstruct` + `BUILD` with the pixels as one `BINSTRING`.
pub fn cifar_python_batch(label_lists: &[(&str, Vec<usize>)], salt: usize) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &[u8]) {
        if v.len() < 256 {
            out.extend_from_slice(&[b'U', v.len() as u8]);
        } else {
            out.push(b'T');
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(v);
    }
    let fine = &label_lists.last().unwrap().1;
    let n = fine.len();
    let mut out = b"\x80\x02}(".to_vec();
    for (key, labels) in label_lists {
        s(&mut out, key.as_bytes());
        out.extend_from_slice(b"](");
        for &l in labels {
            out.extend_from_slice(&[b'K', l as u8]);
        }
        out.push(b'e');
    }
    s(&mut out, b"data");
    out.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85");
    s(&mut out, b"b");
    out.extend_from_slice(b"\x87R(K\x01M");
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(b"M\x00\x0c\x86cnumpy\ndtype\n");
    s(&mut out, b"u1");
    out.extend_from_slice(b"K\x00K\x01\x87R(K\x03");
    s(&mut out, b"|");
    out.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89");
    let pixels: Vec<u8> = fine
        .iter()
        .enumerate()
        .flat_map(|(i, &l)| pattern(3 * 32 * 32, l, i + salt))
        .collect();
    s(&mut out, &pixels);
    out.extend_from_slice(b"tbu.");
    out
}

/// `root/cifar-10-batches-py/{data_batch_1..5,test_batch}` (no meta file: standard names);
/// returns the batches directory.
pub fn write_cifar10_python(root: &Path, per_file: usize, n_test: usize) -> PathBuf {
    let dir = root.join("cifar-10-batches-py");
    fs::create_dir_all(&dir).unwrap();
    for f in 1..=5 {
        let labels = (0..per_file).map(|r| (f + r) % 10).collect();
        let batch = cifar_python_batch(&[("labels", labels)], f * 100);
        fs::write(dir.join(format!("data_batch_{f}")), batch).unwrap();
    }
    let labels = (0..n_test).map(|r| r % 10).collect();
    fs::write(
        dir.join("test_batch"),
        cifar_python_batch(&[("labels", labels)], 7),
    )
    .unwrap();
    dir
}

/// `root/cifar-100-python/{train,test}` with coarse and fine labels; returns that directory.
pub fn write_cifar100_python(root: &Path, n_train: usize, n_test: usize) -> PathBuf {
    let dir = root.join("cifar-100-python");
    fs::create_dir_all(&dir).unwrap();
    for (name, n, step) in [("train", n_train, 1), ("test", n_test, 7)] {
        let fine: Vec<usize> = (0..n).map(|i| (i * step) % 100).collect();
        let coarse = fine.iter().map(|f| f / 5).collect();
        let batch = cifar_python_batch(&[("coarse_labels", coarse), ("fine_labels", fine)], n);
        fs::write(dir.join(name), batch).unwrap();
    }
    dir
}

/// `root/food-101/{images/<class>/<id>.jpg, meta/{classes,train,test}.txt}` with assorted image
/// sizes; returns the food-101 directory.
pub fn write_food101(root: &Path, classes: &[&str], n_train: usize, n_test: usize) -> PathBuf {
    let dir = root.join("food-101");
    fs::create_dir_all(dir.join("meta")).unwrap();
    let (mut train, mut test) = (String::new(), String::new());
    for (ci, class) in classes.iter().enumerate() {
        let d = dir.join("images").join(class);
        fs::create_dir_all(&d).unwrap();
        for i in 0..n_train + n_test {
            let (w, h) = (30 + 6 * (i % 3) as u32, 34 - 3 * (i % 2) as u32);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + ci as u32 * 90) as u8, (y * 4) as u8, (x ^ y) as u8])
            });
            let id = 100_000 * (ci + 1) + i;
            img.save(d.join(format!("{id}.jpg"))).unwrap();
            let list = if i < n_train { &mut train } else { &mut test };
            list.push_str(&format!("{class}/{id}\n"));
        }
    }
    fs::write(dir.join("meta/classes.txt"), classes.join("\n") + "\n").unwrap();
    fs::write(dir.join("meta/train.txt"), train).unwrap();
    fs::write(dir.join("meta/test.txt"), test).unwrap();
    dir
}

/// `root/{train,val}/<class>/NN.{png,jpg}` RGB images of assorted sizes.
pub fn write_image_folder(root: &Path, classes: &[&str], n_train: usize, n_val: usize) {
    for (split, n) in [("train", n_train), ("val", n_val)] {
        for (ci, class) in classes.iter().enumerate() {
            let d = root.join(split).join(class);
            fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let (w, h) = (24 + 8 * (i % 3) as u32, 40 - 4 * (i % 2) as u32);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([
                        (x * 6 + ci as u32 * 80) as u8,
                        (y * 5 + i as u32 * 9) as u8,
                        (ci as u32 * 120 + (x ^ y)) as u8,
                    ])
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(d.join(format!("{i:02}.{ext}"))).unwrap();
            }
            // Non-images are ignored by the reader.
            fs::write(d.join("README.txt"), "not an image").unwrap();
        }
    }
}

/// Seeded f64 N(0, std²) test input on the CPU (see [`imixer::params::seeded_normal`]).
pub fn seeded_normal(
    seed: u64,
    shape: &[usize],
    std: f64,
) -> candle_core::Result<candle_core::Tensor> {
    imixer::params::seeded_normal(seed, shape, std, DType::F64, &Device::Cpu)
}
