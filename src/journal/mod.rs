//! The per-delivery-stream write-ahead log.
//!
//! Owns one directory of segment files and nothing else. It stores three kinds of entries:
//! records (arrival time + bytes) at consecutive [`Position`]s, seals (a half-open position range
//! plus opaque caller metadata: one batch to deliver) and commits (the seal starting at a
//! position has been delivered). [`Journal::open`] replays what is still needed: records not
//! covered by a committed seal, and seals without a commit.
//!
//! It must never know about streams, HTTP, object stores or what the seal metadata means, and
//! it must never acknowledge anything itself: a record is durable only once [`Journal::sync`]
//! returned `Ok`, and the caller acknowledges after that. It is used from one thread (the
//! stream's group-commit thread), so nothing here locks or blocks on other threads.
//!
//! Layers, bottom up: [`frame`] (length + CRC + kind around a payload), [`entry`] (what the
//! payload of each kind means), [`segment`] (file naming and listing), [`replay`] (reading a
//! directory back), and this file (the write path, rolling and release), with [`aligned`] (the
//! block-aligned write buffer) beside them.
//!
//! Crash safety rests on four rules: only the last segment may end in a torn frame, and open
//! cuts it off before writing anything; a segment is fsynced before the next one is created;
//! the directory is fsynced after segment files are created or deleted; and open never appends
//! after a torn tail.
//!
//! Direct I/O ([`JournalOptions::direct_io`]) opens segment files with `O_DIRECT`, so writes go
//! from the write buffer to the device without being copied into the page cache. That needs the
//! buffer address, the write length and the file offset all to be multiples of 4096 (`BLOCK`):
//! the buffer is an `AlignedBuf` ([`aligned`]), and before each write the buffered frames are
//! topped up to a block boundary with a padding frame (kind 4, zeros), so every write starts
//! where the previous one ended, on a boundary, and files grow in whole blocks. A direct write
//! never touches a block written before, so a torn one can only damage bytes never synced, and
//! the rules above hold unchanged. Replay skips padding in either mode, so a directory can
//! switch between modes across reopens (a reused last segment that ends off a boundary is first
//! padded to one with a buffered write). Where the file system refuses `O_DIRECT` (`EINVAL`,
//! e.g. tmpfs on older kernels) the journal warns once and writes buffered.

mod aligned;
mod entry;
mod error;
mod frame;
mod replay;
mod segment;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aligned::{AlignedBuf, BLOCK};
pub use error::{OpenError, WriteError};

/// Position of a record in the journal: consecutive, starting at 0 for a new journal, never
/// reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl Position {
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// Roll to a new segment once the active one holds at least this many bytes. Checked before
    /// each append, so one large append can make a segment bigger than this.
    pub segment_bytes: u64,
    /// `false`: `sync()` only hands bytes to the OS (survives a process crash, not power loss),
    /// and no file or directory is ever fsynced.
    pub fsync: bool,
    /// Write segment files with `O_DIRECT`, bypassing the page cache (see the module doc).
    /// Falls back to buffered writes, with a warning, where the file system refuses it; see
    /// [`Journal::is_direct`].
    pub direct_io: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 << 20,
            fsync: true,
            direct_io: false,
        }
    }
}

/// A record to append.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub arrival_ms: u64,
    pub data: &'a [u8],
}

/// A batch: positions `start..end` plus opaque metadata (the caller's object key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    pub start: Position,
    /// Exclusive.
    pub end: Position,
    pub meta: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedRecord {
    pub position: Position,
    pub arrival_ms: u64,
    /// Shares one buffer with the other records of the same append.
    pub data: bytes::Bytes,
}

/// What [`Journal::open`] found still needed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Every record not covered by a committed seal, in position order (includes records inside
    /// pending seals). Records of released segments are gone even if nothing committed them.
    pub records: Vec<ReplayedRecord>,
    /// Seals without a commit, in position order. A seal whose records were released (the
    /// caller passed a `low` above its start) is still listed, with its records missing.
    pub pending_seals: Vec<Seal>,
    /// Every flush entry still in the journal, in the order written.
    pub flushes: Vec<Vec<u8>>,
    /// Damage passed over (already logged): what it covered is lost, everything intact
    /// around it is replayed.
    pub skipped: Vec<Skipped>,
    /// The first position of the oldest segment left: everything below it was released (or
    /// its segment lost outside the journal's knowledge).
    pub first_position: Position,
}

/// Damage in a segment that replay passed over: a flipped byte, a cut or zeroed stretch, a
/// missing or foreign segment. Only the last segment's torn tail is expected (a crash
/// mid-write) and is cut without being reported here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// Buffered bytes are written out once the buffer reaches this, even before `sync`, so memory
/// stays bounded when the caller appends a lot between syncs.
const FLUSH_BYTES: usize = 8 << 20;
/// A buffer grown beyond this by one huge append is shrunk back after it is written.
const RETAINED_BUFFER: usize = 4 * FLUSH_BYTES;
const LOCK_FILE: &str = "LOCK";

/// The segment being appended to.
struct Active {
    first: Position,
    path: PathBuf,
    file: File,
    /// Bytes handed to the OS.
    written: u64,
    /// Bytes known durable (or, without fsync, handed to the OS by `sync`).
    synced: u64,
}

struct Closed {
    first: Position,
    /// `next_position` when the segment was closed: all its records are below this.
    end: Position,
    path: PathBuf,
    bytes: u64,
}

/// An open journal. Dropping it discards appends not yet written by `sync` (like a crash);
/// call [`Journal::sync`] before dropping to keep them.
pub struct Journal {
    dir: PathBuf,
    opts: JournalOptions,
    /// Held for the journal's lifetime so two journals never write one directory.
    _lock: File,
    closed: VecDeque<Closed>,
    closed_bytes: u64,
    active: Active,
    /// Serialized frames not yet handed to the OS; reused across syncs. Block-aligned for
    /// direct writes.
    buf: AlignedBuf,
    /// Segment files are open with `O_DIRECT`: every write is padded to whole blocks, and
    /// `active.written` is always a multiple of [`BLOCK`].
    direct: bool,
    next: Position,
    /// `next` when everything appended was last made durable: where appends resume after
    /// [`Journal::recover`].
    durable_next: Position,
    /// Set when a write or fsync failed: what reached the disk past the last sync is then
    /// unknown, and writes are refused until [`Journal::recover`] succeeds.
    failed: bool,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("next", &self.next)
            .field("segments", &self.segment_count())
            .field("direct", &self.direct)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn open_io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |cause| OpenError::Io { op, path, cause }
}

fn write_io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |cause| WriteError::Io { op, path, cause }
}

fn push_header(buf: &mut AlignedBuf, first: Position) {
    let start = frame::begin(buf, entry::KIND_HEADER);
    entry::encode_header(buf, first);
    frame::finish(buf, start);
}

/// Appends a padding frame so that `buf`, written at file offset `offset`, ends on a [`BLOCK`]
/// boundary; nothing if it does already. A gap too short for a frame header is padded through
/// to the following boundary.
fn push_padding(buf: &mut AlignedBuf, offset: u64) {
    let block = BLOCK as u64;
    let over = (offset + buf.len() as u64) % block;
    if over == 0 {
        return;
    }
    let mut gap = (block - over) as usize;
    if gap < frame::HEADER_LEN {
        gap += BLOCK;
    }
    let start = frame::begin(buf, entry::KIND_PADDING);
    entry::encode_padding(buf, gap - frame::HEADER_LEN);
    frame::finish(buf, start);
}

impl Journal {
    /// Opens (creating the directory if needed) and replays. A torn / CRC-failing tail of the
    /// LAST segment is cut off (logged with `tracing::warn`); damage anywhere else is passed
    /// over, logged at error level and listed in [`Replay::skipped`]: the records it covered
    /// are lost, every intact one is replayed. Appends then go to a fresh segment, except when the last segment
    /// holds no records (its name is the next position), which is reused after the cut.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<(Journal, Replay), OpenError> {
        let existed = dir.is_dir();
        fs::create_dir_all(dir).map_err(open_io("create directory", dir))?;
        if !existed
            && opts.fsync
            && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        {
            crate::durable::sync_dir(parent).map_err(open_io("fsync directory", parent))?;
        }
        let lock = lock_dir(dir)?;
        let direct = opts.direct_io && direct_supported(dir)?;

        let listed = segment::list(dir).map_err(open_io("list directory", dir))?;
        let scan = replay::scan(&listed)?;
        if let Some(last) = scan.segments.last()
            && (last.damage.is_some() || last.cut)
        {
            let what = if last.damage.is_some() {
                "cutting the torn tail off the journal's last segment"
            } else {
                "cutting the damaged tail off the journal's last segment"
            };
            tracing::warn!(
                path = %last.path.display(),
                valid_bytes = last.valid_len,
                file_bytes = last.file_len,
                damage = last.damage.map_or("reported above", |d| d.describe()),
                "{what}"
            );
            // Cut for real (not just skip) so the tail can never be read as part of a
            // non-last segment, nor be followed by new frames.
            let file = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(open_io("open", &last.path))?;
            file.set_len(last.valid_len)
                .map_err(open_io("truncate", &last.path))?;
            if opts.fsync {
                file.sync_all().map_err(open_io("fsync", &last.path))?;
            }
        }
        let mut replay = replay::load(&scan)?;
        for skip in &scan.skipped {
            tracing::error!(
                path = %skip.path.display(),
                offset = skip.offset,
                reason = %skip.reason,
                "journal damage passed over: records in it are lost, the rest is replayed"
            );
        }
        replay.skipped = scan.skipped.clone();
        let next = scan.next;

        // A last segment without records would collide with a fresh one by name.
        let reuse_last = scan.segments.last().is_some_and(|s| s.first == next);
        let closed_count = scan.segments.len() - usize::from(reuse_last);
        let mut closed = VecDeque::with_capacity(closed_count);
        for (i, seg) in scan.segments.iter().take(closed_count).enumerate() {
            closed.push_back(Closed {
                first: seg.first,
                end: scan.segments.get(i + 1).map_or(next, |s| s.first),
                path: seg.path.clone(),
                bytes: seg.valid_len,
            });
        }
        let closed_bytes = closed.iter().map(|c| c.bytes).sum();

        let mut buf = AlignedBuf::new();
        let active = match scan.segments.last() {
            Some(last) if reuse_last => {
                let mut len = last.valid_len;
                if direct && !len.is_multiple_of(BLOCK as u64) {
                    len = pad_tail(&last.path, len, opts.fsync)?;
                }
                let file =
                    open_segment(&last.path, false, direct).map_err(open_io("open", &last.path))?;
                if len == 0 {
                    push_header(&mut buf, next);
                }
                Active {
                    first: next,
                    path: last.path.clone(),
                    file,
                    written: len,
                    synced: len,
                }
            }
            _ => {
                let path = dir.join(segment::file_name(next));
                let file = open_segment(&path, true, direct).map_err(open_io("create", &path))?;
                if opts.fsync {
                    crate::durable::sync_dir(dir).map_err(open_io("fsync directory", dir))?;
                }
                push_header(&mut buf, next);
                Active {
                    first: next,
                    path,
                    file,
                    written: 0,
                    synced: 0,
                }
            }
        };

        let journal = Journal {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            closed,
            closed_bytes,
            active,
            buf,
            direct,
            next,
            durable_next: next,
            failed: false,
        };
        tracing::debug!(
            dir = %dir.display(),
            next = next.0,
            direct,
            segments = journal.segment_count(),
            records = replay.records.len(),
            pending_seals = replay.pending_seals.len(),
            "journal opened"
        );
        Ok((journal, replay))
    }

    /// Buffers records at consecutive positions and returns the first one. Not durable until
    /// [`sync`](Self::sync). An empty slice is a no-op that returns
    /// [`next_position`](Self::next_position).
    pub fn append_records(&mut self, records: &[RecordRef<'_>]) -> Result<Position, WriteError> {
        self.check_usable()?;
        if records.is_empty() {
            return Ok(self.next);
        }
        let payload_len = entry::records_payload_len(records).unwrap_or(u64::MAX);
        self.check_size(payload_len)?;
        self.roll_if_full()?;
        let first = self.next;
        // Checked against MAX_PAYLOAD (u32) above, so this fits in usize.
        self.buf.reserve(frame::HEADER_LEN + payload_len as usize);
        let start = frame::begin(&mut self.buf, entry::KIND_RECORDS);
        entry::encode_records(&mut self.buf, first, records);
        frame::finish(&mut self.buf, start);
        self.next = Position(first.0 + records.len() as u64);
        self.flush_if_large()?;
        Ok(first)
    }

    /// Buffers a seal. It must be non-empty and end at or before `next_position`.
    pub fn append_seal(&mut self, seal: &Seal) -> Result<(), WriteError> {
        self.check_usable()?;
        if seal.start >= seal.end || seal.end > self.next {
            return Err(WriteError::InvalidSeal {
                dir: self.dir.clone(),
                start: seal.start,
                end: seal.end,
                next: self.next,
            });
        }
        self.check_size(entry::seal_payload_len(seal))?;
        self.roll_if_full()?;
        let start = frame::begin(&mut self.buf, entry::KIND_SEAL);
        entry::encode_seal(&mut self.buf, seal);
        frame::finish(&mut self.buf, start);
        self.flush_if_large()
    }

    /// Buffers a flush entry: the caller's description of an object written from the records
    /// of several seals. The journal keeps it as long as its segment, and returns it on replay.
    pub fn append_flush(&mut self, meta: &[u8]) -> Result<(), WriteError> {
        self.check_usable()?;
        self.check_size(meta.len() as u64)?;
        self.roll_if_full()?;
        let start = frame::begin(&mut self.buf, entry::KIND_FLUSH);
        self.buf.extend_from_slice(meta);
        frame::finish(&mut self.buf, start);
        self.flush_if_large()
    }

    /// Buffers a commit of the seal starting at `start`. A commit naming no known seal is
    /// ignored by replay.
    pub fn append_commit(&mut self, start: Position) -> Result<(), WriteError> {
        self.check_usable()?;
        self.roll_if_full()?;
        let frame_start = frame::begin(&mut self.buf, entry::KIND_COMMIT);
        entry::encode_commit(&mut self.buf, start);
        frame::finish(&mut self.buf, frame_start);
        self.flush_if_large()
    }

    /// Makes everything appended so far durable: one write of the buffered frames, then
    /// `fdatasync` if `opts.fsync`. After an error the journal refuses further writes
    /// ([`WriteError::Failed`]) and must be reopened.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        self.check_usable()?;
        let result = self.write_buffer().and_then(|()| self.sync_active());
        if result.is_ok() {
            self.durable_next = self.next;
        }
        self.fail_on_err(result)
    }

    /// Records below this position are durable: synced, or written and synced by a roll
    /// even when the sync that followed failed.
    pub fn durable_next(&self) -> Position {
        self.durable_next
    }

    /// Treats the journal as failed (its writer stopped midway through a round): what was
    /// not synced is dropped by the next [`Journal::recover`].
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// Whether a write or fsync failed and [`Journal::recover`] has not succeeded since.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// After a failed write or fsync (a full disk, an I/O error): drops everything appended
    /// since the last successful sync (its callers were told it failed), cuts the active segment
    /// back to what was synced, and makes the journal writable again, appending from the first
    /// position that is not durable. An error (the disk still failing) leaves it failed; call
    /// again later. Nothing durable is touched: what was synced ends on a frame boundary.
    pub fn recover(&mut self) -> Result<(), WriteError> {
        if !self.failed {
            return Ok(());
        }
        self.buf.clear();
        let keep = self.active.synced;
        let path = &self.active.path;
        self.active
            .file
            .set_len(keep)
            .map_err(write_io("truncate", path))?;
        if self.opts.fsync {
            self.active
                .file
                .sync_all()
                .map_err(write_io("fsync", path))?;
        }
        self.active.written = keep;
        self.next = self.durable_next;
        if keep == 0 {
            // Not even the header was synced: the segment starts over.
            push_header(&mut self.buf, self.active.first);
        }
        self.failed = false;
        tracing::info!(dir = %self.dir.display(), next = self.next.0, "journal writable again");
        Ok(())
    }

    /// Deletes closed segments none of whose records is at or above `low` (the lowest position
    /// still needed). The active segment is never deleted. `low` must not exceed the start of
    /// any seal that is not committed durably, or that seal's records are lost.
    pub fn release(&mut self, low: Position) -> Result<(), WriteError> {
        while let Some(seg) = self.closed.front() {
            if seg.end > low {
                break;
            }
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(write_io("delete", &seg.path)(e)),
            }
            // One directory fsync per deletion: unlinks must reach the disk oldest first, or a
            // crash could leave an older segment next to a gap, which open reports as corrupt.
            // Segments are large, so this is rare.
            if self.opts.fsync {
                crate::durable::sync_dir(&self.dir)
                    .map_err(write_io("fsync directory", &self.dir))?;
            }
            tracing::debug!(
                path = %seg.path.display(),
                first = seg.first.0,
                end = seg.end.0,
                "released journal segment"
            );
            self.closed_bytes -= seg.bytes;
            self.closed.pop_front();
        }
        Ok(())
    }

    /// Bytes across live segments, including appended bytes still buffered in memory and the
    /// padding of direct writes (once written).
    pub fn disk_bytes(&self) -> u64 {
        self.closed_bytes + self.active.written + self.buf.len() as u64
    }

    /// The position the next appended record will get.
    pub fn next_position(&self) -> Position {
        self.next
    }

    /// Live segment files, the active one included.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether segments are written with `O_DIRECT`: asked for in the options and accepted by
    /// the file system.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn check_usable(&self) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::Failed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn check_size(&self, payload_len: u64) -> Result<(), WriteError> {
        if payload_len > frame::MAX_PAYLOAD {
            return Err(WriteError::TooLarge {
                dir: self.dir.clone(),
                bytes: payload_len,
                max: frame::MAX_PAYLOAD,
            });
        }
        Ok(())
    }

    fn fail_on_err<T>(&mut self, result: Result<T, WriteError>) -> Result<T, WriteError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn flush_if_large(&mut self) -> Result<(), WriteError> {
        if self.buf.len() < FLUSH_BYTES {
            return Ok(());
        }
        let result = self.write_buffer();
        self.fail_on_err(result)
    }

    fn roll_if_full(&mut self) -> Result<(), WriteError> {
        let size = self.active.written + self.buf.len() as u64;
        // Without records since it was created, the active segment has the name a new one
        // would get; it keeps growing until records arrive.
        if size < self.opts.segment_bytes || self.active.first == self.next {
            return Ok(());
        }
        let result = self.roll();
        self.fail_on_err(result)
    }

    fn roll(&mut self) -> Result<(), WriteError> {
        self.write_buffer()?;
        // Durable before its successor exists, so only the last segment can ever be torn.
        self.sync_active()?;
        self.durable_next = self.next;
        let path = self.dir.join(segment::file_name(self.next));
        let file = match open_segment(&path, true, self.direct) {
            // Left by a roll that failed after creating it (its directory entry not synced):
            // it never became the active segment, so it holds nothing.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&path).map_err(write_io("delete", &path))?;
                open_segment(&path, true, self.direct)
            }
            other => other,
        }
        .map_err(write_io("create", &path))?;
        if self.opts.fsync {
            crate::durable::sync_dir(&self.dir).map_err(write_io("fsync directory", &self.dir))?;
        }
        let fresh = Active {
            first: self.next,
            path,
            file,
            written: 0,
            synced: 0,
        };
        let old = std::mem::replace(&mut self.active, fresh);
        self.closed_bytes += old.written;
        self.closed.push_back(Closed {
            first: old.first,
            end: self.next,
            path: old.path,
            bytes: old.written,
        });
        push_header(&mut self.buf, self.next);
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), WriteError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.direct {
            push_padding(&mut self.buf, self.active.written);
            debug_assert!(self.buf.is_aligned());
            debug_assert!(self.buf.len().is_multiple_of(BLOCK));
            debug_assert!(self.active.written.is_multiple_of(BLOCK as u64));
        }
        self.active
            .file
            .write_all(&self.buf)
            .map_err(write_io("write", &self.active.path))?;
        self.active.written += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > RETAINED_BUFFER {
            self.buf.shrink_to(FLUSH_BYTES);
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), WriteError> {
        // A disk that fails an fsync (EIO), on demand.
        fail::fail_point!("journal-fsync", |_| Err(write_io(
            "fsync",
            &self.active.path
        )(io::Error::other(
            "injected fsync failure"
        ))));
        if self.opts.fsync && self.active.synced < self.active.written {
            self.active
                .file
                .sync_data()
                .map_err(write_io("fsync", &self.active.path))?;
        }
        self.active.synced = self.active.written;
        Ok(())
    }
}

/// Opens a segment file for appending; `create`: a new one, which must not exist yet.
fn open_segment(path: &Path, create: bool, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create_new(create);
    if direct {
        set_direct(&mut options);
    }
    options.open(path)
}

#[cfg(target_os = "linux")]
fn set_direct(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_DIRECT);
}

/// Never called: [`direct_supported`] says no on these platforms.
#[cfg(not(target_os = "linux"))]
fn set_direct(_options: &mut OpenOptions) {}

/// Whether `dir`'s file system takes `O_DIRECT`, tried on the lock file (a regular file that
/// exists by now). `EINVAL` (e.g. tmpfs) means no: the journal writes buffered and warns once.
fn direct_supported(dir: &Path) -> Result<bool, OpenError> {
    if !cfg!(target_os = "linux") {
        tracing::warn!(
            dir = %dir.display(),
            "O_DIRECT is not supported on this platform; the journal writes through the page cache"
        );
        return Ok(false);
    }
    let path = dir.join(LOCK_FILE);
    let mut options = OpenOptions::new();
    options.read(true);
    set_direct(&mut options);
    direct_probed(dir, &path, options.open(&path))
}

/// [`direct_supported`]'s verdict on its probe `opened`.
fn direct_probed(dir: &Path, path: &Path, opened: io::Result<File>) -> Result<bool, OpenError> {
    match opened {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                dir = %dir.display(),
                "the file system does not support O_DIRECT; the journal writes through the page cache"
            );
            Ok(false)
        }
        Err(e) => Err(open_io("open with O_DIRECT", path)(e)),
    }
}

/// Brings a segment that ends off a block boundary (written buffered, or cut back to a frame
/// boundary after a crash) to one with a padding frame, so direct writes can follow. Returns
/// the new length. Written buffered (the offset is not aligned), so like any buffered append
/// it rewrites the partial last block. Made durable first when fsyncing: a hole in front of
/// later synced frames would read as a torn tail and cut them off.
fn pad_tail(path: &Path, len: u64, fsync: bool) -> Result<u64, OpenError> {
    let mut padding = AlignedBuf::new();
    push_padding(&mut padding, len);
    let mut file = open_segment(path, false, false).map_err(open_io("open", path))?;
    file.write_all(&padding).map_err(open_io("pad", path))?;
    if fsync {
        file.sync_data().map_err(open_io("fsync", path))?;
    }
    Ok(len + padding.len() as u64)
}

fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(open_io("create lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(cause)) => Err(OpenError::Io {
            op: "lock",
            path,
            cause,
        }),
    }
}
