//! The stream's pipeline task: fills the open buffer with durable records, seals it when it
//! reaches the size hint or its oldest record reaches the interval, and runs each sealed batch
//! through seal -> encode -> upload -> commit. End of input seals whatever is open and waits for
//! every upload before stopping the journal.

use std::collections::BTreeMap;
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
    delivered_tx: mpsc::UnboundedSender<Delivered>,
    delivered_rx: mpsc::UnboundedReceiver<Delivered>,
}

impl Batcher {
    pub fn new(
        shared: Arc<Shared>,
        ops: mpsc::Sender<JournalOp>,
        definition_rx: watch::Receiver<Arc<StreamDefinition>>,
        next: Position,
    ) -> Self {
        let definition = definition_rx.borrow().clone();
        let (delivered_tx, delivered_rx) = mpsc::unbounded_channel();
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
            delivered_tx,
            delivered_rx,
        }
    }

    pub async fn run(mut self, replay: Replay, mut input: mpsc::UnboundedReceiver<Appended>) {
        self.resume(replay).await;
        loop {
            let deadline = self.open.deadline;
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
                Some(done) = self.delivered_rx.recv() => self.landed(done),
                _ = sleep_until(deadline), if deadline.is_some() => self.seal_open().await,
                Ok(()) = self.definition_rx.changed() => {
                    // Records buffered under the old settings leave under them.
                    self.seal_open().await;
                    self.definition = self.definition_rx.borrow_and_update().clone();
                }
            }
        }
        self.seal_open().await;
        while !self.in_flight.is_empty() {
            match self.delivered_rx.recv().await {
                Some(done) => self.landed(done),
                None => break,
            }
        }
        let _ = self.ops.send(JournalOp::Stop).await;
    }

    /// Re-delivers batches sealed before a restart under their recorded keys, and buffers
    /// the records that were never sealed.
    async fn resume(&mut self, replay: Replay) {
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
            match ObjectPlan::from_meta(&seal.meta) {
                // Records of a sealed batch are only released after its commit is durable;
                // if some are missing anyway, re-uploading would overwrite a complete object
                // with a partial one under the same key.
                Ok(plan) if !complete => tracing::error!(
                    stream = %self.shared.name,
                    start = %seal.start,
                    key = %plan.key,
                    "pending seal with records missing from the journal; not re-uploaded"
                ),
                Ok(plan) => {
                    self.shared.ctx.memory.force_reserve(batch.bytes);
                    self.dispatch(batch, plan, false).await;
                }
                Err(e) => {
                    // Keep the journal from releasing these records; an operator can recover them.
                    self.holding = true;
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
            if self.open.bytes >= self.definition.destination.buffer_bytes {
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
        self.publish_gauges();
    }

    fn seal_threshold(&self) -> u64 {
        let hint = self.definition.destination.buffer_bytes;
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
            let interval = self.definition.destination.buffer_interval;
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
        if dest.processing.is_some() || dest.dynamic_partitioning {
            let rng = &mut rand::rng();
            return ObjectPlan {
                bucket: dest.bucket.as_str().to_owned(),
                key: prefix::object_name("", def.name.as_str(), def.version, at, &unique),
                compression: dest.compression,
                layout: Some(Layout {
                    prefix: dest.prefix.render_pieces(at, rng),
                    error_prefix: dest.error_output_prefix.render_pieces(at, rng),
                    at_ms: batch.oldest_ms,
                    version: def.version,
                    settings: Some(SealedSettings {
                        processing: dest.processing.clone(),
                        dynamic_partitioning: dest.dynamic_partitioning,
                        transform_sha256: def.transform.as_ref().map(|m| m.sha256().to_owned()),
                    }),
                }),
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
        let seal = if needs_seal {
            let seal = Seal {
                start: batch.start,
                end: batch.end,
                meta: plan.to_meta(),
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
                self.holding = true;
                return;
            }
            Some((seal, answer))
        } else {
            None
        };
        let shared = self.shared.clone();
        let ops = self.ops.clone();
        let delivered = self.delivered_tx.clone();
        let definition = self.definition.clone();
        self.shared.ctx.tracker.spawn(async move {
            let start = batch.start;
            let landed = deliver(&shared, &ops, batch, plan, seal, definition).await;
            if landed {
                let _ = ops.send(JournalOp::Commit { start }).await;
            }
            let _ = delivered.send(Delivered { start, landed });
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
        let in_flight_bytes: u64 = self.in_flight.values().map(|(_, b)| b).sum();
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
    seal: Option<(Seal, oneshot::Receiver<Result<(), String>>)>,
    definition: Arc<StreamDefinition>,
) -> bool {
    let ctx = &shared.ctx;
    if let Some((seal, mut answer)) = seal {
        // The first attempt was queued by the batcher, in position order; retries come from here.
        let mut delay = ctx.upload.retry_initial;
        loop {
            match answer.await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::error!(stream = %shared.name, error = %e, "journal seal failed; retrying")
                }
                Err(_) => return false,
            }
            if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
                return false;
            }
            let (reply, next) = oneshot::channel();
            if ops
                .send(JournalOp::Seal {
                    seal: seal.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                return false;
            }
            answer = next;
        }
    }

    if let Some(layout) = plan.layout.take() {
        return deliver_processed(shared, batch, plan, layout, definition).await;
    }
    let records = batch.records.len() as u64;
    let payload_bytes = batch.bytes;
    let level = ctx.upload.gzip_level;
    let compression = plan.compression;
    let encoded = in_slot(shared, &ctx.encode_slots, move || {
        encode::encode(compression, level, batch.records)
    });
    let Some(body) = encoded.await else {
        return false;
    };
    let object = Output {
        plan,
        body,
        records,
        payload_bytes,
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
    let object_bytes = encode::len(&object.body);
    match sink::upload(shared, &object.plan, object.body).await {
        UploadOutcome::Landed => {
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

/// One object of a processed batch, encoded and named.
struct Output {
    plan: ObjectPlan,
    body: encode::Body,
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
    let prepared = in_slot(shared, &ctx.process_slots, move || {
        prepare(&job_shared, batch, &plan, &layout, &definition)
    });
    let Some(objects) = prepared.await else {
        return false;
    };
    let landed: Vec<bool> = futures::stream::iter(objects)
        .map(|object| write_object(shared, object))
        .buffer_unordered(ctx.upload.concurrency)
        .collect()
        .await;
    landed.into_iter().all(|l| l)
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

fn prepare(
    shared: &Shared,
    batch: Batch,
    plan: &ObjectPlan,
    layout: &Layout,
    definition: &StreamDefinition,
) -> std::io::Result<Vec<Output>> {
    let dest = &definition.destination;
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
    // The settings the batch was sealed with (the stream's current ones for seals written
    // before they were recorded).
    let (processing, partitioned, transform) = match &layout.settings {
        None => (
            dest.processing.as_ref(),
            dest.dynamic_partitioning,
            definition.transform.clone(),
        ),
        Some(sealed) => (
            sealed.processing.as_ref(),
            sealed.dynamic_partitioning,
            sealed_transform(shared, sealed, definition),
        ),
    };
    let job = process::Job {
        processing,
        transform: transform.as_deref(),
        partition_by: partitioned.then_some(&layout.prefix[..]),
        max_partitions: shared.ctx.max_active_partitions,
        metrics: &shared.metrics,
    };
    let processed = process::run(&job, &records);
    let at: DateTime<Utc> =
        DateTime::from_timestamp_millis(layout.at_ms as i64).unwrap_or_default();
    let name = |prefix: &str, index: u64| {
        let unique = unique_id(shared.incarnation.wrapping_add(index), batch.start);
        format!(
            "{}{}",
            prefix::object_name(prefix, shared.name.as_str(), layout.version, at, &unique),
            plan.compression.suffix()
        )
    };
    let level = shared.ctx.upload.gzip_level;
    let mut objects = Vec::new();
    for p in processed.partitions {
        // Partitions differ by prefix, so they share the batch's id: a partition's name does
        // not depend on which other partitions the batch happened to have.
        let prefix = p
            .prefix
            .unwrap_or_else(|| prefix::fill(&layout.prefix, &[], &[], ""));
        objects.push(Output {
            plan: ObjectPlan {
                bucket: plan.bucket.clone(),
                key: name(&prefix, 0),
                compression: plan.compression,
                layout: None,
            },
            records: p.records.len() as u64,
            payload_bytes: p.bytes,
            body: encode::encode(plan.compression, level, p.records)?,
            error_output: None,
        });
    }
    for (t, lines) in processed.errors {
        let prefix = prefix::fill(&layout.error_prefix, &[], &[], t.as_str());
        objects.push(Output {
            plan: ObjectPlan {
                bucket: plan.bucket.clone(),
                key: name(&prefix, ERROR_OBJECT_BASE + t as u64),
                compression: plan.compression,
                layout: None,
            },
            records: lines.len() as u64,
            payload_bytes: lines.iter().map(|l| l.len() as u64).sum(),
            body: encode::encode(plan.compression, level, lines)?,
            error_output: Some(t),
        });
    }
    Ok(objects)
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
