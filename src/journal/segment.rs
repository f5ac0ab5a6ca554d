//! Segment files: naming and listing.
//!
//! A segment is named after the next position at the moment it was created
//! (`{position:020}.wal`), so every record in it is at or above that position and the next
//! segment's name is where this one's records end.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Position;

const SUFFIX: &str = ".wal";
const DIGITS: usize = 20;

pub(super) fn file_name(first: Position) -> String {
    format!("{:0width$}{SUFFIX}", first.0, width = DIGITS)
}

pub(super) fn parse_file_name(name: &str) -> Option<Position> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Position)
}

/// Segment files in `dir`, by first position. Other files are ignored.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(Position, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        segments.push((first, entry.path()));
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(file_name(Position(0)), "00000000000000000000.wal");
        assert_eq!(file_name(Position(u64::MAX)), "18446744073709551615.wal");
        for p in [0, 1, 12345, u64::MAX] {
            assert_eq!(parse_file_name(&file_name(Position(p))), Some(Position(p)));
        }
        for bad in [
            "LOCK",
            "0000000000000000000.wal",
            "000000000000000000001.wal",
            "0000000000000000000a.wal",
            "00000000000000000000.wal.tmp",
            "99999999999999999999.wal",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
