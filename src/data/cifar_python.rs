//! CIFAR-10 / CIFAR-100 "python version" files (`cifar-10-python.tar.gz` →
//! `cifar-10-batches-py/`, `cifar-100-python.tar.gz` → `cifar-100-python/`): what torchvision's
//! `CIFAR10` / `CIFAR100` download and read.
//!
//! Each batch is a pickled dict (see [`super::pickle`]): `data`, a `uint8` numpy array of shape
//! `(N, 3072)` whose rows are the same planar R, G, B 32 × 32 images as the binary version;
//! `labels` (CIFAR-10) or `fine_labels` and `coarse_labels` (CIFAR-100), lists of N ints. The
//! class names are in `batches.meta` (`label_names`) or `meta` (`fine_label_names`).

use std::fs;
use std::path::{Path, PathBuf};

use super::cifar_image::{chw_to_hwc, CIFAR100_COARSE_CLASSES, CIFAR10_CLASSES, IMAGE_BYTES, SIDE};
use super::error::{DataError, Result};
use super::pickle::{Id, Pickle};
use super::split::{Samples, Split};
use super::{download_hint, Dataset, DatasetKind};

/// Largest file read (512 MiB): the biggest real one, CIFAR-100's `train`, is 161 MB. A larger
/// file is refused before it is read into memory.
pub const MAX_FILE_BYTES: u64 = 1 << 29;

const REDOWNLOAD: &str =
    "The file is probably truncated or corrupt: extract the python-version archive again";

/// What differs between CIFAR-10 and CIFAR-100 batches.
struct Version {
    kind: DatasetKind,
    classes: usize,
    label_key: &'static str,
    names_file: &'static str,
    names_key: &'static str,
}

fn version(kind: DatasetKind) -> Result<Version> {
    match kind {
        DatasetKind::Cifar10 => Ok(Version {
            kind,
            classes: 10,
            label_key: "labels",
            names_file: "batches.meta",
            names_key: "label_names",
        }),
        DatasetKind::Cifar100 => Ok(Version {
            kind,
            classes: 100,
            label_key: "fine_labels",
            names_file: "meta",
            names_key: "fine_label_names",
        }),
        other => Err(DataError::Config(format!(
            "{other} is not a CIFAR data set"
        ))),
    }
}

/// Read a whole file, refusing one larger than [`MAX_FILE_BYTES`] before reading it.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let len = fs::metadata(path)
        .map_err(|e| DataError::io(path, e, "Check that the file is readable"))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(DataError::format(
            path,
            format!("is {len} bytes, larger than any CIFAR python file (limit {MAX_FILE_BYTES})"),
            "Is this the right file? The python version's batches are 30–160 MB",
        ));
    }
    fs::read(path).map_err(|e| DataError::io(path, e, "Check that the file is readable"))
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<Pickle<'a>> {
    Pickle::parse(bytes)
        .map_err(|e| DataError::format(path, format!("is not a readable pickle: {e}"), REDOWNLOAD))
}

/// The value under `key` of the pickled dict, or an error naming the file and the key.
fn entry(p: &Pickle<'_>, key: &str, path: &Path) -> Result<Id> {
    let bad = |problem: String| DataError::format(path, problem, REDOWNLOAD);
    p.get(p.root(), key)
        .map_err(|e| bad(format!("does not hold a dict: {e}")))?
        .ok_or_else(|| bad(format!("has no '{key}' entry")))
}

/// A label list of `n` ints in `0..classes`.
fn labels(p: &Pickle<'_>, key: &str, n: usize, classes: usize, path: &Path) -> Result<Vec<usize>> {
    let bad = |problem: String| DataError::format(path, problem, REDOWNLOAD);
    let values = p
        .ints(entry(p, key, path)?)
        .map_err(|e| bad(format!("'{key}': {e}")))?;
    if values.len() != n {
        return Err(bad(format!(
            "'{key}' lists {} labels for {n} images",
            values.len()
        )));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, &l)| match usize::try_from(l) {
            Ok(l) if l < classes => Ok(l),
            _ => Err(DataError::format(
                path,
                format!("image {i} has {key} {l}, but the data set has {classes} classes"),
                "Is this a CIFAR-100 file loaded as CIFAR-10 (or vice versa)?",
            )),
        })
        .collect()
}

/// Parse one pickled batch of `kind` (CIFAR-10 or CIFAR-100): HWC pixels and the (fine) labels.
/// CIFAR-100's coarse labels are checked too when present, as in the binary version.
pub fn parse_batch(bytes: &[u8], path: &Path, kind: DatasetKind) -> Result<(Vec<u8>, Vec<usize>)> {
    let v = version(kind)?;
    let p = parse(bytes, path)?;
    let array = p
        .u8_array(entry(&p, "data", path)?)
        .map_err(|e| DataError::format(path, format!("'data': {e}"), REDOWNLOAD))?;
    let n = match array.shape[..] {
        [n, IMAGE_BYTES] => n,
        _ => {
            return Err(DataError::format(
                path,
                format!(
                    "'data' has shape {:?}, expected (N, {IMAGE_BYTES}) for 32×32 RGB images",
                    array.shape
                ),
                REDOWNLOAD,
            ))
        }
    };
    let fine = labels(&p, v.label_key, n, v.classes, path)?;
    if kind == DatasetKind::Cifar100 && p.get(p.root(), "coarse_labels").ok().flatten().is_some() {
        labels(&p, "coarse_labels", n, CIFAR100_COARSE_CLASSES, path)?;
    }
    let mut pixels = vec![0u8; array.data.len()];
    for (chw, hwc) in array
        .data
        .chunks_exact(IMAGE_BYTES)
        .zip(pixels.chunks_exact_mut(IMAGE_BYTES))
    {
        chw_to_hwc(chw, hwc);
    }
    Ok((pixels, fine))
}

fn load_split(files: &[PathBuf], kind: DatasetKind) -> Result<Split> {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let (px, lb) = parse_batch(&read_file(f)?, f, kind)?;
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

/// Class names from the meta file when it is there (the standard or numeric names otherwise,
/// as for the binary version).
fn class_names(dir: &Path, v: &Version) -> Result<Vec<String>> {
    let path = dir.join(v.names_file);
    if !path.is_file() {
        return Ok(match v.kind {
            DatasetKind::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            _ => (0..v.classes).map(|i| i.to_string()).collect(),
        });
    }
    let bytes = read_file(&path)?;
    let p = parse(&bytes, &path)?;
    let names = p
        .strings(entry(&p, v.names_key, &path)?)
        .map_err(|e| DataError::format(&path, format!("'{}': {e}", v.names_key), REDOWNLOAD))?;
    if names.len() != v.classes {
        return Err(DataError::format(
            &path,
            format!(
                "'{}' lists {} class names, expected {}",
                v.names_key,
                names.len(),
                v.classes
            ),
            "Fix or delete the file (names then default to the standard/numeric ones)",
        ));
    }
    Ok(names)
}

/// Load the python version of CIFAR-10 or CIFAR-100 from its extracted folder `dir`.
pub fn load(dir: &Path, kind: DatasetKind) -> Result<Dataset> {
    let v = version(kind)?;
    let (train, test): (Vec<PathBuf>, Vec<PathBuf>) = match kind {
        DatasetKind::Cifar10 => (
            (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}")))
                .collect(),
            vec![dir.join("test_batch")],
        ),
        _ => (vec![dir.join("train")], vec![dir.join("test")]),
    };
    if let Some(f) = train.iter().chain(&test).find(|f| !f.is_file()) {
        return Err(DataError::missing(
            format!("{kind} python-version file"),
            f,
            download_hint(kind),
        ));
    }
    let classes = class_names(dir, &v)?;
    Ok(Dataset {
        kind,
        train: load_split(&train, kind)?,
        val: load_split(&test, kind)?,
        classes,
        channels: 3,
        native_size: Some((SIDE, SIDE)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load_dataset;
    use crate::data::testutil::PickleWriter;

    /// CHW planar image whose bytes encode the position and the image number.
    fn chw(i: usize) -> Vec<u8> {
        (0..IMAGE_BYTES)
            .map(|p| ((p * 7 + i * 13) % 253) as u8)
            .collect()
    }

    /// A batch as Python 2 pickled it: `{'batch_label', 'labels' | 'fine_labels' +
    /// 'coarse_labels', 'data', 'filenames'}`.
    fn batch(first: usize, labels: &[i64], key: &str, coarse: Option<&[i64]>) -> Vec<u8> {
        let n = labels.len();
        let pixels: Vec<u8> = (0..n).flat_map(|i| chw(first + i)).collect();
        let mut w = PickleWriter::new();
        w.dict_start();
        w.key("batch_label");
        w.str(b"training batch 1 of 5");
        w.key(key);
        w.int_list(labels);
        if let Some(c) = coarse {
            w.key("coarse_labels");
            w.int_list(c);
        }
        w.key("data");
        w.numpy_u8(&[n as i64, IMAGE_BYTES as i64], &pixels);
        w.key("filenames");
        let names: Vec<String> = (0..n).map(|i| format!("img_{i}.png")).collect();
        w.str_list(&names.iter().map(String::as_str).collect::<Vec<_>>());
        w.dict_end();
        w.finish()
    }

    fn names_pickle(key: &str, names: &[String]) -> Vec<u8> {
        let mut w = PickleWriter::new();
        w.dict_start();
        w.key("num_cases_per_batch");
        w.int(10000);
        w.key(key);
        w.str_list(&names.iter().map(String::as_str).collect::<Vec<_>>());
        w.dict_end();
        w.finish()
    }

    fn write_cifar10(dir: &Path, per_file: usize) {
        fs::create_dir_all(dir).unwrap();
        for f in 0..6 {
            let name = if f < 5 {
                format!("data_batch_{}", f + 1)
            } else {
                "test_batch".into()
            };
            let labels: Vec<i64> = (0..per_file).map(|r| ((f + r) % 10) as i64).collect();
            fs::write(dir.join(name), batch(f * 100, &labels, "labels", None)).unwrap();
        }
    }

    #[test]
    fn cifar10_python_pixels_labels_and_names() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar-10-batches-py");
        write_cifar10(&dir, 3);
        let names: Vec<String> = (0..10).map(|i| format!("thing{i}")).collect();
        fs::write(
            dir.join("batches.meta"),
            names_pickle("label_names", &names),
        )
        .unwrap();
        for d in [dir.as_path(), root.path()] {
            let ds = load_dataset(DatasetKind::Cifar10, d).unwrap();
            assert_eq!((ds.train.len(), ds.val.len()), (15, 3));
            assert_eq!(ds.classes, names);
            // sample 7 = data_batch_3 image 1, label (2 + 1) % 10
            assert_eq!(ds.train.labels[7], 3);
            let img = ds.train.get(7).unwrap();
            let src = chw(201);
            for (y, x, c) in [(0, 0, 0), (3, 7, 1), (31, 31, 2), (10, 20, 2)] {
                assert_eq!(img.data[(y * 32 + x) * 3 + c], src[c * 1024 + y * 32 + x]);
            }
        }
        // Without the meta file the standard names are used.
        fs::remove_file(dir.join("batches.meta")).unwrap();
        let ds = load_dataset(DatasetKind::Cifar10, &dir).unwrap();
        assert_eq!(ds.classes[0], "airplane");
    }

    #[test]
    fn cifar100_python_uses_fine_labels_and_checks_coarse_ones() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar-100-python");
        fs::create_dir_all(&dir).unwrap();
        let fine = [90, 91, 92, 5];
        let coarse = [19, 0, 3, 7];
        fs::write(
            dir.join("train"),
            batch(0, &fine, "fine_labels", Some(&coarse)),
        )
        .unwrap();
        fs::write(dir.join("test"), batch(9, &[42], "fine_labels", Some(&[1]))).unwrap();
        let ds = load_dataset(DatasetKind::Cifar100, root.path()).unwrap();
        assert_eq!(ds.train.labels, vec![90, 91, 92, 5]);
        assert_eq!(ds.val.labels, vec![42]);
        assert_eq!(ds.classes[42], "42");
        assert_eq!(ds.val.get(0).unwrap().data[3 * 33 + 1], chw(9)[1024 + 33]);
        let names: Vec<String> = (0..100).map(|i| format!("class{i}")).collect();
        fs::write(dir.join("meta"), names_pickle("fine_label_names", &names)).unwrap();
        assert_eq!(
            load_dataset(DatasetKind::Cifar100, &dir).unwrap().classes[42],
            "class42"
        );

        fs::write(
            dir.join("test"),
            batch(9, &[42], "fine_labels", Some(&[20])),
        )
        .unwrap();
        let e = load_dataset(DatasetKind::Cifar100, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test") && e.contains("coarse_labels 20"), "{e}");
        // A CIFAR-10 batch in a CIFAR-100 folder: no fine labels.
        fs::write(dir.join("test"), batch(9, &[4], "labels", None)).unwrap();
        let e = load_dataset(DatasetKind::Cifar100, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no 'fine_labels' entry"), "{e}");
    }

    #[test]
    fn broken_batches_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_cifar10(d, 2);
        let load = || {
            load_dataset(DatasetKind::Cifar10, d)
                .unwrap_err()
                .to_string()
        };
        let p = d.join("data_batch_4");
        let good = fs::read(&p).unwrap();
        fs::write(&p, &good[..good.len() - 100]).unwrap();
        let e = load();
        assert!(e.contains("data_batch_4") && e.contains("truncated"), "{e}");
        fs::write(&p, &good).unwrap();

        fs::write(&p, {
            // three images, two labels
            let mut w = PickleWriter::new();
            w.dict_start();
            w.key("labels");
            w.int_list(&[1, 2]);
            w.key("data");
            w.numpy_u8(&[3, IMAGE_BYTES as i64], &vec![0; 3 * IMAGE_BYTES]);
            w.dict_end();
            w.finish()
        })
        .unwrap();
        let e = load();
        assert!(
            e.contains("data_batch_4") && e.contains("2 labels for 3 images"),
            "{e}"
        );

        fs::write(&p, batch(0, &[1, 10], "labels", None)).unwrap();
        let e = load();
        assert!(e.contains("data_batch_4") && e.contains("labels 10"), "{e}");

        let mut w = PickleWriter::new();
        w.dict_start();
        w.key("labels");
        w.int_list(&[1]);
        w.key("data");
        w.numpy_u8(&[1, 1024], &[0; 1024]);
        w.dict_end();
        fs::write(&p, w.finish()).unwrap();
        let e = load();
        assert!(e.contains("data_batch_4") && e.contains("[1, 1024]"), "{e}");

        fs::write(&p, b"not a pickle").unwrap();
        let e = load();
        assert!(
            e.contains("data_batch_4") && e.contains("not a readable pickle"),
            "{e}"
        );

        fs::write(&p, &good).unwrap();
        fs::remove_file(d.join("test_batch")).unwrap();
        let e = load();
        assert!(e.contains("test_batch") && e.contains("not found"), "{e}");
    }

    /// Files written by CPython 3.11 with numpy 2.4 at protocols 2, 4 and 5 (numpy 2 module
    /// names, `_codecs.encode` bytes, `_frombuffer` arrays; tests/fixtures/cifar-python/make.py).
    #[test]
    fn python3_pickles_of_every_protocol_load() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar-python");
        for proto in [2, 4, 5] {
            let path = fixtures.join(format!("batch_p{proto}.pickle"));
            let bytes = fs::read(&path).unwrap();
            let (pixels, labels) = parse_batch(&bytes, &path, DatasetKind::Cifar10).unwrap();
            assert_eq!(labels, vec![3, 8], "protocol {proto}");
            // make.py: image i, channel c, pixel p holds (p + 7·c + 11·i) % 256
            for (i, y, x, c) in [(0, 0, 0, 0), (1, 5, 9, 2), (1, 31, 31, 1)] {
                let p = y * 32 + x;
                assert_eq!(
                    pixels[i * IMAGE_BYTES + p * 3 + c] as usize,
                    (p + 7 * c + 11 * i) % 256,
                    "protocol {proto}"
                );
            }
        }
    }
}
