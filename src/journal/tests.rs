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
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (Journal, Replay) {
    Journal::open(dir, opts(segment_bytes)).expect("open journal")
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
    for fsync in [false, true] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("nested/stream");
        let (mut journal, replay) = Journal::open(
            &dir,
            JournalOptions {
                segment_bytes: 1 << 20,
                fsync,
            },
        )
        .expect("open");
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
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
    assert_eq!(replay, Replay::default());
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("source");
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
    for cut in synced_len..full_len {
        let work = tempfile::tempdir().expect("tempdir");
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
        let work = tempfile::tempdir().expect("tempdir");
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

    // A torn tail full of zeros (file size grew, data never landed) is cut too.
    let work = tempfile::tempdir().expect("tempdir");
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

#[test]
fn damage_outside_the_last_segment_is_an_error() {
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

    // A flipped byte in a middle segment.
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&source, work.path());
    let path = work.path().join(name(1));
    let mut bytes = fs::read(&path).expect("read");
    let at = bytes.len() - 5;
    bytes[at] ^= 1;
    fs::write(&path, &bytes).expect("write");
    let err = Journal::open(work.path(), opts(200)).expect_err("corrupt middle segment");
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    // A truncated middle segment.
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&source, work.path());
    let path = work.path().join(name(1));
    let len = fs::metadata(&path).expect("stat").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    assert!(matches!(
        Journal::open(work.path(), opts(200)),
        Err(OpenError::Corrupt { .. })
    ));

    // A missing middle segment.
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&source, work.path());
    fs::remove_file(work.path().join(name(2))).expect("remove");
    assert!(matches!(
        Journal::open(work.path(), opts(200)),
        Err(OpenError::Corrupt { .. })
    ));

    // A file that is not a segment of this format.
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&source, work.path());
    fs::write(
        work.path().join(segment::file_name(Position(0))),
        b"not a journal at all",
    )
    .expect("write");
    assert!(matches!(
        Journal::open(work.path(), opts(200)),
        Err(OpenError::Corrupt { .. })
    ));

    // The untouched copy still opens.
    let (journal, replay) = open(&source, 200);
    assert_eq!(replay.records.len(), 10);
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

#[test]
fn fsync_mode_rolls_releases_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let fsync = JournalOptions {
        segment_bytes: 300,
        fsync: true,
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
