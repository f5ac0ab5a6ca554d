//! Model-based property test: random appends, seals, commits, syncs, releases, crashes and
//! reopens against a simple in-memory model of what replay must return.
//!
//! The model keeps the log of appended entries and how much of it was synced. A crash drops
//! the journal and truncates (and maybe damages) the last segment anywhere after its length at
//! the last sync, so the surviving log is some prefix at least as long as the synced one; the
//! check accepts any such prefix that explains the replay exactly, then continues from it.
//!
//! It runs in both write modes. With direct I/O every write is padded to whole blocks, so the
//! crash cuts and flips also land in padding, and reopening after a crash that left the last
//! segment off a block boundary exercises the realignment of a reused segment.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::tests::{fs_supports_direct, tempdir_for};
use super::*;

/// Small, so runs roll often. Direct writes take at least a block each, so direct runs get a
/// few blocks per segment to have padding between frames, not only at segment ends.
fn segment_bytes(direct: bool) -> u64 {
    if direct { 4 * BLOCK as u64 } else { 4096 }
}

#[derive(Clone, Debug)]
enum Op {
    /// (length, content seed) per record.
    Append(Vec<(usize, u32)>),
    /// Seal up to this many of the oldest unsealed records.
    Seal {
        take: u64,
        meta_len: usize,
    },
    /// Commit the pending seal at this index (modulo their number).
    Commit(usize),
    Sync,
    Release,
    /// Optionally write the buffer out as an unfinished sync would (power lost before the
    /// fsync completed), then drop the journal; keep this fraction (per mille) of the bytes
    /// written since the last completed sync, and maybe flip one byte (position per mille, xor
    /// value) in that kept, unsynced part.
    Crash {
        write_first: bool,
        keep: u32,
        flip: Option<(u32, u8)>,
    },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let len = prop_oneof![1 => Just(0usize), 3 => 0usize..200, 2 => 0usize..2000];
    prop_oneof![
        6 => prop::collection::vec((len, any::<u32>()), 1..6).prop_map(Op::Append),
        3 => (1u64..8, 0usize..20).prop_map(|(take, meta_len)| Op::Seal { take, meta_len }),
        3 => any::<usize>().prop_map(Op::Commit),
        4 => Just(Op::Sync),
        2 => Just(Op::Release),
        2 => (
            any::<bool>(),
            prop_oneof![Just(1000u32), 0u32..=1000],
            prop::option::of((0u32..1000, 1u8..=255)),
        )
            .prop_map(|(write_first, keep, flip)| Op::Crash { write_first, keep, flip }),
        1 => Just(Op::Reopen),
    ]
}

fn data(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// (position, arrival_ms, bytes) of a record.
type Row = (u64, u64, Vec<u8>);

#[derive(Clone, Debug)]
enum Logged {
    Records(u64),
    Seal(Seal),
    Commit(Position),
}

/// What a prefix of the log adds up to.
struct State {
    next: u64,
    seals: Vec<Seal>,
    committed: Vec<Position>,
}

impl State {
    fn of(log: &[Logged]) -> State {
        let mut state = State {
            next: 0,
            seals: Vec::new(),
            committed: Vec::new(),
        };
        for entry in log {
            match entry {
                Logged::Records(n) => state.next += n,
                Logged::Seal(seal) => state.seals.push(seal.clone()),
                Logged::Commit(start) => state.committed.push(*start),
            }
        }
        state
    }

    fn pending(&self) -> Vec<Seal> {
        let mut pending: Vec<Seal> = self
            .seals
            .iter()
            .filter(|s| !self.committed.contains(&s.start))
            .cloned()
            .collect();
        pending.sort_by_key(|s| s.start);
        pending
    }

    fn sealed_upto(&self) -> u64 {
        self.seals.iter().map(|s| s.end.0).max().unwrap_or(0)
    }

    fn covered(&self, position: u64) -> bool {
        self.seals.iter().any(|s| {
            self.committed.contains(&s.start) && s.start.0 <= position && position < s.end.0
        })
    }
}

struct Model {
    /// Every record ever appended and still possibly alive, by position.
    records: Vec<(u64, Vec<u8>)>,
    log: Vec<Logged>,
    /// Length of the log prefix known to survive a crash.
    synced: usize,
    /// The last segment and its length at the last sync (or open).
    synced_file: Option<(PathBuf, u64)>,
}

impl Model {
    fn expected(&self, k: usize) -> (u64, Vec<Row>, Vec<Seal>) {
        let state = State::of(&self.log[..k]);
        let records = (0..state.next)
            .filter(|&p| !state.covered(p))
            .map(|p| {
                let (arrival, data) = &self.records[p as usize];
                (p, *arrival, data.clone())
            })
            .collect();
        (state.next, records, state.pending())
    }

    /// Lowest position still needed: records not covered by a seal whose commit is durable.
    fn low(&self) -> Position {
        let durable = State::of(&self.log[..self.synced]);
        let all = State::of(&self.log);
        let lowest_pending = all
            .seals
            .iter()
            .filter(|s| !durable.committed.contains(&s.start))
            .map(|s| s.start.0)
            .min();
        Position(lowest_pending.map_or(all.sealed_upto(), |p| p.min(all.sealed_upto())))
    }
}

fn last_segment(dir: &Path) -> (PathBuf, u64) {
    let (_, path) = segment::list(dir)
        .expect("list segments")
        .pop()
        .expect("a journal always has a segment");
    let len = fs::metadata(&path).expect("stat segment").len();
    (path, len)
}

fn files_bytes(dir: &Path) -> u64 {
    segment::list(dir)
        .expect("list segments")
        .iter()
        .map(|(_, p)| fs::metadata(p).expect("stat segment").len())
        .sum()
}

fn open(dir: &Path, direct: bool) -> (Journal, Replay) {
    Journal::open(
        dir,
        JournalOptions {
            segment_bytes: segment_bytes(direct),
            fsync: false,
            direct_io: direct,
        },
    )
    .expect("open journal")
}

/// Finds the log prefix (at least the synced one) that explains `replay`, then makes it the
/// model's whole, durable log.
fn check_reopen(
    model: &mut Model,
    journal: &Journal,
    replay: &Replay,
) -> Result<(), TestCaseError> {
    let got: Vec<Row> = replay
        .records
        .iter()
        .map(|r| (r.position.0, r.arrival_ms, r.data.to_vec()))
        .collect();
    let survived = (model.synced..=model.log.len()).rev().find(|&k| {
        let (next, records, pending) = model.expected(k);
        next == journal.next_position().0 && records == got && pending == replay.pending_seals
    });
    let Some(k) = survived else {
        let (next, records, pending) = model.expected(model.synced);
        return Err(TestCaseError::fail(format!(
            "replay matches no log prefix in {}..={}: got next {} records {:?} pending {:?}; \
             synced prefix expects next {next} records {:?} pending {pending:?}",
            model.synced,
            model.log.len(),
            journal.next_position(),
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            replay.pending_seals,
            records.iter().map(|r| r.0).collect::<Vec<_>>(),
        )));
    };
    model.log.truncate(k);
    let next = State::of(&model.log).next;
    model.records.truncate(next as usize);
    model.synced = k;
    model.synced_file = Some(last_segment(journal.dir()));
    Ok(())
}

fn run(ops: Vec<Op>, direct: bool) -> Result<(), TestCaseError> {
    let tmp = tempdir_for(direct);
    let dir = tmp.path().join("journal");
    let (journal, replay) = open(&dir, direct);
    prop_assert_eq!(&replay, &Replay::default());
    prop_assert_eq!(journal.is_direct(), direct && fs_supports_direct(&dir));
    let mut journal = Some(journal);
    let mut model = Model {
        records: Vec::new(),
        log: Vec::new(),
        synced: 0,
        synced_file: Some(last_segment(&dir)),
    };

    for op in ops {
        let j = journal.as_mut().expect("journal is open between ops");
        match op {
            Op::Append(specs) => {
                let datas: Vec<Vec<u8>> =
                    specs.iter().map(|&(len, seed)| data(seed, len)).collect();
                let first = j.next_position().0;
                let refs: Vec<RecordRef<'_>> = datas
                    .iter()
                    .enumerate()
                    .map(|(i, d)| RecordRef {
                        arrival_ms: (first + i as u64) * 10 + 3,
                        data: d,
                    })
                    .collect();
                let at = j.append_records(&refs).expect("append records");
                prop_assert_eq!(at.0, first);
                prop_assert_eq!(first, model.records.len() as u64);
                for (i, d) in datas.into_iter().enumerate() {
                    model.records.push(((first + i as u64) * 10 + 3, d));
                }
                model.log.push(Logged::Records(specs.len() as u64));
            }
            Op::Seal { take, meta_len } => {
                let state = State::of(&model.log);
                let from = state.sealed_upto();
                if from < state.next {
                    let seal = Seal {
                        start: Position(from),
                        end: Position(state.next.min(from + take)),
                        meta: data(from as u32, meta_len),
                    };
                    j.append_seal(&seal).expect("append seal");
                    model.log.push(Logged::Seal(seal));
                }
            }
            Op::Commit(pick) => {
                let pending = State::of(&model.log).pending();
                if !pending.is_empty() {
                    let start = pending[pick % pending.len()].start;
                    j.append_commit(start).expect("append commit");
                    model.log.push(Logged::Commit(start));
                }
            }
            Op::Sync => {
                j.sync().expect("sync");
                model.synced = model.log.len();
                model.synced_file = Some(last_segment(&dir));
                prop_assert_eq!(j.disk_bytes(), files_bytes(&dir));
                if j.is_direct() {
                    prop_assert!(j.active.written.is_multiple_of(BLOCK as u64));
                }
            }
            Op::Release => {
                let before = j.segment_count();
                j.release(model.low()).expect("release");
                prop_assert!(j.segment_count() <= before);
                prop_assert_eq!(j.segment_count(), segment::list(&dir).expect("list").len());
            }
            Op::Crash {
                write_first,
                keep,
                flip,
            } => {
                if write_first {
                    j.sync().expect("write before the crash");
                }
                drop(journal.take());
                let (path, len) = last_segment(&dir);
                let min = match &model.synced_file {
                    Some((synced_path, synced_len)) if *synced_path == path => *synced_len,
                    _ => 0,
                };
                prop_assert!(len >= min);
                let cut = min + (len - min) * u64::from(keep) / 1000;
                let mut bytes = fs::read(&path).expect("read segment");
                bytes.truncate(cut as usize);
                if let Some((at, xor)) = flip
                    && cut > min
                {
                    let at = min + (cut - min) * u64::from(at) / 1000;
                    bytes[at as usize] ^= xor;
                }
                fs::write(&path, &bytes).expect("write segment");
                let (reopened, replay) = open(&dir, direct);
                check_reopen(&mut model, &reopened, &replay)?;
                journal = Some(reopened);
            }
            Op::Reopen => {
                j.sync().expect("sync before a clean reopen");
                model.synced = model.log.len();
                drop(journal.take());
                let (reopened, replay) = open(&dir, direct);
                let all = model.log.len();
                check_reopen(&mut model, &reopened, &replay)?;
                prop_assert_eq!(model.log.len(), all, "a clean reopen lost entries");
                journal = Some(reopened);
            }
        }
    }

    // Whatever state the run ended in, a final sync and reopen returns exactly the model.
    let mut j = journal.take().expect("journal is open at the end");
    j.sync().expect("final sync");
    model.synced = model.log.len();
    drop(j);
    let all = model.log.len();
    let (reopened, replay) = open(&dir, direct);
    check_reopen(&mut model, &reopened, &replay)?;
    prop_assert_eq!(model.log.len(), all);
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Keep regressions out of the source tree; a failure prints its minimal case.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn journal_matches_model(ops in prop::collection::vec(op_strategy(), 1..150)) {
        run(ops, false)?;
    }
}

proptest! {
    // The direct write path is the newer one: more cases (each still well under a second).
    #![proptest_config(config(128))]

    #[test]
    fn direct_journal_matches_model(ops in prop::collection::vec(op_strategy(), 1..150)) {
        run(ops, true)?;
    }
}
