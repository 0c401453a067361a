//! CIFAR-10 and CIFAR-100 binary records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = std::path::Path::new("fuzz.bin");
    for (label_bytes, classes) in [(1, 10), (2, 100)] {
        if let Ok((pixels, labels)) =
            imixer::data::cifar::parse_records(data, p, label_bytes, classes)
        {
            assert_eq!(pixels.len(), labels.len() * 3072);
            assert!(labels.iter().all(|&l| l < classes));
        }
    }
});
