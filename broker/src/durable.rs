//! Files that must be whole or absent after a crash (the node id, keys and
//! certificates, checkpoints, sink checkpoints, retention markers): written
//! to a temporary file beside them, synced, renamed into place, and the
//! directory synced so that the rename itself survives.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a durable write failed, and on which file.
#[derive(Debug)]
pub(crate) struct Failed {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Writes `path` through `fill`, which gets the temporary file, with
/// permissions `mode` (for a file created anew).
pub(crate) fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), Failed> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let at = |path: &Path| {
        let path = path.to_owned();
        move |source| Failed { path, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    fill(&mut file).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir).map_err(at(dir))
}

/// Writes `contents` to `path` durably.
pub(crate) fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), Failed> {
    write_with(path, mode, |f| f.write_all(contents))
}

/// Records a number in `path` durably.
pub(crate) fn write_u64(path: &Path, value: u64) -> Result<(), Failed> {
    write(path, format!("{value}\n").as_bytes(), 0o600)
}

/// The number recorded in `path`; `None` when the file does not exist (or
/// holds no number: it was never written whole, since writes are atomic,
/// so only a hand edit leaves one).
pub(crate) fn read_u64(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a directory's entries (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_a_failed_fill_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        assert_eq!(read_u64(&path).unwrap(), None);
        write_u64(&path, 42).unwrap();
        assert_eq!(read_u64(&path).unwrap(), Some(42));
        let failed = write_with(&path, 0o600, |f| {
            f.write_all(b"7")?;
            Err(io::Error::other("disk gone"))
        });
        assert!(failed.is_err());
        assert_eq!(read_u64(&path).unwrap(), Some(42), "the old value stays");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
