//! Partition buffers of a stream with dynamic partitioning.
//!
//! Such a stream seals small intake batches (at most [`INTAKE_BYTES`], or [`INTAKE_INTERVAL`]
//! after their first record) and processes each as soon as it is sealed. The records that come
//! out join one buffer per partition, across batches; a buffer becomes one object when it
//! reaches the stream's size hint or its oldest record reaches the interval hint, so each
//! partition gets objects the size the hints ask for, as Firehose does.
//!
//! Exactly once across crashes: before a buffer's object is uploaded, a flush entry naming the
//! object and the batches it holds records of (its contributors) is made durable in the
//! journal. A batch commits once every object holding its records has landed. On replay, the
//! pending batches are processed again, and each of their partitions goes back where it went:
//! - to a recorded flush with a contributor that is no longer pending: that object landed (the
//!   contributor only committed after it did), so the records are already delivered;
//! - to a recorded flush whose contributors are all pending: the object is rebuilt from their
//!   records, in the recorded order, and written again under the recorded name;
//! - to no flush: into a buffer, like new records.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::definition::Compression;
use crate::journal::Position;
use crate::sink::ObjectPlan;

use super::budget::Reservation;

/// Largest intake batch of a partitioned stream, however large its buffering hint: records go
/// through the transform and into their partition's buffer in steps of this size.
pub const INTAKE_BYTES: u64 = 4 << 20;
/// Longest a record waits in the intake buffer of a partitioned stream before it is processed;
/// the interval hint then counts for its partition's buffer from the record's arrival.
pub const INTAKE_INTERVAL: Duration = Duration::from_secs(1);

/// When the stream's open buffer is sealed (size, age): its buffering hints, or for a stream
/// with dynamic partitioning the shorter intake limits (the hints then apply per partition).
/// With a backup, the smaller of the two destinations' hints: each batch is also one backup
/// object, and neither destination's objects pass their hints.
pub fn intake_hints(dest: &crate::definition::Destination) -> (u64, Duration) {
    let (mut bytes, mut interval) = if dest.dynamic_partitioning {
        (
            dest.buffer_bytes.min(INTAKE_BYTES),
            dest.buffer_interval.min(INTAKE_INTERVAL),
        )
    } else {
        (dest.buffer_bytes, dest.buffer_interval)
    };
    if let Some(backup) = &dest.backup {
        bytes = bytes.min(backup.buffer_bytes);
        interval = interval.min(backup.buffer_interval);
    }
    if dest
        .processing
        .as_ref()
        .is_some_and(|p| p.decompression || p.deaggregation.is_some())
    {
        bytes = bytes.min(crate::process::preprocess::PREPROCESS_INTAKE_BYTES);
    }
    (bytes, interval)
}

/// Which buffer a batch's records of one partition join: records sealed under different
/// stream versions, buckets or compressions never share an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartKey {
    pub version: u64,
    pub bucket: String,
    pub compression: Compression,
    /// The prefix rendered with the partition's keys, random strings still to be drawn.
    pub prefix: String,
    /// Parquet with these settings, or JSON lines.
    pub format: Option<crate::definition::conversion::Conversion>,
    /// Time zone and extension of the object names.
    pub naming: crate::definition::ObjectNaming,
}

/// One batch's records of one partition.
pub struct Part {
    pub key: PartKey,
    pub records: Vec<Bytes>,
    /// The records' bytes in the memory budget.
    pub memory: Reservation,
}

/// The records of one partition waiting to be written.
pub struct Buffer {
    pub records: Vec<Bytes>,
    pub memory: Reservation,
    /// Arrival of the oldest record, ms since the epoch.
    pub oldest_ms: u64,
    pub deadline: Instant,
    /// The batches these records came from, in the order they joined.
    pub contributors: Vec<Position>,
}

#[derive(Default)]
pub struct Buffers {
    open: HashMap<PartKey, Buffer>,
    /// Across all open buffers.
    bytes: u64,
}

impl Buffers {
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn contains(&self, key: &PartKey) -> bool {
        self.open.contains_key(key)
    }

    /// Adds a batch's records to their partition's buffer (opened with `deadline` if new) and
    /// returns its size.
    pub fn add(&mut self, part: Part, from: Position, oldest_ms: u64, deadline: Instant) -> u64 {
        let Part {
            key,
            records,
            mut memory,
        } = part;
        self.bytes += memory.bytes();
        let buffer = self.open.entry(key).or_insert_with(|| Buffer {
            records: Vec::new(),
            memory: memory.split(0),
            oldest_ms,
            deadline,
            contributors: Vec::new(),
        });
        buffer.records.extend(records);
        buffer.memory.merge(memory);
        buffer.oldest_ms = buffer.oldest_ms.min(oldest_ms);
        buffer.deadline = buffer.deadline.min(deadline);
        buffer.contributors.push(from);
        buffer.memory.bytes()
    }

    pub fn take(&mut self, key: &PartKey) -> Option<Buffer> {
        let buffer = self.open.remove(key)?;
        self.bytes -= buffer.memory.bytes();
        Some(buffer)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|b| b.deadline).min()
    }

    /// Buffers whose deadline has come.
    pub fn due(&self, now: Instant) -> Vec<PartKey> {
        self.open
            .iter()
            .filter(|(_, b)| b.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The buffer holding the oldest record.
    pub fn oldest(&self) -> Option<PartKey> {
        self.open
            .iter()
            .min_by_key(|(_, b)| b.oldest_ms)
            .map(|(k, _)| k.clone())
    }

    pub fn keys(&self) -> Vec<PartKey> {
        self.open.keys().cloned().collect()
    }

    /// Buffers of an older stream version than `version`.
    pub fn older_than(&self, version: u64) -> Vec<PartKey> {
        self.open
            .keys()
            .filter(|k| k.version < version)
            .cloned()
            .collect()
    }
}

/// The journal's flush entry: one partition object and where its records came from.
#[derive(Clone, Debug, PartialEq)]
pub struct FlushMeta {
    pub plan: ObjectPlan,
    pub version: u64,
    /// The partition's rendered prefix before random strings were drawn ([`PartKey::prefix`]).
    pub partition: String,
    pub contributors: Vec<u64>,
    /// The partition's naming settings ([`PartKey::naming`]).
    pub naming: crate::definition::ObjectNaming,
}

impl FlushMeta {
    pub fn key(&self) -> PartKey {
        PartKey {
            version: self.version,
            bucket: self.plan.bucket.clone(),
            compression: self.plan.compression,
            prefix: self.partition.clone(),
            format: self.plan.format.clone(),
            naming: self.naming.clone(),
        }
    }
}

/// Where a replayed batch's records of one partition go.
pub enum Claim {
    /// Into a recorded object that landed: already delivered.
    Landed,
    /// Into a recorded object to write again.
    Rebuild(usize),
}

/// A recorded object to write again, filled as its contributors are processed.
pub struct Rebuild {
    pub meta: FlushMeta,
    /// Per contributor, in the recorded order.
    parts: Vec<Option<(Vec<Bytes>, Reservation)>>,
    /// Contributors not processed yet.
    waiting: usize,
}

impl Rebuild {
    /// The records in the recorded order, their memory, and the contributors that gave
    /// some; None if none did.
    pub fn into_object(self) -> Option<(FlushMeta, Vec<Bytes>, Reservation, Vec<Position>)> {
        let mut records = Vec::new();
        let mut memory: Option<Reservation> = None;
        let mut gave = Vec::new();
        for (c, part) in self.meta.contributors.iter().zip(self.parts) {
            if let Some((r, m)) = part {
                records.extend(r);
                match &mut memory {
                    Some(all) => all.merge(m),
                    None => memory = Some(m),
                }
                gave.push(Position(*c));
            }
        }
        Some((self.meta, records, memory?, gave))
    }

    /// Contributors whose records this rebuild holds.
    pub fn holders(&self) -> Vec<Position> {
        self.meta
            .contributors
            .iter()
            .zip(&self.parts)
            .filter(|(_, p)| p.is_some())
            .map(|(c, _)| Position(*c))
            .collect()
    }
}

/// The flush entries found at start, as claims on the partitions of pending batches.
#[derive(Default)]
pub struct Replayed {
    claims: HashMap<(Position, PartKey), Claim>,
    rebuilds: Vec<Option<Rebuild>>,
    /// Pending contributor -> the rebuilds waiting for it.
    waiting_on: HashMap<Position, Vec<usize>>,
}

impl Replayed {
    /// `pending` are the starts of the batches without a commit. Returns the claims and the
    /// number of flush entries that could not be read.
    pub fn new(flushes: &[Vec<u8>], pending: &HashSet<Position>) -> (Self, usize) {
        let mut out = Replayed::default();
        let mut unreadable = 0;
        for raw in flushes {
            let Ok(meta) = super::entries::decode_flush(raw) else {
                unreadable += 1;
                continue;
            };
            let key = meta.key();
            let landed = meta
                .contributors
                .iter()
                .any(|c| !pending.contains(&Position(*c)));
            let claim = |i| {
                if landed {
                    Claim::Landed
                } else {
                    Claim::Rebuild(i)
                }
            };
            let index = out.rebuilds.len();
            for c in &meta.contributors {
                out.claims.insert((Position(*c), key.clone()), claim(index));
                if !landed {
                    out.waiting_on.entry(Position(*c)).or_default().push(index);
                }
            }
            out.rebuilds.push((!landed).then(|| Rebuild {
                waiting: meta.contributors.len(),
                parts: meta.contributors.iter().map(|_| None).collect(),
                meta,
            }));
        }
        (out, unreadable)
    }

    /// Where `from`'s records of `key` go: `None` when no flush entry names them.
    pub fn claim(&mut self, from: Position, key: &PartKey) -> Option<Claim> {
        if self.claims.is_empty() {
            return None;
        }
        self.claims.remove(&(from, key.clone()))
    }

    /// Gives a claimed part to its rebuild. False when that rebuild was given up already (a
    /// contributor failed): the part has nowhere to go in this run.
    #[must_use]
    pub fn fill(
        &mut self,
        index: usize,
        from: Position,
        records: Vec<Bytes>,
        memory: Reservation,
    ) -> bool {
        if let Some(Some(r)) = self.rebuilds.get_mut(index)
            && let Some(i) = r.meta.contributors.iter().position(|c| *c == from.0)
        {
            r.parts[i] = Some((records, memory));
            return true;
        }
        false
    }

    /// `from` was processed: returns the rebuilds that no longer wait for anyone.
    pub fn processed(&mut self, from: Position) -> Vec<Rebuild> {
        let mut ready = Vec::new();
        for index in self.waiting_on.remove(&from).unwrap_or_default() {
            let Some(slot) = self.rebuilds.get_mut(index) else {
                continue;
            };
            if let Some(r) = slot.as_mut() {
                r.waiting -= 1;
                if r.waiting == 0
                    && let Some(r) = slot.take()
                {
                    ready.push(r);
                }
            }
        }
        ready
    }

    /// `from` will not be processed: the rebuilds that needed it cannot be completed.
    pub fn failed(&mut self, from: Position) -> Vec<Rebuild> {
        self.waiting_on
            .remove(&from)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| self.rebuilds.get_mut(i).and_then(Option::take))
            .collect()
    }

    /// Every rebuild still waiting (at shutdown).
    pub fn abandon_all(&mut self) -> Vec<Rebuild> {
        self.waiting_on.clear();
        self.claims.clear();
        self.rebuilds.iter_mut().filter_map(Option::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::MemoryBudget;

    fn budget() -> Arc<MemoryBudget> {
        MemoryBudget::for_tests(1 << 20)
    }

    fn key(prefix: &str) -> PartKey {
        PartKey {
            version: 1,
            bucket: "b".into(),
            compression: Compression::Uncompressed,
            prefix: prefix.into(),
            format: None,
            naming: Default::default(),
        }
    }

    fn flush(prefix: &str, contributors: &[u64]) -> Vec<u8> {
        let meta = FlushMeta {
            plan: ObjectPlan {
                bucket: "b".into(),
                key: format!("{prefix}object"),
                compression: Compression::Uncompressed,
                layout: None,
                format: None,
                backup: None,
            },
            version: 1,
            partition: prefix.into(),
            contributors: contributors.to_vec(),
            naming: Default::default(),
        };
        super::super::entries::encode_flush(&meta).unwrap()
    }

    fn records(names: &[&str]) -> Vec<Bytes> {
        names.iter().map(|n| Bytes::from(n.to_string())).collect()
    }

    #[test]
    fn replay_routes_each_part_where_it_went_before() {
        // P's object holds batches 10 and 20; 10 committed, so it landed. R's holds 20 and
        // 30, both pending: it is rebuilt in the recorded order, whatever order they replay in.
        let memory = budget();
        let pending: HashSet<Position> = [Position(20), Position(30)].into();
        let (mut r, unreadable) = Replayed::new(
            &[
                flush("P/", &[10, 20]),
                flush("R/", &[20, 30]),
                b"{".to_vec(),
            ],
            &pending,
        );
        assert_eq!(unreadable, 1);
        assert!(matches!(
            r.claim(Position(20), &key("P/")),
            Some(Claim::Landed)
        ));
        let Some(Claim::Rebuild(i)) = r.claim(Position(30), &key("R/")) else {
            panic!("R is rebuilt");
        };
        assert!(r.fill(i, Position(30), records(&["c"]), memory.reserve(1)));
        assert!(r.processed(Position(30)).is_empty(), "still waits for 20");
        let Some(Claim::Rebuild(j)) = r.claim(Position(20), &key("R/")) else {
            panic!("R is rebuilt");
        };
        assert_eq!(i, j);
        assert!(r.fill(j, Position(20), records(&["a", "b"]), memory.reserve(2)));
        // A partition no flush names goes to a buffer.
        assert!(r.claim(Position(20), &key("Q/")).is_none());
        let ready = r.processed(Position(20));
        assert_eq!(ready.len(), 1);
        let (meta, recs, held, gave) = ready.into_iter().next().unwrap().into_object().unwrap();
        assert_eq!(meta.plan.key, "R/object");
        assert_eq!(recs, records(&["a", "b", "c"]));
        assert_eq!((held.bytes(), memory.used()), (3, 3));
        assert_eq!(gave, [Position(20), Position(30)]);
    }

    #[test]
    fn a_rebuild_missing_a_contributor_is_given_up() {
        let memory = budget();
        let pending: HashSet<Position> = [Position(1), Position(2)].into();
        let (mut r, _) = Replayed::new(&[flush("P/", &[1, 2])], &pending);
        let Some(Claim::Rebuild(i)) = r.claim(Position(1), &key("P/")) else {
            panic!("P is rebuilt");
        };
        assert!(r.fill(i, Position(1), records(&["a"]), memory.reserve(1)));
        assert!(r.processed(Position(1)).is_empty());
        let failed = r.failed(Position(2));
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].holders(), [Position(1)]);
        assert!(r.abandon_all().is_empty());
        assert_eq!(memory.used(), 1);
        drop(failed);
        assert_eq!(memory.used(), 0, "a rebuild given up gives its memory back");
    }

    #[test]
    fn a_part_claimed_by_a_rebuild_given_up_has_nowhere_to_go() {
        let memory = budget();
        let pending: HashSet<Position> = [Position(1), Position(2)].into();
        let (mut r, _) = Replayed::new(&[flush("P/", &[1, 2])], &pending);
        // 2's seal could not be read: the rebuild is given up before 1 is processed.
        assert_eq!(r.failed(Position(2)).len(), 1);
        let Some(Claim::Rebuild(i)) = r.claim(Position(1), &key("P/")) else {
            panic!("1's part of P is still claimed");
        };
        assert!(!r.fill(i, Position(1), records(&["a"]), memory.reserve(1)));
        assert_eq!(memory.used(), 0);
    }

    /// A partition's buffer is due the interval hint after its oldest record arrived, however
    /// long that record spent in the intake buffer first; later parts never push it back.
    #[tokio::test(start_paused = true)]
    async fn a_partition_buffer_is_due_its_interval_after_its_oldest_arrival() {
        let memory = budget();
        let mut b = Buffers::default();
        let interval = Duration::from_secs(60);
        let now = crate::pipeline::intake::Now {
            ms: 1_000_000,
            instant: Instant::now(),
        };
        // Processed 1 s after it arrived (the intake interval of a partitioned stream).
        let first = Part {
            key: key("P/"),
            records: records(&["a"]),
            memory: memory.reserve(1),
        };
        b.add(first, Position(0), 999_000, now.deadline(999_000, interval));
        tokio::time::advance(Duration::from_secs(30)).await;
        let later = crate::pipeline::intake::Now {
            ms: 1_030_000,
            instant: Instant::now(),
        };
        let second = Part {
            key: key("P/"),
            records: records(&["b"]),
            memory: memory.reserve(1),
        };
        b.add(
            second,
            Position(1),
            1_029_000,
            later.deadline(1_029_000, interval),
        );
        let due_at = b.next_deadline().unwrap();
        assert_eq!(due_at, now.instant + Duration::from_secs(59));
        assert!(b.due(Instant::now()).is_empty());
        tokio::time::sleep_until(due_at).await;
        assert_eq!(b.due(Instant::now()), [key("P/")]);
    }

    #[test]
    fn a_partitioned_stream_seals_small_intake_batches() {
        let mut dest = crate::definition::validate(
            &serde_json::from_str(r#"{"BucketARN":"arn:aws:s3:::bkt","BufferingHints":{"SizeInMBs":64,"IntervalInSeconds":900}}"#)
                .unwrap(),
            &Default::default(),
            crate::process::jq::check,
        )
        .unwrap();
        assert_eq!(
            intake_hints(&dest),
            (64 << 20, Duration::from_secs(900)),
            "the hints, without partitioning"
        );
        dest.dynamic_partitioning = true;
        assert_eq!(intake_hints(&dest), (INTAKE_BYTES, INTAKE_INTERVAL));
    }

    #[test]
    fn buffers_gather_parts_and_report_the_oldest() {
        let memory = budget();
        let mut b = Buffers::default();
        let now = Instant::now();
        let part = |p: &str, n: &[&str]| Part {
            key: key(p),
            records: records(n),
            memory: memory.reserve(n.len() as u64),
        };
        assert_eq!(
            b.add(
                part("P/", &["a"]),
                Position(1),
                500,
                now + Duration::from_secs(9)
            ),
            1
        );
        assert_eq!(
            b.add(
                part("Q/", &["b"]),
                Position(1),
                500,
                now + Duration::from_secs(5)
            ),
            1
        );
        assert_eq!(
            b.add(
                part("P/", &["c", "d"]),
                Position(2),
                400,
                now + Duration::from_secs(7)
            ),
            3
        );
        assert_eq!((b.len(), b.bytes()), (2, 4));
        assert_eq!(b.oldest(), Some(key("P/")));
        assert_eq!(b.next_deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(b.due(now + Duration::from_secs(6)), [key("Q/")]);
        let p = b.take(&key("P/")).unwrap();
        assert_eq!(p.records, records(&["a", "c", "d"]));
        assert_eq!(p.contributors, [Position(1), Position(2)]);
        assert_eq!(b.bytes(), 1);
        assert_eq!((p.memory.bytes(), memory.used()), (3, 4));
        assert_eq!(
            (p.oldest_ms, p.deadline),
            (400, now + Duration::from_secs(7))
        );
        assert!(b.older_than(1).is_empty());
        assert_eq!(b.older_than(2), [key("Q/")]);
    }
}
