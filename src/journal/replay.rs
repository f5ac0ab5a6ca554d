//! Replay, in two passes so committed data is never held in memory:
//!
//! 1. [`scan`] reads every segment frame by frame, checks CRCs and position continuity, and
//!    keeps only seals, commits and the location of each records entry.
//! 2. [`load`] then reads back just the records entries that hold at least one record not
//!    covered by a committed seal.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::Bytes;

use super::entry::{self, Entry, RecordsIter};
use super::frame::{self, Damage, Next};
use super::{OpenError, Position, Replay, ReplayedRecord, Seal};

/// Read buffer for the sequential scan; large enough that syscalls are not the bottleneck.
const SCAN_BUFFER: usize = 1 << 20;

pub(super) struct ScannedSegment {
    pub first: Position,
    pub path: PathBuf,
    pub file_len: u64,
    /// End of the last good frame; shorter than `file_len` for a torn or damaged segment.
    pub valid_len: u64,
    /// A torn tail (a crash mid-write): cut without a report.
    pub damage: Option<Damage>,
    /// Damage that is not a torn write, reported in `skipped`; a last segment is cut there
    /// too, so nothing is ever appended after it.
    pub cut: bool,
}

/// Where one records entry lives, for the second pass.
struct RecordsLoc {
    segment: usize,
    frame_offset: u64,
    payload_len: u32,
    first: Position,
    count: u32,
}

pub(super) struct Scan {
    pub segments: Vec<ScannedSegment>,
    /// The oldest segment's first position.
    pub first: Position,
    /// One past the last record found; at least the last segment's first position.
    pub next: Position,
    locs: Vec<RecordsLoc>,
    seals: Vec<Seal>,
    commits: HashSet<Position>,
    flushes: Vec<Vec<u8>>,
    /// Damage found and passed over (see [`super::Skipped`]).
    pub skipped: Vec<super::Skipped>,
}

fn corrupt(path: &std::path::Path, offset: u64, reason: impl Into<String>) -> OpenError {
    OpenError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn io_error(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |cause| OpenError::Io { op, path, cause }
}

/// First pass over `segments` (sorted by first position).
pub(super) fn scan(segments: &[(Position, PathBuf)]) -> Result<Scan, OpenError> {
    let mut scan = Scan {
        segments: Vec::with_capacity(segments.len()),
        first: segments.first().map_or(Position(0), |(first, _)| *first),
        next: segments.first().map_or(Position(0), |(first, _)| *first),
        locs: Vec::new(),
        seals: Vec::new(),
        commits: HashSet::new(),
        flushes: Vec::new(),
        skipped: Vec::new(),
    };
    let mut payload = Vec::new();
    // Whether the previous segment was cut short by damage already reported: the positions
    // it lost then show up as a gap before this one, which is not news.
    let mut cut_short = false;
    for (index, (first, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        // Each segment is created at the then-next position, so a mismatch means a segment
        // went missing or an earlier one lost its tail: those positions are gone, and the
        // scan goes on from this segment's.
        if *first > scan.next && cut_short {
            scan.next = *first;
        } else if *first > scan.next {
            scan.skip(
                path,
                0,
                format!(
                    "positions {}..{first} are missing (a segment lost, or the one before cut short)",
                    scan.next
                ),
            );
            scan.next = *first;
        } else if *first < scan.next {
            // Out of the way for good: left in place it would be scanned first once the
            // segments before it are released, and shadow the real ones.
            let aside = path.with_extension("wal.damaged");
            let moved = std::fs::rename(path, &aside).map_or_else(
                |e| format!("could not be moved aside: {e}"),
                |()| format!("moved to {}", aside.display()),
            );
            scan.skip(
                path,
                0,
                format!(
                    "segment named for position {first} overlaps the positions before it (up to {}); {moved}",
                    scan.next
                ),
            );
            continue;
        }
        let file = File::open(path).map_err(io_error("open", path))?;
        let file_len = file.metadata().map_err(io_error("stat", path))?.len();
        let mut reader = frame::Reader::new(BufReader::with_capacity(SCAN_BUFFER, file), file_len);
        let mut damage = None;
        let mut saw_header = false;
        // Where damage that is not a torn write starts: the segment is cut there.
        let mut bad_at: Option<u64> = None;
        loop {
            let offset = reader.offset();
            let kind = match reader.next(&mut payload).map_err(io_error("read", path))? {
                Next::End => break,
                Next::Damaged(d) if is_last => {
                    damage = Some(d);
                    break;
                }
                // Damage before the last segment's tail: what follows in this segment is lost.
                Next::Damaged(d) => {
                    scan.skip(path, offset, d.describe());
                    bad_at = Some(offset);
                    break;
                }
                Next::Frame { kind } => kind,
            };
            let entry = match entry::decode(kind, &payload) {
                Ok(entry) => entry,
                Err(reason) => {
                    scan.skip(path, offset, reason);
                    bad_at = Some(offset);
                    break;
                }
            };
            if !saw_header && !matches!(entry, Entry::Header { .. }) {
                scan.skip(path, offset, "segment does not start with a header");
                bad_at = Some(offset);
                break;
            }
            match entry {
                Entry::Header { first: named } => {
                    if saw_header || named != *first {
                        scan.skip(
                            path,
                            offset,
                            format!(
                                "a header (first position {named}) where none belongs (file name says {first})"
                            ),
                        );
                        bad_at = Some(offset);
                        break;
                    }
                    saw_header = true;
                }
                Entry::Records { first: at, count } => {
                    if at != scan.next {
                        scan.skip(
                            path,
                            offset,
                            format!("records start at position {at}, expected {}", scan.next),
                        );
                        bad_at = Some(offset);
                        break;
                    }
                    scan.locs.push(RecordsLoc {
                        segment: index,
                        frame_offset: offset,
                        // The frame reader produced this payload, so it fits the u32 length field.
                        payload_len: payload.len() as u32,
                        first: at,
                        count,
                    });
                    scan.next = Position(at.0 + u64::from(count));
                }
                Entry::Seal(seal) => {
                    if seal.start >= seal.end || seal.end > scan.next {
                        scan.skip(
                            path,
                            offset,
                            format!(
                                "seal {}..{} is empty or beyond the records before it (next {}); ignored",
                                seal.start, seal.end, scan.next
                            ),
                        );
                        continue;
                    }
                    scan.seals.push(seal);
                }
                Entry::Commit { start } => {
                    scan.commits.insert(start);
                }
                Entry::Flush(meta) => scan.flushes.push(meta),
                // Direct-I/O filler up to a block boundary; the header check above still
                // requires a header first.
                Entry::Padding => {}
            }
        }
        cut_short = bad_at.is_some();
        scan.segments.push(ScannedSegment {
            first: *first,
            path: path.clone(),
            file_len,
            valid_len: bad_at.unwrap_or(reader.offset()),
            damage,
            cut: bad_at.is_some(),
        });
    }
    Ok(scan)
}

impl Scan {
    fn skip(&mut self, path: &std::path::Path, offset: u64, reason: impl Into<String>) {
        self.skipped.push(super::Skipped {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        });
    }
}

/// Committed position ranges, sorted and merged, for a forward-only membership walk.
struct Covered {
    ranges: Vec<(u64, u64)>,
    cursor: usize,
}

impl Covered {
    fn new(mut ranges: Vec<(u64, u64)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Covered {
            ranges: merged,
            cursor: 0,
        }
    }

    /// Whether all of `start..end` is committed. Calls must come in ascending `start` order.
    fn covers(&mut self, start: u64, end: u64) -> bool {
        while self.cursor < self.ranges.len() && self.ranges[self.cursor].1 <= start {
            self.cursor += 1;
        }
        self.ranges
            .get(self.cursor)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }
}

/// Second pass: reads back the records that replay must return.
pub(super) fn load(scan: &Scan) -> Result<Replay, OpenError> {
    let mut covered = Covered::new(
        scan.seals
            .iter()
            .filter(|seal| scan.commits.contains(&seal.start))
            .map(|seal| (seal.start.0, seal.end.0))
            .collect(),
    );
    let mut pending_seals: Vec<Seal> = scan
        .seals
        .iter()
        .filter(|seal| !scan.commits.contains(&seal.start))
        .cloned()
        .collect();
    pending_seals.sort_by_key(|seal| seal.start);
    pending_seals.dedup();

    let mut records = Vec::new();
    let mut open_file: Option<(usize, File)> = None;
    for loc in &scan.locs {
        let end = loc.first.0 + u64::from(loc.count);
        if loc.count == 0 || covered.covers(loc.first.0, end) {
            continue;
        }
        let segment = &scan.segments[loc.segment];
        let path = &segment.path;
        let mut file = match open_file.take() {
            Some((index, file)) if index == loc.segment => file,
            _ => File::open(path).map_err(io_error("open", path))?,
        };
        let payload = read_payload(&mut file, loc);
        open_file = Some((loc.segment, file));
        let payload = payload.map_err(|e| match e {
            ReadPayloadError::Io(cause) => OpenError::Io {
                op: "read",
                path: path.clone(),
                cause,
            },
            ReadPayloadError::Changed(reason) => corrupt(path, loc.frame_offset, reason),
        })?;
        let (_, iter) =
            RecordsIter::new(&payload).map_err(|r| corrupt(path, loc.frame_offset, r))?;
        for (i, item) in iter.enumerate() {
            let (arrival_ms, range) = item.map_err(|r| corrupt(path, loc.frame_offset, r))?;
            let position = loc.first.0 + i as u64;
            if covered.covers(position, position + 1) {
                continue;
            }
            records.push(ReplayedRecord {
                position: Position(position),
                arrival_ms,
                // Slices share the entry's buffer: one allocation per entry, not per record.
                data: payload.slice(range),
            });
        }
    }
    Ok(Replay {
        records,
        pending_seals,
        flushes: scan.flushes.clone(),
        skipped: Vec::new(),
        first_position: scan.first,
    })
}

enum ReadPayloadError {
    Io(std::io::Error),
    Changed(&'static str),
}

/// Re-reads one records frame found by the scan and checks it again (the file could only
/// differ if something else wrote to the directory, but a wrong answer here would be silent).
fn read_payload(file: &mut File, loc: &RecordsLoc) -> Result<Bytes, ReadPayloadError> {
    file.seek(SeekFrom::Start(loc.frame_offset))
        .map_err(ReadPayloadError::Io)?;
    let mut header = [0u8; frame::HEADER_LEN];
    file.read_exact(&mut header).map_err(ReadPayloadError::Io)?;
    let (len, crc, kind) = frame::parse_header(&header);
    if len != loc.payload_len || kind != entry::KIND_RECORDS {
        return Err(ReadPayloadError::Changed(
            "records frame changed since the scan",
        ));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact(&mut payload)
        .map_err(ReadPayloadError::Io)?;
    if frame::checksum(kind, &payload) != crc {
        return Err(ReadPayloadError::Changed(
            "records frame CRC changed since the scan",
        ));
    }
    Ok(Bytes::from(payload))
}

#[cfg(test)]
mod tests {
    use super::Covered;

    #[test]
    fn covered_merges_and_walks_forward() {
        let mut c = Covered::new(vec![(10, 20), (0, 5), (5, 8), (15, 30)]);
        assert_eq!(c.ranges, vec![(0, 8), (10, 30)]);
        assert!(c.covers(0, 8));
        assert!(!c.covers(7, 9));
        assert!(!c.covers(8, 9));
        assert!(c.covers(10, 11));
        assert!(c.covers(29, 30));
        assert!(!c.covers(30, 31));
    }
}
