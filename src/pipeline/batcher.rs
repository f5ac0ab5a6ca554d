//! The stream's pipeline task: takes durable records from the journal writer into the open
//! buffer ([`super::intake`]), seals it by size or age, and starts each sealed batch's
//! delivery ([`super::delivery`]); when a batch has landed, it commits it and lets the
//! journal release what no batch needs any more. End of input seals whatever is open and
//! waits for every upload before stopping the journal.
//!
//! A stream with dynamic partitioning adds a second stage: its sealed batches are processed at
//! once and their records held in partition buffers until those fill (see [`super::partitions`]);
//! such a batch commits when every object holding its records has landed ([`super::holds`]).
//!
//! Work that this run cannot deliver (shutdown abandoned it, or its journal entry is
//! unreadable) is held by position: the journal keeps everything from the lowest held
//! position on, so the next start retries it, and a hold that is not shutdown's shows as
//! `spillway_stream_stalled{reason="held"}`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::definition::StreamDefinition;
use crate::journal::{Position, Replay, Seal};
use crate::sink::ObjectPlan;

use super::Shared;
use super::budget::Reservation;
use super::delivery::{self, Event, JournalAnswer};
use super::group_commit::{Appended, Control, JournalOp};
use super::holds::{Holds, Settled};
use super::intake::{Batch, Now, OpenBuffer};
use super::partitions::{self, Buffers, Claim, FlushMeta, Part, PartKey, Rebuild, Replayed};

/// Why this run leaves a position in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Shutdown gave up on it: the next start delivers it.
    Shutdown,
    /// Its journal entry cannot be read, or its records are not all there: an operator must
    /// look (the log names it); delivering it could overwrite a complete object.
    Unreadable,
    /// A replayed partition object that cannot be rebuilt in this run.
    NotRebuilt,
}

pub struct Batcher {
    shared: Arc<Shared>,
    /// The journal writer's control queue: seals, flushes, commits, releases, stop.
    ops: Control,
    definition_rx: watch::Receiver<Arc<StreamDefinition>>,
    definition: Arc<StreamDefinition>,
    open: OpenBuffer,
    /// Batches sealed but not yet landed: start -> (oldest arrival ms, bytes still in the
    /// batch rather than in partition buffers), for the gauges.
    in_flight: BTreeMap<Position, (u64, u64)>,
    next: Position,
    /// Positions left undelivered by this run; the journal keeps everything from the lowest.
    held: BTreeMap<Position, Held>,
    uploads: Arc<Semaphore>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Partitioned batches not committed yet.
    holds: Holds,
    buffers: Buffers,
    replayed: Replayed,
    /// The input ended: what cannot be delivered now is shutdown's to leave behind.
    closing: bool,
}

impl Batcher {
    pub fn new(
        shared: Arc<Shared>,
        ops: Control,
        definition_rx: watch::Receiver<Arc<StreamDefinition>>,
        next: Position,
    ) -> Self {
        let definition = definition_rx.borrow().clone();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let uploads = Arc::new(Semaphore::new(shared.ctx.upload.concurrency));
        Batcher {
            open: OpenBuffer::new(shared.ctx.memory.none()),
            shared,
            ops,
            definition_rx,
            definition,
            in_flight: BTreeMap::new(),
            next,
            held: BTreeMap::new(),
            uploads,
            events_tx,
            events_rx,
            holds: Holds::default(),
            buffers: Buffers::default(),
            replayed: Replayed::default(),
            closing: false,
        }
    }

    pub async fn run(mut self, replay: Replay, mut input: mpsc::UnboundedReceiver<Appended>) {
        self.resume(replay).await;
        loop {
            let deadline = self.open.deadline();
            let partition_deadline = self.buffers.next_deadline();
            tokio::select! {
                appended = input.recv() => match appended {
                    Some(a) => {
                        self.accept(a).await;
                        // Take what was already waiting before looking at timers, so an
                        // interval of 0 still gathers what arrived together; but only that:
                        // under steady input, draining until the queue is empty would never
                        // end, and landed batches (commits, releases) would wait with it.
                        for _ in 0..input.len() {
                            let Ok(a) = input.try_recv() else { break };
                            self.accept(a).await;
                        }
                    }
                    None => break,
                },
                Some(event) = self.events_rx.recv() => {
                    self.event(event).await;
                    // All that are waiting: under steady input each turn of this loop may
                    // seal a batch, and commits and releases must keep up with that.
                    while let Ok(event) = self.events_rx.try_recv() {
                        self.event(event).await;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.seal_open().await,
                _ = sleep_until(partition_deadline), if partition_deadline.is_some() => {
                    for key in self.buffers.due(Instant::now()) {
                        self.flush(&key).await;
                    }
                    self.publish_gauges();
                }
                Ok(()) = self.definition_rx.changed() => {
                    // Records buffered under the old settings leave under them.
                    self.seal_open().await;
                    self.definition = self.definition_rx.borrow_and_update().clone();
                    for key in self.buffers.older_than(self.definition.version) {
                        self.flush(&key).await;
                    }
                }
            }
        }
        self.closing = true;
        self.seal_open().await;
        // Partitioned batches still being processed add to the buffers; then every buffer is
        // written, and the objects of a replay that cannot be completed are left to the next.
        while self.holds.any_unprocessed() {
            match self.events_rx.recv().await {
                Some(event) => self.event(event).await,
                None => break,
            }
        }
        for key in self.buffers.keys() {
            self.flush(&key).await;
        }
        for rebuild in self.replayed.abandon_all() {
            self.abandon_rebuild(rebuild, Held::Shutdown).await;
        }
        while !self.in_flight.is_empty() {
            match self.events_rx.recv().await {
                Some(event) => self.event(event).await,
                None => break,
            }
        }
        let _ = self.ops.send(JournalOp::Stop);
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Delivered {
                start,
                landed,
                memory,
            } if self.holds.contains(start) => {
                drop(memory);
                if self.holds.processed(start) {
                    // Its processing never finished: objects a replay was rebuilding with its
                    // records cannot be completed now.
                    let why = if landed {
                        Held::NotRebuilt
                    } else {
                        Held::Shutdown
                    };
                    for rebuild in self.replayed.failed(start) {
                        self.abandon_rebuild(rebuild, why).await;
                    }
                }
                self.release_hold(start, landed).await;
            }
            Event::Delivered {
                start,
                landed,
                memory,
            } => {
                drop(memory);
                let held = (!landed).then_some(Held::Shutdown);
                self.landed(start, held);
            }
            Event::Processed {
                start,
                oldest_ms,
                parts,
            } => self.processed(start, oldest_ms, parts).await,
            Event::Flushed {
                contributors,
                landed,
                memory,
            } => {
                drop(memory);
                for c in contributors {
                    self.release_hold(c, landed).await;
                }
                self.publish_gauges();
            }
        }
    }

    /// One of a partitioned batch's holds is over; the last one commits it (unless something
    /// was abandoned, which leaves it pending in the journal).
    async fn release_hold(&mut self, start: Position, landed: bool) {
        match self.holds.release(start, landed) {
            None => {}
            Some(Settled::Landed) => {
                let _ = self.ops.send(JournalOp::Commit { start });
                self.landed(start, None);
            }
            // Shutdown's, unless [`Batcher::abandon_rebuild`] recorded why first.
            Some(Settled::Abandoned) => self.landed(start, Some(Held::Shutdown)),
        }
    }

    /// A partitioned batch's records join their partitions' buffers (or, in a replay, the
    /// objects recorded before the restart); full buffers are written.
    async fn processed(&mut self, start: Position, oldest_ms: u64, parts: Vec<Part>) {
        let dest = &self.definition.destination;
        let (hint, interval, version) = (
            dest.buffer_bytes,
            dest.buffer_interval,
            self.definition.version,
        );
        let deadline = Now::read().deadline(oldest_ms, interval);
        let max_open = self.shared.ctx.max_active_partitions;
        self.holds.processed(start);
        // What the batch became is now in the buffers, not the batch.
        if let Some((_, bytes)) = self.in_flight.get_mut(&start) {
            *bytes = 0;
        }
        for part in parts {
            let key = part.key.clone();
            match self.replayed.claim(start, &key) {
                Some(Claim::Landed) => continue,
                Some(Claim::Rebuild(index)) => {
                    self.holds.add(start);
                    if !self.replayed.fill(index, start, part.records, part.memory) {
                        // Its object cannot be rebuilt in this run (another contributor
                        // failed, or shutdown gave it up): the batch must not commit; the
                        // next start tries again.
                        let why = if self.closing {
                            Held::Shutdown
                        } else {
                            Held::NotRebuilt
                        };
                        self.hold_back(start, why);
                        self.release_hold(start, false).await;
                    }
                    continue;
                }
                None => {}
            }
            if !self.buffers.contains(&key)
                && self.buffers.len() >= max_open
                && let Some(oldest) = self.buffers.oldest()
            {
                // Bounded like Firehose's active partitions, but by writing the oldest buffer
                // early rather than failing records: which buffers are open depends on timing,
                // and a replay must route every record as the first attempt did.
                self.flush(&oldest).await;
            }
            self.holds.add(start);
            let size = self.buffers.add(part, start, oldest_ms, deadline);
            if size >= hint || key.version < version {
                self.flush(&key).await;
            }
        }
        for rebuild in self.replayed.processed(start) {
            self.write_rebuild(rebuild).await;
        }
        self.relieve_pressure().await;
        self.publish_gauges();
    }

    /// Near the memory cap, partition buffers may hold a quarter of it at most: past that, the
    /// oldest are written early.
    async fn relieve_pressure(&mut self) {
        let memory = &self.shared.ctx.memory;
        if !memory.under_pressure() {
            return;
        }
        let share = memory.cap() / 4;
        while self.buffers.bytes() > share
            && let Some(oldest) = self.buffers.oldest()
        {
            self.flush(&oldest).await;
        }
    }

    /// Writes one partition buffer as an object: its name and contributors are made durable
    /// in the journal first, in order, then the upload runs on its own.
    async fn flush(&mut self, key: &PartKey) {
        let Some(buffer) = self.buffers.take(key) else {
            return;
        };
        let Ok(permit) = self.uploads.clone().acquire_owned().await else {
            return;
        };
        let plan =
            self.shared
                .namer()
                .partition_object(key, buffer.oldest_ms, buffer.contributors[0]);
        let meta = FlushMeta {
            plan,
            version: key.version,
            partition: key.prefix.clone(),
            contributors: buffer.contributors.iter().map(|c| c.0).collect(),
            naming: key.naming.clone(),
        };
        let bytes = match super::entries::encode_flush(&meta) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not expected (strings and numbers); never written as an empty entry.
                tracing::error!(stream = %self.shared.name, error = %e, "flush entry not written; its records stay in the journal");
                for c in buffer.contributors {
                    self.hold_back(c, Held::Unreadable);
                    self.release_hold(c, false).await;
                }
                return;
            }
        };
        let (reply, answer) = oneshot::channel();
        let op = JournalOp::Flush {
            meta: bytes.clone(),
            reply,
        };
        if self.ops.send(op).is_err() {
            // The journal writer has stopped: the records stay in the journal.
            self.send_flushed(buffer.contributors, false, buffer.memory);
            return;
        }
        let object = (meta.plan, buffer.records, buffer.memory);
        self.spawn_partition_write(permit, object, buffer.contributors, Some((answer, bytes)));
    }

    /// Writes a recorded partition object again from its contributors' replayed records.
    async fn write_rebuild(&mut self, rebuild: Rebuild) {
        let Some((meta, records, memory, holders)) = rebuild.into_object() else {
            return;
        };
        let Ok(permit) = self.uploads.clone().acquire_owned().await else {
            return;
        };
        // Its flush entry is in the journal already.
        self.spawn_partition_write(permit, (meta.plan, records, memory), holders, None);
    }

    /// Writes a partition object and reports it to the batcher. `journaled`: its flush entry,
    /// queued in the journal, which must be durable first (`None`: recorded before a restart).
    fn spawn_partition_write(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        (plan, records, memory): (ObjectPlan, Vec<Bytes>, Reservation),
        contributors: Vec<Position>,
        journaled: Option<(JournalAnswer, Vec<u8>)>,
    ) {
        let shared = self.shared.clone();
        let ops = self.ops.clone();
        let events = self.events_tx.clone();
        self.shared.ctx.tracker.spawn(async move {
            let durable_entry = match journaled {
                Some((answer, meta)) => {
                    let resend = move |reply| JournalOp::Flush {
                        meta: meta.clone(),
                        reply,
                    };
                    delivery::durable(&shared, &ops, answer, resend).await
                }
                None => true,
            };
            let landed = durable_entry
                && delivery::write_records(&shared, plan, records, memory.bytes()).await;
            let _ = events.send(Event::Flushed {
                contributors,
                landed,
                memory,
            });
            drop(permit);
        });
    }

    /// A recorded partition object that cannot be completed in this run: its contributors
    /// stay pending, and the next start tries again.
    async fn abandon_rebuild(&mut self, rebuild: Rebuild, why: Held) {
        tracing::warn!(stream = %self.shared.name, key = %rebuild.meta.plan.key, "partition object left for the next start: not all of its records were replayed");
        let holders = rebuild.holders();
        drop(rebuild);
        for c in holders {
            self.hold_back(c, why);
            self.release_hold(c, false).await;
        }
    }

    fn send_flushed(&self, contributors: Vec<Position>, landed: bool, memory: Reservation) {
        let _ = self.events_tx.send(Event::Flushed {
            contributors,
            landed,
            memory,
        });
    }

    /// Re-delivers batches sealed before a restart under their recorded keys, and buffers
    /// the records that were never sealed.
    async fn resume(&mut self, replay: Replay) {
        let memory = self.shared.ctx.memory.clone();
        let landed_before = released_prefixes(&replay);
        let pending: HashSet<Position> = replay
            .pending_seals
            .iter()
            .map(|s| s.start)
            .filter(|s| !landed_before.contains(s))
            .collect();
        let (replayed, unreadable) = Replayed::new(&replay.flushes, &pending);
        if unreadable > 0 {
            // Which objects hold which records is unknown: keep everything in the journal.
            self.hold_back(Position(0), Held::Unreadable);
            tracing::error!(stream = %self.shared.name, unreadable, "unreadable flush entries in the journal; records stay there");
        }
        self.replayed = replayed;
        let mut records = replay.records.into_iter().peekable();
        for seal in replay.pending_seals {
            // Seals are written in position order, so no record should precede a pending seal
            // unsealed; if one does, it becomes a batch of its own rather than being dropped.
            while let Some(r) = records.next_if(|r| r.position < seal.start) {
                let m = memory.reserve(r.data.len() as u64);
                self.push(r.position, r.arrival_ms, r.data, m);
            }
            self.seal_open().await;
            let mut batch = Batch {
                start: seal.start,
                end: seal.end,
                records: Vec::new(),
                arrivals: Vec::new(),
                memory: memory.none(),
                oldest_ms: u64::MAX,
            };
            while let Some(r) = records.next_if(|r| r.position < seal.end) {
                batch.memory.merge(memory.reserve(r.data.len() as u64));
                batch.oldest_ms = batch.oldest_ms.min(r.arrival_ms);
                batch.records.push(r.data);
                batch.arrivals.push(r.arrival_ms);
            }
            self.next = self.next.max(seal.end);
            let complete = batch.records.len() as u64 == seal.end.0 - seal.start.0;
            if landed_before.contains(&seal.start) {
                tracing::info!(stream = %self.shared.name, start = %seal.start, "pending seal whose first records were released: it landed before; not delivered again");
                continue;
            }
            match super::entries::decode_seal(&seal.meta) {
                // Records of a sealed batch are only released after its commit is durable;
                // if some are missing anyway, re-uploading would overwrite a complete object
                // with a partial one under the same key.
                Ok(plan) if !complete => {
                    tracing::error!(
                        stream = %self.shared.name,
                        start = %seal.start,
                        key = %plan.key,
                        "pending seal with records missing from the journal; not re-uploaded, its records stay there"
                    );
                    self.hold_back(seal.start, Held::Unreadable);
                    for rebuild in self.replayed.failed(seal.start) {
                        self.abandon_rebuild(rebuild, Held::NotRebuilt).await;
                    }
                }
                Ok(plan) => self.dispatch(batch, plan, false).await,
                Err(e) => {
                    // Keep the journal from releasing these records; an operator can recover them.
                    self.hold_back(seal.start, Held::Unreadable);
                    for rebuild in self.replayed.failed(seal.start) {
                        self.abandon_rebuild(rebuild, Held::NotRebuilt).await;
                    }
                    tracing::error!(
                        stream = %self.shared.name,
                        start = %seal.start,
                        error = %e,
                        "unreadable seal in the journal; its records stay there undelivered"
                    );
                }
            }
        }
        for r in records {
            let m = memory.reserve(r.data.len() as u64);
            self.push(r.position, r.arrival_ms, r.data, m);
            if self.open.bytes() >= self.seal_threshold() {
                self.seal_open().await;
            }
        }
        // What the replay found delivered (committed, or counted as landed) can go now, not
        // only once the next batch lands.
        self.release();
    }

    async fn accept(&mut self, appended: Appended) {
        let limit = self.seal_threshold();
        let Appended {
            first,
            arrival_ms,
            records,
            mut memory,
        } = appended;
        let mut position = first;
        for data in records {
            let m = memory.split(data.len() as u64);
            self.push(position, arrival_ms, data, m);
            position = position.next();
            if self.open.bytes() >= limit {
                self.seal_open().await;
            }
        }
        self.relieve_pressure().await;
        self.publish_gauges();
    }

    fn seal_threshold(&self) -> u64 {
        let (hint, _) = partitions::intake_hints(&self.definition.destination);
        let ctx = &self.shared.ctx;
        if ctx.memory.under_pressure() {
            hint.min((ctx.memory.cap() / 8).max(1))
        } else {
            hint
        }
    }

    fn push(&mut self, position: Position, arrival_ms: u64, data: Bytes, memory: Reservation) {
        let (_, interval) = partitions::intake_hints(&self.definition.destination);
        self.open
            .push(position, arrival_ms, data, memory, Now::read, interval);
        self.next = position.next();
    }

    async fn seal_open(&mut self) {
        let Some(batch) = self.open.seal(self.next) else {
            return;
        };
        let plan = self
            .shared
            .namer()
            .plan(&self.definition, batch.start, batch.oldest_ms);
        self.dispatch(batch, plan, true).await;
        self.publish_gauges();
    }

    /// Starts delivering a batch once an upload slot is free.
    async fn dispatch(&mut self, batch: Batch, plan: ObjectPlan, needs_seal: bool) {
        let permit = match self.uploads.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => return,
        };
        let start = batch.start;
        let seal = if needs_seal {
            let meta = match super::entries::encode_seal(&plan) {
                Ok(meta) => meta,
                Err(e) => {
                    // Not expected (strings and numbers); never written as an empty seal.
                    tracing::error!(stream = %self.shared.name, error = %e, "seal not written; its records stay in the journal");
                    self.hold_back(start, Held::Unreadable);
                    return;
                }
            };
            let seal = Seal {
                start,
                end: batch.end,
                meta,
            };
            let (reply, answer) = oneshot::channel();
            let op = JournalOp::Seal {
                seal: seal.clone(),
                reply,
            };
            // Sent from here rather than from the upload task so seals reach the journal in
            // position order. The journal writer never waits on this task: no deadlock.
            if self.ops.send(op).is_err() {
                // The journal writer has stopped: nothing can be sealed; keep what it holds.
                self.hold_back(start, Held::Shutdown);
                return;
            }
            Some((seal, answer))
        } else {
            None
        };
        self.in_flight
            .insert(start, (batch.oldest_ms, batch.bytes()));
        let buffered = plan.layout.as_ref().is_some_and(|l| l.buffered);
        if buffered {
            self.holds.open(start);
        }
        let shared = self.shared.clone();
        let ops = self.ops.clone();
        let events = self.events_tx.clone();
        let definition = self.definition.clone();
        self.shared.ctx.tracker.spawn(async move {
            let (landed, memory) =
                delivery::deliver(&shared, &ops, batch, plan, seal, definition, &events).await;
            // A partitioned batch is committed by the batcher, once its partitions are written.
            if landed && !buffered {
                let _ = ops.send(JournalOp::Commit { start });
            }
            let _ = events.send(Event::Delivered {
                start,
                landed,
                memory,
            });
            drop(permit);
        });
    }

    /// Keeps `start` and everything after it in the journal for this run.
    fn hold_back(&mut self, start: Position, why: Held) {
        let entry = self.held.entry(start).or_insert(why);
        if *entry == Held::Shutdown {
            *entry = why;
        }
        let stuck = self.held.values().any(|h| *h != Held::Shutdown);
        self.shared.set_held(stuck);
    }

    /// A batch's delivery is over: landed (`held` None), or left in the journal.
    fn landed(&mut self, start: Position, held: Option<Held>) {
        self.in_flight.remove(&start);
        if let Some(why) = held {
            self.hold_back(start, why);
        }
        self.release();
    }

    /// Lets the journal drop what no batch needs any more.
    fn release(&self) {
        let low = [
            self.in_flight.keys().next().copied(),
            self.open.start(),
            self.held.keys().next().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next);
        let _ = self.ops.send(JournalOp::Release { low });
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let in_flight_bytes: u64 =
            self.in_flight.values().map(|(_, b)| b).sum::<u64>() + self.buffers.bytes();
        self.shared
            .metrics
            .active_partitions
            .set(self.buffers.len() as i64);
        self.shared
            .metrics
            .buffered_bytes
            .set((self.open.bytes() + in_flight_bytes) as i64);
        let oldest = self
            .in_flight
            .values()
            .map(|(ms, _)| *ms)
            .chain(self.open.oldest_ms())
            .min()
            .unwrap_or(0);
        self.shared
            .oldest_pending_ms
            .store(oldest, Ordering::Release);
    }
}

/// Pending seals whose first records were released (below the oldest segment left), all the
/// rest present: they landed. A release passes a batch only once it landed; if its commit
/// entry was lost (a journal written before commits were retried after a failed round), the
/// batch shows as pending with its first records gone. Delivering it again would overwrite
/// its object with a partial one; holding it would keep the journal from ever being released.
fn released_prefixes(replay: &Replay) -> HashSet<Position> {
    // Damage can also remove a batch's first records: then nothing is inferred.
    if !replay.skipped.is_empty() {
        return HashSet::new();
    }
    let kept_from = replay.first_position;
    let present = |from: Position, end: Position| {
        let lo = replay.records.partition_point(|r| r.position < from);
        let hi = replay.records.partition_point(|r| r.position < end);
        (hi - lo) as u64
    };
    replay
        .pending_seals
        .iter()
        .filter(|s| {
            s.start < kept_from && present(kept_from, s.end) == s.end.0.saturating_sub(kept_from.0)
        })
        .map(|s| s.start)
        .collect()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{ReplayedRecord, Skipped};

    fn replay(records: std::ops::Range<u64>, seals: &[(u64, u64)]) -> Replay {
        let first_position = Position(records.start);
        Replay {
            records: records
                .map(|p| ReplayedRecord {
                    position: Position(p),
                    arrival_ms: 0,
                    data: Bytes::new(),
                })
                .collect(),
            pending_seals: seals
                .iter()
                .map(|(start, end)| Seal {
                    start: Position(*start),
                    end: Position(*end),
                    meta: Vec::new(),
                })
                .collect(),
            flushes: Vec::new(),
            skipped: Vec::new(),
            first_position,
        }
    }

    #[test]
    fn a_pending_seal_with_its_first_records_released_had_landed() {
        // Records from 150 on are kept; 100..200's first half was released, 200..300 whole.
        let r = replay(150..300, &[(100, 200), (200, 300)]);
        assert_eq!(released_prefixes(&r), [Position(100)].into());
        // Wholly released.
        assert_eq!(
            released_prefixes(&replay(150..160, &[(100, 140), (150, 160)])),
            [Position(100)].into()
        );
        // Wholly released, and everything after it committed: no record replayed at all.
        let mut idle = replay(0..0, &[(100, 140)]);
        idle.first_position = Position(300);
        assert_eq!(released_prefixes(&idle), [Position(100)].into());
        // Records of the oldest segment are committed (not replayed): the seal's first
        // records sit in a segment still there, so they were not released.
        let mut kept = replay(180..200, &[(100, 200)]);
        kept.first_position = Position(50);
        assert!(released_prefixes(&kept).is_empty());
        // A gap inside the batch is not a release.
        let mut gap = replay(150..200, &[(100, 200)]);
        gap.records.remove(10);
        assert!(released_prefixes(&gap).is_empty());
        // Nor is anything when damage was passed over.
        let mut damaged = replay(150..200, &[(100, 200)]);
        damaged.skipped.push(Skipped {
            path: "x".into(),
            offset: 0,
            reason: "flipped".into(),
        });
        assert!(released_prefixes(&damaged).is_empty());
        assert!(released_prefixes(&replay(0..0, &[(0, 10)])).is_empty());
        assert_eq!(
            released_prefixes(&replay(5..10, &[(0, 10)])),
            [Position(0)].into()
        );
    }
}
