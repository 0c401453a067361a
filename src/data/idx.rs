//! MNIST-style IDX files (LeCun's format, also used by Fashion-MNIST), gzipped or raw.
//!
//! Layout: big-endian magic `0x0000 08 NN` (type 0x08 = u8, NN = number of dimensions), then NN
//! big-endian u32 sizes, then the data. Images are `2051` (3 dims: count, rows, cols), labels are
//! `2049` (1 dim: count).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};
use super::split::{Samples, Split};
use super::{download_hint, Dataset, DatasetKind};

/// Magic number of an IDX3 u8 image file.
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX1 u8 label file.
pub const LABELS_MAGIC: u32 = 2049;

/// Fashion-MNIST class names, in label order (zalandoresearch/fashion-mnist README).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// MNIST class names: the digits.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

const REDOWNLOAD: &str = "The file is probably truncated or corrupt: download it again";

/// Decoded IDX3 image file.
#[derive(Clone, Debug)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `count × rows × cols` bytes, image after image, row-major.
    pub data: Vec<u8>,
}

/// Read a whole file, transparently gunzipping it when it starts with the gzip magic `1f 8b`
/// (so a mis-named file works either way).
///
/// For IDX files prefer [`read_idx_images`] / [`read_idx_labels`], which never decompress more
/// than the header declares.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_maybe_gz(path)?
        .read_to_end(&mut out)
        .map_err(|e| read_error(path, e))?;
    Ok(out)
}

/// A reader of the file's bytes, gunzipped when the file starts with the gzip magic.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let file = fs::File::open(path)
        .map_err(|e| DataError::io(path, e, "Check that the file exists and is readable"))?;
    let mut input = BufReader::new(file);
    let head = input
        .fill_buf()
        .map_err(|e| DataError::io(path, e, "Check that the file is readable"))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(GzMembers::new(input)))
    } else {
        Ok(Box::new(input))
    }
}

/// A stream error while reading (or gunzipping) `path`.
fn read_error(path: &Path, e: std::io::Error) -> DataError {
    match e.kind() {
        std::io::ErrorKind::InvalidData
        | std::io::ErrorKind::InvalidInput
        | std::io::ErrorKind::UnexpectedEof => DataError::format(
            path,
            format!("gzip stream is corrupt or truncated ({e})"),
            REDOWNLOAD,
        ),
        _ => DataError::io(path, e, "Check that the file is readable"),
    }
}

/// The concatenated members of a gzip file (as `gzip -d` reads them), ignoring the zero bytes
/// some tools pad a file with after the last member (`gzip -d`: "trailing zero bytes
/// ignored"). Other bytes after a member that are not a gzip member are an error.
///
/// Reads lazily: a consumer that stops early (the IDX readers stop one byte past the size the
/// header declares) never makes it decompress the rest, so a small file that inflates to
/// gigabytes costs no more memory than its header promises.
struct GzMembers<R: BufRead> {
    state: GzState<R>,
}

enum GzState<R: BufRead> {
    /// Between members (or at the start).
    Between(R),
    /// Inside a member.
    Member(flate2::bufread::GzDecoder<R>),
    Done,
}

impl<R: BufRead> GzMembers<R> {
    fn new(input: R) -> Self {
        Self {
            state: GzState::Between(input),
        }
    }
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, GzState::Done) {
                GzState::Done => return Ok(0),
                GzState::Between(mut input) => {
                    let head = input.fill_buf()?;
                    if head.is_empty() {
                        return Ok(0);
                    }
                    if head[0] == 0 {
                        skip_zero_padding(&mut input)?;
                        return Ok(0);
                    }
                    self.state = GzState::Member(flate2::bufread::GzDecoder::new(input));
                }
                GzState::Member(mut member) => {
                    let n = member.read(buf)?;
                    if n == 0 && !buf.is_empty() {
                        // The member ended (CRC and length checked): the next one may follow.
                        self.state = GzState::Between(member.into_inner());
                        continue;
                    }
                    self.state = GzState::Member(member);
                    return Ok(n);
                }
            }
        }
    }
}

/// Consumes the rest of `input`, which must be zero bytes.
fn skip_zero_padding<R: BufRead>(input: &mut R) -> std::io::Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        if chunk.iter().any(|&b| b != 0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unexpected bytes after the last gzip member",
            ));
        }
        let n = chunk.len();
        input.consume(n);
    }
}

/// Reads an IDX file of `ndims` dimensions: the header first, then exactly the data bytes it
/// declares, never more than one byte past them (whatever the file decompresses to). Returns
/// the dimension sizes and the data.
fn read_idx(path: &Path, magic: u32, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut input = open_maybe_gz(path)?;
    let header_len = 4 + 4 * ndims;
    let mut header = Vec::with_capacity(header_len);
    input
        .by_ref()
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(|e| read_error(path, e))?;
    let (dims, _) = parse_header(&header, path, magic, ndims)?;
    let expected = data_len(&dims, path)?;
    // Capacity grows with the data actually read: a header that lies about a huge size costs
    // nothing until the bytes are there.
    let mut data = Vec::with_capacity(expected.min(1 << 26));
    input
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| read_error(path, e))?;
    let what = describe(&dims);
    if data.len() < expected {
        return Err(DataError::format(
            path,
            format!(
                "truncated: header promises {what} ({expected} bytes) but only {} bytes follow",
                data.len()
            ),
            REDOWNLOAD,
        ));
    }
    if data.len() > expected {
        return Err(DataError::format(
            path,
            format!("more data follows than the header declares ({what}, {expected} bytes)"),
            REDOWNLOAD,
        ));
    }
    Ok((dims, data))
}

/// Data bytes an IDX header declares (images must be non-empty), overflow-checked.
fn data_len(dims: &[usize], path: &Path) -> Result<usize> {
    if dims.len() == 3 && (dims[1] == 0 || dims[2] == 0) {
        return Err(DataError::format(
            path,
            format!("image size {}x{} is empty", dims[1], dims[2]),
            REDOWNLOAD,
        ));
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::format(path, "header sizes overflow", REDOWNLOAD))
}

fn describe(dims: &[usize]) -> String {
    match dims {
        [count, rows, cols] => format!("{count} images of {rows}x{cols}"),
        [count] => format!("{count} labels"),
        _ => format!("{dims:?}"),
    }
}

/// Parse the header: checks the magic and returns the dimension sizes and the data offset.
fn parse_header(
    bytes: &[u8],
    path: &Path,
    magic: u32,
    ndims: usize,
) -> Result<(Vec<usize>, usize)> {
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(DataError::format(
            path,
            format!(
                "only {} bytes, shorter than the {header_len}-byte IDX header",
                bytes.len()
            ),
            REDOWNLOAD,
        ));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        let what = if magic == IMAGES_MAGIC {
            "image"
        } else {
            "label"
        };
        return Err(DataError::format(
            path,
            format!("bad magic number {found} (expected {magic} for an IDX {what} file)"),
            "Is this really an MNIST-style IDX file, and are the images/labels files swapped?",
        ));
    }
    let dims = (0..ndims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    Ok((dims, header_len))
}

/// Check that exactly `expected` data bytes follow the header.
fn check_len(bytes: &[u8], path: &Path, offset: usize, expected: usize, what: &str) -> Result<()> {
    let have = bytes.len() - offset;
    if have != expected {
        let problem = if have < expected {
            format!(
                "truncated: header promises {what} ({expected} bytes) but only {have} bytes follow"
            )
        } else {
            format!("{} unexpected trailing bytes after {what}", have - expected)
        };
        return Err(DataError::format(path, problem, REDOWNLOAD));
    }
    Ok(())
}

/// Parse the (already decompressed) bytes of an IDX3 image file.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let (dims, off) = parse_header(bytes, path, IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::format(
            path,
            format!("image size {rows}x{cols} is empty"),
            REDOWNLOAD,
        ));
    }
    let expected = count
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| DataError::format(path, "header sizes overflow", REDOWNLOAD))?;
    check_len(
        bytes,
        path,
        off,
        expected,
        &format!("{count} images of {rows}x{cols}"),
    )?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        data: bytes[off..].to_vec(),
    })
}

/// Parse the (already decompressed) bytes of an IDX1 label file.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let (dims, off) = parse_header(bytes, path, LABELS_MAGIC, 1)?;
    check_len(bytes, path, off, dims[0], &format!("{} labels", dims[0]))?;
    Ok(bytes[off..].to_vec())
}

/// Read an IDX3 image file (raw or gzipped), decompressing no more than its header declares.
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let (dims, data) = read_idx(path, IMAGES_MAGIC, 3)?;
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        data,
    })
}

/// Read an IDX1 label file (raw or gzipped), decompressing no more than its header declares.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    Ok(read_idx(path, LABELS_MAGIC, 1)?.1)
}

/// Find `stem` in `dir` under any of its usual names: `stem`, `stem.gz`, and the
/// `train-images.idx3-ubyte` spelling some mirrors use. Raw files win (no decompression needed).
pub fn find_idx_file(dir: &Path, stem: &str, kind: DatasetKind) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    let candidates = [
        stem.to_string(),
        format!("{stem}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            DataError::missing(
                format!("IDX file {stem}[.gz]"),
                &dir.join(stem),
                download_hint(kind),
            )
        })
}

/// Load one split: images + labels, cross-checked.
pub fn load_idx_split(images_path: &Path, labels_path: &Path, num_classes: usize) -> Result<Split> {
    let images = read_idx_images(images_path)?;
    let labels = read_idx_labels(labels_path)?;
    if labels.len() != images.count {
        return Err(DataError::format(
            labels_path,
            format!(
                "has {} labels but {} has {} images",
                labels.len(),
                images_path.display(),
                images.count
            ),
            "The images and labels files must come from the same split and download",
        ));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(DataError::format(
            labels_path,
            format!("label {l} of sample {i} is out of range (dataset has {num_classes} classes)"),
            "The label file is corrupt or belongs to another dataset",
        ));
    }
    Split::new(
        Samples::InMemory {
            data: images.data,
            count: images.count,
            width: images.cols,
            height: images.rows,
            channels: 1,
        },
        labels.into_iter().map(usize::from).collect(),
    )
}

/// Load Fashion-MNIST or MNIST from `dir` (train = `train-*`, val = `t10k-*`).
pub fn load_idx_dataset(kind: DatasetKind, dir: &Path) -> Result<Dataset> {
    let classes: Vec<String> = match kind {
        DatasetKind::Mnist => MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
        _ => FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let split = |prefix: &str| -> Result<Split> {
        let images = find_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"), kind)?;
        let labels = find_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"), kind)?;
        load_idx_split(&images, &labels, classes.len())
    };
    let train = split("train")?;
    let val = split("t10k")?;
    let size = |s: &Split| match s.samples {
        Samples::InMemory { width, height, .. } => (height, width),
        Samples::Files(_) => (0, 0),
    };
    if size(&train) != size(&val) {
        return Err(DataError::format(
            dir,
            format!(
                "train images are {:?} but test images are {:?}",
                size(&train),
                size(&val)
            ),
            "Both splits must come from the same dataset",
        ));
    }
    Ok(Dataset {
        kind,
        native_size: Some(size(&train)),
        train,
        val,
        classes,
        channels: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load_dataset;
    use crate::data::testutil::*;

    fn check_loaded(dir: &Path) {
        let ds = load_dataset(DatasetKind::Mnist, dir).unwrap();
        assert_eq!((ds.train.len(), ds.val.len()), (5, 3));
        assert_eq!(ds.classes[3], "3");
        assert_eq!(ds.native_size, Some((28, 28)));
        let train = pattern_images(5, 784, 0);
        for (i, want) in train.iter().enumerate() {
            let img = ds.train.get(i).unwrap();
            assert_eq!((img.width, img.height, img.channels), (28, 28, 1));
            assert_eq!(&img.data, want);
            assert_eq!(ds.train.labels[i], i % 10);
        }
        assert_eq!(ds.val.get(2).unwrap().data, pattern_images(3, 784, 1)[2]);
        assert_eq!(ds.val.labels, vec![1, 2, 3]);
    }

    #[test]
    fn loads_raw_and_gz_files() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_idx_dataset(dir.path(), 5, 3, gz);
            check_loaded(dir.path());
        }
    }

    #[test]
    fn fashion_names_differ_from_digits() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 2, 2, true);
        let ds = load_dataset(DatasetKind::FashionMnist, dir.path()).unwrap();
        assert_eq!(ds.classes[0], "T-shirt/top");
    }

    fn err_of(dir: &Path) -> String {
        load_dataset(DatasetKind::Mnist, dir)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_magic_is_reported_with_file_name() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 3, 3, false);
        let p = dir.path().join("train-images-idx3-ubyte");
        let mut b = fs::read(&p).unwrap();
        b[3] = 0x01; // 2049: a label file's magic
        fs::write(&p, b).unwrap();
        let e = err_of(dir.path());
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("magic"),
            "{e}"
        );
    }

    #[test]
    fn truncated_images_are_reported() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_idx_dataset(dir.path(), 3, 3, false);
            let p = dir.path().join("t10k-images-idx3-ubyte");
            let b = fs::read(&p).unwrap();
            let cut = &b[..b.len() - 100];
            if gz {
                fs::remove_file(&p).unwrap();
                let g = gzip(&b);
                fs::write(
                    dir.path().join("t10k-images-idx3-ubyte.gz"),
                    &g[..g.len() / 2],
                )
                .unwrap();
            } else {
                fs::write(&p, cut).unwrap();
            }
            let e = err_of(dir.path());
            assert!(
                e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"),
                "{e}"
            );
        }
    }

    #[test]
    fn label_count_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 4, 3, false);
        fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            idx_labels_bytes(&[0, 1, 2]),
        )
        .unwrap();
        let e = err_of(dir.path());
        assert!(
            e.contains("train-labels-idx1-ubyte") && e.contains("3 labels"),
            "{e}"
        );
    }

    #[test]
    fn label_out_of_range_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 3, 3, false);
        fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            idx_labels_bytes(&[0, 10, 2]),
        )
        .unwrap();
        let e = err_of(dir.path());
        assert!(
            e.contains("t10k-labels-idx1-ubyte") && e.contains("label 10"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 3, 3, true);
        fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let e = err_of(dir.path());
        assert!(
            e.contains("t10k-labels-idx1-ubyte") && e.contains("not found"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 3, 3, false);
        fs::write(dir.path().join("train-labels-idx1-ubyte"), b"").unwrap();
        let e = err_of(dir.path());
        assert!(
            e.contains("train-labels-idx1-ubyte") && e.contains("header"),
            "{e}"
        );
    }

    /// Counts the bytes handed out by a reader (how much a consumer pulled from it).
    struct Counting<R> {
        inner: R,
        pulled: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.pulled += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn a_compression_bomb_is_refused_after_the_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 3, 3, true);
        // A header for 2 images, then 64 MiB of zeros: a 64 KiB gzip.
        let mut bomb = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
        bomb.resize(bomb.len() + (64 << 20), 0);
        let gz = gzip(&bomb);
        assert!(gz.len() < 1 << 20);
        let p = dir.path().join("t10k-images-idx3-ubyte.gz");
        fs::write(&p, &gz).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(
            e.contains("more data follows than the header declares"),
            "{e}"
        );
        // The reader stops one byte past the declared size: the rest is never inflated.
        let mut members = Counting {
            inner: GzMembers::new(BufReader::new(fs::File::open(&p).unwrap())),
            pulled: 0,
        };
        let mut sink = Vec::new();
        (&mut members)
            .take(16 + 2 * 784 + 1)
            .read_to_end(&mut sink)
            .unwrap();
        assert_eq!(members.pulled, 16 + 2 * 784 + 1);
    }

    #[test]
    fn gzip_padding_and_multiple_members_are_valid_gzip() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dataset(dir.path(), 3, 3, false);
        let raw = fs::read(dir.path().join("train-images-idx3-ubyte")).unwrap();
        let p = dir.path().join("x.gz");
        // Zero padding after the member (tape and block-device tools write it; `gzip -d`
        // accepts it).
        let mut padded = gzip(&raw);
        padded.extend_from_slice(&[0; 512]);
        fs::write(&p, &padded).unwrap();
        assert_eq!(read_idx_images(&p).unwrap().data, raw[16..]);
        // Two members, as `cat a.gz b.gz` makes.
        let (a, b) = raw.split_at(100);
        let mut two = gzip(a);
        two.extend(gzip(b));
        fs::write(&p, &two).unwrap();
        assert_eq!(read_idx_images(&p).unwrap().data, raw[16..]);
        // Garbage after the member is still corrupt.
        let mut junk = gzip(&raw);
        junk.extend_from_slice(b"garbage");
        fs::write(&p, &junk).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
