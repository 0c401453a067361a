//! Writers for the real on-disk formats, used by the tests to build small datasets in a tempdir.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Bytes of an IDX3 u8 image file (magic 2051) holding `images` of `rows × cols`.
pub fn idx_images_bytes(images: &[Vec<u8>], rows: u32, cols: u32) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 0x03];
    out.extend_from_slice(&(images.len() as u32).to_be_bytes());
    out.extend_from_slice(&rows.to_be_bytes());
    out.extend_from_slice(&cols.to_be_bytes());
    for img in images {
        out.extend_from_slice(img);
    }
    out
}

/// Bytes of an IDX1 u8 label file (magic 2049).
pub fn idx_labels_bytes(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 0x01];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzip `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `n` deterministic `len`-byte test images, all different.
pub fn pattern_images(n: usize, len: usize, salt: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..len)
                .map(|p| ((p * 7 + i * 31 + salt * 13) % 256) as u8)
                .collect()
        })
        .collect()
}

/// Write a full (Fashion-)MNIST directory; `gz` chooses `.gz` files.
pub fn write_idx_dataset(dir: &Path, n_train: usize, n_test: usize, gz: bool) {
    let suffix = if gz { ".gz" } else { "" };
    for (prefix, n, salt) in [("train", n_train, 0), ("t10k", n_test, 1)] {
        let imgs = pattern_images(n, 28 * 28, salt);
        let labels: Vec<u8> = (0..n).map(|i| ((i + salt) % 10) as u8).collect();
        let mut ib = idx_images_bytes(&imgs, 28, 28);
        let mut lb = idx_labels_bytes(&labels);
        if gz {
            ib = gzip(&ib);
            lb = gzip(&lb);
        }
        fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")), ib).unwrap();
        fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")), lb).unwrap();
    }
}

/// One CIFAR record: `labels` bytes then the CHW planar 3×32×32 image.
pub fn cifar_record(labels: &[u8], chw: &[u8]) -> Vec<u8> {
    assert_eq!(chw.len(), 3072);
    let mut out = labels.to_vec();
    out.extend_from_slice(chw);
    out
}

/// Save an RGB image with the format chosen by the extension of `path`.
pub fn save_rgb(path: &Path, w: u32, h: u32, data: &[u8]) {
    let img = image::RgbImage::from_raw(w, h, data.to_vec()).unwrap();
    img.save(path).unwrap();
}
