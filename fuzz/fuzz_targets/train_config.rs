//! The training-config TOML: parse, validate, resolve the model configuration (without building
//! it) and check the transforms at the model's size, as `imixer train` does before a run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imixer_fuzz::train_config(data));
