//! What both CIFAR file versions share: the 32×32 image stored as planar R, G, B planes, and the
//! class lists. Kept apart from either reader so that the binary reader ([`super::cifar`]), which
//! also chooses between the versions, and the python-pickle reader ([`super::cifar_python`])
//! depend on it rather than on each other.

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Pixel bytes of one record.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// CIFAR-10 class names (what `batches.meta.txt` contains), used when the file is absent.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Superclasses of CIFAR-100 (the first label byte of its records).
pub const CIFAR100_COARSE_CLASSES: usize = 20;

/// One CIFAR image from planar R, G, B (as both versions store it) to interleaved HWC.
pub(crate) fn chw_to_hwc(chw: &[u8], hwc: &mut [u8]) {
    for p in 0..SIDE * SIDE {
        for c in 0..3 {
            hwc[p * 3 + c] = chw[c * SIDE * SIDE + p];
        }
    }
}
