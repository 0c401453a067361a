//! Image-folder datasets: `root/train/<class>/*.png|jpg|jpeg` and `root/val/<class>/…` (or `test/`).
//!
//! Like torchvision's `ImageFolder`, classes are the sorted sub-folder names of the training split
//! and files are found recursively below each class folder. Only paths are stored; pixels are
//! decoded (to RGB, as `ImageFolder`'s default PIL loader does) when a batch needs them.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};

use super::split::{Samples, Split};
use super::{download_hint, Dataset, DatasetKind};

/// File extensions (case-insensitive) treated as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` is a directory: `Ok(false)` when nothing is there, an error naming it when
/// the OS refuses to say (permissions), so that an unreadable folder is not reported missing.
pub(crate) fn is_directory(path: &Path) -> Result<bool> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DataError::io(
            path,
            e,
            "Check the permissions of the folder and of every folder above it",
        )),
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e, "Check that the directory exists and is readable"))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e, "Check the directory permissions"))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|e| {
        DataError::io(
            path,
            e,
            "Check that the folder (or the link's target) exists and is readable",
        )
    })
}

/// All image files below the class folder `dir`, recursively, sorted.
///
/// Symbolic links:
/// - a link to a file counts as that file (symlink farms work);
/// - every folder is scanned once, by its canonical path: a link back to a folder already seen
///   (`l -> .`, a loop) adds nothing;
/// - a link to a folder inside the split but outside this class (`up -> ../../train`) or to a
///   folder above this class is an error: its images would be trained under the wrong label.
///   Links to folders elsewhere (outside the split) are followed.
fn collect_images(dir: &Path, split_root: &Path) -> Result<Vec<PathBuf>> {
    let class_root = canonical(dir)?;
    let mut visited = std::collections::HashSet::from([class_root.clone()]);
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in read_dir_sorted(&d)? {
            let link = fs::symlink_metadata(&p)
                .map_err(|e| DataError::io(&p, e, "Check the directory permissions"))?
                .file_type()
                .is_symlink();
            if !is_directory(&p)? {
                if is_image(&p) {
                    out.push(p);
                }
                continue;
            }
            let target = canonical(&p)?;
            if link {
                let other_class = !target.starts_with(&class_root)
                    && (target.starts_with(split_root) || class_root.starts_with(&target));
                if other_class {
                    return Err(DataError::format(
                        &p,
                        format!(
                            "links to {}, outside its class folder {} (its images would get this class's label)",
                            target.display(),
                            dir.display()
                        ),
                        "Replace the link by the images it should contribute, or remove it",
                    ));
                }
            }
            if visited.insert(target) {
                stack.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Class names of a split directory: its sorted, non-hidden sub-folder names.
pub fn class_names(split_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for p in read_dir_sorted(split_dir)? {
        if !is_directory(&p)? {
            continue;
        }
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return Err(DataError::format(
                &p,
                "class folder name is not valid UTF-8",
                "Rename the folder (class names are stored as UTF-8 text in checkpoints)",
            ));
        };
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err(DataError::format(
            split_dir,
            "contains no class sub-folders",
            "Put the images of each class in their own folder: <split>/<class>/*.png|jpg",
        ));
    }
    Ok(names)
}

/// Scan one split directory whose class folders must be exactly `classes`.
pub fn scan_split(split_dir: &Path, classes: &[String]) -> Result<Split> {
    let found = class_names(split_dir)?;
    if found != classes {
        let extra: Vec<&String> = found.iter().filter(|c| !classes.contains(c)).collect();
        let missing: Vec<&String> = classes.iter().filter(|c| !found.contains(c)).collect();
        return Err(DataError::format(
            split_dir,
            format!(
                "class folders differ from the training split's (not in train: {extra:?}; missing here: {missing:?})"
            ),
            "Every split must have one folder per class, with the same names as train/",
        ));
    }
    let split_root = canonical(split_dir)?;
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = split_dir.join(class);
        let files = collect_images(&class_dir, &split_root)?;
        if files.is_empty() {
            return Err(DataError::format(
                &class_dir,
                "class folder contains no .png/.jpg/.jpeg images",
                "Add images to it or delete the folder",
            ));
        }
        labels.extend(std::iter::repeat_n(label, files.len()));
        paths.extend(files);
    }
    Split::new(Samples::Files(paths), labels)
}

/// Load `root/train` and `root/val` (falling back to `root/test`).
pub fn load_folder(root: &Path) -> Result<Dataset> {
    let kind = DatasetKind::Folder;
    let train_dir = root.join("train");
    if !is_directory(&train_dir)? {
        let food101 = super::food101::locate(root).is_ok();
        return Err(DataError::missing(
            "training folder",
            &train_dir,
            if food101 {
                "This is Food-101's own layout (images/ + meta/train.txt): use --dataset food101"
            } else {
                download_hint(kind)
            },
        ));
    }
    let mut val_dir = None;
    for d in ["val", "test"] {
        if val_dir.is_none() && is_directory(&root.join(d))? {
            val_dir = Some(root.join(d));
        }
    }
    let val_dir = val_dir.ok_or_else(|| {
        DataError::missing(
            "validation folder (val/ or test/)",
            &root.join("val"),
            download_hint(kind),
        )
    })?;
    let classes = class_names(&train_dir)?;
    let train = scan_split(&train_dir, &classes)?;
    let val = scan_split(&val_dir, &classes)?;
    Ok(Dataset {
        kind,
        train,
        val,
        classes,
        channels: 3,
        native_size: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::{decode_image, MAX_IMAGE_PIXELS_ENV};
    use crate::data::load_dataset;
    use crate::data::testutil::save_rgb;

    fn pixels(w: usize, h: usize, salt: usize) -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| ((i * 5 + salt * 40) % 256) as u8)
            .collect()
    }

    /// train/{cat,dog,fish} and val|test/{cat,dog,fish}; PNG and JPG mixed.
    fn build(root: &Path, val_name: &str) {
        for split in ["train", val_name] {
            for (ci, class) in ["cat", "dog", "fish"].iter().enumerate() {
                let d = root.join(split).join(class);
                fs::create_dir_all(&d).unwrap();
                save_rgb(&d.join("a.png"), 5, 4, &pixels(5, 4, ci));
                save_rgb(&d.join("b.JPG"), 16, 8, &[200; 16 * 8 * 3]);
                fs::write(d.join("notes.txt"), "ignored").unwrap();
            }
        }
    }

    #[test]
    fn loads_png_and_jpg_lazily() {
        let root = tempfile::tempdir().unwrap();
        build(root.path(), "test");
        let ds = load_dataset(DatasetKind::Folder, root.path()).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog", "fish"]);
        assert_eq!(ds.train.labels, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(ds.val.len(), 6);
        assert!(matches!(ds.train.samples, Samples::Files(_)));
        let png = ds.train.get(2).unwrap(); // dog/a.png
        assert_eq!((png.width, png.height, png.channels), (5, 4, 3));
        assert_eq!(png.data, pixels(5, 4, 1));
        let jpg = ds.train.get(3).unwrap(); // dog/b.JPG, lossy
        assert_eq!((jpg.width, jpg.height, jpg.channels), (16, 8, 3));
        assert!(jpg.data.iter().all(|&v| v.abs_diff(200) <= 3));
    }

    #[test]
    fn grayscale_png_is_converted_to_rgb() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("g.png");
        image::GrayImage::from_raw(2, 1, vec![10, 250])
            .unwrap()
            .save(&p)
            .unwrap();
        let img = decode_image(&p).unwrap();
        assert_eq!(img.data, vec![10, 10, 10, 250, 250, 250]);
    }

    #[test]
    fn garbage_png_is_a_decode_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        build(root.path(), "val");
        let bad = root.path().join("train/dog/zz_broken.png");
        fs::write(&bad, b"this is not a png at all").unwrap();
        let ds = load_dataset(DatasetKind::Folder, root.path()).unwrap();
        let i = ds.train.len() - 3; // dog files: a.png, b.JPG, zz_broken.png
        let e = ds.train.get(i).unwrap_err().to_string();
        assert!(e.contains("zz_broken.png") && e.contains("decode"), "{e}");
    }

    #[test]
    fn empty_class_and_class_mismatch_and_missing_val() {
        let root = tempfile::tempdir().unwrap();
        build(root.path(), "val");
        fs::create_dir_all(root.path().join("train/zebra")).unwrap();
        fs::create_dir_all(root.path().join("val/zebra")).unwrap();
        let e = load_dataset(DatasetKind::Folder, root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("zebra") && e.contains("no .png"), "{e}");

        fs::remove_dir(root.path().join("train/zebra")).unwrap();
        let e = load_dataset(DatasetKind::Folder, root.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("val") && e.contains("zebra") && e.contains("differ"),
            "{e}"
        );

        fs::remove_dir_all(root.path().join("val")).unwrap();
        let e = load_dataset(DatasetKind::Folder, root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("val") && e.contains("not found"), "{e}");

        fs::remove_dir_all(root.path().join("train")).unwrap();
        let e = load_dataset(DatasetKind::Folder, root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("train") && e.contains("not found"), "{e}");
    }

    #[test]
    fn symlinks_never_loop_duplicate_or_relabel() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        build(root.path(), "val");
        let dog = root.path().join("train/dog");
        // Two links back to the class folder: a loop that used to hang the scan and count every
        // image dozens of times.
        symlink(".", dog.join("l")).unwrap();
        fs::create_dir_all(dog.join("sub")).unwrap();
        symlink("..", dog.join("sub/back")).unwrap();
        // A file link counts as one more image.
        symlink(dog.join("a.png"), dog.join("alias.png")).unwrap();
        let ds = load_dataset(DatasetKind::Folder, root.path()).unwrap();
        assert_eq!(ds.train.labels, vec![0, 0, 1, 1, 1, 2, 2]);
        // A link into another class (here: up to the split, which holds every class) is an
        // error naming it.
        symlink("../../train", dog.join("up")).unwrap();
        let e = load_dataset(DatasetKind::Folder, root.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("up") && e.contains("outside its class folder"),
            "{e}"
        );
        fs::remove_file(dog.join("up")).unwrap();
        symlink("../cat", dog.join("cats")).unwrap();
        assert!(load_dataset(DatasetKind::Folder, root.path()).is_err());
        fs::remove_file(dog.join("cats")).unwrap();
        // A folder outside the split is followed.
        let elsewhere = tempfile::tempdir().unwrap();
        save_rgb(&elsewhere.path().join("x.png"), 3, 3, &pixels(3, 3, 9));
        symlink(elsewhere.path(), dog.join("more")).unwrap();
        let ds = load_dataset(DatasetKind::Folder, root.path()).unwrap();
        assert_eq!(ds.train.labels.iter().filter(|&&l| l == 1).count(), 4);
    }

    #[test]
    fn a_non_utf8_class_name_is_named_as_such() {
        use std::os::unix::ffi::OsStrExt;
        let root = tempfile::tempdir().unwrap();
        build(root.path(), "val");
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
        fs::create_dir_all(root.path().join("train").join(odd)).unwrap();
        let e = load_dataset(DatasetKind::Folder, root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    /// A PNG signature and IHDR chunk declaring `w × h`, with nothing after it.
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        (c >> 1) ^ 0xEDB8_8320
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(&body);
            png.extend_from_slice(&crc32(&body).to_be_bytes());
        };
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(b"IHDR", &ihdr);
        // The decoder reads the header up to the first image-data chunk.
        chunk(b"IDAT", &[0x78, 0x01]);
        chunk(b"IEND", &[]);
        png
    }

    #[test]
    fn images_over_the_pixel_limit_are_refused_from_their_header() {
        let root = tempfile::tempdir().unwrap();
        build(root.path(), "val");
        let big = root.path().join("val/cat/huge.png");
        fs::write(&big, png_header(10_000, 10_000)).unwrap();
        let e = decode_image(&big).unwrap_err().to_string();
        assert!(
            e.contains("huge.png") && e.contains("10000×10000") && e.contains(MAX_IMAGE_PIXELS_ENV),
            "{e}"
        );
        // The up-front pass finds it (and a corrupt file) before any training.
        let ds = load_dataset(DatasetKind::Folder, root.path()).unwrap();
        let check_images = |s| super::super::image_check::check_images_cached(s, "test", None);
        check_images(&ds.train).unwrap();
        let e = check_images(&ds.val).unwrap_err().to_string();
        assert!(e.contains("huge.png"), "{e}");
        fs::write(&big, b"not a png").unwrap();
        let e = check_images(&ds.val).unwrap_err().to_string();
        assert!(e.contains("huge.png") && e.contains("decode"), "{e}");
    }

    #[test]
    fn a_folder_the_os_refuses_to_examine_is_not_reported_missing() {
        // A mode-000 parent gives EACCES (not testable as root, who may read anything); a path
        // through a regular file gives ENOTDIR. Either way the OS refused, nothing is missing.
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        for kind in [DatasetKind::Folder, DatasetKind::FashionMnist] {
            let e = load_dataset(kind, &file.join("sub"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot read") && !e.contains("not found"), "{e}");
        }
        // The same below the data directory (its train/ is a regular file here).
        fs::create_dir_all(root.path().join("data")).unwrap();
        fs::write(root.path().join("data/val"), "x").unwrap();
        fs::create_dir_all(root.path().join("data/train/a")).unwrap();
        let e = load_dataset(DatasetKind::Folder, &root.path().join("data"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "a file is not a folder: {e}");
    }
}
