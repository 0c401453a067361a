//! The safetensors checkpoint reader and model load: any file is a model or an error, and the
//! model built is never larger than the file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imixer_fuzz::checkpoint(data));
