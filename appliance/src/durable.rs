//! Replacing a small file so that a power cut leaves either the old one or
//! the new one, on ext4 (`/data`) and on FAT (the boot partition) alike.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`: a temporary file beside it (`NAME.tmp`),
/// flushed, renamed over `path`, flushed again, then the directory flushed.
///
/// The second flush is for FAT: Linux's vfat keeps a file's size and first
/// cluster in its directory entry, and a rename writes the new entry empty
/// and fills it in only when the file itself is written back. Flushing the
/// directory alone would leave the file at 0 bytes on the card.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("record");
        replace(&path, b"one").expect("first write");
        replace(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list the directory")
            .map(|e| e.expect("a directory entry").file_name())
            .collect();
        assert_eq!(names, ["record"]);
    }
}
