//! Unit tests of the journal as a whole (frame, entry and segment have their own).

use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn opts(segment_bytes: u64) -> JournalOptions {
    JournalOptions {
        segment_bytes,
        fsync: false,
        direct_io: false,
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (Journal, Replay) {
    open_with(dir, segment_bytes, false)
}

/// Opens with `direct_io`, and checks the journal really writes direct when the file system
/// takes `O_DIRECT` (and falls back when it does not).
fn open_with(dir: &Path, segment_bytes: u64, direct: bool) -> (Journal, Replay) {
    let opts = JournalOptions {
        direct_io: direct,
        ..opts(segment_bytes)
    };
    let (journal, replay) = Journal::open(dir, opts).expect("open journal");
    assert_eq!(journal.is_direct(), direct && fs_supports_direct(dir));
    (journal, replay)
}

/// A temporary directory where direct I/O works if the disk takes it: under the repository's
/// `target/`, since the system's temporary directory may be tmpfs (no `O_DIRECT`).
pub(super) fn direct_tempdir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    fs::create_dir_all(&base).expect("create target directory");
    tempfile::tempdir_in(base).expect("tempdir under target")
}

/// A temporary directory for a test in direct or buffered mode.
pub(super) fn tempdir_for(direct: bool) -> tempfile::TempDir {
    if direct {
        direct_tempdir()
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

/// Whether files in `dir` open with `O_DIRECT`, checked without the journal's help.
#[cfg(target_os = "linux")]
pub(super) fn fs_supports_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("direct-probe");
    let supported = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .is_ok();
    // The file can exist even when the open failed (created before the flag is checked).
    let _ = fs::remove_file(&path);
    supported
}

#[cfg(not(target_os = "linux"))]
pub(super) fn fs_supports_direct(_dir: &Path) -> bool {
    false
}

/// (position, arrival, bytes) of every replayed record.
fn records(replay: &Replay) -> Vec<(u64, u64, Vec<u8>)> {
    replay
        .records
        .iter()
        .map(|r| (r.position.0, r.arrival_ms, r.data.to_vec()))
        .collect()
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

/// Appends one record per entry of `lens` in a single call; returns what was appended.
fn append(journal: &mut Journal, lens: &[usize]) -> Vec<(u64, u64, Vec<u8>)> {
    let first = journal.next_position().0;
    let datas: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| payload(first + i as u64, len))
        .collect();
    let refs: Vec<RecordRef<'_>> = datas
        .iter()
        .enumerate()
        .map(|(i, data)| RecordRef {
            arrival_ms: 1_000 + first + i as u64,
            data,
        })
        .collect();
    let at = journal.append_records(&refs).expect("append");
    assert_eq!(at.0, first);
    datas
        .into_iter()
        .enumerate()
        .map(|(i, data)| (first + i as u64, 1_000 + first + i as u64, data))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .expect("list")
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

fn files_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_name() != LOCK_FILE {
            fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn seal(start: u64, end: u64, meta: &str) -> Seal {
    Seal {
        start: Position(start),
        end: Position(end),
        meta: meta.as_bytes().to_vec(),
    }
}

#[test]
fn position_basics() {
    assert_eq!(Position(41).next(), Position(42));
    assert_eq!(Position(7).to_string(), "7");
    assert!(Position(1) < Position(2));
}

#[test]
fn roundtrip_across_reopen() {
    for (fsync, direct) in [(false, false), (true, false), (false, true), (true, true)] {
        let tmp = tempdir_for(direct);
        let dir = tmp.path().join("nested/stream");
        let (mut journal, replay) = Journal::open(
            &dir,
            JournalOptions {
                segment_bytes: 1 << 20,
                fsync,
                direct_io: direct,
            },
        )
        .expect("open");
        assert_eq!(journal.is_direct(), direct && fs_supports_direct(&dir));
        assert_eq!(replay, Replay::default());
        assert_eq!(journal.next_position(), Position(0));
        let mut expected = append(&mut journal, &[10, 0, 1024]);
        expected.extend(append(&mut journal, &[5]));
        assert_eq!(
            journal.append_records(&[]).expect("empty append"),
            Position(4)
        );
        journal.sync().expect("sync");
        assert_eq!(journal.disk_bytes(), files_bytes(&dir));
        drop(journal);

        let (journal, replay) = Journal::open(
            &dir,
            JournalOptions {
                segment_bytes: 1 << 20,
                fsync,
                direct_io: direct,
            },
        )
        .expect("reopen");
        assert_eq!(records(&replay), expected);
        assert!(replay.pending_seals.is_empty());
        assert_eq!(journal.next_position(), Position(4));
        // The fresh segment's header is still buffered.
        assert!(journal.disk_bytes() > files_bytes(&dir));
        let mut journal = journal;
        journal.sync().expect("sync");
        assert_eq!(journal.disk_bytes(), files_bytes(&dir));
    }
}

#[test]
fn unsynced_appends_are_lost_on_drop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    let expected = append(&mut journal, &[3, 4]);
    journal.sync().expect("sync");
    append(&mut journal, &[5]);
    journal.append_seal(&seal(0, 2, "x")).expect("seal");
    drop(journal);
    let (journal, replay) = open(tmp.path(), 1 << 20);
    assert_eq!(records(&replay), expected);
    assert!(replay.pending_seals.is_empty());
    assert_eq!(journal.next_position(), Position(2));
}

#[test]
fn seals_and_commits_filter_replay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    let all = append(&mut journal, &[8; 10]);
    journal.append_seal(&seal(0, 4, "a")).expect("seal a");
    journal.append_seal(&seal(4, 7, "b")).expect("seal b");
    journal.append_commit(Position(0)).expect("commit a");
    // A commit for a seal nobody wrote is ignored.
    journal.append_commit(Position(99)).expect("stray commit");
    journal.sync().expect("sync");
    drop(journal);

    let (mut journal, replay) = open(tmp.path(), 1 << 20);
    assert_eq!(records(&replay), all[4..].to_vec());
    assert_eq!(replay.pending_seals, vec![seal(4, 7, "b")]);
    journal.append_commit(Position(4)).expect("commit b");
    journal.sync().expect("sync");
    drop(journal);

    let (journal, replay) = open(tmp.path(), 1 << 20);
    assert_eq!(records(&replay), all[7..].to_vec());
    assert!(replay.pending_seals.is_empty());
    assert_eq!(journal.next_position(), Position(10));
}

#[test]
fn flush_entries_come_back_in_order_until_their_segment_is_released() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Small segments: each append of 40-byte records rolls to a new one soon.
    let (mut journal, _) = open(tmp.path(), 256);
    append(&mut journal, &[40; 4]);
    journal.append_seal(&seal(0, 4, "a")).expect("seal");
    journal.append_flush(b"first").expect("flush");
    journal.append_flush(b"second").expect("flush");
    journal.sync().expect("sync");
    drop(journal);
    let (mut journal, replay) = open(tmp.path(), 256);
    assert_eq!(replay.flushes, vec![b"first".to_vec(), b"second".to_vec()]);

    // Once everything before the active segment is released, so are its flush entries.
    journal.append_commit(Position(0)).expect("commit");
    for _ in 0..6 {
        append(&mut journal, &[200]);
    }
    journal.sync().expect("sync");
    journal.release(Position(10)).expect("release");
    drop(journal);
    let (_, replay) = open(tmp.path(), 256);
    assert!(replay.flushes.is_empty(), "{:?}", replay.flushes);
}

#[test]
fn pending_seals_come_back_in_position_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    append(&mut journal, &[1; 6]);
    journal.append_seal(&seal(3, 6, "late")).expect("seal");
    journal.append_seal(&seal(0, 3, "early")).expect("seal");
    journal.sync().expect("sync");
    drop(journal);
    let (_, replay) = open(tmp.path(), 1 << 20);
    assert_eq!(
        replay.pending_seals,
        vec![seal(0, 3, "early"), seal(3, 6, "late")]
    );
    assert_eq!(replay.records.len(), 6);
}

#[test]
fn invalid_appends_are_rejected_without_harm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    append(&mut journal, &[1; 3]);
    for bad in [seal(2, 2, ""), seal(2, 1, ""), seal(0, 4, "")] {
        assert!(
            matches!(
                journal.append_seal(&bad),
                Err(WriteError::InvalidSeal { .. })
            ),
            "{bad:?}"
        );
    }
    journal.append_seal(&seal(0, 3, "ok")).expect("valid seal");
    journal.sync().expect("sync");
    let err = journal
        .append_seal(&seal(5, 9, ""))
        .expect_err("beyond next");
    assert!(
        err.to_string().contains(&tmp.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(tmp.path(), 1 << 20);
    assert!(matches!(
        Journal::open(tmp.path(), opts(1 << 20)),
        Err(OpenError::Locked { .. })
    ));
    drop(journal);
    open(tmp.path(), 1 << 20);
}

#[test]
fn rolling_and_release_delete_only_fully_released_segments() {
    rolling_and_release(false);
}

#[test]
fn direct_rolling_and_release_delete_only_fully_released_segments() {
    rolling_and_release(true);
}

fn rolling_and_release(direct: bool) {
    let tmp = tempdir_for(direct);
    let dir = tmp.path();
    let open = |dir: &Path, segment_bytes| open_with(dir, segment_bytes, direct);
    let (mut journal, _) = open(dir, 256);
    let mut all = Vec::new();
    for _ in 0..20 {
        all.extend(append(&mut journal, &[100]));
    }
    journal.sync().expect("sync");
    let segments = journal.segment_count();
    assert!(segments >= 8, "{segments} segments");
    assert_eq!(segment_files(dir).len(), segments);
    assert_eq!(journal.disk_bytes(), files_bytes(dir));

    journal.append_seal(&seal(0, 10, "first")).expect("seal");
    journal.append_commit(Position(0)).expect("commit");
    journal.sync().expect("sync");
    journal.release(Position(10)).expect("release");
    let left = segment_files(dir);
    assert!(left.len() < segments);
    assert_eq!(journal.segment_count(), left.len());
    assert_eq!(journal.disk_bytes(), files_bytes(dir));
    // The first live segment still holds position 10, and nothing below it survives.
    let first_live =
        segment::parse_file_name(&left[0].file_name().expect("name").to_string_lossy())
            .expect("segment name");
    assert!(first_live <= Position(10), "{first_live}");
    assert!(first_live > Position(0));
    drop(journal);

    // Replay copes with the seal and commit whose records are gone.
    let (mut journal, replay) = open(dir, 256);
    assert_eq!(records(&replay), all[10..].to_vec());
    assert!(replay.pending_seals.is_empty());
    assert_eq!(journal.next_position(), Position(20));

    // Release everything: only segments that can hold new positions remain.
    journal.append_seal(&seal(10, 20, "rest")).expect("seal");
    journal.append_commit(Position(10)).expect("commit");
    journal.sync().expect("sync");
    journal.release(Position(20)).expect("release all");
    assert_eq!(journal.segment_count(), 1);
    assert_eq!(segment_files(dir).len(), 1);
    drop(journal);

    let (mut journal, replay) = open(dir, 256);
    assert_eq!(
        replay,
        Replay {
            first_position: Position(20),
            ..Replay::default()
        },
        "only the segment for new positions is left"
    );
    assert_eq!(journal.next_position(), Position(20));
    let more = append(&mut journal, &[7]);
    journal.sync().expect("sync");
    drop(journal);
    let (journal, replay) = open(dir, 256);
    assert_eq!(records(&replay), more);
    assert_eq!(journal.next_position(), Position(21));
}

#[test]
fn next_position_survives_reopens_without_records() {
    next_position_without_records(false);
}

#[test]
fn direct_next_position_survives_reopens_without_records() {
    next_position_without_records(true);
}

fn next_position_without_records(direct: bool) {
    let tmp = tempdir_for(direct);
    let dir = tmp.path();
    let open = |dir: &Path, segment_bytes| open_with(dir, segment_bytes, direct);
    let (mut journal, _) = open(dir, 1 << 20);
    append(&mut journal, &[4; 5]);
    journal.append_seal(&seal(0, 5, "all")).expect("seal");
    journal.append_commit(Position(0)).expect("commit");
    journal.sync().expect("sync");
    drop(journal);

    let (journal, replay) = open(dir, 1 << 20);
    assert_eq!(journal.next_position(), Position(5));
    assert!(replay.records.is_empty());
    drop(journal);
    for round in 0..4 {
        let before = segment_files(dir).len();
        let (mut journal, replay) = open(dir, 1 << 20);
        assert_eq!(journal.next_position(), Position(5));
        assert!(replay.records.is_empty());
        // Reopening without records reuses the empty segment instead of piling up files.
        assert_eq!(segment_files(dir).len(), before);
        if round % 2 == 1 {
            journal.sync().expect("sync");
        }
        journal.release(Position(5)).expect("release");
    }
    let (mut journal, _) = open(dir, 1 << 20);
    assert_eq!(journal.next_position(), Position(5));
    assert_eq!(segment_files(dir).len(), 1);
    journal.sync().expect("sync");
    assert_eq!(journal.disk_bytes(), files_bytes(dir));
}

#[test]
fn seals_and_commits_alone_do_not_roll_into_a_name_clash() {
    for direct in [false, true] {
        seals_and_commits_alone(direct);
    }
}

fn seals_and_commits_alone(direct: bool) {
    let tmp = tempdir_for(direct);
    let dir = tmp.path();
    let open = |dir: &Path, segment_bytes| open_with(dir, segment_bytes, direct);
    let (mut journal, _) = open(dir, 64);
    append(&mut journal, &[100]);
    journal
        .append_seal(&seal(0, 1, &"m".repeat(200)))
        .expect("seal");
    journal.sync().expect("sync");
    drop(journal);
    let (mut journal, replay) = open(dir, 64);
    assert_eq!(replay.pending_seals.len(), 1);
    for _ in 0..5 {
        journal.append_commit(Position(0)).expect("commit");
        journal.sync().expect("sync");
    }
    drop(journal);
    let (journal, replay) = open(dir, 64);
    assert!(replay.pending_seals.is_empty() && replay.records.is_empty());
    assert_eq!(journal.next_position(), Position(1));
}

#[test]
fn one_append_larger_than_a_segment_and_the_flush_threshold() {
    for direct in [false, true] {
        one_large_append(direct);
    }
}

fn one_large_append(direct: bool) {
    let tmp = tempdir_for(direct);
    let dir = tmp.path();
    let open = |dir: &Path, segment_bytes| open_with(dir, segment_bytes, direct);
    let (mut journal, _) = open(dir, 1 << 20);
    let mut expected = append(&mut journal, &[10]);
    expected.extend(append(&mut journal, &[FLUSH_BYTES + 1000, 3]));
    // Written by the flush threshold already, before any sync.
    assert!(files_bytes(dir) > FLUSH_BYTES as u64);
    expected.extend(append(&mut journal, &[20]));
    journal.sync().expect("sync");
    assert!(journal.segment_count() >= 2);
    drop(journal);
    let (_, replay) = open(dir, 1 << 20);
    assert_eq!(records(&replay), expected);
}

#[test]
fn torn_tail_is_cut_without_losing_synced_entries() {
    torn_tail(false);
}

#[test]
fn direct_torn_tail_is_cut_without_losing_synced_entries() {
    torn_tail(true);
}

fn torn_tail(direct: bool) {
    let tmp = tempdir_for(direct);
    let source = tmp.path().join("source");
    let open = |dir: &Path, segment_bytes| open_with(dir, segment_bytes, direct);
    let (mut journal, _) = open(&source, 1 << 20);
    let mut all = append(&mut journal, &[30, 0, 12]);
    journal.append_seal(&seal(0, 2, "s")).expect("seal");
    journal.sync().expect("sync");
    let last = segment_files(&source).pop().expect("a segment");
    let synced_len = fs::metadata(&last).expect("stat").len();
    all.extend(append(&mut journal, &[40, 1]));
    journal.append_commit(Position(0)).expect("commit");
    all.extend(append(&mut journal, &[25]));
    journal.sync().expect("sync");
    drop(journal);
    let full_len = fs::metadata(&last).expect("stat").len();
    let last_name = last.file_name().expect("file name").to_owned();
    if direct && fs_supports_direct(&source) {
        // Each sync wrote whole blocks.
        assert_eq!(synced_len, BLOCK as u64);
        assert_eq!(full_len, 2 * BLOCK as u64);
    }

    // Whatever happened to the tail, replay is a prefix of what was appended that holds
    // everything synced before the tail, and the commit is all-or-nothing.
    let check = |dir: &Path, tag: &str| {
        let (journal, replay) = open(dir, 1 << 20);
        let got = records(&replay);
        let n = journal.next_position().0 as usize;
        assert!(n >= 3, "{tag}: lost synced records");
        if replay.pending_seals.is_empty() {
            assert_eq!(got, all[2..n].to_vec(), "{tag}");
        } else {
            assert_eq!(replay.pending_seals, vec![seal(0, 2, "s")], "{tag}");
            assert_eq!(got, all[..n].to_vec(), "{tag}");
        }
        journal
    };

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut cases = 0;
    // Every cut through the frames; in direct mode the rest of the block is padding, so a
    // sample of cuts through it (and its last byte).
    let cuts = (synced_len..full_len).filter(|cut| {
        let into = cut - synced_len;
        !direct || into < 300 || into.is_multiple_of(97) || cut + 1 == full_len
    });
    for cut in cuts {
        let work = tempdir_for(direct);
        copy_dir(&source, work.path());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(work.path().join(&last_name))
            .expect("open");
        file.set_len(cut).expect("truncate");
        drop(check(work.path(), &format!("cut at {cut}")));
        cases += 1;
    }
    for _ in 0..40 {
        let work = tempdir_for(direct);
        copy_dir(&source, work.path());
        let path = work.path().join(&last_name);
        let mut bytes = fs::read(&path).expect("read");
        let at = rng.random_range(synced_len as usize..bytes.len());
        bytes[at] ^= rng.random_range(1..=255u8);
        let cut = rng.random_range(at + 1..=bytes.len());
        bytes.truncate(cut);
        fs::write(&path, &bytes).expect("write");
        let tag = format!("flip at {at}, cut at {cut}");
        let mut journal = check(work.path(), &tag);

        // The cut is physical: new appends after it come back too.
        let n = journal.next_position().0 as usize;
        let extra = append(&mut journal, &[9]);
        journal.sync().expect("sync");
        drop(journal);
        let (journal, replay) = open(work.path(), 1 << 20);
        let got = records(&replay);
        assert_eq!(got.last(), extra.last(), "{tag}");
        assert_eq!(
            got.len(),
            if replay.pending_seals.is_empty() {
                n - 2 + 1
            } else {
                n + 1
            },
            "{tag}"
        );
        assert_eq!(journal.next_position().0 as usize, n + 1, "{tag}");
        cases += 1;
    }
    assert!(cases > 40);

    // A hole of zeros inside the tail with good bytes after it (blocks of one write landing
    // out of order) is cut at the hole.
    let work = tempdir_for(direct);
    copy_dir(&source, work.path());
    let path = work.path().join(&last_name);
    let mut bytes = fs::read(&path).expect("read");
    let hole = synced_len as usize + 10..(synced_len as usize + 522).min(bytes.len() - 1);
    bytes[hole].fill(0);
    fs::write(&path, &bytes).expect("write");
    drop(check(work.path(), "hole"));

    // A torn tail full of zeros (file size grew, data never landed) is cut too.
    let work = tempdir_for(direct);
    copy_dir(&source, work.path());
    let file = fs::OpenOptions::new()
        .write(true)
        .open(work.path().join(&last_name))
        .expect("open");
    file.set_len(full_len + 4096).expect("extend");
    drop(file);
    let (journal, replay) = open(work.path(), 1 << 20);
    assert_eq!(journal.next_position().0 as usize, all.len());
    assert_eq!(records(&replay), all[2..].to_vec());
}

/// Damage before the last segment's tail (a flipped byte, a cut, a missing segment, a file
/// that is not a segment) no longer stops the journal from opening: it is passed over and
/// reported, the positions it covered are lost, and every intact record is replayed.
#[test]
fn damage_outside_the_last_segment_is_passed_over_and_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("source");
    let (mut journal, _) = open(&source, 200);
    for _ in 0..10 {
        append(&mut journal, &[150]);
    }
    journal.sync().expect("sync");
    drop(journal);
    let files = segment_files(&source);
    assert!(files.len() >= 4);
    let name = |i: usize| files[i].file_name().expect("file name").to_owned();
    let first = |i: usize| {
        segment::parse_file_name(name(i).to_str().unwrap())
            .unwrap()
            .0
    };
    // Positions held by segment i.
    let held = |i: usize| first(i)..files.get(i + 1).map_or(10, |_| first(i + 1));

    let damaged = |damage: &dyn Fn(&Path), lost: std::ops::Range<u64>, says: &str| {
        let work = tempfile::tempdir().expect("tempdir");
        copy_dir(&source, work.path());
        damage(work.path());
        let (mut journal, replay) =
            Journal::open(work.path(), opts(200)).expect("opens despite the damage");
        assert!(!replay.skipped.is_empty(), "{says}: the damage is reported");
        assert!(
            replay.skipped.iter().any(|s| s.reason.contains(says)),
            "{says}: {:?}",
            replay.skipped
        );
        let got: Vec<u64> = replay.records.iter().map(|r| r.position.0).collect();
        let want: Vec<u64> = (0..10).filter(|p| !lost.contains(p)).collect();
        assert_eq!(got, want, "{says}: every intact record, and only those");
        assert_eq!(journal.next_position(), Position(10));
        // The journal goes on taking records past the damage.
        append(&mut journal, &[10]);
        journal.sync().expect("sync");
        drop(journal);
        let (_, again) = Journal::open(work.path(), opts(200)).expect("reopen");
        assert_eq!(again.records.last().map(|r| r.position.0), Some(10));
    };

    // A flipped byte in a middle segment's records.
    damaged(
        &|dir| {
            let path = dir.join(name(1));
            let mut bytes = fs::read(&path).expect("read");
            let at = bytes.len() - 5;
            bytes[at] ^= 1;
            fs::write(&path, &bytes).expect("write");
        },
        held(1),
        "",
    );
    // A middle segment cut short.
    damaged(
        &|dir| {
            let path = dir.join(name(1));
            let len = fs::metadata(&path).expect("stat").len();
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open")
                .set_len(len - 3)
                .expect("truncate");
        },
        held(1),
        "",
    );
    // A middle segment zeroed from its middle on.
    damaged(
        &|dir| {
            let path = dir.join(name(2));
            let mut bytes = fs::read(&path).expect("read");
            let half = bytes.len() / 2;
            bytes[half..].fill(0);
            fs::write(&path, &bytes).expect("write");
        },
        held(2),
        "",
    );
    // A missing middle segment.
    damaged(
        &|dir| fs::remove_file(dir.join(name(2))).expect("remove"),
        held(2),
        "missing",
    );
    // A file that is not a segment of this format, in place of the first.
    damaged(
        &|dir| {
            fs::write(dir.join(name(0)), b"not a journal at all").expect("write");
        },
        held(0),
        "",
    );

    // The untouched copy still opens, with nothing to report.
    let (journal, replay) = open(&source, 200);
    assert_eq!(replay.records.len(), 10);
    assert!(replay.skipped.is_empty());
    assert_eq!(journal.next_position(), Position(10));
}

#[test]
fn a_failed_journal_refuses_writes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    journal.failed = true;
    assert!(matches!(
        journal.append_records(&[RecordRef {
            arrival_ms: 1,
            data: b"x"
        }]),
        Err(WriteError::Failed { .. })
    ));
    assert!(matches!(journal.sync(), Err(WriteError::Failed { .. })));
}

/// A failed write leaves unknown bytes after the last sync (here: garbage, as a torn write
/// would). `recover` cuts them off and appends go on from the first position not durable, in
/// the same segment or, after a roll, in the new one; a reopen replays exactly what was synced
/// before and written after, with no gap and no corruption.
#[test]
fn a_failed_journal_recovers_in_place() {
    for direct in [false, true] {
        let tmp = direct_tempdir();
        let (mut journal, _) = open_with(tmp.path(), 4096, direct);
        let mut kept = append(&mut journal, &[100, 200]);
        journal.sync().expect("sync");
        // Appended, partly written, never synced: the producer was told it failed.
        let lost = append(&mut journal, &[300]);
        journal.write_buffer().expect("write");
        let mut garbage = vec![0xAB; BLOCK];
        garbage[..8].copy_from_slice(b"GARBAGE!");
        fs::OpenOptions::new()
            .append(true)
            .open(&journal.active.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &garbage))
            .expect("torn bytes");
        journal.failed = true;
        assert!(matches!(journal.sync(), Err(WriteError::Failed { .. })));
        journal.recover().expect("recover");
        assert!(!journal.is_failed());
        assert_eq!(
            journal.next_position().0,
            lost[0].0,
            "the lost position is reused"
        );
        // Enough to roll into new segments, and a failure right after a roll too.
        kept.extend(append(&mut journal, &[1500, 1500, 1500]));
        journal.sync().expect("sync after recovery");
        append(&mut journal, &[1500]);
        journal.failed = true;
        journal.recover().expect("recover again");
        kept.extend(append(&mut journal, &[10, 20]));
        journal.sync().expect("sync");
        drop(journal);
        let (journal, replay) = open_with(tmp.path(), 4096, direct);
        assert_eq!(records(&replay), kept, "direct: {direct}");
        assert_eq!(journal.next_position().0, kept.len() as u64);
    }
}

/// Damage in the last segment that is not a torn write (here: a CRC-valid frame that does
/// not decode) is reported and cut off, so what is appended next is never behind it, and is
/// replayed.
#[test]
fn a_damaged_last_segment_is_cut_before_appending() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    let mut kept = append(&mut journal, &[5]);
    let start = frame::begin(&mut journal.buf, entry::KIND_PADDING);
    journal.buf.extend_from_slice(&[0, 0, 1]);
    frame::finish(&mut journal.buf, start);
    journal.sync().expect("sync");
    drop(journal);
    let (mut journal, replay) = open(tmp.path(), 1 << 20);
    assert_eq!(replay.skipped.len(), 1, "{:?}", replay.skipped);
    kept.extend(append(&mut journal, &[10, 20]));
    journal.sync().expect("sync");
    drop(journal);
    let (_, again) = open(tmp.path(), 1 << 20);
    assert!(again.skipped.is_empty(), "{:?}", again.skipped);
    assert_eq!(records(&again), kept);
}

/// Records a roll synced before a failure are durable: `durable_next` covers them, so the
/// writer acknowledges them and recovery appends after them.
#[test]
fn records_synced_by_a_roll_stay_durable_after_a_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 300);
    let mut kept = append(&mut journal, &[100]);
    journal.sync().expect("sync");
    kept.extend(append(&mut journal, &[150]));
    // Past the segment size: this append rolls, syncing the one before it.
    append(&mut journal, &[150]);
    assert_eq!(journal.durable_next(), Position(2));
    journal.failed = true;
    journal.recover().expect("recover");
    assert_eq!(journal.next_position(), Position(2));
    kept.extend(append(&mut journal, &[5]));
    journal.sync().expect("sync");
    drop(journal);
    let (_, replay) = open(tmp.path(), 300);
    assert_eq!(records(&replay), kept);
}

#[test]
fn fsync_mode_rolls_releases_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let fsync = JournalOptions {
        segment_bytes: 300,
        fsync: true,
        direct_io: false,
    };
    let (mut journal, _) = Journal::open(dir, fsync).expect("open");
    let mut all = Vec::new();
    for _ in 0..8 {
        all.extend(append(&mut journal, &[120, 0]));
        journal.sync().expect("sync");
    }
    journal.append_seal(&seal(0, 6, "a")).expect("seal");
    journal.append_commit(Position(0)).expect("commit");
    journal.sync().expect("sync");
    let before = journal.segment_count();
    journal.release(Position(6)).expect("release");
    assert!(journal.segment_count() < before);
    assert_eq!(journal.disk_bytes(), files_bytes(dir));
    drop(journal);
    let (journal, replay) = Journal::open(dir, fsync).expect("reopen");
    assert_eq!(records(&replay), all[6..].to_vec());
    assert_eq!(journal.next_position(), Position(16));
}

/// Buffers a padding frame of `len` payload bytes, as the direct write path would.
fn buffer_padding(journal: &mut Journal, len: usize) {
    let start = frame::begin(&mut journal.buf, entry::KIND_PADDING);
    entry::encode_padding(&mut journal.buf, len);
    frame::finish(&mut journal.buf, start);
}

fn assert_whole_blocks(dir: &Path) {
    for path in segment_files(dir) {
        let len = fs::metadata(&path).expect("stat").len();
        assert_eq!(len % BLOCK as u64, 0, "{} is {len} bytes", path.display());
    }
}

#[test]
fn padding_reaches_the_next_block_boundary() {
    let block = BLOCK as u64;
    let mut buf = AlignedBuf::new();
    let mut payload = Vec::new();
    for offset in [0, block, 3 * block, 100, block + 4090] {
        // Every length within 40 bytes of a boundary, and a sample in between.
        let lens = (0..2 * BLOCK + 40).filter(|len| {
            let into = len % BLOCK;
            !(40..=BLOCK - 40).contains(&into) || len.is_multiple_of(331)
        });
        for len in lens {
            buf.clear();
            buf.extend_zeros(len);
            buf.push(0xee);
            let len = len + 1;
            push_padding(&mut buf, offset);
            let end = offset + buf.len() as u64;
            assert_eq!(end % block, 0, "offset {offset} len {len}");
            let added = buf.len() - len;
            if (offset + len as u64).is_multiple_of(block) {
                assert_eq!(added, 0);
                continue;
            }
            assert!(
                (frame::HEADER_LEN..BLOCK + frame::HEADER_LEN).contains(&added),
                "offset {offset} len {len}: {added} bytes of padding"
            );
            // The padding is one whole, CRC-valid padding frame.
            let tail = &buf[len..];
            let mut reader = frame::Reader::new(tail, tail.len() as u64);
            assert_eq!(
                reader.next(&mut payload).expect("read"),
                frame::Next::Frame {
                    kind: entry::KIND_PADDING
                }
            );
            assert_eq!(
                entry::decode(entry::KIND_PADDING, &payload),
                Ok(entry::Entry::Padding)
            );
            assert_eq!(reader.next(&mut payload).expect("read"), frame::Next::End);
        }
    }
}

#[test]
fn replay_skips_padding_between_entries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (mut journal, _) = open(dir, 2000);
    // Right after the header, between records, seals and commits, at the end of closed
    // segments and of the last one.
    buffer_padding(&mut journal, 0);
    let mut all = append(&mut journal, &[10, 3]);
    buffer_padding(&mut journal, 1);
    buffer_padding(&mut journal, 4087);
    all.extend(append(&mut journal, &[700]));
    journal.append_seal(&seal(0, 2, "a")).expect("seal");
    buffer_padding(&mut journal, 20);
    journal.append_commit(Position(0)).expect("commit");
    journal.sync().expect("sync");
    for i in 0..6 {
        buffer_padding(&mut journal, 500 * i);
        all.extend(append(&mut journal, &[300 * i]));
        buffer_padding(&mut journal, 9);
        journal.sync().expect("sync");
    }
    journal.append_seal(&seal(2, 5, "b")).expect("seal");
    buffer_padding(&mut journal, 5000);
    journal.sync().expect("sync");
    assert!(journal.segment_count() >= 3);
    assert_eq!(journal.disk_bytes(), files_bytes(dir));
    drop(journal);

    let (journal, replay) = open(dir, 2000);
    assert_eq!(records(&replay), all[2..].to_vec());
    assert_eq!(replay.pending_seals, vec![seal(2, 5, "b")]);
    assert_eq!(journal.next_position().0 as usize, all.len());
}

#[test]
fn misplaced_or_nonzero_padding_is_reported() {
    // Padding in place of the header.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut buf = AlignedBuf::new();
    let start = frame::begin(&mut buf, entry::KIND_PADDING);
    entry::encode_padding(&mut buf, 10);
    frame::finish(&mut buf, start);
    push_header(&mut buf, Position(0));
    fs::write(tmp.path().join(segment::file_name(Position(0))), &buf[..]).expect("write");
    let (_, replay) = Journal::open(tmp.path(), opts(1 << 20)).expect("padding first");
    assert!(
        replay.skipped[0]
            .reason
            .contains("does not start with a header"),
        "{:?}",
        replay.skipped
    );

    // A CRC-valid padding frame holding something other than zeros, even in the last
    // segment's tail, is not a torn write.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut journal, _) = open(tmp.path(), 1 << 20);
    append(&mut journal, &[5]);
    let start = frame::begin(&mut journal.buf, entry::KIND_PADDING);
    journal.buf.extend_from_slice(&[0, 0, 1]);
    frame::finish(&mut journal.buf, start);
    journal.sync().expect("sync");
    drop(journal);
    let (_, replay) = Journal::open(tmp.path(), opts(1 << 20)).expect("non-zero padding");
    assert_eq!(replay.skipped.len(), 1, "{:?}", replay.skipped);
    assert_eq!(replay.records.len(), 1, "the record before it is kept");
}

#[test]
fn direct_mode_roundtrip_across_reopens_and_mode_switches() {
    let tmp = direct_tempdir();
    let dir = tmp.path();
    let supported = fs_supports_direct(dir);
    let direct = JournalOptions {
        segment_bytes: 3 * BLOCK as u64,
        fsync: true,
        direct_io: true,
    };
    let buffered = JournalOptions {
        direct_io: false,
        ..direct
    };
    let check_files = |journal: &Journal| {
        assert_eq!(journal.disk_bytes(), files_bytes(dir));
        if supported {
            assert_whole_blocks(dir);
        }
    };

    let (mut journal, _) = Journal::open(dir, direct).expect("open");
    assert_eq!(journal.is_direct(), supported);
    let mut all = Vec::new();
    for i in 0..12 {
        all.extend(append(&mut journal, &[100 * i, 7, 0]));
        if i % 3 == 0 {
            // Spans blocks, and the flush of a full segment happens on the next append.
            all.extend(append(&mut journal, &[6000]));
        }
        journal.sync().expect("sync");
        check_files(&journal);
    }
    let segments = journal.segment_count();
    assert!(segments >= 4, "{segments} segments");
    journal.append_seal(&seal(0, 10, "a")).expect("seal");
    journal.append_commit(Position(0)).expect("commit");
    journal.sync().expect("sync");
    journal.release(Position(10)).expect("release");
    assert!(journal.segment_count() < segments);
    assert_eq!(journal.segment_count(), segment_files(dir).len());
    check_files(&journal);
    drop(journal);

    let (journal, replay) = Journal::open(dir, direct).expect("reopen");
    assert_eq!(records(&replay), all[10..].to_vec());
    assert!(replay.pending_seals.is_empty());
    assert_eq!(journal.next_position().0 as usize, all.len());
    drop(journal);

    // Buffered: the last segment (no records yet) is reused and gets a seal, ending off a
    // block boundary.
    let (mut journal, _) = Journal::open(dir, buffered).expect("reopen buffered");
    assert!(!journal.is_direct());
    let next = all.len() as u64;
    journal.append_seal(&seal(10, next, "b")).expect("seal");
    journal.sync().expect("sync");
    drop(journal);
    let last = segment_files(dir).pop().expect("a segment");
    assert_ne!(fs::metadata(&last).expect("stat").len() % BLOCK as u64, 0);

    // Direct again: the reused segment is padded to a boundary before direct writes follow.
    let (mut journal, replay) = Journal::open(dir, direct).expect("reopen direct");
    assert_eq!(replay.pending_seals, vec![seal(10, next, "b")]);
    assert_eq!(segment_files(dir).pop(), Some(last));
    check_files(&journal);
    all.extend(append(&mut journal, &[50, 5000]));
    journal.sync().expect("sync");
    check_files(&journal);
    drop(journal);

    let (mut journal, replay) = Journal::open(dir, direct).expect("reopen direct");
    assert_eq!(records(&replay), all[10..].to_vec());
    assert_eq!(replay.pending_seals, vec![seal(10, next, "b")]);
    journal.append_commit(Position(10)).expect("commit");
    journal.sync().expect("sync");
    journal.release(Position(next)).expect("release");
    check_files(&journal);
    drop(journal);

    // And the direct-written files read back buffered.
    let (journal, replay) = Journal::open(dir, buffered).expect("reopen buffered");
    assert_eq!(records(&replay), all[next as usize..].to_vec());
    assert!(replay.pending_seals.is_empty());
    assert_eq!(journal.next_position().0 as usize, all.len());
}

#[test]
fn o_direct_refused_with_einval_falls_back_to_buffered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let path = dir.join(LOCK_FILE);
    let einval = io::Error::from_raw_os_error(libc::EINVAL);
    assert!(!direct_probed(dir, &path, Err(einval)).expect("EINVAL is a fallback"));
    let eacces = io::Error::from_raw_os_error(libc::EACCES);
    let err = direct_probed(dir, &path, Err(eacces)).expect_err("other errors fail the open");
    assert!(matches!(err, OpenError::Io { .. }), "{err}");
    let file = File::create(&path).expect("create");
    assert!(direct_probed(dir, &path, Ok(file)).expect("opened"));
}
