//! The stream's pipeline task: fills the open buffer with durable records, seals it when it
//! reaches the size hint or its oldest record reaches the interval, and runs each sealed batch
//! through seal -> encode -> upload -> commit. End of input seals whatever is open and waits for
//! every upload before stopping the journal.
//!
//! A stream with dynamic partitioning adds a second stage: its sealed batches are processed at
//! once and their records held in partition buffers until those fill (see [`super::partitions`]);
//! such a batch commits when every object holding its records has landed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::catalog::definition::StreamDefinition;
use crate::catalog::prefix;
use crate::encode;
use crate::journal::{Position, Replay, Seal};
use crate::process::{self, ErrorOutput};
use crate::sink::{self, Layout, ObjectPlan, SealedSettings, UploadOutcome};
use futures::StreamExt;

use super::Shared;
use super::group_commit::{Appended, JournalOp};
use super::partitions::{self, Buffers, Claim, FlushMeta, Part, PartKey, Rebuild, Replayed};

/// Whether a journal entry the batcher queued was written (and synced).
type JournalAnswer = oneshot::Receiver<Result<(), String>>;

/// A sealed run of records: positions `start..end`, all held in memory.
struct Batch {
    start: Position,
    end: Position,
    records: Vec<Bytes>,
    /// Each record's arrival, ms since the epoch (for transforms and error records).
    arrivals: Vec<u64>,
    bytes: u64,
    oldest_ms: u64,
}

struct Delivered {
    start: Position,
    /// False when shutdown abandoned the batch: it stays pending in the journal.
    landed: bool,
}

/// What delivery tasks report to the batcher.
enum Event {
    /// A batch's own work ended: its object, or for a partitioned batch its error objects.
    Delivered(Delivered),
    /// A partitioned batch was processed: its records by partition.
    Processed {
        start: Position,
        oldest_ms: u64,
        parts: Vec<Part>,
    },
    /// A partition object landed, or shutdown abandoned it.
    Flushed {
        contributors: Vec<Position>,
        /// The object's records, reserved in the memory budget until now.
        bytes: u64,
        landed: bool,
    },
}

/// A partitioned batch between its seal and its commit.
struct Holds {
    /// Its own work (processing, error objects) plus each partition object holding its
    /// records that has not landed yet.
    pending: usize,
    processed: bool,
    /// Something was abandoned: the batch stays pending in the journal.
    abandoned: bool,
}

#[derive(Default)]
struct OpenBuffer {
    start: Option<Position>,
    records: Vec<Bytes>,
    arrivals: Vec<u64>,
    bytes: u64,
    oldest_ms: u64,
    deadline: Option<Instant>,
}

pub struct Batcher {
    shared: Arc<Shared>,
    ops: mpsc::Sender<JournalOp>,
    definition_rx: watch::Receiver<Arc<StreamDefinition>>,
    definition: Arc<StreamDefinition>,
    open: OpenBuffer,
    /// Batches sealed but not yet landed: start -> (oldest arrival ms, bytes).
    in_flight: BTreeMap<Position, (u64, u64)>,
    next: Position,
    /// Set once a batch is left undelivered: the journal must then keep everything from it on.
    holding: bool,
    uploads: Arc<Semaphore>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Partitioned batches not committed yet.
    holds: HashMap<Position, Holds>,
    buffers: Buffers,
    replayed: Replayed,
}

impl Batcher {
    pub fn new(
        shared: Arc<Shared>,
        ops: mpsc::Sender<JournalOp>,
        definition_rx: watch::Receiver<Arc<StreamDefinition>>,
        next: Position,
    ) -> Self {
        let definition = definition_rx.borrow().clone();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let uploads = Arc::new(Semaphore::new(shared.ctx.upload.concurrency));
        Batcher {
            shared,
            ops,
            definition_rx,
            definition,
            open: OpenBuffer::default(),
            in_flight: BTreeMap::new(),
            next,
            holding: false,
            uploads,
            events_tx,
            events_rx,
            holds: HashMap::new(),
            buffers: Buffers::default(),
            replayed: Replayed::default(),
        }
    }

    pub async fn run(mut self, replay: Replay, mut input: mpsc::UnboundedReceiver<Appended>) {
        self.resume(replay).await;
        loop {
            let deadline = self.open.deadline;
            let partition_deadline = self.buffers.next_deadline();
            tokio::select! {
                appended = input.recv() => match appended {
                    Some(a) => {
                        self.accept(a).await;
                        // Take everything already waiting before looking at timers, so an
                        // interval of 0 still gathers what arrived together.
                        while let Ok(a) = input.try_recv() {
                            self.accept(a).await;
                        }
                    }
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.event(event).await,
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
        self.seal_open().await;
        // Partitioned batches still being processed add to the buffers; then every buffer is
        // written, and the objects of a replay that cannot be completed are left to the next.
        while self.holds.values().any(|h| !h.processed) {
            match self.events_rx.recv().await {
                Some(event) => self.event(event).await,
                None => break,
            }
        }
        for key in self.buffers.keys() {
            self.flush(&key).await;
        }
        for rebuild in self.replayed.abandon_all() {
            self.abandon_rebuild(rebuild).await;
        }
        while !self.in_flight.is_empty() {
            match self.events_rx.recv().await {
                Some(event) => self.event(event).await,
                None => break,
            }
        }
        let _ = self.ops.send(JournalOp::Stop).await;
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Delivered(done) if self.holds.contains_key(&done.start) => {
                if let Some(h) = self.holds.get_mut(&done.start)
                    && !h.processed
                {
                    // Its processing never finished: objects a replay was rebuilding with its
                    // records cannot be completed now.
                    h.processed = true;
                    for rebuild in self.replayed.failed(done.start) {
                        self.abandon_rebuild(rebuild).await;
                    }
                }
                self.release_hold(done.start, done.landed).await;
            }
            Event::Delivered(done) => self.landed(done),
            Event::Processed {
                start,
                oldest_ms,
                parts,
            } => self.processed(start, oldest_ms, parts).await,
            Event::Flushed {
                contributors,
                bytes,
                landed,
            } => {
                self.shared.ctx.memory.release(bytes);
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
        let Some(h) = self.holds.get_mut(&start) else {
            return;
        };
        h.pending -= 1;
        h.abandoned |= !landed;
        if h.pending > 0 {
            return;
        }
        let abandoned = h.abandoned;
        self.holds.remove(&start);
        if !abandoned {
            let _ = self.ops.send(JournalOp::Commit { start }).await;
        }
        self.landed(Delivered {
            start,
            landed: !abandoned,
        });
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
        let waited = Duration::from_millis(super::now_ms().saturating_sub(oldest_ms));
        let deadline = Instant::now() + interval.saturating_sub(waited);
        let max_open = self.shared.ctx.max_active_partitions;
        if let Some(h) = self.holds.get_mut(&start) {
            h.processed = true;
        }
        // The memory budget now holds what the batch became, not what it was: records the
        // transform dropped or failed are released, kept ones stay reserved until written.
        if let Some((_, bytes)) = self.in_flight.get_mut(&start) {
            self.shared.ctx.memory.release(std::mem::take(bytes));
        }
        for part in parts {
            let key = part.key.clone();
            match self.replayed.claim(start, &key) {
                Some(Claim::Landed) => continue,
                Some(Claim::Rebuild(index)) => {
                    self.shared.ctx.memory.force_reserve(part.bytes);
                    self.replayed.fill(index, start, part.records, part.bytes);
                    self.hold(start);
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
            self.hold(start);
            self.shared.ctx.memory.force_reserve(part.bytes);
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

    fn hold(&mut self, start: Position) {
        if let Some(h) = self.holds.get_mut(&start) {
            h.pending += 1;
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
        let prefix = prefix::fill_random(&key.prefix, &mut rand::rng());
        // Tagged apart from the batch-named objects; a batch adds records to a partition's
        // buffer once, so its first contributor names each object of that partition uniquely.
        let name = object_key(
            &self.shared,
            key.version,
            buffer.oldest_ms,
            buffer.contributors[0],
            &prefix,
            PARTITION_OBJECT_BASE,
        );
        let meta = FlushMeta {
            plan: ObjectPlan {
                bucket: key.bucket.clone(),
                key: format!(
                    "{name}{}",
                    encode::data_suffix(key.compression, key.format.as_ref())
                ),
                compression: key.compression,
                layout: None,
                format: key.format.clone(),
            },
            version: key.version,
            partition: key.prefix.clone(),
            contributors: buffer.contributors.iter().map(|c| c.0).collect(),
        };
        let bytes = match super::entries::encode_flush(&meta) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not expected (strings and numbers); never written as an empty entry.
                tracing::error!(stream = %self.shared.name, error = %e, "flush entry not written; its records stay in the journal");
                self.holding = true;
                self.send_flushed(buffer.contributors, buffer.bytes, false);
                return;
            }
        };
        let (reply, answer) = oneshot::channel();
        let op = JournalOp::Flush {
            meta: bytes.clone(),
            reply,
        };
        if self.ops.send(op).await.is_err() {
            // The journal thread is gone: the records stay in the journal.
            self.holding = true;
            self.send_flushed(buffer.contributors, buffer.bytes, false);
            return;
        }
        let object = (meta.plan, buffer.records, buffer.bytes);
        self.spawn_partition_write(permit, object, buffer.contributors, Some((answer, bytes)));
    }

    /// Writes a recorded partition object again from its contributors' replayed records.
    async fn write_rebuild(&mut self, rebuild: Rebuild) {
        let (meta, records, bytes, holders) = rebuild.into_object();
        if holders.is_empty() {
            return;
        }
        let Ok(permit) = self.uploads.clone().acquire_owned().await else {
            return;
        };
        // Its flush entry is in the journal already.
        self.spawn_partition_write(permit, (meta.plan, records, bytes), holders, None);
    }

    /// Writes a partition object and reports it to the batcher. `journaled`: its flush entry,
    /// queued in the journal, which must be durable first (`None`: recorded before a restart).
    fn spawn_partition_write(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        (plan, records, bytes): (ObjectPlan, Vec<Bytes>, u64),
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
                    durable(&shared, &ops, answer, resend).await
                }
                None => true,
            };
            let landed = durable_entry && write_records(&shared, plan, records, bytes).await;
            let _ = events.send(Event::Flushed {
                contributors,
                bytes,
                landed,
            });
            drop(permit);
        });
    }

    /// A recorded partition object that cannot be completed in this run: its contributors
    /// stay pending, and the next start tries again.
    async fn abandon_rebuild(&mut self, rebuild: Rebuild) {
        tracing::warn!(stream = %self.shared.name, key = %rebuild.meta.plan.key, "partition object left for the next start: not all of its records were replayed");
        self.holding = true;
        self.shared.ctx.memory.release(rebuild.bytes());
        for c in rebuild.holders() {
            self.release_hold(c, false).await;
        }
    }

    fn send_flushed(&self, contributors: Vec<Position>, bytes: u64, landed: bool) {
        let _ = self.events_tx.send(Event::Flushed {
            contributors,
            bytes,
            landed,
        });
    }

    /// Re-delivers batches sealed before a restart under their recorded keys, and buffers
    /// the records that were never sealed.
    async fn resume(&mut self, replay: Replay) {
        let pending: HashSet<Position> = replay.pending_seals.iter().map(|s| s.start).collect();
        let (replayed, unreadable) = Replayed::new(&replay.flushes, &pending);
        if unreadable > 0 {
            // Which objects hold which records is unknown: keep everything in the journal.
            self.holding = true;
            tracing::error!(stream = %self.shared.name, unreadable, "unreadable flush entries in the journal; records stay there");
        }
        self.replayed = replayed;
        let mut records = replay.records.into_iter().peekable();
        for seal in replay.pending_seals {
            // Seals are written in position order, so no record should precede a pending seal
            // unsealed; if one does, it becomes a batch of its own rather than being dropped.
            while let Some(r) = records.next_if(|r| r.position < seal.start) {
                self.shared.ctx.memory.force_reserve(r.data.len() as u64);
                self.push(r.position, r.arrival_ms, r.data);
            }
            self.seal_open().await;
            let mut batch = Batch {
                start: seal.start,
                end: seal.end,
                records: Vec::new(),
                arrivals: Vec::new(),
                bytes: 0,
                oldest_ms: u64::MAX,
            };
            while let Some(r) = records.next_if(|r| r.position < seal.end) {
                batch.bytes += r.data.len() as u64;
                batch.oldest_ms = batch.oldest_ms.min(r.arrival_ms);
                batch.records.push(r.data);
                batch.arrivals.push(r.arrival_ms);
            }
            self.next = self.next.max(seal.end);
            let complete = batch.records.len() as u64 == seal.end.0 - seal.start.0;
            match super::entries::decode_seal(&seal.meta) {
                // Records of a sealed batch are only released after its commit is durable;
                // if some are missing anyway, re-uploading would overwrite a complete object
                // with a partial one under the same key.
                Ok(plan) if !complete => {
                    tracing::error!(
                        stream = %self.shared.name,
                        start = %seal.start,
                        key = %plan.key,
                        "pending seal with records missing from the journal; not re-uploaded"
                    );
                    for rebuild in self.replayed.failed(seal.start) {
                        self.abandon_rebuild(rebuild).await;
                    }
                }
                Ok(plan) => {
                    self.shared.ctx.memory.force_reserve(batch.bytes);
                    self.dispatch(batch, plan, false).await;
                }
                Err(e) => {
                    // Keep the journal from releasing these records; an operator can recover them.
                    self.holding = true;
                    for rebuild in self.replayed.failed(seal.start) {
                        self.abandon_rebuild(rebuild).await;
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
            self.shared.ctx.memory.force_reserve(r.data.len() as u64);
            self.push(r.position, r.arrival_ms, r.data);
            if self.open.bytes >= self.seal_threshold() {
                self.seal_open().await;
            }
        }
        self.publish_gauges();
    }

    async fn accept(&mut self, appended: Appended) {
        let limit = self.seal_threshold();
        let mut position = appended.first;
        for data in appended.records {
            self.push(position, appended.arrival_ms, data);
            position = position.next();
            if self.open.bytes >= limit {
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

    fn push(&mut self, position: Position, arrival_ms: u64, data: Bytes) {
        let open = &mut self.open;
        if open.start.is_none() {
            open.start = Some(position);
            open.oldest_ms = arrival_ms;
            let waited = Duration::from_millis(super::now_ms().saturating_sub(arrival_ms));
            let (_, interval) = partitions::intake_hints(&self.definition.destination);
            open.deadline = Some(Instant::now() + interval.saturating_sub(waited));
        }
        open.bytes += data.len() as u64;
        open.records.push(data);
        open.arrivals.push(arrival_ms);
        self.next = position.next();
    }

    async fn seal_open(&mut self) {
        let Some(start) = self.open.start else {
            return;
        };
        let open = std::mem::take(&mut self.open);
        let batch = Batch {
            start,
            end: self.next,
            records: open.records,
            arrivals: open.arrivals,
            bytes: open.bytes,
            oldest_ms: open.oldest_ms,
        };
        let plan = self.plan(&batch);
        self.dispatch(batch, plan, true).await;
        self.publish_gauges();
    }

    /// Names the object. The name is recorded in the seal, so a replay reuses it exactly.
    /// A processed batch becomes several objects: its plan records their common layout.
    fn plan(&self, batch: &Batch) -> ObjectPlan {
        let def = &self.definition;
        let dest = &def.destination;
        let at: DateTime<Utc> =
            DateTime::from_timestamp_millis(batch.oldest_ms as i64).unwrap_or_default();
        let unique = unique_id(self.shared.incarnation, batch.start);
        if dest.processing.is_some() || dest.dynamic_partitioning || dest.conversion.is_some() {
            let rng = &mut rand::rng();
            let buffered = dest.dynamic_partitioning;
            return ObjectPlan {
                bucket: dest.bucket.as_str().to_owned(),
                key: prefix::object_name("", def.name.as_str(), def.version, at, &unique),
                compression: dest.compression,
                layout: Some(Layout {
                    // Partition buffers draw their random strings when they are written.
                    prefix: if buffered {
                        dest.prefix.partition_pieces(at)
                    } else {
                        dest.prefix.render_pieces(at, rng)
                    },
                    buffered,
                    error_prefix: dest.error_output_prefix.render_pieces(at, rng),
                    at_ms: batch.oldest_ms,
                    version: def.version,
                    settings: SealedSettings {
                        processing: dest.processing.clone(),
                        dynamic_partitioning: dest.dynamic_partitioning,
                        transform_sha256: def.transform.as_ref().map(|m| m.sha256().to_owned()),
                        conversion: dest.conversion.clone(),
                    },
                }),
                format: None,
            };
        }
        let rendered = dest.prefix.render(at, None, &mut rand::rng());
        let key = format!(
            "{}{}",
            prefix::object_name(&rendered, def.name.as_str(), def.version, at, &unique),
            dest.compression.suffix()
        );
        ObjectPlan {
            bucket: dest.bucket.as_str().to_owned(),
            key,
            compression: dest.compression,
            layout: None,
            format: None,
        }
    }

    /// Starts delivering a batch once an upload slot is free.
    async fn dispatch(&mut self, batch: Batch, plan: ObjectPlan, needs_seal: bool) {
        let permit = match self.uploads.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => return,
        };
        self.in_flight
            .insert(batch.start, (batch.oldest_ms, batch.bytes));
        let buffered = plan.layout.as_ref().is_some_and(|l| l.buffered);
        if buffered {
            self.holds.insert(
                batch.start,
                Holds {
                    pending: 1,
                    processed: false,
                    abandoned: false,
                },
            );
        }
        let seal = if needs_seal {
            let meta = match super::entries::encode_seal(&plan) {
                Ok(meta) => meta,
                Err(e) => {
                    // Not expected (strings and numbers); never written as an empty seal.
                    tracing::error!(stream = %self.shared.name, error = %e, "seal not written; its records stay in the journal");
                    self.in_flight.remove(&batch.start);
                    self.holds.remove(&batch.start);
                    self.holding = true;
                    return;
                }
            };
            let seal = Seal {
                start: batch.start,
                end: batch.end,
                meta,
            };
            let (reply, answer) = oneshot::channel();
            let op = JournalOp::Seal {
                seal: seal.clone(),
                reply,
            };
            // Sent from here rather than from the upload task so seals reach the journal in
            // position order. The journal thread never waits on this task, so this cannot deadlock.
            if self.ops.send(op).await.is_err() {
                // The journal thread is gone: nothing can be sealed; keep what it holds.
                self.in_flight.remove(&batch.start);
                self.holds.remove(&batch.start);
                self.holding = true;
                return;
            }
            Some((seal, answer))
        } else {
            None
        };
        let shared = self.shared.clone();
        let ops = self.ops.clone();
        let events = self.events_tx.clone();
        let definition = self.definition.clone();
        self.shared.ctx.tracker.spawn(async move {
            let start = batch.start;
            let landed = deliver(&shared, &ops, batch, plan, seal, definition, &events).await;
            // A partitioned batch is committed by the batcher, once its partitions are written.
            if landed && !buffered {
                let _ = ops.send(JournalOp::Commit { start }).await;
            }
            let _ = events.send(Event::Delivered(Delivered { start, landed }));
            drop(permit);
        });
    }

    fn landed(&mut self, done: Delivered) {
        if let Some((_, bytes)) = self.in_flight.remove(&done.start) {
            self.shared.ctx.memory.release(bytes);
        }
        self.holding |= !done.landed;
        if self.holding {
            self.publish_gauges();
            return;
        }
        let low = [self.in_flight.keys().next().copied(), self.open.start]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next);
        // Best effort: a skipped release is covered by the next one.
        let _ = self.ops.try_send(JournalOp::Release { low });
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
            .set((self.open.bytes + in_flight_bytes) as i64);
        let oldest = self
            .in_flight
            .values()
            .map(|(ms, _)| *ms)
            .chain(self.open.start.map(|_| self.open.oldest_ms))
            .min()
            .unwrap_or(0);
        self.shared
            .oldest_pending_ms
            .store(oldest, Ordering::Release);
    }
}

/// Seal (unless replaying one), encode, upload. Returns false only when shutdown abandoned the
/// batch; its seal stays pending in the journal and the next start re-delivers it.
async fn deliver(
    shared: &Arc<Shared>,
    ops: &mpsc::Sender<JournalOp>,
    batch: Batch,
    mut plan: ObjectPlan,
    seal: Option<(Seal, JournalAnswer)>,
    definition: Arc<StreamDefinition>,
    events: &mpsc::UnboundedSender<Event>,
) -> bool {
    if let Some((seal, answer)) = seal {
        let resend = move |reply| JournalOp::Seal {
            seal: seal.clone(),
            reply,
        };
        if !durable(shared, ops, answer, resend).await {
            return false;
        }
    }
    match plan.layout.take() {
        Some(layout) if layout.buffered => {
            deliver_partitioned(shared, batch, plan, layout, definition, events).await
        }
        Some(layout) => deliver_processed(shared, batch, plan, layout, definition).await,
        None => write_records(shared, plan, batch.records, batch.bytes).await,
    }
}

/// Waits until a journal entry the batcher queued (in order) is durable, queueing it again
/// after a failed write. False when shutdown gave up first.
async fn durable(
    shared: &Shared,
    ops: &mpsc::Sender<JournalOp>,
    mut answer: JournalAnswer,
    op: impl Fn(oneshot::Sender<Result<(), String>>) -> JournalOp,
) -> bool {
    let ctx = &shared.ctx;
    let mut delay = ctx.upload.retry_initial;
    loop {
        match answer.await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::error!(stream = %shared.name, error = %e, "journal write failed; retrying")
            }
            Err(_) => return false,
        }
        if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
            return false;
        }
        let (reply, next) = oneshot::channel();
        if ops.send(op(reply)).await.is_err() {
            return false;
        }
        answer = next;
    }
}

/// Encodes records as one object and writes it (a plain batch, or a partition buffer).
async fn write_records(shared: &Shared, plan: ObjectPlan, records: Vec<Bytes>, bytes: u64) -> bool {
    let ctx = &shared.ctx;
    let count = records.len() as u64;
    let level = ctx.upload.gzip_level;
    let mut delay = ctx.upload.retry_initial;
    // Encoding JSON lines fails only if something is badly wrong (a panic): retried with the
    // uploads' backoff for as long as it takes, counted and logged, never left behind.
    let body = loop {
        let (compression, format) = (plan.compression, plan.format.clone());
        let attempt = records.clone();
        let encoded = in_slot(shared, &ctx.encode_slots, move || {
            Payload::of(compression, format.as_ref(), level, attempt)
        });
        if let Some(body) = encoded.await {
            break body;
        }
        shared.metrics.delivery_failure("encode");
        if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
            return false;
        }
    };
    let object = Output {
        plan,
        body,
        records: count,
        payload_bytes: bytes,
        error_output: None,
    };
    write_object(shared, object).await
}

/// Runs `work` on a blocking thread once one of `slots` is free. None when it failed (logged;
/// the batch stays in the journal).
async fn in_slot<T: Send + 'static>(
    shared: &Shared,
    slots: &Arc<Semaphore>,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Option<T> {
    // The semaphores are never closed.
    let slot = slots.clone().acquire_owned().await.ok()?;
    let done = tokio::task::spawn_blocking(move || {
        let out = work();
        drop(slot);
        out
    })
    .await;
    match done {
        Ok(Ok(out)) => Some(out),
        Ok(Err(e)) => {
            tracing::error!(stream = %shared.name, error = %e, "encoding failed; batch left in the journal");
            None
        }
        Err(e) => {
            tracing::error!(stream = %shared.name, error = %e, "encoder task failed; batch left in the journal");
            None
        }
    }
}

/// Uploads one object until it lands (true, counted) or shutdown abandons it (false).
async fn write_object(shared: &Shared, object: Output) -> bool {
    let outcome = match object.body {
        Payload::Parquet(conversion, records) => {
            let slots = &shared.ctx.encode_slots;
            sink::upload_streamed(shared, &object.plan, || {
                encode_parquet(slots.clone(), conversion.clone(), records.clone())
            })
            .await
        }
        Payload::Ready(body) => sink::upload(shared, &object.plan, body).await,
    };
    match outcome {
        UploadOutcome::Landed {
            bytes: object_bytes,
        } => {
            let m = &shared.metrics;
            m.objects_written.inc();
            m.object_bytes.inc_by(object_bytes);
            match object.error_output {
                None => {
                    m.delivered_records.inc_by(object.records);
                    m.delivered_bytes.inc_by(object.payload_bytes);
                }
                Some(t) => m.error_records(t.as_str(), object.records),
            }
            tracing::debug!(stream = %shared.name, key = %object.plan.key, records = object.records, bytes = object_bytes, "object written");
            true
        }
        UploadOutcome::Abandoned => {
            tracing::warn!(stream = %shared.name, key = %object.plan.key, "upload abandoned at shutdown; the journal will deliver it on the next start");
            false
        }
    }
}

/// Starts encoding normalized records as Parquet, in an encode slot, for one upload attempt.
fn encode_parquet(
    slots: Arc<Semaphore>,
    conversion: crate::catalog::conversion::Conversion,
    records: Arc<Vec<Bytes>>,
) -> sink::Chunks {
    // Two row groups in flight at most: the encoder waits for the upload.
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        // The semaphore is never closed.
        let Ok(slot) = slots.acquire_owned().await else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let result = encode::parquet::encode_to(&conversion, &records, |chunk| {
                tx.blocking_send(Ok(sink::Chunk::Data(chunk)))
                    .map_err(|_| std::io::Error::other("the upload stopped"))
            });
            let _ = tx.blocking_send(result.map(|()| sink::Chunk::End));
            drop(slot);
        })
        .await;
    });
    rx
}

/// An object's bytes: encoded already, or Parquet encoded while it uploads.
enum Payload {
    Ready(encode::Body),
    Parquet(crate::catalog::conversion::Conversion, Arc<Vec<Bytes>>),
}

impl Payload {
    /// Records of a data object: Parquet when `format` says so (encoded later, while it
    /// uploads), else JSON lines encoded now with `compression`.
    fn of(
        compression: crate::catalog::definition::Compression,
        format: Option<&crate::catalog::conversion::Conversion>,
        gzip_level: u32,
        records: Vec<Bytes>,
    ) -> std::io::Result<Payload> {
        Ok(match format {
            Some(conversion) => Payload::Parquet(conversion.clone(), Arc::new(records)),
            None => Payload::Ready(encode::encode(compression, gzip_level, records)?),
        })
    }
}

/// One object of a processed batch, encoded and named.
struct Output {
    plan: ObjectPlan,
    body: Payload,
    records: u64,
    payload_bytes: u64,
    error_output: Option<ErrorOutput>,
}

/// Runs the stream's processing on a sealed batch and writes its objects: one per partition,
/// one per error output type. All must land before the batch is committed; a replay writes
/// the same keys again (for a deterministic transform, the same objects).
async fn deliver_processed(
    shared: &Arc<Shared>,
    batch: Batch,
    plan: ObjectPlan,
    layout: Layout,
    definition: Arc<StreamDefinition>,
) -> bool {
    let ctx = &shared.ctx;
    let job_shared = shared.clone();
    let unprocessed = Unprocessed::of(&batch, &plan, &layout);
    let prepared = in_slot(shared, &ctx.process_slots, move || {
        prepare(&job_shared, batch, &plan, &layout, &definition)
    });
    let objects = match prepared.await {
        Some(objects) => {
            drop(unprocessed);
            objects
        }
        None => match unprocessed.objects(shared).await {
            Some(objects) => objects,
            None => return false,
        },
    };
    write_all(shared, objects).await
}

/// What it takes to deliver a batch without processing it: after processing failed on it (a
/// panic, an encoding error), its records go to `processing-failed` as they were received, so
/// a record that broke processing once can never break it again, here or on a replay.
struct Unprocessed {
    start: Position,
    records: Vec<Bytes>,
    arrivals: Vec<u64>,
    plan: ObjectPlan,
    layout: Layout,
}

impl Unprocessed {
    fn of(batch: &Batch, plan: &ObjectPlan, layout: &Layout) -> Unprocessed {
        Unprocessed {
            start: batch.start,
            records: batch.records.clone(),
            arrivals: batch.arrivals.clone(),
            plan: plan.clone(),
            layout: layout.clone(),
        }
    }

    /// The batch's error objects, retried with backoff until encoded; None if shutdown gave up.
    async fn objects(self, shared: &Arc<Shared>) -> Option<Vec<Output>> {
        let ctx = &shared.ctx;
        shared.metrics.delivery_failure("process");
        tracing::error!(stream = %shared.name, start = %self.start, records = self.records.len(), "processing failed on this batch; its records go to processing-failed unprocessed");
        let mut delay = ctx.upload.retry_initial;
        let this = Arc::new(self);
        loop {
            let (job_shared, job) = (shared.clone(), this.clone());
            let built = in_slot(shared, &ctx.encode_slots, move || job.encode(&job_shared));
            if let Some(objects) = built.await {
                return Some(objects);
            }
            shared.metrics.delivery_failure("encode");
            if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
                return None;
            }
        }
    }

    fn encode(&self, shared: &Shared) -> std::io::Result<Vec<Output>> {
        let lines = self
            .records
            .iter()
            .zip(&self.arrivals)
            .enumerate()
            .map(|(i, (data, arrival_ms))| {
                let record = process::Record {
                    id: shared.record_id(Position(self.start.0 + i as u64)),
                    arrival_ms: *arrival_ms,
                    data: data.clone(),
                };
                process::error_record(
                    &record,
                    1,
                    process::codes::PROCESSING_CRASHED,
                    "processing this batch failed (see the daemon's log); the record is here as it was received",
                    None,
                )
            })
            .collect();
        let errors = vec![(ErrorOutput::ProcessingFailed, lines)];
        error_objects(shared, self.start, &self.plan, &self.layout, errors)
    }
}

/// The component a batch was sealed with: the stream's current one if it is the same, else
/// that compilation from the cache; the current one (with a warning) if it is gone.
fn sealed_transform(
    shared: &Shared,
    sealed: &SealedSettings,
    definition: &StreamDefinition,
) -> Option<Arc<crate::transform::Module>> {
    let digest = sealed.transform_sha256.as_deref()?;
    if let Some(current) = &definition.transform
        && current.sha256() == digest
    {
        return Some(current.clone());
    }
    let name = sealed
        .processing
        .as_ref()
        .and_then(|p| p.lambda.as_ref())
        .map_or(digest, |l| l.arn.as_str());
    match shared.ctx.transforms.load_compiled(digest, name) {
        Some(m) => Some(m),
        None => {
            tracing::warn!(stream = %shared.name, sha256 = digest, "the transform this batch was sealed with is no longer in the compile cache; processing it with the current one");
            definition.transform.clone()
        }
    }
}

/// Error objects get ids of their own, so one never shares a key with a data object even if
/// a partition value renders the data prefix equal to an error prefix.
const ERROR_OBJECT_BASE: u64 = 1 << 32;
/// Partition buffers' objects: named after their first contributing batch, tagged apart.
const PARTITION_OBJECT_BASE: u64 = 2 << 32;

fn prepare(
    shared: &Shared,
    batch: Batch,
    plan: &ObjectPlan,
    layout: &Layout,
    definition: &StreamDefinition,
) -> std::io::Result<Vec<Output>> {
    let start = batch.start;
    let processed = process_batch(shared, batch, layout, definition);
    let format = sealed_conversion(layout);
    let level = shared.ctx.upload.gzip_level;
    let mut objects = Vec::new();
    for p in processed.partitions {
        // Partitions differ by prefix, so they share the batch's id: a partition's name does
        // not depend on which other partitions the batch happened to have.
        let prefix = partition_prefix(p.prefix, layout);
        let key = object_key(shared, layout.version, layout.at_ms, start, &prefix, 0);
        objects.push(Output {
            plan: ObjectPlan {
                bucket: plan.bucket.clone(),
                key: format!("{key}{}", encode::data_suffix(plan.compression, format)),
                compression: plan.compression,
                layout: None,
                format: format.cloned(),
            },
            records: p.records.len() as u64,
            payload_bytes: p.bytes,
            body: Payload::of(plan.compression, format, level, p.records)?,
            error_output: None,
        });
    }
    objects.extend(error_objects(
        shared,
        start,
        plan,
        layout,
        processed.errors,
    )?);
    Ok(objects)
}

/// Processes a partitioned batch and writes its error objects; its records go back to the
/// batcher by partition, for the partition buffers.
async fn deliver_partitioned(
    shared: &Arc<Shared>,
    batch: Batch,
    plan: ObjectPlan,
    layout: Layout,
    definition: Arc<StreamDefinition>,
    events: &mpsc::UnboundedSender<Event>,
) -> bool {
    let ctx = &shared.ctx;
    let job_shared = shared.clone();
    let (start, oldest_ms) = (batch.start, layout.at_ms);
    let unprocessed = Unprocessed::of(&batch, &plan, &layout);
    let prepared = in_slot(shared, &ctx.process_slots, move || {
        let start = batch.start;
        let processed = process_batch(&job_shared, batch, &layout, &definition);
        let parts: Vec<Part> = processed
            .partitions
            .into_iter()
            .map(|p| Part {
                key: PartKey {
                    version: layout.version,
                    bucket: plan.bucket.clone(),
                    compression: plan.compression,
                    prefix: partition_prefix(p.prefix, &layout),
                    format: sealed_conversion(&layout).cloned(),
                },
                records: p.records,
                bytes: p.bytes,
            })
            .collect();
        let errors = error_objects(&job_shared, start, &plan, &layout, processed.errors)?;
        Ok((parts, errors))
    });
    let (parts, errors) = match prepared.await {
        Some(prepared) => {
            drop(unprocessed);
            prepared
        }
        None => match unprocessed.objects(shared).await {
            Some(errors) => (Vec::new(), errors),
            None => return false,
        },
    };
    let _ = events.send(Event::Processed {
        start,
        oldest_ms,
        parts,
    });
    write_all(shared, errors).await
}

/// Writes objects side by side; true when all landed.
async fn write_all(shared: &Shared, objects: Vec<Output>) -> bool {
    let landed: Vec<bool> = futures::stream::iter(objects)
        .map(|object| write_object(shared, object))
        .buffer_unordered(shared.ctx.upload.concurrency)
        .collect()
        .await;
    landed.into_iter().all(|l| l)
}

/// Runs the processing a batch was sealed with.
fn process_batch(
    shared: &Shared,
    batch: Batch,
    layout: &Layout,
    definition: &StreamDefinition,
) -> process::Processed {
    let records: Vec<process::Record> = batch
        .records
        .into_iter()
        .zip(batch.arrivals)
        .enumerate()
        .map(|(i, (data, arrival_ms))| process::Record {
            id: shared.record_id(Position(batch.start.0 + i as u64)),
            arrival_ms,
            data,
        })
        .collect();
    let sealed = &layout.settings;
    let (processing, partitioned) = (sealed.processing.as_ref(), sealed.dynamic_partitioning);
    let transform = sealed_transform(shared, sealed, definition);
    let converter = sealed_conversion(layout).map(crate::encode::parquet::Converter::new);
    let job = process::Job {
        processing,
        transform: transform.as_deref(),
        converter: converter.as_ref(),
        partition_by: partitioned.then_some(&layout.prefix[..]),
        max_partitions: shared.ctx.max_active_partitions,
        queries: &shared.ctx.queries,
        metrics: &shared.metrics,
    };
    // A crash of processing itself (a bug, not a record's fault).
    fail::fail_point!("process-batch");
    process::run(&job, &records)
}

/// One object per error output type, named after the batch.
fn error_objects(
    shared: &Shared,
    start: Position,
    plan: &ObjectPlan,
    layout: &Layout,
    errors: Vec<(ErrorOutput, Vec<Bytes>)>,
) -> std::io::Result<Vec<Output>> {
    let level = shared.ctx.upload.gzip_level;
    let mut objects = Vec::new();
    for (t, lines) in errors {
        let prefix = prefix::fill(&layout.error_prefix, &[], &[], t.as_str());
        objects.push(Output {
            plan: ObjectPlan {
                bucket: plan.bucket.clone(),
                key: format!(
                    "{}{}",
                    object_key(
                        shared,
                        layout.version,
                        layout.at_ms,
                        start,
                        &prefix,
                        ERROR_OBJECT_BASE + t as u64
                    ),
                    plan.compression.suffix()
                ),
                compression: plan.compression,
                format: None,
                layout: None,
            },
            records: lines.len() as u64,
            payload_bytes: lines.iter().map(|l| l.len() as u64).sum(),
            body: Payload::Ready(encode::encode(plan.compression, level, lines)?),
            error_output: Some(t),
        });
    }
    Ok(objects)
}

/// A partition's rendered prefix; the stream's prefix for the one partition of a stream
/// without dynamic partitioning.
fn partition_prefix(rendered: Option<String>, layout: &Layout) -> String {
    rendered.unwrap_or_else(|| prefix::fill(&layout.prefix, &[], &[], ""))
}

/// The record format conversion a processed batch was sealed with.
fn sealed_conversion(layout: &Layout) -> Option<&crate::catalog::conversion::Conversion> {
    layout.settings.conversion.as_ref()
}

/// The key of an object of processed records, without its suffix: its prefix, then Firehose's
/// name (stream `version`, the oldest record's time `at_ms`) with an id from the position of
/// the batch it is named after and `index` (which object of that batch).
fn object_key(
    shared: &Shared,
    version: u64,
    at_ms: u64,
    start: Position,
    prefix: &str,
    index: u64,
) -> String {
    let at: DateTime<Utc> = DateTime::from_timestamp_millis(at_ms as i64).unwrap_or_default();
    let unique = unique_id(shared.incarnation.wrapping_add(index), start);
    prefix::object_name(prefix, shared.name.as_str(), version, at, &unique)
}

/// UUID-shaped and derived from the journal position, so a replayed batch gets the same name.
fn unique_id(incarnation: u64, start: Position) -> String {
    let v = ((incarnation as u128) << 64) | start.0 as u128;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (v >> 96) as u32,
        (v >> 80) as u16,
        (v >> 64) as u16,
        (v >> 48) as u16,
        v & 0xffff_ffff_ffff
    )
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

    #[test]
    fn unique_ids_are_uuid_shaped_and_positional() {
        let a = unique_id(0x0123_4567_89ab_cdef, Position(1));
        assert_eq!(a, "01234567-89ab-cdef-0000-000000000001");
        assert_ne!(a, unique_id(0x0123_4567_89ab_cdef, Position(2)));
    }
}
