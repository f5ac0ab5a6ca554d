//! Errors of the journal, one enum per operation family. Every message names the file or
//! directory involved. I/O errors include the OS error in the message (callers log and forward
//! `to_string()`), so it is kept in a `cause` field rather than exposed again as `source()`.

use std::io;
use std::path::PathBuf;

use super::Position;

/// Failure of [`Journal::open`](super::Journal::open).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("journal: cannot {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// Damage that is not a torn tail of the last segment: an operator has to look.
    #[error("journal: {} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal: directory {} is already open (lock file held)", path.display())]
    Locked { path: PathBuf },
}

/// Failure of an append, `sync` or `release`.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("journal: cannot {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// An earlier write or fsync failed, so what reached the disk is unknown; the journal
    /// refuses further writes until [`recover`](super::Journal::recover) succeeds (or it is
    /// reopened, which replays and cuts any torn tail).
    #[error("journal: {} failed an earlier write and is not writable until it recovers", dir.display())]
    Failed { dir: PathBuf },
    #[error("journal: {}: an entry of {bytes} bytes exceeds the limit of {max} bytes", dir.display())]
    TooLarge { dir: PathBuf, bytes: u64, max: u64 },
    #[error(
        "journal: {}: invalid seal {start}..{end} (must be non-empty and end at or before the next position {next})",
        dir.display()
    )]
    InvalidSeal {
        dir: PathBuf,
        start: Position,
        end: Position,
        next: Position,
    },
}
