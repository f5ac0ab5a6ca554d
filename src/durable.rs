//! Making file-system changes survive a power loss: the fsyncs spillway's own files need.
//! A file's data is durable after its fsync; its name (a create, rename or delete) only after
//! an fsync of the directory holding it.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes file creations, deletions and renames in `dir` durable.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened as files here; their entries are made durable by the OS.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably: written to `<name>.tmp` beside it,
/// fsync'd, renamed over it, then the directory fsync'd. A crash leaves the old or the new
/// content, never a mix; after a return, the new content survives a power loss.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no directory or file name", path.display()),
        ));
    };
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    std::fs::write(&tmp, bytes)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["stream.json"]);
        assert!(write_file(Path::new("/"), b"x").is_err());
    }
}
