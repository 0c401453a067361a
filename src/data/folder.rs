//! Image-folder datasets: `root/train/<class>/*.png|jpg|jpeg` and `root/val/<class>/…` (or `test/`).
//!
//! Like torchvision's `ImageFolder`, classes are the sorted sub-folder names of the training split
//! and files are found recursively below each class folder. Only paths are stored; pixels are
//! decoded (to RGB, as `ImageFolder`'s default PIL loader does) when a batch needs them.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};
use super::split::{RawImage, Samples, Split};
use super::{download_hint, Dataset, DatasetKind};

/// File extensions (case-insensitive) treated as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Decode one image file to 8-bit RGB.
///
/// The format is sniffed from the content first (a JPEG saved as `.png` still loads), falling back
/// to the extension.
pub fn decode_image(path: &Path) -> Result<RawImage> {
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| DataError::io(path, e, "Check that the file exists and is readable"))?;
    let img = reader.decode().map_err(|source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::format(
            path,
            "image has zero width or height",
            "Remove the file from the dataset",
        ));
    }
    RawImage::new(w as usize, h as usize, 3, rgb.into_raw())
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

/// All image files below `dir`, recursively, sorted.
fn collect_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in read_dir_sorted(&d)? {
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Class names of a split directory: its sorted, non-hidden sub-folder names.
pub fn class_names(split_dir: &Path) -> Result<Vec<String>> {
    let names: Vec<String> = read_dir_sorted(split_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
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
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = split_dir.join(class);
        let files = collect_images(&class_dir)?;
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
    if !train_dir.is_dir() {
        return Err(DataError::missing(
            "training folder",
            &train_dir,
            download_hint(kind),
        ));
    }
    let val_dir = ["val", "test"]
        .iter()
        .map(|d| root.join(d))
        .find(|p| p.is_dir())
        .ok_or_else(|| {
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
}
