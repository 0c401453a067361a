//! The bodies of the fuzz targets, one function per target.
//!
//! Each function takes arbitrary bytes and must return normally: a reader answers bad input with
//! an error, never with a panic, an abort or an allocation larger than the input justifies. The
//! `fuzz_targets/*.rs` binaries hand libFuzzer's inputs to these functions, and the crate's
//! `tests/fuzz_corpus.rs` replays the committed corpora and every past crash through the same
//! functions (it includes this file by path), so `cargo test` keeps what fuzzing found.

use imixer::data::transforms::SpatialAug;
use imixer::data::{
    DatasetKind, EvalTransform, Interpolation, RawImage, TrainInterpolation, TrainTransform,
};
use rand::SeedableRng;

/// A target's body: it gets one input and returns normally, or the input found a bug.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `cargo fuzz run <name>` and `fuzz/corpus/<name>/` spell them.
pub const TARGETS: [(&str, Target); 7] = [
    ("idx", idx),
    ("cifar", cifar),
    ("cifar_python", cifar_python),
    ("transforms", transforms),
    ("checkpoint", checkpoint),
    ("pytorch_checkpoint", pytorch_checkpoint),
    ("train_config", train_config),
];

/// A per-process, per-thread scratch file for readers that take a path.
fn scratch(name: &str, data: &[u8]) -> std::path::PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let p = std::env::temp_dir().join(format!(
        "imixer-fuzz-{name}-{}-{thread}",
        std::process::id()
    ));
    std::fs::write(&p, data).expect("the fuzz scratch file must be writable");
    p
}

/// IDX readers, raw and gzipped (a leading 1f 8b selects the gzip path): any bytes give images,
/// labels or an error, and never more memory than the input or its header's declared size.
pub fn idx(data: &[u8]) {
    let p = scratch("idx", data);
    if let Ok(images) = imixer::data::idx::read_idx_images(&p) {
        assert_eq!(images.data.len(), images.count * images.rows * images.cols);
    }
    let _ = imixer::data::idx::read_idx_labels(&p);
    let _ = imixer::data::idx::parse_idx_images(data, &p);
    let _ = imixer::data::idx::parse_idx_labels(data, &p);
    let _ = std::fs::remove_file(p);
}

/// CIFAR-10 and CIFAR-100 binary records.
pub fn cifar(data: &[u8]) {
    let p = std::path::Path::new("fuzz.bin");
    for (label_bytes, classes) in [(1, 10), (2, 100)] {
        if let Ok((pixels, labels)) =
            imixer::data::cifar::parse_records(data, p, label_bytes, classes)
        {
            assert_eq!(pixels.len(), labels.len() * 3072);
            assert!(labels.iter().all(|&l| l < classes));
        }
    }
}

/// CIFAR-10 and CIFAR-100 python-version batches: the pickle reader and the batch checks on it.
pub fn cifar_python(data: &[u8]) {
    let p = std::path::Path::new("fuzz_batch");
    for (kind, classes) in [(DatasetKind::Cifar10, 10), (DatasetKind::Cifar100, 100)] {
        if let Ok((pixels, labels)) = imixer::data::cifar_python::parse_batch(data, p, kind) {
            assert_eq!(pixels.len(), labels.len() * 3072);
            assert!(labels.iter().all(|&l| l < classes));
        }
    }
}

/// Image transforms with arbitrary geometry: the first 24 bytes choose the image size, the model
/// size, crop_pct, the crop padding, the seed and the interpolation; the rest are pixels.
/// Validation must refuse whatever the pipelines cannot process.
pub fn transforms(data: &[u8]) {
    if data.len() < 24 {
        return;
    }
    let (head, pixels) = data.split_at(24);
    let w = 1 + head[0] as usize % 64;
    let h = 1 + head[1] as usize % 64;
    let c = [1, 3][head[2] as usize % 2];
    let size = 1 + u16::from_le_bytes([head[3], head[4]]) as usize % 64;
    let in_chans = [1, 3, 2][head[5] as usize % 3];
    let crop_pct = f64::from_le_bytes(head[6..14].try_into().unwrap());
    let padding = u32::from_le_bytes(head[14..18].try_into().unwrap()) as usize;
    let seed = u32::from_le_bytes(head[18..22].try_into().unwrap()) as u64;
    let mode = head[22];
    let eval_filter = Interpolation::ALL[head[23] as usize % 2];
    let train_filter = [
        TrainInterpolation::Bilinear,
        TrainInterpolation::Bicubic,
        TrainInterpolation::Random,
    ][head[23] as usize / 2 % 3];
    let mut px = vec![0u8; w * h * c];
    for (o, i) in px.iter_mut().zip(pixels.iter().cycle()) {
        *o = *i;
    }
    let img = RawImage::new(w, h, c, px).unwrap();
    let eval = EvalTransform {
        crop_pct,
        interpolation: eval_filter,
        ..EvalTransform::spec(size, in_chans)
    };
    if eval.validate().is_ok() {
        let out = eval.apply(&img).unwrap();
        assert_eq!(out.data.len(), in_chans * size * size);
    }
    let spatial = match mode % 3 {
        0 => SpatialAug::RandomCrop { padding },
        1 => SpatialAug::random_resized_crop(),
        _ => SpatialAug::None,
    };
    let train = TrainTransform {
        spatial,
        interpolation: train_filter,
        ..TrainTransform::spec(size, in_chans)
    };
    if train.validate().is_ok() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let out = train.apply(&img, &mut rng).unwrap();
        assert_eq!(out.data.len(), in_chans * size * size);
    }
}

/// The safetensors checkpoint reader and model load: any file is a model or an error, and the
/// model built is never larger than the file.
pub fn checkpoint(data: &[u8]) {
    let p = scratch("checkpoint", data);
    let dev = candle_core::Device::Cpu;
    let _ = imixer::checkpoint::read(&p, &dev);
    if let Ok(net) = imixer::MixerNet::load(&p, None, &dev) {
        assert!(net.params.num_params() <= data.len());
    }
    let _ = std::fs::remove_file(p);
}

/// The PyTorch checkpoint reader (pickle machine, zip and legacy containers, tensor views) and
/// model load from it: any file is a model or an error, and the model built is never larger than
/// the file. Seeds: `tests/fixtures/pytorch/*`.
pub fn pytorch_checkpoint(data: &[u8]) {
    let _ = imixer::checkpoint::torch::pickle::read(&mut std::io::Cursor::new(data));
    let p = scratch("pytorch_checkpoint", data);
    let dev = candle_core::Device::Cpu;
    for weights in [
        imixer::checkpoint::Weights::Model,
        imixer::checkpoint::Weights::Ema,
    ] {
        if let Ok(c) = imixer::checkpoint::Checkpoint::open(&p, weights) {
            let _ = c.decode(&dev);
        }
    }
    if let Ok(net) = imixer::MixerNet::load(&p, None, &dev) {
        assert!(net.params.num_params() <= data.len());
    }
    let _ = std::fs::remove_file(p);
}

/// The training-config TOML: parse, validate, resolve the model configuration (without building
/// it) and check the transforms at the model's size, as `imixer train` does before a run.
pub fn train_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<imixer::train::TrainConfig>(text) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    if let Ok(m) = imixer::train::trainer::resolve_model(&cfg, 10) {
        let mut t = cfg.train_transform.clone();
        t.image_size = m.img_size;
        t.in_chans = m.in_chans;
        let _ = t.validate();
        let mut e = cfg.eval_transform.clone();
        e.image_size = m.img_size;
        e.in_chans = m.in_chans;
        let _ = e.validate();
        let _ = toml::to_string(&cfg).unwrap();
    }
}
