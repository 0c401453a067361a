//! CIFAR-10 / CIFAR-100: the "binary version" files (Krizhevsky's `cifar-10-binary.tar.gz`,
//! `cifar-100-binary.tar.gz`) read here, and the choice between them and the "python version"
//! ([`super::cifar_python`], what torchvision downloads) from what the data directory holds.
//!
//! A record is the label byte(s) followed by 3072 bytes: the 1024 red, then 1024 green, then 1024
//! blue values of a 32×32 image (CHW planar, row-major). CIFAR-10 has one label byte; CIFAR-100 has
//! a coarse then a fine label byte — we train on the fine (100-class) label as everyone does.
//! Pixels are converted to HWC on load so every in-memory split has the same layout.

use std::fs;
use std::path::{Path, PathBuf};

pub use super::cifar_image::{CIFAR100_COARSE_CLASSES, CIFAR10_CLASSES, IMAGE_BYTES, SIDE};

use super::cifar_image::chw_to_hwc;
use super::error::{DataError, Result};
use super::split::{Samples, Split};
use super::{download_hint, Dataset, DatasetKind};

const REDOWNLOAD: &str = "The file is probably truncated or corrupt: extract the archive again";

/// Parse the records of one CIFAR binary file.
///
/// `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100); the label used is the last one (the fine label).
/// Returns HWC pixels and labels.
pub fn parse_records(
    bytes: &[u8],
    path: &Path,
    label_bytes: usize,
    num_classes: usize,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let rec = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() {
        return Err(DataError::format(path, "file is empty", REDOWNLOAD));
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(DataError::format(
            path,
            format!(
                "size {} is not a multiple of the {rec}-byte record size ({} whole records + {} bytes)",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() % rec
            ),
            format!("{REDOWNLOAD}; also check it is the right CIFAR version (10 vs 100)"),
        ));
    }
    let n = bytes.len() / rec;
    let mut pixels = vec![0u8; n * IMAGE_BYTES];
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(rec).enumerate() {
        let label = record[label_bytes - 1] as usize;
        if label >= num_classes {
            return Err(DataError::format(
                path,
                format!("record {i} has label {label}, but the dataset has {num_classes} classes"),
                "Is this a CIFAR-100 file loaded as CIFAR-10 (or vice versa)?",
            ));
        }
        if label_bytes == 2 && record[0] as usize >= CIFAR100_COARSE_CLASSES {
            return Err(DataError::format(
                path,
                format!(
                    "record {i} has coarse label {}, but CIFAR-100 has {CIFAR100_COARSE_CLASSES} superclasses",
                    record[0]
                ),
                REDOWNLOAD,
            ));
        }
        labels.push(label);
        chw_to_hwc(
            &record[label_bytes..],
            &mut pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES],
        );
    }
    Ok((pixels, labels))
}

/// Read and concatenate several record files into one split.
fn load_split(files: &[PathBuf], label_bytes: usize, num_classes: usize) -> Result<Split> {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let bytes =
            fs::read(f).map_err(|e| DataError::io(f, e, "Check that the file is readable"))?;
        let (px, lb) = parse_records(&bytes, f, label_bytes, num_classes)?;
        data.extend_from_slice(&px);
        labels.extend(lb);
    }
    Split::new(
        Samples::InMemory {
            data,
            count: labels.len(),
            width: SIDE,
            height: SIDE,
            channels: 3,
        },
        labels,
    )
}

/// The two on-disk versions of CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `cifar-10-batches-bin/*.bin`, `cifar-100-binary/*.bin`: fixed-size records.
    Binary,
    /// `cifar-10-batches-py/`, `cifar-100-python/`: pickled numpy arrays (torchvision's download).
    Python,
}

/// Where the data set of `kind` is and in which version: `dir` itself or its standard
/// sub-folder (`cifar-10-batches-bin`, …), found by a file only that version has. The binary
/// version is looked for first, so a folder holding both extracted archives reads the binary one.
pub fn locate(dir: &Path, kind: DatasetKind) -> Result<(PathBuf, Version)> {
    let layouts = match kind {
        DatasetKind::Cifar100 => [
            (Version::Binary, "cifar-100-binary", "train.bin"),
            (Version::Python, "cifar-100-python", "train"),
        ],
        _ => [
            (Version::Binary, "cifar-10-batches-bin", "data_batch_1.bin"),
            (Version::Python, "cifar-10-batches-py", "data_batch_1"),
        ],
    };
    for (version, sub, marker) in layouts {
        for d in [dir.to_path_buf(), dir.join(sub)] {
            if d.join(marker).is_file() {
                return Ok((d, version));
            }
        }
    }
    let [(_, bin_sub, bin_marker), (_, py_sub, py_marker)] = layouts;
    Err(DataError::missing(
        format!(
            "{kind} data (looked for {bin_marker} of the binary version and {py_marker} of the \
             python version, in the directory and in {bin_sub}/ and {py_sub}/)"
        ),
        dir,
        download_hint(kind),
    ))
}

/// Each file must exist; error names the first missing one.
fn require(files: &[PathBuf], kind: DatasetKind) -> Result<()> {
    match files.iter().find(|f| !f.is_file()) {
        Some(f) => Err(DataError::missing(
            format!("{kind} file"),
            f,
            download_hint(kind),
        )),
        None => Ok(()),
    }
}

/// Non-empty trimmed lines of a names file, if it exists.
fn read_names(path: &Path) -> Result<Option<Vec<String>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path)
        .map_err(|e| DataError::io(path, e, "The class-name file must be UTF-8 text"))?;
    Ok(Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    ))
}

fn check_names(names: Vec<String>, n: usize, path: &Path) -> Result<Vec<String>> {
    if names.len() != n {
        return Err(DataError::format(
            path,
            format!("lists {} class names, expected {n}", names.len()),
            "Fix or delete the file (names then default to the standard/numeric ones)",
        ));
    }
    Ok(names)
}

/// Load CIFAR-10, binary or python version, from its extracted folder or that folder's parent.
pub fn load_cifar10(dir: &Path) -> Result<Dataset> {
    let kind = DatasetKind::Cifar10;
    let dir = match locate(dir, kind)? {
        (d, Version::Binary) => d,
        (d, Version::Python) => return super::cifar_python::load(&d, kind),
    };
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    let test_files = vec![dir.join("test_batch.bin")];
    require(&train_files, kind)?;
    require(&test_files, kind)?;
    let meta = dir.join("batches.meta.txt");
    let classes = match read_names(&meta)? {
        Some(names) => check_names(names, 10, &meta)?,
        None => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    Ok(Dataset {
        kind,
        train: load_split(&train_files, 1, 10)?,
        val: load_split(&test_files, 1, 10)?,
        classes,
        channels: 3,
        native_size: Some((SIDE, SIDE)),
    })
}

/// Load CIFAR-100 (fine labels), binary or python version, from its extracted folder or that
/// folder's parent.
pub fn load_cifar100(dir: &Path) -> Result<Dataset> {
    let kind = DatasetKind::Cifar100;
    let dir = match locate(dir, kind)? {
        (d, Version::Binary) => d,
        (d, Version::Python) => return super::cifar_python::load(&d, kind),
    };
    let train_files = vec![dir.join("train.bin")];
    let test_files = vec![dir.join("test.bin")];
    require(&test_files, kind)?;
    let names_path = dir.join("fine_label_names.txt");
    let classes = match read_names(&names_path)? {
        Some(names) => check_names(names, 100, &names_path)?,
        None => (0..100).map(|i| i.to_string()).collect(),
    };
    Ok(Dataset {
        kind,
        train: load_split(&train_files, 2, 100)?,
        val: load_split(&test_files, 2, 100)?,
        classes,
        channels: 3,
        native_size: Some((SIDE, SIDE)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load_dataset;
    use crate::data::testutil::*;

    /// CHW planar image whose (c, y, x) byte encodes its position and the record number.
    fn chw(i: usize) -> Vec<u8> {
        (0..IMAGE_BYTES)
            .map(|p| ((p * 3 + i * 17) % 251) as u8)
            .collect()
    }

    fn write_cifar10(dir: &Path, per_file: usize) {
        for f in 0..6 {
            let name = if f < 5 {
                format!("data_batch_{}.bin", f + 1)
            } else {
                "test_batch.bin".into()
            };
            let bytes: Vec<u8> = (0..per_file)
                .flat_map(|r| cifar_record(&[((f + r) % 10) as u8], &chw(f * 100 + r)))
                .collect();
            fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn cifar10_pixels_labels_and_names() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar-10-batches-bin");
        fs::create_dir(&dir).unwrap();
        write_cifar10(&dir, 2);
        fs::write(
            dir.join("batches.meta.txt"),
            CIFAR10_CLASSES.join("\n") + "\n\n",
        )
        .unwrap();
        // both the folder itself and its parent are accepted
        for d in [dir.as_path(), root.path()] {
            let ds = load_dataset(DatasetKind::Cifar10, d).unwrap();
            assert_eq!((ds.train.len(), ds.val.len()), (10, 2));
            assert_eq!(ds.classes[9], "truck");
            // sample 5 = data_batch_3 record 1
            assert_eq!(ds.train.labels[5], 3);
            let img = ds.train.get(5).unwrap();
            let src = chw(201);
            assert_eq!((img.width, img.height, img.channels), (32, 32, 3));
            for (y, x, c) in [(0, 0, 0), (3, 7, 1), (31, 31, 2), (10, 20, 2)] {
                assert_eq!(img.data[(y * 32 + x) * 3 + c], src[c * 1024 + y * 32 + x]);
            }
        }
    }

    #[test]
    fn cifar10_partial_record_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path(), 2);
        let p = dir.path().join("data_batch_4.bin");
        let mut b = fs::read(&p).unwrap();
        b.truncate(b.len() - 5);
        fs::write(&p, b).unwrap();
        let e = load_dataset(DatasetKind::Cifar10, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data_batch_4.bin") && e.contains("multiple"),
            "{e}"
        );
    }

    #[test]
    fn cifar10_missing_batch_and_bad_label() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path(), 1);
        fs::remove_file(dir.path().join("data_batch_5.bin")).unwrap();
        let e = load_dataset(DatasetKind::Cifar10, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_5.bin"), "{e}");
        write_cifar10(dir.path(), 1);
        fs::write(
            dir.path().join("test_batch.bin"),
            cifar_record(&[10], &chw(0)),
        )
        .unwrap();
        let e = load_dataset(DatasetKind::Cifar10, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test_batch.bin") && e.contains("label 10"),
            "{e}"
        );
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar-100-binary");
        fs::create_dir(&dir).unwrap();
        let train: Vec<u8> = (0..3)
            .flat_map(|r| cifar_record(&[19, 90 + r as u8], &chw(r)))
            .collect();
        fs::write(dir.join("train.bin"), train).unwrap();
        fs::write(dir.join("test.bin"), cifar_record(&[0, 42], &chw(7))).unwrap();
        let ds = load_dataset(DatasetKind::Cifar100, root.path()).unwrap();
        assert_eq!(ds.train.labels, vec![90, 91, 92]);
        assert_eq!(ds.val.labels, vec![42]);
        assert_eq!(ds.classes.len(), 100);
        assert_eq!(ds.classes[42], "42");
        let img = ds.val.get(0).unwrap();
        assert_eq!(img.data[3 * 33 + 1], chw(7)[1024 + 33]);

        let names: Vec<String> = (0..100).map(|i| format!("class{i}")).collect();
        fs::write(dir.join("fine_label_names.txt"), names.join("\n")).unwrap();
        let ds = load_dataset(DatasetKind::Cifar100, &dir).unwrap();
        assert_eq!(ds.classes[42], "class42");

        // The coarse label is checked too, though training uses the fine one.
        fs::write(dir.join("test.bin"), cifar_record(&[250, 42], &chw(7))).unwrap();
        let e = load_dataset(DatasetKind::Cifar100, &dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.bin") && e.contains("coarse label 250"),
            "{e}"
        );

        // a CIFAR-10-sized record in a CIFAR-100 file is a partial record
        fs::write(dir.join("test.bin"), cifar_record(&[3], &chw(1))).unwrap();
        let e = load_dataset(DatasetKind::Cifar100, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.bin") && e.contains("record size"), "{e}");
    }
}
