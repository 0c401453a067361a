//! Image transforms with arbitrary geometry: the first 24 bytes choose the image size, the model
//! size, crop_pct, the crop padding, the seed and the interpolation; the rest are pixels.
//! Validation must refuse whatever the pipelines cannot process.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imixer_fuzz::transforms(data));
