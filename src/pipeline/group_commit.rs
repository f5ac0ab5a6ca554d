//! The task that writes a stream's journal. It takes every operation waiting in its
//! queue, writes them all, syncs once (group commit: one fsync serves every waiting request),
//! then answers each request and hands the now-durable records to the pipeline.
//!
//! It never waits on the pipeline: the hand-off channel is unbounded in count but bounded in
//! bytes by the memory budget that ingest reserved before sending, so the journal thread can
//! always make progress and the pipeline can always wait on it without a cycle.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::journal::{Journal, Position, RecordRef, Seal, WriteError};

use super::Shared;
use super::budget::Reservation;

/// How many queued operations one group commit takes at most, so a flood of appends cannot
/// delay every answer behind one enormous write.
const MAX_OPS_PER_COMMIT: usize = 256;

/// The writer's queue for everything but appends (and the end of input, which must follow
/// them): the batcher and delivery tasks send on it without waiting.
pub type Control = mpsc::UnboundedSender<JournalOp>;

pub enum JournalOp {
    Append {
        arrival_ms: u64,
        records: Vec<Bytes>,
        /// The records' bytes in the memory budget: handed to the pipeline with them, or
        /// given back if they are refused.
        memory: Reservation,
        reply: oneshot::Sender<Result<Position, AppendRefused>>,
    },
    /// Make a batch's boundaries and object key durable before it is uploaded.
    Seal {
        seal: Seal,
        reply: oneshot::Sender<Result<(), JournalWriteFailed>>,
    },
    /// Make a partition object's name and sources durable before it is uploaded.
    Flush {
        meta: Vec<u8>,
        reply: oneshot::Sender<Result<(), JournalWriteFailed>>,
    },
    /// The object for the seal starting here landed. Not synced on its own: if it is lost, a
    /// replay rewrites the same key, which overwrites rather than duplicates.
    Commit { start: Position },
    /// Nothing below `low` is needed any more.
    Release { low: Position },
    /// No more appends: the pipeline sees the end of its input.
    EndInput,
    /// Everything is delivered or abandoned: sync and stop.
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendRefused {
    #[error("the stream is shutting down")]
    Closed,
    #[error(transparent)]
    Io(JournalWriteFailed),
}

/// A journal write or sync failed; every operation of the round gets the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("journal write failed: {0}")]
pub struct JournalWriteFailed(Arc<WriteError>);

impl From<WriteError> for JournalWriteFailed {
    fn from(e: WriteError) -> Self {
        JournalWriteFailed(Arc::new(e))
    }
}

/// Records that are durable, in the order they were appended.
pub struct Appended {
    pub first: Position,
    pub arrival_ms: u64,
    pub records: Vec<Bytes>,
    pub memory: Reservation,
}

/// An append written in the current round, answered once the round's sync settles it.
type PendingAppend = (
    Position,
    u64,
    Vec<Bytes>,
    Reservation,
    oneshot::Sender<Result<Position, AppendRefused>>,
);

/// What a stream's journal writer carries from one group commit to the next.
struct Writer {
    journal: Journal,
    /// The current round's appends, kept here rather than in the round so that a round that
    /// panics still settles them: those a roll made durable are handed over and acknowledged
    /// (the pipeline's positions stay continuous), the rest refused.
    round_appends: std::collections::VecDeque<PendingAppend>,
    /// Commits not yet durable: taken out of their round before anything else runs (so even
    /// a round that panics keeps them) and written again after a failed round, until one syncs
    /// them. A lost commit would let a release pass its batch, and the next start would find
    /// the batch's seal with its first records gone.
    unsynced_commits: Vec<Position>,
    /// The highest release asked for and not applied yet: applied by the first round that
    /// syncs with every commit written, so a failed round does not lose it.
    pending_release: Option<Position>,
    to_pipeline: Option<mpsc::UnboundedSender<Appended>>,
    /// Journal bytes this stream has added to `journal_total`.
    accounted_bytes: u64,
    shared: Arc<Shared>,
    /// After a failed write: when to try [`Journal::recover`] next, and the wait after that.
    recover_at: Option<std::time::Instant>,
    recover_delay: Duration,
}

/// First wait before a failed journal tries to become writable again; doubled per failure.
const RECOVER_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between tries: a disk that was full is used again within this of being freed.
const RECOVER_MAX: Duration = Duration::from_secs(5);

/// The stream's journal writer: waits for operations without holding a thread, and runs each
/// group commit (writes and one sync) on a blocking thread. Streams are cheap: thousands of
/// idle streams hold no thread, where one long-lived blocking task each exhausted tokio's
/// blocking pool at 512 streams.
pub async fn run(
    journal: Journal,
    mut ops: mpsc::Receiver<JournalOp>,
    mut control: mpsc::UnboundedReceiver<JournalOp>,
    to_pipeline: mpsc::UnboundedSender<Appended>,
    shared: Arc<Shared>,
    span: tracing::Span,
) {
    // A replayed journal counts against the cap from the start, not from its first write.
    let accounted_bytes = journal.disk_bytes();
    shared
        .ctx
        .journal_total
        .fetch_add(accounted_bytes, Ordering::AcqRel);
    shared.metrics.journal_bytes.set(accounted_bytes as i64);
    let stream = shared.name.clone();
    let ctx = shared.ctx.clone();
    let status = shared.clone();
    let mut writer = Writer {
        journal,
        round_appends: std::collections::VecDeque::new(),
        unsynced_commits: Vec::new(),
        pending_release: None,
        to_pipeline: Some(to_pipeline),
        accounted_bytes,
        shared,
        recover_at: None,
        recover_delay: RECOVER_INITIAL,
    };
    let (mut ops_open, mut control_open) = (true, true);
    loop {
        // A failed journal also wakes on its own to recover: a replica that reports not ready
        // gets no traffic, and must not wait for an operation to become writable again.
        let wake = writer.recover_at.map(tokio::time::Instant::from_std);
        if !(ops_open || control_open) {
            break;
        }
        let first = tokio::select! {
            biased;
            op = control.recv(), if control_open => match op {
                Some(op) => Some(op),
                None => {
                    control_open = false;
                    continue;
                }
            },
            op = ops.recv(), if ops_open => match op {
                Some(op) => Some(op),
                None => {
                    ops_open = false;
                    continue;
                }
            },
            () = async {
                if let Some(at) = wake {
                    tokio::time::sleep_until(at).await;
                }
            }, if wake.is_some() => None,
        };
        let mut batch = Vec::with_capacity(MAX_OPS_PER_COMMIT);
        batch.extend(first);
        // Control first, then appends, up to the round's size.
        while !batch.is_empty() && batch.len() < MAX_OPS_PER_COMMIT {
            match control.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        while !batch.is_empty() && batch.len() < MAX_OPS_PER_COMMIT {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let span = span.clone();
        let accounted = writer.accounted_bytes;
        // Kept even if the round fails: the input ends, and the writer stops, all the same.
        let ends_input = batch.iter().any(|op| matches!(op, JournalOp::EndInput));
        let stops = batch.iter().any(|op| matches!(op, JournalOp::Stop));
        let round = tokio::task::spawn_blocking(move || {
            let _in_stream = span.entered();
            // A round that panics (a bug) must not take the stream's journal with it: its
            // operations go unanswered (their callers retry), and the journal is treated as
            // failed, so what the round wrote and did not sync is dropped and it recovers
            // like after a failed write.
            let stop = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                commit_group(&mut writer, batch)
            }));
            if stop.is_err() {
                settle_after_panic(&mut writer, ends_input);
            }
            (writer, stop)
        })
        .await;
        match round {
            Ok((back, Ok(stop))) => {
                writer = back;
                if stop {
                    break;
                }
            }
            Ok((back, Err(panic))) => {
                writer = back;
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(stream = %stream, panic = %what, "a journal round failed; its requests are refused and the journal recovers");
                if stops {
                    break;
                }
            }
            Err(e) => {
                // Not expected: the round catches its own panics. The journal went down with
                // it: the stream takes no more writes (puts answer ServiceUnavailable, the
                // stream shows stalled) and the next start replays what it holds.
                tracing::error!(stream = %stream, error = %e, "the journal writer failed; the stream stops taking records until a restart");
                ctx.journal_total.fetch_sub(accounted, Ordering::AcqRel);
                status.set_journal_failed(true);
                return;
            }
        }
    }
    ctx.journal_total
        .fetch_sub(writer.accounted_bytes, Ordering::AcqRel);
}

/// After a round panicked: appends a roll made durable are handed over and acknowledged, the
/// rest refused; the journal is treated as failed (what it did not sync is dropped when it
/// recovers), and a panic that repeats waits longer each time.
fn settle_after_panic(writer: &mut Writer, ends_input: bool) {
    let durable = writer.journal.durable_next();
    let refused = JournalWriteFailed::from(crate::journal::WriteError::Failed {
        dir: writer.journal.dir().to_path_buf(),
    });
    settle_appends(
        &mut writer.round_appends,
        writer.to_pipeline.as_ref(),
        durable,
        Some(&refused),
    );
    if ends_input {
        writer.to_pipeline = None;
    }
    writer.journal.mark_failed();
    writer.shared.set_journal_failed(true);
    writer.shared.metrics.journal_write_failures.inc();
    writer.recover_at = Some(std::time::Instant::now() + writer.recover_delay);
    writer.recover_delay = (writer.recover_delay * 2).min(RECOVER_MAX);
}

/// Answers a round's appends: those below `durable` (all of them when the round did not
/// fail) are handed to the pipeline, then acknowledged; the rest are refused with `failed`.
/// Each is taken out only as it is answered, so a panic midway leaves the rest to
/// [`settle_after_panic`].
fn settle_appends(
    appends: &mut std::collections::VecDeque<PendingAppend>,
    to_pipeline: Option<&mpsc::UnboundedSender<Appended>>,
    durable: Position,
    failed: Option<&JournalWriteFailed>,
) {
    while let Some((first, arrival_ms, records, memory, reply)) = appends.pop_front() {
        if let Some(e) = failed
            && first.0 + records.len() as u64 > durable.0
        {
            let _ = reply.send(Err(AppendRefused::Io(e.clone())));
            continue;
        }
        // Hand over before answering, so a record the producer saw acknowledged is already
        // on its way to the buffer when a shutdown begins.
        if let Some(tx) = to_pipeline {
            let _ = tx.send(Appended {
                first,
                arrival_ms,
                records,
                memory,
            });
        }
        let _ = reply.send(Ok(first));
    }
}

/// Writes one group of operations, syncs once, answers them. True when the writer stops.
fn commit_group(writer: &mut Writer, mut batch: Vec<JournalOp>) -> bool {
    batch.retain(|op| match op {
        JournalOp::Commit { start } => {
            writer.unsynced_commits.push(*start);
            false
        }
        JournalOp::Release { low } => {
            writer.pending_release = Some(writer.pending_release.map_or(*low, |r| r.max(*low)));
            false
        }
        _ => true,
    });
    recover_if_due(writer);
    let had_work = !batch.is_empty();
    let Writer {
        journal,
        round_appends: appends,
        unsynced_commits,
        pending_release,
        to_pipeline,
        accounted_bytes,
        shared,
        ..
    } = writer;
    let stream = &shared.name;
    let (stop, round_failed) = {
        let mut seals = Vec::new();
        // Commits a failed round lost go first, so a release in this round cannot pass them.
        let mut commit_failed = false;
        for start in unsynced_commits.iter() {
            if let Err(e) = journal.append_commit(*start) {
                commit_failed = true;
                tracing::debug!(stream = %stream, error = %e, "journal commit entry not written yet");
            }
        }
        let mut stop = false;
        // Input ends after this group's accepted appends are handed over, never before.
        let mut end_input = false;
        let mut write_error: Option<JournalWriteFailed> = None;
        for op in batch.drain(..) {
            match op {
                JournalOp::Append {
                    arrival_ms,
                    records,
                    memory,
                    reply,
                } => {
                    if to_pipeline.is_none() || end_input {
                        let _ = reply.send(Err(AppendRefused::Closed));
                        continue;
                    }
                    let refs: Vec<RecordRef<'_>> = records
                        .iter()
                        .map(|data| RecordRef { arrival_ms, data })
                        .collect();
                    match journal.append_records(&refs) {
                        Ok(first) => appends.push_back((first, arrival_ms, records, memory, reply)),
                        Err(e) => {
                            let _ = reply.send(Err(AppendRefused::Io(e.into())));
                        }
                    }
                }
                JournalOp::Seal { seal, reply } => match journal.append_seal(&seal) {
                    Ok(()) => seals.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                },
                JournalOp::Flush { meta, reply } => match journal.append_flush(&meta) {
                    Ok(()) => seals.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                },
                // Taken out of the round above.
                JournalOp::Commit { .. } | JournalOp::Release { .. } => {}
                JournalOp::EndInput => end_input = true,
                JournalOp::Stop => stop = true,
            }
        }

        // A round that fails after its writes, before its sync (a bug), on demand.
        fail::fail_point!("journal-round");
        let started = std::time::Instant::now();
        let synced = journal.sync();
        shared
            .metrics
            .journal_sync_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            // Logged once per failure; while the journal recovers, refusals are only counted.
            if !matches!(e, crate::journal::WriteError::Failed { .. }) {
                tracing::error!(stream = %stream, error = %e, "journal write failed; refusing records until it recovers");
            }
            write_error = Some(e.into());
        }
        // After a failure, appends that a roll synced before it are durable all the same:
        // acknowledged and handed over, so positions stay continuous for the pipeline.
        let durable = journal.durable_next();
        if write_error.is_none() && !commit_failed {
            unsynced_commits.clear();
        }
        settle_appends(appends, to_pipeline.as_ref(), durable, write_error.as_ref());
        for reply in seals {
            let _ = reply.send(match &write_error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
        if end_input {
            *to_pipeline = None;
        }
        // Applied only once every commit is durable: a release must never outrun the commit
        // that justifies it.
        if let (Some(low), None, false) = (*pending_release, &write_error, commit_failed) {
            match journal.release(low) {
                Ok(()) => *pending_release = None,
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "journal segments not released");
                }
            }
        }

        let bytes = journal.disk_bytes();
        if bytes >= *accounted_bytes {
            shared
                .ctx
                .journal_total
                .fetch_add(bytes - *accounted_bytes, Ordering::AcqRel);
        } else {
            shared
                .ctx
                .journal_total
                .fetch_sub(*accounted_bytes - bytes, Ordering::AcqRel);
        }
        *accounted_bytes = bytes;
        shared.metrics.journal_bytes.set(bytes as i64);
        (stop, write_error.is_some())
    };
    // Stalled from a failed round until a round writes and syncs again (a recovery alone does
    // not prove the disk takes writes).
    writer.shared.set_journal_failed(round_failed);
    if writer.journal.is_failed() && writer.recover_at.is_none() {
        writer.shared.metrics.journal_write_failures.inc();
        writer.recover_at = Some(std::time::Instant::now() + writer.recover_delay);
        // A disk that stays full fails again right after each recovery: wait longer each time.
        writer.recover_delay = (writer.recover_delay * 2).min(RECOVER_MAX);
    } else if !round_failed && had_work {
        writer.recover_delay = RECOVER_INITIAL;
    }
    stop
}

/// A journal that failed a write refuses every write (its callers answer
/// ServiceUnavailable and retry) until it recovers: tried here, with a growing wait between
/// tries, so a full or failing disk is retried without spinning and used again without a
/// restart once it works.
fn recover_if_due(writer: &mut Writer) {
    if !writer.journal.is_failed()
        || writer
            .recover_at
            .is_some_and(|at| std::time::Instant::now() < at)
    {
        return;
    }
    match writer.journal.recover() {
        Ok(()) => writer.recover_at = None,
        Err(e) => {
            tracing::warn!(stream = %writer.shared.name, error = %e, retry_in = ?writer.recover_delay, "the journal is not writable yet");
            writer.recover_at = Some(std::time::Instant::now() + writer.recover_delay);
            writer.recover_delay = (writer.recover_delay * 2).min(RECOVER_MAX);
        }
    }
}
