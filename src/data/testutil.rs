//! Test data: writers for the real on-disk formats (small datasets in a tempdir) and an in-memory
//! split for tests that need images but no file.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::{Samples, Split};

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

/// Writes pickles the way Python 2's `cPickle.dump(obj, f, 2)` wrote the CIFAR "python version"
/// batches: `str` as `SHORT_BINSTRING`/`BINSTRING`, every object memoised with `BINPUT`, lists
/// filled by `APPENDS` in batches of 1000, numpy arrays as `_reconstruct` + `BUILD`.
pub struct PickleWriter {
    out: Vec<u8>,
    memo: u32,
}

impl PickleWriter {
    pub fn new() -> Self {
        PickleWriter {
            out: vec![0x80, 2],
            memo: 0,
        }
    }

    fn put(&mut self) {
        if self.memo < 256 {
            self.out.extend_from_slice(&[b'q', self.memo as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend_from_slice(&self.memo.to_le_bytes());
        }
        self.memo += 1;
    }

    pub fn int(&mut self, v: i64) {
        match v {
            0..=0xff => self.out.extend_from_slice(&[b'K', v as u8]),
            0x100..=0xffff => {
                self.out.push(b'M');
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            _ => {
                self.out.push(b'J');
                self.out.extend_from_slice(&(v as i32).to_le_bytes());
            }
        }
    }

    /// A Python 2 `str`.
    pub fn str(&mut self, s: &[u8]) {
        if s.len() < 256 {
            self.out.extend_from_slice(&[b'U', s.len() as u8]);
        } else {
            self.out.push(b'T');
            self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(s);
        self.put();
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self.put();
    }

    pub fn dict_start(&mut self) {
        self.out.push(b'}');
        self.put();
        self.out.push(b'(');
    }

    pub fn key(&mut self, k: &str) {
        self.str(k.as_bytes());
    }

    pub fn dict_end(&mut self) {
        self.out.push(b'u');
    }

    fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        self.out.push(b']');
        self.put();
        for batch in items.chunks(1000) {
            self.out.push(b'(');
            for v in batch {
                item(self, v);
            }
            self.out.push(b'e');
        }
    }

    pub fn int_list(&mut self, v: &[i64]) {
        self.list(v, |w, &i| w.int(i));
    }

    pub fn str_list(&mut self, v: &[&str]) {
        self.list(v, |w, s| w.str(s.as_bytes()));
    }

    /// `numpy.ndarray` of dtype uint8, C order.
    pub fn numpy_u8(&mut self, shape: &[i64], data: &[u8]) {
        self.global("numpy.core.multiarray", "_reconstruct");
        self.global("numpy", "ndarray");
        self.int(0);
        self.out.push(0x85); // TUPLE1
        self.put();
        self.str(b"b");
        self.out.push(0x87); // TUPLE3
        self.put();
        self.out.push(b'R');
        self.put();
        self.out.extend_from_slice(b"(K\x01(");
        for &d in shape {
            self.int(d);
        }
        self.out.push(b't');
        self.put();
        self.global("numpy", "dtype");
        self.str(b"u1");
        self.out.extend_from_slice(b"K\x00K\x01\x87");
        self.put();
        self.out.push(b'R');
        self.put();
        self.out.extend_from_slice(b"(K\x03");
        self.str(b"|");
        self.out
            .extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t");
        self.put();
        self.out.push(b'b'); // BUILD the dtype
        self.out.push(0x89); // NEWFALSE: C order
        self.str(data);
        self.out.push(b't');
        self.put();
        self.out.push(b'b'); // BUILD the array
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }
}

/// An in-memory split of `n` grey `side × side` images with labels `i % 3`: a loader's input
/// without any file. Pixels differ within and between images, so a shuffled or misplaced image
/// shows in a comparison.
pub fn grey_split(n: usize, side: usize) -> Arc<Split> {
    let pixels = side * side;
    let data: Vec<u8> = (0..n * pixels)
        .map(|i| ((i * 13 + i / pixels * 7) % 256) as u8)
        .collect();
    let samples = Samples::InMemory {
        data,
        count: n,
        width: side,
        height: side,
        channels: 1,
    };
    Arc::new(Split::new(samples, (0..n).map(|i| i % 3).collect()).unwrap())
}
