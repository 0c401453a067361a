//! Food-101 in the layout its archive extracts to (`food-101.tar.gz` → `food-101/`):
//! `images/<class>/<id>.jpg`, and `meta/train.txt` / `meta/test.txt` listing the images of each
//! split as `class/id` lines, `meta/classes.txt` the class names, one per line, in label order.
//!
//! The split comes from the lists (75 750 training and 25 250 test images in the real data set),
//! not from the folders, so the reader cannot use the image-folder scan. Pixels are decoded like
//! an image folder's ([`super::image::decode_image`]) when a batch needs them. Any number of
//! classes is accepted, so trimmed copies (fewer classes or images) load too.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::{DataError, Result};
use super::split::{Samples, Split};
use super::{download_hint, Dataset, DatasetKind};

/// Largest list file read (64 MiB; the real `train.txt` is 1.5 MB).
pub const MAX_LIST_BYTES: u64 = 64 << 20;

const FIX_LIST: &str = "Extract the Food-101 archive again, or fix the list";

/// The Food-101 root: `dir` itself when it holds `meta/classes.txt`, else `dir/food-101`.
pub fn locate(dir: &Path) -> Result<PathBuf> {
    for d in [dir.to_path_buf(), dir.join("food-101")] {
        if d.join("meta").join("classes.txt").is_file() {
            return Ok(d);
        }
    }
    Err(DataError::missing(
        "Food-101 class list meta/classes.txt (looked in the directory and in food-101/)",
        &dir.join("meta").join("classes.txt"),
        download_hint(DatasetKind::Food101),
    ))
}

fn read_list(path: &Path) -> Result<String> {
    let len = fs::metadata(path)
        .map_err(|e| DataError::io(path, e, "Check that the file exists and is readable"))?
        .len();
    if len > MAX_LIST_BYTES {
        return Err(DataError::format(
            path,
            format!("is {len} bytes, more than the {MAX_LIST_BYTES}-byte limit for a list"),
            "Is this the right file? Food-101's lists are text files of a few MB",
        ));
    }
    fs::read_to_string(path)
        .map_err(|e| DataError::io(path, e, "The list must be readable UTF-8 text"))
}

/// Whether `s` can name one path component: no separators, not `.` or `..`, no NUL.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// Non-empty trimmed lines with their 1-based line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
}

/// `meta/classes.txt`: unique folder names, in label order.
fn parse_classes(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut seen = HashMap::new();
    let mut names = Vec::new();
    for (n, name) in lines(text) {
        if !is_plain_name(name) {
            return Err(DataError::format(
                path,
                format!("line {n}: '{name}' is not a folder name"),
                FIX_LIST,
            ));
        }
        if let Some(first) = seen.insert(name, n) {
            return Err(DataError::format(
                path,
                format!("line {n}: class '{name}' is listed twice (first on line {first})"),
                FIX_LIST,
            ));
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err(DataError::format(path, "lists no classes", FIX_LIST));
    }
    Ok(names)
}

/// One split list: `class/id` lines → `images/class/id.jpg` paths, labels and line numbers.
fn parse_split(
    text: &str,
    path: &Path,
    classes: &HashMap<&str, usize>,
    images: &Path,
) -> Result<(Vec<PathBuf>, Vec<usize>, Vec<usize>)> {
    let (mut files, mut labels, mut line_numbers) = (Vec::new(), Vec::new(), Vec::new());
    for (n, entry) in lines(text) {
        let bad =
            |problem: String| DataError::format(path, format!("line {n}: {problem}"), FIX_LIST);
        let Some((class, id)) = entry.split_once('/') else {
            return Err(bad(format!("'{entry}' is not of the form class/id")));
        };
        if !is_plain_name(id) {
            return Err(bad(format!("'{id}' is not an image name")));
        }
        let Some(&label) = classes.get(class) else {
            return Err(bad(format!("class '{class}' is not in meta/classes.txt")));
        };
        files.push(images.join(class).join(format!("{id}.jpg")));
        labels.push(label);
        line_numbers.push(n);
    }
    if files.is_empty() {
        return Err(DataError::format(path, "lists no images", FIX_LIST));
    }
    Ok((files, labels, line_numbers))
}

/// Read one split list and check (in parallel) that every image it names exists.
fn load_split(root: &Path, list: &str, classes: &HashMap<&str, usize>) -> Result<Split> {
    let path = root.join("meta").join(list);
    let text = read_list(&path)?;
    let (files, labels, line_numbers) = parse_split(&text, &path, classes, &root.join("images"))?;
    if let Some(i) = files.par_iter().position_first(|f| !f.is_file()) {
        return Err(DataError::missing(
            format!(
                "image listed on line {} of {}",
                line_numbers[i],
                path.display()
            ),
            &files[i],
            "Extract the Food-101 archive again (images/ must be complete), or remove the line",
        ));
    }
    Split::new(Samples::Files(files), labels)
}

/// Load Food-101 from its extracted folder or that folder's parent: `meta/train.txt` is the
/// training split, `meta/test.txt` the held-out one.
pub fn load_food101(dir: &Path) -> Result<Dataset> {
    let root = locate(dir)?;
    let classes_path = root.join("meta").join("classes.txt");
    let classes = parse_classes(&read_list(&classes_path)?, &classes_path)?;
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let train = load_split(&root, "train.txt", &index)?;
    let val = load_split(&root, "test.txt", &index)?;
    Ok(Dataset {
        kind: DatasetKind::Food101,
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

    const CLASSES: [&str; 3] = ["apple_pie", "baby_back_ribs", "waffles"];

    /// `root/food-101/{images/<class>/<id>.jpg, meta/{classes,train,test}.txt}`: two training
    /// and one test image per class. Returns the food-101 folder.
    fn build(root: &Path) -> PathBuf {
        let dir = root.join("food-101");
        fs::create_dir_all(dir.join("meta")).unwrap();
        let (mut train, mut test) = (String::new(), String::new());
        for (ci, class) in CLASSES.iter().enumerate() {
            let d = dir.join("images").join(class);
            fs::create_dir_all(&d).unwrap();
            for k in 0..3 {
                let id = 1000 * (ci + 1) + k;
                let px: Vec<u8> = (0..12 * 9 * 3)
                    .map(|i| ((i + 40 * ci) % 256) as u8)
                    .collect();
                save_rgb(&d.join(format!("{id}.jpg")), 12, 9, &px);
                let list = if k < 2 { &mut train } else { &mut test };
                list.push_str(&format!("{class}/{id}\n"));
            }
        }
        fs::write(dir.join("meta/classes.txt"), CLASSES.join("\n") + "\n").unwrap();
        fs::write(dir.join("meta/train.txt"), train).unwrap();
        fs::write(dir.join("meta/test.txt"), test).unwrap();
        dir
    }

    #[test]
    fn loads_the_lists_from_the_folder_or_its_parent() {
        let root = tempfile::tempdir().unwrap();
        let dir = build(root.path());
        for d in [root.path(), dir.as_path()] {
            let ds = load_dataset(DatasetKind::Food101, d).unwrap();
            assert_eq!(ds.classes, CLASSES);
            assert_eq!(ds.train.labels, vec![0, 0, 1, 1, 2, 2]);
            assert_eq!(ds.val.labels, vec![0, 1, 2]);
            assert_eq!(ds.native_size, None);
            let Samples::Files(files) = &ds.val.samples else {
                panic!("Food-101 is decoded lazily");
            };
            assert!(files[1].ends_with("images/baby_back_ribs/2002.jpg"));
            let img = ds.val.get(2).unwrap();
            assert_eq!((img.width, img.height, img.channels), (12, 9, 3));
        }
    }

    #[test]
    fn list_errors_name_the_file_and_line() {
        let root = tempfile::tempdir().unwrap();
        let dir = build(root.path());
        let load = || {
            load_dataset(DatasetKind::Food101, &dir)
                .unwrap_err()
                .to_string()
        };
        let test = dir.join("meta/test.txt");
        let good = fs::read_to_string(&test).unwrap();
        for (bad_line, says) in [
            ("pizza/1", "class 'pizza' is not in meta/classes.txt"),
            ("apple_pie", "not of the form class/id"),
            ("apple_pie/../../etc/passwd", "is not an image name"),
            ("apple_pie/", "is not an image name"),
            ("apple_pie/4242", "line 4 of"),
        ] {
            fs::write(&test, format!("{good}{bad_line}\n")).unwrap();
            let e = load();
            assert!(
                e.contains("test.txt") && e.contains(says),
                "{bad_line}: {e}"
            );
        }
        fs::write(&test, "\n\n").unwrap();
        assert!(load().contains("lists no images"));
        fs::write(&test, &good).unwrap();

        let classes = dir.join("meta/classes.txt");
        fs::write(&classes, "apple_pie\nwaffles\napple_pie\n").unwrap();
        let e = load();
        assert!(
            e.contains("classes.txt") && e.contains("listed twice (first on line 1)"),
            "{e}"
        );
        fs::write(&classes, "apple_pie\n..\n").unwrap();
        assert!(load().contains("'..' is not a folder name"));
        fs::write(&classes, CLASSES.join("\n")).unwrap();

        fs::remove_file(dir.join("meta/train.txt")).unwrap();
        let e = load();
        assert!(e.contains("train.txt"), "{e}");
        fs::remove_file(&classes).unwrap();
        let e = load();
        assert!(e.contains("classes.txt") && e.contains("not found"), "{e}");
    }

    #[test]
    fn an_image_folder_pointed_at_food101_says_what_to_use() {
        let root = tempfile::tempdir().unwrap();
        let dir = build(root.path());
        let e = load_dataset(DatasetKind::Folder, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--dataset food101"), "{e}");
    }
}
