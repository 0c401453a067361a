//! The up-front pass over a file-backed split: every image is decoded once before training, so
//! that a truncated JPEG or a PNG with a corrupt body fails the run at its start, naming the file,
//! instead of at the batch that needs it, after an epoch of work.
//!
//! Decoding a large folder takes minutes (Food-101: 101,000 JPEGs), so images that decoded are
//! remembered in a cache file, keyed by canonical path, size and modification time. A later run
//! re-decodes only what is new or changed. The cached entry keeps the image's width and height,
//! so the pixel limit ([`super::image::max_image_pixels`]) is checked again on every run without
//! decoding.
//!
//! The cache lives in `$IMIXER_CACHE_DIR`, else `$XDG_CACHE_HOME/imixer`, else
//! `$HOME/.cache/imixer`. It is only an optimisation: one that cannot be read is ignored and one
//! that cannot be written is skipped, so a read-only home never blocks a run. It is written to a
//! temporary file and renamed, so an interrupted run cannot leave a torn cache.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};
use super::image::{decode_image, image_dimensions, max_image_pixels, within_pixel_limit};
use super::split::{Samples, Split};

/// Environment variable naming the cache folder.
pub const CACHE_DIR_ENV: &str = "IMIXER_CACHE_DIR";

/// File name of the cache inside the cache folder. The version suffix changes with the format.
const CACHE_FILE: &str = "decoded-images.v1.tsv";

/// What the pass did: how many images it decoded and how many it took from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageCheck {
    pub decoded: usize,
    pub cached: usize,
}

/// The cache folder, if the environment names one.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("imixer")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("imixer")))
}

/// The identity of a file's content as far as the file system tells: size and modification
/// time in nanoseconds. A rewrite that keeps both is not noticed; the decode at batch time still
/// catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    stamp: Stamp,
    width: u32,
    height: u32,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let meta = fs::metadata(path)
        .map_err(|e| DataError::io(path, e, "Check that the file exists and is readable"))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(-1, |d| d.as_nanos() as i128);
    Ok(Stamp {
        len: meta.len(),
        mtime_ns,
    })
}

/// Reads the cache; any line that does not parse is dropped (the cache is advisory).
fn read_cache(file: &Path) -> HashMap<PathBuf, Entry> {
    let Ok(text) = fs::read_to_string(file) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(5, '\t');
            let len = f.next()?.parse().ok()?;
            let mtime_ns = f.next()?.parse().ok()?;
            let width = f.next()?.parse().ok()?;
            let height = f.next()?.parse().ok()?;
            let path = PathBuf::from(f.next()?);
            let stamp = Stamp { len, mtime_ns };
            Some((
                path,
                Entry {
                    stamp,
                    width,
                    height,
                },
            ))
        })
        .collect()
}

/// Writes the cache through a temporary file and a rename. Paths that are not UTF-8 or hold a
/// tab or newline are not cached (they are decoded again next time).
fn write_cache(file: &Path, entries: &HashMap<PathBuf, Entry>) -> std::io::Result<()> {
    let mut lines: Vec<String> = entries
        .iter()
        .filter_map(|(p, e)| {
            let p = p.to_str().filter(|p| !p.contains(['\t', '\n', '\r']))?;
            Some(format!(
                "{}\t{}\t{}\t{}\t{p}\n",
                e.stamp.len, e.stamp.mtime_ns, e.width, e.height
            ))
        })
        .collect();
    lines.sort();
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tsv.{}.tmp", std::process::id()));
    fs::write(&tmp, lines.concat())?;
    fs::rename(&tmp, file).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// One image as the cache sees it: vouched for (with its dimensions), or to be decoded.
struct Lookup {
    canon: PathBuf,
    stamp: Stamp,
    cached: Option<(u32, u32)>,
}

fn look_up(path: &Path, known: &HashMap<PathBuf, Entry>) -> Result<Lookup> {
    let canon = fs::canonicalize(path)
        .map_err(|e| DataError::io(path, e, "Check that the file exists and is readable"))?;
    let stamp = stamp(&canon)?;
    let cached = known
        .get(&canon)
        .filter(|e| e.stamp == stamp)
        .map(|e| (e.width, e.height));
    Ok(Lookup {
        canon,
        stamp,
        cached,
    })
}

/// Checks one image: from the cache's dimensions, or by decoding it. Returns the new cache
/// entry when it decoded.
fn check_one(path: &Path, lookup: &Lookup, limit: u64) -> Result<Option<Entry>> {
    if let Some((w, h)) = lookup.cached {
        within_pixel_limit(path, w, h, limit)?;
        return Ok(None);
    }
    // The header first: an image over the limit is refused before its pixels are allocated.
    let (width, height) = image_dimensions(path)?;
    within_pixel_limit(path, width, height, limit)?;
    decode_image(path)?;
    Ok(Some(Entry {
        stamp: lookup.stamp,
        width,
        height,
    }))
}

/// Images to decode from which on the pass says so first, since it can take minutes.
const ANNOUNCE_FROM: usize = 2000;

/// Decodes every image of a file-backed split that the cache in `cache` (a folder; `None` for
/// no cache) does not vouch for, in parallel, and returns the first problem in split order.
/// In-memory splits (IDX, CIFAR) were validated when they were read and pass at once. `what`
/// names the split in the line printed before a long pass.
pub fn check_images_cached(split: &Split, what: &str, cache: Option<&Path>) -> Result<ImageCheck> {
    check_with_limit(split, what, cache, max_image_pixels())
}

fn check_with_limit(
    split: &Split,
    what: &str,
    cache: Option<&Path>,
    limit: u64,
) -> Result<ImageCheck> {
    use rayon::prelude::*;
    let Samples::Files(paths) = &split.samples else {
        return Ok(ImageCheck::default());
    };
    let file = cache.map(|d| d.join(CACHE_FILE));
    let known = file.as_deref().map(read_cache).unwrap_or_default();
    let lookups: Vec<Result<Lookup>> = paths.par_iter().map(|p| look_up(p, &known)).collect();
    // Sequentially, so the error reported is the first in split order.
    let lookups = lookups.into_iter().collect::<Result<Vec<_>>>()?;
    let to_decode = lookups.iter().filter(|l| l.cached.is_none()).count();
    if to_decode >= ANNOUNCE_FROM {
        let remembered = match &file {
            Some(f) => format!("remembered in {}", f.display()),
            None => "not remembered: no cache folder".to_string(),
        };
        eprintln!("decoding {to_decode} {what} images once to check them ({remembered})");
    }
    let outcomes: Vec<Result<Option<Entry>>> = paths
        .par_iter()
        .zip(&lookups)
        .map(|(p, l)| check_one(p, l, limit))
        .collect();
    let mut report = ImageCheck::default();
    let mut fresh = HashMap::new();
    let mut first_error = None;
    for (lookup, outcome) in lookups.into_iter().zip(outcomes) {
        match outcome {
            Ok(None) => report.cached += 1,
            Ok(Some(entry)) => {
                report.decoded += 1;
                fresh.insert(lookup.canon, entry);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // Images that decoded are worth remembering even when another image failed: the user fixes
    // that one file and the rerun does not decode the rest again.
    if let (Some(file), false) = (&file, fresh.is_empty()) {
        let mut merged = read_cache(file);
        merged.extend(fresh);
        let _ = write_cache(file, &merged);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// [`check_images_cached`] with the cache folder the environment names ([`cache_dir`]).
pub fn check_images(split: &Split, what: &str) -> Result<ImageCheck> {
    check_images_cached(split, what, cache_dir().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::MAX_IMAGE_PIXELS_ENV;

    fn png(path: &Path, w: u32, h: u32) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.save(path).unwrap();
    }

    fn split_of(paths: &[PathBuf]) -> Split {
        Split::new(Samples::Files(paths.to_vec()), vec![0; paths.len()]).unwrap()
    }

    #[test]
    fn a_corrupt_body_behind_a_valid_header_is_found_before_training() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        let bad = dir.path().join("bad.png");
        png(&good, 9, 7);
        png(&bad, 40, 30);
        // Keep the header (the dimensions still read) and cut the compressed pixels short.
        let bytes = fs::read(&bad).unwrap();
        fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
        assert!(
            image_dimensions(&bad).is_ok(),
            "the header alone must look fine"
        );
        let e = check_images_cached(&split_of(&[good.clone(), bad.clone()]), "test", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.png") && e.contains("decode"), "{e}");
    }

    #[test]
    fn decoded_images_are_cached_and_a_changed_file_is_decoded_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("{i}.png")))
            .collect();
        for p in &paths {
            png(p, 5, 4);
        }
        let split = split_of(&paths);
        let first = check_images_cached(&split, "test", Some(&cache)).unwrap();
        assert_eq!(
            first,
            ImageCheck {
                decoded: 3,
                cached: 0
            }
        );
        let again = check_images_cached(&split, "test", Some(&cache)).unwrap();
        assert_eq!(
            again,
            ImageCheck {
                decoded: 0,
                cached: 3
            }
        );
        // A different size changes the stamp: the file is decoded, and its corruption found.
        fs::write(&paths[1], b"\x89PNG\r\n\x1a\n not a png at all").unwrap();
        let e = check_images_cached(&split, "test", Some(&cache))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.png"), "{e}");
        // The other two are still cached, and a failed pass leaves no temporary file behind.
        png(&paths[1], 5, 4);
        let healed = check_images_cached(&split, "test", Some(&cache)).unwrap();
        assert_eq!(
            healed,
            ImageCheck {
                decoded: 1,
                cached: 2
            }
        );
        let names: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CACHE_FILE]);
    }

    #[test]
    fn a_garbled_or_unwritable_cache_never_blocks_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        png(&p, 3, 3);
        let split = split_of(std::slice::from_ref(&p));
        let cache = dir.path().join("cache");
        fs::create_dir(&cache).unwrap();
        fs::write(cache.join(CACHE_FILE), "garbage\tline\n\u{0}\n1\t2\n").unwrap();
        assert_eq!(
            check_images_cached(&split, "test", Some(&cache))
                .unwrap()
                .decoded,
            1
        );
        // A cache "folder" that is a file cannot be written: the check still passes.
        let not_a_dir = dir.path().join("a.png");
        assert_eq!(
            check_images_cached(&split, "test", Some(&not_a_dir))
                .unwrap()
                .decoded,
            1
        );
    }

    #[test]
    fn the_pixel_limit_is_checked_again_for_cached_images() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let p = dir.path().join("wide.png");
        png(&p, 20, 10);
        let split = split_of(std::slice::from_ref(&p));
        check_images_cached(&split, "test", Some(&cache)).unwrap();
        // The cache vouches for the file, but 20×10 is over a limit of 100 pixels.
        assert_eq!(
            check_with_limit(&split, "test", Some(&cache), 200)
                .unwrap()
                .cached,
            1
        );
        let e = check_with_limit(&split, "test", Some(&cache), 100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("20×10") && e.contains(MAX_IMAGE_PIXELS_ENV),
            "{e}"
        );
    }
}
