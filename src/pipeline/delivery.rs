//! Delivery of sealed work: make its journal entry durable, process (transform, partition),
//! encode, upload, and report the outcome to the stream's batcher. Each object is complete or
//! absent: a streamed body ends with an explicit end marker, and an encoder that fails or
//! panics aborts the upload. A delivery ends landed, or abandoned at shutdown (its records stay
//! in the journal for the next start); a failure is retried with the uploads' capped backoff
//! for as long as it takes, logged and counted, never left behind.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::definition::StreamDefinition;
use crate::definition::prefix;
use crate::encode;
use crate::journal::{Position, Seal};
use crate::process::{self, ErrorOutput};
use crate::sink::{self, Layout, ObjectPlan, SealedSettings, UploadOutcome};

use super::Shared;
use super::budget::Reservation;
use super::group_commit::{Control, JournalOp, JournalWriteFailed};
use super::intake::Batch;
use super::naming::{self, ERROR_OBJECT_BASE};
use super::partitions::{Part, PartKey};

/// Whether a journal entry the batcher queued was written (and synced).
pub type JournalAnswer = oneshot::Receiver<Result<(), JournalWriteFailed>>;

/// What delivery tasks report to the batcher.
pub enum Event {
    /// A batch's own work ended: its object, or for a partitioned batch its error objects.
    /// `landed` is false when shutdown abandoned it: it stays pending in the journal. The
    /// memory its records held comes back with it and is given back when the batcher has
    /// taken note, so producers cannot outrun the batcher's bookkeeping (commits, releases).
    Delivered {
        start: Position,
        landed: bool,
        memory: Reservation,
    },
    /// A partitioned batch was processed: its records by partition.
    Processed {
        start: Position,
        oldest_ms: u64,
        parts: Vec<Part>,
    },
    /// A partition object landed, or shutdown abandoned it; with its records' memory.
    Flushed {
        contributors: Vec<Position>,
        landed: bool,
        memory: Reservation,
    },
}

/// Seal (unless replaying one), encode, upload. Returns false only when shutdown abandoned the
/// batch; its seal stays pending in the journal and the next start re-delivers it. Returns
/// the memory of the batch's records that did not move on into partition buffers.
pub async fn deliver(
    shared: &Arc<Shared>,
    ops: &Control,
    mut batch: Batch,
    mut plan: ObjectPlan,
    seal: Option<(Seal, JournalAnswer)>,
    definition: Arc<StreamDefinition>,
    events: &mpsc::UnboundedSender<Event>,
) -> (bool, Reservation) {
    let mut memory = batch.memory.split(u64::MAX);
    if let Some((seal, answer)) = seal {
        let resend = move |reply| JournalOp::Seal {
            seal: seal.clone(),
            reply,
        };
        if !durable(shared, ops, answer, resend).await {
            return (false, memory);
        }
    }
    // The records as received, before any processing, to the backup destination; it lands
    // before the batch can be committed, and a replay writes the same object again.
    if let Some(backup) = plan.backup.take() {
        let kms_key = definition
            .destination
            .backup
            .as_ref()
            .and_then(|b| b.kms_key.as_deref())
            .map(Arc::from);
        if !write_backup(shared, *backup, &batch.records, kms_key).await {
            return (false, memory);
        }
    }
    let landed = match plan.layout.take() {
        Some(layout) if layout.buffered => {
            let batch = (batch, &mut memory);
            deliver_partitioned(shared, batch, plan, layout, definition, events).await
        }
        Some(layout) if definition.destination.iceberg.is_some() => {
            super::iceberg::deliver(shared, batch, plan, layout, definition).await
        }
        Some(layout) => deliver_processed(shared, batch, plan, layout, definition).await,
        None => write_records(shared, plan, batch.records, memory.bytes()).await,
    };
    (landed, memory)
}

/// Waits until a journal entry the batcher queued (in order) is durable, queueing it again
/// after a failed write (or a journal round that failed before answering). False when
/// shutdown gave up first, or the journal writer stopped.
pub async fn durable(
    shared: &Shared,
    ops: &Control,
    mut answer: JournalAnswer,
    op: impl Fn(oneshot::Sender<Result<(), JournalWriteFailed>>) -> JournalOp,
) -> bool {
    let ctx = &shared.ctx;
    let mut delay = ctx.upload.retry_initial;
    loop {
        match answer.await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::error!(stream = %shared.name, error = %e, "journal write failed; retrying")
            }
            Err(_) if ops.is_closed() => return false,
            Err(_) => {
                tracing::error!(stream = %shared.name, "journal round failed before answering; retrying")
            }
        }
        if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
            return false;
        }
        let (reply, next) = oneshot::channel();
        if ops.send(op(reply)).is_err() {
            return false;
        }
        answer = next;
    }
}

/// Encodes records as `plan` says, in an encode slot. Encoding fails only if something is
/// badly wrong (a panic): retried with the uploads' backoff for as long as it takes, counted
/// and logged, never left behind. `None` when shutdown gave up first.
async fn encode_with_retries(
    shared: &Shared,
    plan: &ObjectPlan,
    records: &[Bytes],
) -> Option<Payload> {
    let ctx = &shared.ctx;
    let level = ctx.upload.gzip_level_for(shared.name.as_str());
    let mut delay = ctx.upload.retry_initial;
    loop {
        let (compression, format, key) = (plan.compression, plan.format.clone(), plan.key.clone());
        let attempt = records.to_vec();
        let encoded = in_slot(shared, &ctx.encode_slots, move || {
            Payload::of(compression, format.as_ref(), level, attempt, &key)
        });
        match encoded.await {
            Slot::Done(body) => return Some(body),
            Slot::Failed => {}
            Slot::Abandoned => return None,
        }
        shared.metrics.delivery_failure("encode");
        if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
            return None;
        }
    }
}

/// Encodes records (`bytes` of payload) as one object and writes it (a plain batch, or a
/// partition buffer).
pub async fn write_records(
    shared: &Shared,
    plan: ObjectPlan,
    records: Vec<Bytes>,
    bytes: u64,
) -> bool {
    let count = records.len() as u64;
    let Some(body) = encode_with_retries(shared, &plan, &records).await else {
        return false;
    };
    // The body holds what the upload needs; the records (and the request buffers they share)
    // need not stay alive beside it until it lands. Parquet still encodes from them.
    drop(records);
    let object = Output {
        plan,
        body,
        records: count,
        payload_bytes: bytes,
        error_output: None,
    };
    write_object(shared, object).await
}

/// Writes a batch's backup object: its records as received, with the backup's compression
/// and SSE-KMS key.
async fn write_backup(
    shared: &Shared,
    plan: ObjectPlan,
    records: &[Bytes],
    kms_key: Option<Arc<str>>,
) -> bool {
    let Some(Payload::Ready(body)) = encode_with_retries(shared, &plan, records).await else {
        // Abandoned at shutdown (a backup plan is never Parquet).
        return false;
    };
    let mut uploader = shared.uploader();
    uploader.kms_key = kms_key;
    match sink::upload(&uploader, &plan, body).await {
        UploadOutcome::Landed { bytes } => {
            let m = &shared.metrics;
            m.objects_written.inc();
            m.object_bytes.inc_by(bytes);
            m.backup_records.inc_by(records.len() as u64);
            tracing::debug!(stream = %shared.name, key = %plan.key, records = records.len(), "backup object written");
            true
        }
        UploadOutcome::Abandoned => {
            tracing::warn!(stream = %shared.name, key = %plan.key, "backup upload abandoned at shutdown; the journal will deliver it on the next start");
            false
        }
    }
}

/// How work run in a slot ended.
pub(super) enum Slot<T> {
    Done(T),
    /// It returned an error or panicked (logged).
    Failed,
    /// Shutdown gave up before a slot was free: the work never started.
    Abandoned,
}

/// Runs `work` on a blocking thread once one of `slots` is free, unless shutdown gives up on
/// deliveries first: a backlog waiting for slots then ends at once instead of running batch
/// after batch past the shutdown timeout.
pub(super) async fn in_slot<T: Send + 'static>(
    shared: &Shared,
    slots: &Arc<Semaphore>,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Slot<T> {
    let slot = tokio::select! {
        biased;
        _ = shared.ctx.abandon.cancelled() => return Slot::Abandoned,
        slot = slots.clone().acquire_owned() => match slot {
            Ok(slot) => slot,
            // The semaphores are never closed.
            Err(_) => return Slot::Abandoned,
        },
    };
    let done = tokio::task::spawn_blocking(move || {
        let out = work();
        drop(slot);
        out
    })
    .await;
    match done {
        Ok(Ok(out)) => Slot::Done(out),
        Ok(Err(e)) => {
            tracing::error!(stream = %shared.name, error = %e, "work on a batch failed");
            Slot::Failed
        }
        Err(e) => {
            tracing::error!(stream = %shared.name, error = %e, "work on a batch panicked");
            Slot::Failed
        }
    }
}

/// Uploads one object until it lands (true, counted) or shutdown abandons it (false).
async fn write_object(shared: &Shared, object: Output) -> bool {
    let outcome = match object.body {
        Payload::Parquet(conversion, records) => {
            let slots = &shared.ctx.encode_slots;
            sink::upload_streamed(&shared.uploader(), &object.plan, || {
                encode_parquet(slots.clone(), conversion.clone(), records.clone())
            })
            .await
        }
        Payload::Ready(body) => sink::upload(&shared.uploader(), &object.plan, body).await,
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
    conversion: crate::definition::conversion::Conversion,
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
    Parquet(crate::definition::conversion::Conversion, Arc<Vec<Bytes>>),
}

impl Payload {
    /// Records of a data object: Parquet when `format` says so (encoded later, while it
    /// uploads), else JSON lines encoded now with `compression`.
    fn of(
        compression: crate::definition::Compression,
        format: Option<&crate::definition::conversion::Conversion>,
        gzip_level: u32,
        records: Vec<Bytes>,
        key: &str,
    ) -> std::io::Result<Payload> {
        Ok(match format {
            Some(conversion) => Payload::Parquet(conversion.clone(), Arc::new(records)),
            None => Payload::Ready(encode::encode(compression, gzip_level, records, key)?),
        })
    }
}

/// One object of a processed batch, encoded and named.
pub(super) struct Output {
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
        Slot::Done(objects) => {
            drop(unprocessed);
            objects
        }
        Slot::Failed => match unprocessed.objects(shared).await {
            Some(objects) => objects,
            None => return false,
        },
        Slot::Abandoned => return false,
    };
    write_all(shared, objects).await
}

/// What it takes to deliver a batch without processing it: after processing failed on it (a
/// panic, an encoding error), its records go to `processing-failed` as they were received, so
/// a record that broke processing once can never break it again, here or on a replay.
pub(super) struct Unprocessed {
    start: Position,
    records: Vec<Bytes>,
    arrivals: Vec<u64>,
    plan: ObjectPlan,
    layout: Layout,
}

impl Unprocessed {
    pub(super) fn of(batch: &Batch, plan: &ObjectPlan, layout: &Layout) -> Unprocessed {
        Unprocessed {
            start: batch.start,
            records: batch.records.clone(),
            arrivals: batch.arrivals.clone(),
            plan: plan.clone(),
            layout: layout.clone(),
        }
    }

    /// The batch's error objects, retried with backoff until encoded; None if shutdown gave up.
    pub(super) async fn objects(self, shared: &Arc<Shared>) -> Option<Vec<Output>> {
        let ctx = &shared.ctx;
        shared.metrics.delivery_failure("process");
        tracing::error!(stream = %shared.name, start = %self.start, records = self.records.len(), "processing failed on this batch; its records go to processing-failed unprocessed");
        let mut delay = ctx.upload.retry_initial;
        let this = Arc::new(self);
        loop {
            let (job_shared, job) = (shared.clone(), this.clone());
            let built = in_slot(shared, &ctx.encode_slots, move || job.encode(&job_shared));
            match built.await {
                Slot::Done(objects) => return Some(objects),
                Slot::Failed => {}
                Slot::Abandoned => return None,
            }
            shared.metrics.delivery_failure("encode");
            if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
                return None;
            }
        }
    }

    fn encode(&self, shared: &Shared) -> std::io::Result<Vec<Output>> {
        let ended_ms = super::now_ms();
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
                    ended_ms,
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

fn prepare(
    shared: &Shared,
    batch: Batch,
    plan: &ObjectPlan,
    layout: &Layout,
    definition: &StreamDefinition,
) -> std::io::Result<Vec<Output>> {
    let start = batch.start;
    let namer = shared.namer();
    let processed = process_batch(shared, batch, layout, definition);
    let format = sealed_conversion(layout);
    let level = shared.ctx.upload.gzip_level_for(shared.name.as_str());
    let mut objects = Vec::new();
    for p in processed.partitions {
        // Partitions differ by prefix, so they share the batch's id: a partition's name does
        // not depend on which other partitions the batch happened to have.
        let prefix = naming::partition_prefix(p.prefix, layout);
        let naming = &layout.settings.naming;
        let key = format!(
            "{}{}",
            namer.object_key(layout.version, layout.at_ms, start, &prefix, 0, naming),
            naming.data_suffix(encode::data_suffix(plan.compression, format))
        );
        let (records, bytes) = (p.records.len() as u64, p.bytes);
        let body = Payload::of(plan.compression, format, level, p.records, &key)?;
        objects.push(Output {
            plan: ObjectPlan {
                bucket: plan.bucket.clone(),
                key,
                compression: plan.compression,
                layout: None,
                format: format.cloned(),
                backup: None,
            },
            records,
            payload_bytes: bytes,
            body,
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
    (batch, memory): (Batch, &mut Reservation),
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
        let parts: Vec<(PartKey, Vec<Bytes>, u64)> = processed
            .partitions
            .into_iter()
            .map(|p| {
                let key = PartKey {
                    version: layout.version,
                    bucket: plan.bucket.clone(),
                    compression: plan.compression,
                    prefix: naming::partition_prefix(p.prefix, &layout),
                    format: sealed_conversion(&layout).cloned(),
                    naming: layout.settings.naming.clone(),
                };
                (key, p.records, p.bytes)
            })
            .collect();
        let errors = error_objects(&job_shared, start, &plan, &layout, processed.errors)?;
        Ok((parts, errors))
    });
    let (parts, errors) = match prepared.await {
        Slot::Done(prepared) => {
            drop(unprocessed);
            prepared
        }
        Slot::Failed => match unprocessed.objects(shared).await {
            Some(errors) => (Vec::new(), errors),
            None => return false,
        },
        Slot::Abandoned => return false,
    };
    // The batch's memory follows its records into their partitions (a transform may have
    // made them larger or smaller); the rest covers the error objects until they land.
    let parts = parts
        .into_iter()
        .map(|(key, records, bytes)| {
            let mut part_memory = memory.split(bytes);
            part_memory.resize(bytes);
            Part {
                key,
                records,
                memory: part_memory,
            }
        })
        .collect();
    let _ = events.send(Event::Processed {
        start,
        oldest_ms,
        parts,
    });
    write_all(shared, errors).await
}

/// Writes objects side by side; true when all landed.
pub(super) async fn write_all(shared: &Shared, objects: Vec<Output>) -> bool {
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
    let converter = sealed_conversion(layout).map(crate::encode::parquet::Converter::new);
    let input = Input {
        start: batch.start,
        records: batch.records,
        arrivals: batch.arrivals,
    };
    process_records(shared, input, layout, definition, converter.as_ref(), None)
}

/// A batch's records and where they start in the journal.
pub(super) struct Input {
    pub start: Position,
    pub records: Vec<Bytes>,
    pub arrivals: Vec<u64>,
}

/// Runs the processing a batch was sealed with, converting records with `converter`.
pub(super) fn process_records(
    shared: &Shared,
    input: Input,
    layout: &Layout,
    definition: &StreamDefinition,
    converter: Option<&crate::encode::parquet::Converter>,
    route: Option<process::Router<'_>>,
) -> process::Processed {
    let records: Vec<process::Record> = input
        .records
        .into_iter()
        .zip(input.arrivals)
        .enumerate()
        .map(|(i, (data, arrival_ms))| process::Record {
            id: shared.record_id(Position(input.start.0 + i as u64)),
            arrival_ms,
            data,
        })
        .collect();
    let sealed = &layout.settings;
    let (processing, partitioned) = (sealed.processing.as_ref(), sealed.dynamic_partitioning);
    let transform = sealed_transform(shared, sealed, definition);
    let job = process::Job {
        processing,
        transform: transform.as_deref(),
        converter,
        route,
        partition_by: partitioned.then_some(&layout.prefix[..]),
        max_partitions: shared.ctx.max_active_partitions,
        queries: &shared.ctx.queries,
        metrics: &shared.metrics,
        now_ms: super::now_ms(),
    };
    // A crash of processing itself (a bug, not a record's fault).
    fail::fail_point!("process-batch");
    process::run(&job, &records)
}

/// One object per error output type, named after the batch.
pub(super) fn error_objects(
    shared: &Shared,
    start: Position,
    plan: &ObjectPlan,
    layout: &Layout,
    errors: Vec<(ErrorOutput, Vec<Bytes>)>,
) -> std::io::Result<Vec<Output>> {
    error_objects_at(shared, start, plan, layout, errors, ERROR_OBJECT_BASE)
}

/// [`error_objects`] with the objects' names tagged by `base` (plus the error output type)
/// instead of [`ERROR_OBJECT_BASE`]: error objects of one batch under different prefixes
/// that may render alike keep different names.
pub(super) fn error_objects_at(
    shared: &Shared,
    start: Position,
    plan: &ObjectPlan,
    layout: &Layout,
    errors: Vec<(ErrorOutput, Vec<Bytes>)>,
    base: u64,
) -> std::io::Result<Vec<Output>> {
    let level = shared.ctx.upload.gzip_level_for(shared.name.as_str());
    let mut objects = Vec::new();
    for (t, lines) in errors {
        let prefix = prefix::fill(&layout.error_prefix, &[], &[], t.as_str());
        let key = shared.namer().object_key(
            layout.version,
            layout.at_ms,
            start,
            &prefix,
            base + t as u64,
            &layout.settings.naming,
        );
        let key = format!("{key}{}", plan.compression.suffix());
        let (records, bytes) = (
            lines.len() as u64,
            lines.iter().map(|l| l.len() as u64).sum(),
        );
        let body = Payload::Ready(encode::encode(plan.compression, level, lines, &key)?);
        objects.push(Output {
            plan: ObjectPlan {
                bucket: plan.bucket.clone(),
                key,
                compression: plan.compression,
                format: None,
                layout: None,
                backup: None,
            },
            records,
            payload_bytes: bytes,
            body,
            error_output: Some(t),
        });
    }
    Ok(objects)
}

/// The record format conversion a processed batch was sealed with.
fn sealed_conversion(layout: &Layout) -> Option<&crate::definition::conversion::Conversion> {
    layout.settings.conversion.as_ref()
}
