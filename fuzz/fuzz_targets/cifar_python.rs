//! CIFAR-10 and CIFAR-100 python-version batches: the pickle reader and the batch checks on it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imixer_fuzz::cifar_python(data));
