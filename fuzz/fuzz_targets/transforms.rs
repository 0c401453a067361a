//! Image transforms with arbitrary geometry: the first 24 bytes choose the image size, the
//! model size, crop_pct, the crop padding, the seed and the interpolation; the rest are pixels. Validation must
//! refuse whatever the pipelines cannot process.
#![no_main]

use imixer::data::transforms::SpatialAug;
use imixer::data::{EvalTransform, Interpolation, RawImage, TrainInterpolation, TrainTransform};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
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
});
