//! Per delivery stream: journal every accepted record (group commit), buffer durable records
//! until the size or age hint, seal the buffer into a batch with a deterministic object key,
//! and hand the batch to the sink; once it lands, commit it and release the journal.
//!
//! Files, one job each: `group_commit` (the journal writer), `batcher` (the stream's task:
//! what is open, sealed, in flight, held), `intake` (the open buffer and sealing), `holds` and
//! `partitions` (pure state of partitioned batches and partition buffers), `delivery` (one
//! sealed batch or buffer -> objects, with outcomes), `naming` (object names), `entries` (the
//! on-disk format of seal and flush entries), `budget` (memory reservations).
//!
//! The pipeline never computes byte offsets (the journal's business) nor talks HTTP (the
//! api's). Backpressure: ingest reserves memory before journaling and is throttled past the cap.

mod batcher;
pub mod budget;
mod delivery;
pub(crate) mod entries;
mod group_commit;
mod holds;
pub(crate) mod iceberg;
mod intake;
mod naming;
mod partitions;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{JournalSettings, UploadSettings};
use crate::definition::{StreamDefinition, StreamName};
use crate::journal::{Journal, JournalOptions, Position};
use crate::metrics::{Metrics, StreamMetrics};
use crate::sink::{Stores, UploadHealth, Uploader};

pub use budget::MemoryBudget;
use group_commit::{AppendRefused, JournalOp};

/// Operations waiting for one stream's journal thread; past this, ingest is throttled.
const JOURNAL_QUEUE: usize = 1024;

/// What every stream shares: caps, stores, metrics, and the task tracker shutdown waits on.
pub struct Context {
    pub metrics: Arc<Metrics>,
    pub memory: Arc<MemoryBudget>,
    /// How long ingest waits for room in `memory` before refusing what does not fit.
    pub memory_wait: Duration,
    /// Journal bytes across all streams, against `journal.max_bytes`.
    pub journal_total: AtomicU64,
    pub journal: JournalSettings,
    pub upload: UploadSettings,
    pub stores: Arc<Stores>,
    pub tracker: TaskTracker,
    /// Cancelled when shutdown gives up waiting for uploads; the journal keeps what is left.
    pub abandon: CancellationToken,
    /// Encodes running at once, across streams: one per core. More would only add encoder
    /// state and output buffers to memory without finishing any sooner.
    pub encode_slots: Arc<tokio::sync::Semaphore>,
    /// Processed batches (transform, partitioning, their encoding) running at once, one per
    /// core: separate from `encode_slots` so a slow transform never holds up the encoding of
    /// streams without one.
    pub process_slots: Arc<tokio::sync::Semaphore>,
    /// The wasmtime engine and loaded transform components, shared by all streams.
    pub transforms: Arc<crate::transform::Host>,
    /// `partitioning.max_active_partitions`.
    pub max_active_partitions: usize,
    /// The processes that run `MetadataExtractionQuery` programs, shared by every stream.
    pub queries: crate::process::sandbox::QuerySandbox,
    /// The config file's tables, for record format conversion schemas.
    pub tables: crate::definition::conversion::Tables,
    /// The configured Iceberg catalogs.
    pub iceberg: Arc<crate::iceberg::Catalogs>,
}

/// One stream's state shared by its journal thread, pipeline task and uploads.
pub struct Shared {
    pub name: StreamName,
    /// Random per journal, persisted beside it: keeps record ids and object names unique
    /// across streams, replicas and re-creations of a stream with the same name.
    pub incarnation: u64,
    pub metrics: StreamMetrics,
    pub ctx: Arc<Context>,
    /// Arrival time (ms since the epoch) of the oldest record not yet delivered; 0 if none.
    oldest_pending_ms: AtomicU64,
    /// Why the stream cannot make progress, if it cannot: `/readyz` and
    /// `spillway_stream_stalled` show it.
    journal_failed: AtomicBool,
    /// Records this run holds back in the journal for a reason other than shutdown.
    held: AtomicBool,
    /// Whether its uploads are landing.
    uploads: UploadHealth,
    /// `EncryptionConfiguration.KMSEncryptionConfig.AWSKMSKeyARN` in force: objects are
    /// uploaded with SSE-KMS under this key (the setting when they are uploaded).
    kms_key: std::sync::RwLock<Option<Arc<str>>>,
}

/// A stream stalled on its uploads takes new records only while it holds less than this
/// fraction (1/8) of the memory cap.
pub const STALLED_SHARE: u64 = 8;

impl Shared {
    /// The journal refuses writes (a failed write or fsync) until it recovers.
    pub fn set_journal_failed(&self, failed: bool) {
        if self.journal_failed.swap(failed, Ordering::AcqRel) != failed {
            self.metrics.set_stalled("journal", failed);
        }
    }

    /// Records stay in the journal that this run will not deliver (an unreadable journal
    /// entry, a replayed object that cannot be rebuilt); the next start tries again.
    fn set_held(&self, held: bool) {
        if self.held.swap(held, Ordering::AcqRel) != held {
            self.metrics.set_stalled("held", held);
        }
    }

    /// What the sink needs to upload this stream's objects.
    fn uploader(&self) -> Uploader<'_> {
        Uploader {
            stores: &self.ctx.stores,
            settings: &self.ctx.upload,
            abandon: &self.ctx.abandon,
            stream: self.name.as_str(),
            metrics: &self.metrics,
            health: &self.uploads,
            kms_key: self
                .kms_key
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// What keeps the stream from making progress now: a journal that refuses writes (the
    /// stream takes no records), uploads failing in a row (records wait in the journal).
    pub fn stalled(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.journal_failed.load(Ordering::Acquire) {
            reasons.push("journal");
        }
        if self.uploads.stalled() {
            reasons.push("upload");
        }
        if self.held.load(Ordering::Acquire) {
            reasons.push("held");
        }
        reasons
    }

    fn namer(&self) -> naming::Namer<'_> {
        naming::Namer {
            stream: self.name.as_str(),
            incarnation: self.incarnation,
        }
    }

    /// An Iceberg append landed: the stream's deliveries are healthy again.
    pub fn uploads_landed(&self) {
        self.uploads.landed(&self.metrics);
    }

    /// An Iceberg append failed; several in a row stall the stream, as failed uploads do.
    pub fn uploads_failed(&self) {
        self.uploads.failed(&self.metrics);
    }

    pub fn record_id(&self, position: Position) -> String {
        format!("{:016x}{:016x}", self.incarnation, position.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare stream directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open journal in {path}: {message}")]
    Journal { path: PathBuf, message: String },
}

/// Why a put accepted nothing.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{0}")]
    Throttled(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

/// A put that accepted `accepted` records (a prefix of those offered) at consecutive positions
/// from `first`; the rest were refused for lack of memory and should be retried.
pub struct PutOutcome {
    pub first: Position,
    pub accepted: usize,
}

/// A running stream: the handle the catalog keeps.
pub struct StreamRuntime {
    shared: Arc<Shared>,
    ops: mpsc::Sender<JournalOp>,
    definition: watch::Sender<Arc<StreamDefinition>>,
    finished: watch::Receiver<bool>,
}

impl StreamRuntime {
    /// Opens and replays the stream's journal, then starts its journal thread and pipeline.
    /// Replayed records are buffered (or re-uploaded under their sealed keys) before this returns.
    pub async fn start(
        ctx: Arc<Context>,
        dir: &Path,
        definition: Arc<StreamDefinition>,
    ) -> Result<StreamRuntime, StartError> {
        let dir = dir.to_path_buf();
        let opts = JournalOptions {
            segment_bytes: ctx.journal.segment_bytes,
            fsync: ctx.journal.fsync,
            direct_io: ctx.journal.direct_io,
        };
        let journal_dir = dir.join("journal");
        // The journal's own log lines name their files; the span adds the stream. At error
        // level so that it is on whenever any of those lines is (a warn-only filter included).
        let span = tracing::error_span!("stream", stream = %definition.name);
        let opened = tokio::task::spawn_blocking({
            let dir = dir.clone();
            let span = span.clone();
            move || -> Result<_, StartError> {
                let _in_stream = span.entered();
                let incarnation = read_or_create_incarnation(&dir)?;
                let (journal, replay) =
                    Journal::open(&journal_dir, opts).map_err(|e| StartError::Journal {
                        path: journal_dir.clone(),
                        message: e.to_string(),
                    })?;
                Ok((incarnation, journal, replay))
            }
        })
        .await
        .map_err(|e| StartError::Journal {
            path: dir.clone(),
            message: format!("journal open task failed: {e}"),
        })?;
        let (incarnation, journal, replay) = opened?;

        let name = definition.name.clone();
        let shared = Arc::new(Shared {
            metrics: ctx.metrics.stream(name.as_str()),
            name,
            incarnation,
            ctx: ctx.clone(),
            oldest_pending_ms: AtomicU64::new(0),
            journal_failed: AtomicBool::new(false),
            held: AtomicBool::new(false),
            uploads: UploadHealth::default(),
            kms_key: std::sync::RwLock::new(
                definition.destination.kms_key.as_deref().map(Arc::from),
            ),
        });
        shared
            .metrics
            .journal_damage
            .inc_by(replay.skipped.len() as u64);
        let (ops_tx, ops_rx) = mpsc::channel(JOURNAL_QUEUE);
        // Seals, flushes, commits and releases never wait behind appends: a commit held up
        // by producers keeping the append queue full would hold every release with it.
        // Unbounded in count, bounded by the batches in flight.
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (appended_tx, appended_rx) = mpsc::unbounded_channel();
        let (def_tx, def_rx) = watch::channel(definition);
        let (finished_tx, finished_rx) = watch::channel(false);
        let next_position = journal.next_position();
        if !replay.records.is_empty() {
            tracing::info!(
                stream = %shared.name,
                records = replay.records.len(),
                pending_objects = replay.pending_seals.len(),
                "replaying journal"
            );
        }

        ctx.tracker.spawn(group_commit::run(
            journal,
            ops_rx,
            control_rx,
            appended_tx,
            shared.clone(),
            span,
        ));
        let batcher = batcher::Batcher::new(shared.clone(), control_tx, def_rx, next_position);
        ctx.tracker.spawn(async move {
            batcher.run(replay, appended_rx).await;
            let _ = finished_tx.send(true);
        });

        Ok(StreamRuntime {
            shared,
            ops: ops_tx,
            definition: def_tx,
            finished: finished_rx,
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Journals as many of `records` as memory allows (in order) and returns once they are
    /// durable. Records past the first refused one are not accepted.
    pub async fn put(&self, arrival_ms: u64, records: Vec<Bytes>) -> Result<PutOutcome, PutError> {
        let ctx = &self.shared.ctx;
        let metrics = &self.shared.metrics;
        let offered = records.len();
        // A stream whose uploads keep failing holds its records until they land; past a small
        // share of the memory cap it takes no more, so it cannot take the memory every other
        // stream needs (its producers retry; the journal keeps what it accepted).
        if self.shared.uploads.stalled()
            && metrics.buffered_bytes.get().max(0) as u64 >= ctx.memory.cap() / STALLED_SHARE
        {
            metrics.throttled_records.inc_by(offered as u64);
            return Err(PutError::Throttled(
                "the stream's uploads are failing and it holds its share of the memory buffer; retry later",
            ));
        }
        if ctx.journal_total.load(Ordering::Acquire) >= ctx.journal.max_bytes {
            metrics.throttled_records.inc_by(offered as u64);
            return Err(PutError::Throttled(
                "journal is at its size cap; the destination is behind, retry later",
            ));
        }
        let mut accepted = 0;
        let mut memory = ctx.memory.none();
        let mut waited: Option<(Instant, Instant)> = None;
        loop {
            for r in &records[accepted..] {
                let Some(m) = ctx.memory.try_reserve(r.len() as u64) else {
                    break;
                };
                memory.merge(m);
                accepted += 1;
            }
            if accepted == offered || ctx.memory_wait.is_zero() {
                break;
            }
            // Room comes back as objects land: a closed-loop producer is better served by a
            // few milliseconds of latency than by a refusal and its retry.
            let (_, deadline) = *waited.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now + ctx.memory_wait)
            });
            if !ctx
                .memory
                .wait_for_room(records[accepted].len() as u64, deadline)
                .await
            {
                break;
            }
        }
        if let Some((since, _)) = waited {
            ctx.metrics
                .memory_waited(accepted == offered, since.elapsed().as_secs_f64());
        }
        let reserved = memory.bytes();
        if accepted == 0 {
            metrics.throttled_records.inc_by(offered as u64);
            return Err(PutError::Throttled(
                "memory buffer is at its cap; retry later",
            ));
        }
        let mut records = records;
        records.truncate(accepted);
        let (reply, answer) = oneshot::channel();
        let op = JournalOp::Append {
            arrival_ms,
            records,
            memory,
            reply,
        };
        // A refused append's memory went back when the operation was dropped.
        let refuse = |e: PutError| {
            metrics.throttled_records.inc_by(offered as u64);
            Err(e)
        };
        match self.ops.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return refuse(PutError::Throttled("journal queue is full; retry later"));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return refuse(PutError::Unavailable(
                    "the delivery stream's journal has stopped".into(),
                ));
            }
        }
        match answer.await {
            Ok(Ok(first)) => {
                metrics.incoming_records.inc_by(accepted as u64);
                metrics.incoming_bytes.inc_by(reserved);
                metrics.incoming_put_requests.inc();
                if accepted < offered {
                    metrics
                        .throttled_records
                        .inc_by((offered - accepted) as u64);
                }
                Ok(PutOutcome { first, accepted })
            }
            Ok(Err(AppendRefused::Closed)) => refuse(PutError::Unavailable(
                "the delivery stream is shutting down".into(),
            )),
            // The journal round failed before it answered; its writer recovers.
            Err(_) => refuse(PutError::Unavailable(
                "the journal could not store the records".into(),
            )),
            Ok(Err(AppendRefused::Io(e))) => {
                tracing::error!(stream = %self.shared.name, error = %e, "journal append failed");
                refuse(PutError::Unavailable(
                    "the journal could not store the records".into(),
                ))
            }
        }
    }

    /// The settings in force.
    pub fn definition(&self) -> Arc<StreamDefinition> {
        self.definition.borrow().clone()
    }

    /// New settings apply to the next batch; the open buffer is sealed under the old ones.
    pub fn update(&self, definition: Arc<StreamDefinition>) {
        *self
            .shared
            .kms_key
            .write()
            .unwrap_or_else(|p| p.into_inner()) =
            definition.destination.kms_key.as_deref().map(Arc::from);
        self.definition.send_replace(definition);
    }

    /// Stops accepting, delivers everything buffered, waits for uploads (or for shutdown to
    /// give up on them), and stops the journal.
    pub async fn close(&self) {
        let _ = self.ops.send(JournalOp::EndInput).await;
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Seconds since the oldest undelivered record arrived; 0 when nothing waits.
    pub fn freshness_seconds(&self, now_ms: u64) -> u64 {
        match self.shared.oldest_pending_ms.load(Ordering::Acquire) {
            0 => 0,
            oldest => now_ms.saturating_sub(oldest) / 1000,
        }
    }
}

fn read_or_create_incarnation(dir: &Path) -> Result<u64, StartError> {
    let err = |source| StartError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join("incarnation");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|e| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id: u64 = rand::random();
            crate::durable::write_file(&path, format!("{id:016x}\n").as_bytes()).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
