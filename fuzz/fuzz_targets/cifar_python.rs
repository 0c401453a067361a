//! CIFAR-10 and CIFAR-100 python-version batches: the pickle reader and the batch checks on it.
#![no_main]

use imixer::data::DatasetKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = std::path::Path::new("fuzz_batch");
    for (kind, classes) in [(DatasetKind::Cifar10, 10), (DatasetKind::Cifar100, 100)] {
        if let Ok((pixels, labels)) = imixer::data::cifar_python::parse_batch(data, p, kind) {
            assert_eq!(pixels.len(), labels.len() * 3072);
            assert!(labels.iter().all(|&l| l < classes));
        }
    }
});
