//! IDX readers, raw and gzipped (a leading 1f 8b selects the gzip path): any bytes give images,
//! labels or an error — never a panic, and never more memory than the input or its header's
//! declared size.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let p = scratch::scratch("idx");
    std::fs::write(&p, data).unwrap();
    if let Ok(images) = imixer::data::idx::read_idx_images(&p) {
        assert_eq!(images.data.len(), images.count * images.rows * images.cols);
    }
    let _ = imixer::data::idx::read_idx_labels(&p);
    let _ = imixer::data::idx::parse_idx_images(data, &p);
    let _ = imixer::data::idx::parse_idx_labels(data, &p);
});
