//! IDX readers, raw and gzipped (a leading 1f 8b selects the gzip path): any bytes give images,
//! labels or an error, and never more memory than the input or its header's declared size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imixer_fuzz::idx(data));
