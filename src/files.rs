//! Writing files so that a crash never leaves half of one: every checkpoint, metrics history,
//! sweep result and report goes through [`write_atomically`].
//!
//! It lives apart from `checkpoint` because runs, sweeps and the CLI write text files the same
//! way, and none of them should depend on the checkpoint code to do so.

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The OS refused a file operation: what was being done, to which path, and why.
#[derive(Debug, Error)]
#[error("cannot {action} {}: {error}", path.display())]
pub struct FileError {
    /// "create directory", "write", "move … to", …
    pub action: String,
    pub path: PathBuf,
    /// Shown in the message, not chained as a `source` (a report would print it twice).
    pub error: std::io::Error,
}

impl FileError {
    pub fn new(action: impl Into<String>, path: &Path, error: std::io::Error) -> Self {
        FileError {
            action: action.into(),
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Writes `data` to `path` through a temporary file in the same directory, fsync, rename: a
/// reader sees the old file or the new one, never a part. The directory is created if needed.
/// The temporary file is `.NAME.PID.tmp`, removed when anything fails.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FileError::new("create directory", dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| FileError::new("create", &tmp, e))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| FileError::new("write", &tmp, e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| FileError::new(format!("move {} to", tmp.display()), path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub").join("x.json");
        write_atomically(&target, b"{}").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        // A directory in the way of the rename: the error names it, and no temp file stays.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        let e = write_atomically(&blocked, b"data").unwrap_err();
        assert!(e.to_string().starts_with("cannot move"), "{e}");
        assert_eq!(e.path, blocked);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
