//! The PyTorch checkpoint reader (pickle machine, zip and legacy containers, tensor views) and
//! model load from it: any file is a model or an error, and the model built is never larger than
//! the file. Seeds: `tests/fixtures/pytorch/*`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imixer_fuzz::pytorch_checkpoint(data));
