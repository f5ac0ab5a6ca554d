//! Runs `MetadataExtractionQuery` jq programs out of the daemon's process, in
//! `spillway jq-worker` children: a query arrives over the network, and jaq gives no way to
//! stop an evaluation that loops, recurses until the stack overflows or allocates without end.
//! A child has a memory cap (`RLIMIT_DATA`), a bounded stack, and a time budget per record
//! enforced here; a child that goes over is killed, the record it was on fails, and the daemon
//! (and every replay of the record) carries on. Knows nothing of streams or error outputs.
//!
//! Protocol on the child's stdin and stdout, all integers u32 little-endian:
//! request `query_len query count (len record)*`; one answer per record, in order and flushed
//! as soon as it is known, `0 pairs (klen key vlen value)*` or `1 len message`.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::jq::Query;

/// The child's subcommand.
pub const WORKER_COMMAND: &str = "jq-worker";
/// Records of one batch that may go over the budget before the rest of the batch is failed
/// without running: past that the query, not a record, is at fault, and each try costs a
/// whole time budget.
pub const MAX_STRIKES: usize = 2;
/// Stack of the child's evaluating thread. Deeper recursion overflows it and ends the child.
const WORKER_STACK_BYTES: usize = 16 << 20;
/// Idle children kept for reuse (processing runs one batch per core at a time).
const MAX_IDLE: usize = 4;
/// Longest string in a worker's answer (keys and messages are bounded well below this).
const MAX_ANSWER_TEXT_BYTES: usize = 64 << 10;
/// The query's time on one batch, in per-record budgets: past it the rest of the batch fails
/// unrun, so one stream's query holds a processing slot for a bounded time whatever its
/// records (each within its own budget) add up to.
pub const BATCH_BUDGETS: u32 = 10;

/// `[partitioning]` budget of a query.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    /// Per record.
    pub timeout: Duration,
    /// Per child process, for everything it allocates.
    pub memory_bytes: u64,
}

/// Why a record has no partition keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysError {
    /// The query ran and rejected the record (not JSON, no object, a null key, `error`).
    Query(String),
    /// The query went over its time, memory or stack budget (or could not run at all).
    Budget(String),
}

/// Partition keys of one record, or why it has none.
pub type Keys = Result<Vec<(String, String)>, KeysError>;

/// The children that run queries, shared by every stream.
pub struct QuerySandbox {
    /// `None` evaluates in this process, without a budget: only for tests of the library,
    /// whose binary is a test harness and cannot be a worker.
    exe: Option<PathBuf>,
    limits: QueryLimits,
    idle: Mutex<Vec<Worker>>,
}

impl QuerySandbox {
    pub fn new(exe: Option<PathBuf>, limits: QueryLimits) -> QuerySandbox {
        QuerySandbox {
            exe,
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Children run this binary when it is `spillway`; a test harness embedding the library
    /// evaluates in-process.
    pub fn for_this_binary(limits: QueryLimits) -> QuerySandbox {
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| p.file_stem().and_then(|s| s.to_str()) == Some("spillway"));
        if exe.is_none() {
            tracing::warn!(
                "this binary is not spillway: jq queries run in-process, without a budget"
            );
        }
        QuerySandbox::new(exe, limits)
    }

    /// Runs `query` on each record; the answers are index-aligned with `records`. Blocking:
    /// call it from a blocking thread. Never panics and never takes longer than about
    /// `MAX_STRIKES + 1` budgets beyond the records' own evaluation time.
    pub fn keys(&self, query: &str, records: &[&[u8]]) -> Vec<Keys> {
        // An object of plain paths is answered here for the records it can answer (the
        // common case, at no cost of a process); the rest go to a worker.
        let Some(paths) = super::jq_path::PathQuery::parse(query) else {
            return self.sandboxed(query, records);
        };
        let mut answers: Vec<Option<Keys>> =
            records.iter().map(|r| paths.keys(r).map(Ok)).collect();
        let rest: Vec<usize> = (0..records.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        if !rest.is_empty() {
            let subset: Vec<&[u8]> = rest.iter().map(|&i| records[i]).collect();
            for (i, answer) in rest.into_iter().zip(self.sandboxed(query, &subset)) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(KeysError::Budget("no answer".into()))))
            .collect()
    }

    fn sandboxed(&self, query: &str, records: &[&[u8]]) -> Vec<Keys> {
        let Some(exe) = &self.exe else {
            return in_process(query, records);
        };
        let mut answers = Vec::with_capacity(records.len());
        let mut strikes = 0;
        let batch_deadline = Instant::now() + self.limits.timeout * BATCH_BUDGETS;
        while answers.len() < records.len() {
            if strikes >= MAX_STRIKES {
                let why = format!(
                    "not run: the query went over its budget on {strikes} earlier records of this batch"
                );
                answers.resize(records.len(), Err(KeysError::Budget(why)));
                break;
            }
            let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut worker = match taken {
                Some(w) => w,
                None => match Worker::spawn(exe, self.limits.memory_bytes) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a jq worker process");
                        let why = format!("cannot start the query's process: {e}");
                        answers.resize(records.len(), Err(KeysError::Budget(why)));
                        break;
                    }
                },
            };
            let rest = &records[answers.len()..];
            match worker.run(query, rest, &self.limits, batch_deadline, &mut answers) {
                Ok(()) => {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    if idle.len() < MAX_IDLE {
                        idle.push(worker);
                    }
                }
                Err(Stop::BatchSpent) => {
                    let why = format!(
                        "not run: the query used up its time on this batch ({} x partitioning.query_timeout_ms)",
                        BATCH_BUDGETS
                    );
                    tracing::warn!(
                        records = records.len() - answers.len(),
                        "a jq query used up its time on a batch; the rest of the batch fails"
                    );
                    drop(worker);
                    answers.resize(records.len(), Err(KeysError::Budget(why)));
                }
                Err(Stop::Record(why)) => {
                    // The record it was on is the first one without an answer.
                    tracing::warn!(reason = %why, "a jq query went over its budget; its record fails");
                    drop(worker);
                    answers.push(Err(KeysError::Budget(why)));
                    strikes += 1;
                }
            }
        }
        answers
    }
}

fn in_process(query: &str, records: &[&[u8]]) -> Vec<Keys> {
    match Query::compile(query) {
        Ok(q) => records
            .iter()
            .map(|r| q.keys(r).map_err(KeysError::Query))
            .collect(),
        Err(m) => vec![Err(KeysError::Query(m)); records.len()],
    }
}

/// One child and the ends of its pipes. Killed (and reaped) when dropped.
struct Worker {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: ChildStdout,
    buf: Vec<u8>,
    /// Bytes of `buf` not consumed yet start here.
    at: usize,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn spawn(exe: &PathBuf, memory_bytes: u64) -> std::io::Result<Worker> {
        // No environment: a query must not read the daemon's (credentials live there).
        let mut child = Command::new(exe)
            .env_clear()
            .arg(WORKER_COMMAND)
            .arg(memory_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the child has no pipes"));
        };
        Ok(Worker {
            child,
            stdin: BufWriter::with_capacity(1 << 16, stdin),
            stdout,
            buf: Vec::new(),
            at: 0,
        })
    }

    /// Sends one request and collects its answers into `answers`. An error says why the
    /// child cannot go on; the answers received before it are kept.
    fn run(
        &mut self,
        query: &str,
        records: &[&[u8]],
        limits: &QueryLimits,
        batch_deadline: Instant,
        answers: &mut Vec<Keys>,
    ) -> Result<(), Stop> {
        if let Err(e) = self.send(query, records) {
            let why = self.ended(&format!("could not take the records: {e}"), limits);
            return Err(Stop::Record(why));
        }
        for _ in records {
            let deadline = (Instant::now() + limits.timeout).min(batch_deadline);
            match self.answer(deadline) {
                Ok(keys) => answers.push(keys),
                Err(Failure::Timeout) if Instant::now() >= batch_deadline => {
                    return Err(Stop::BatchSpent);
                }
                Err(Failure::Timeout) => {
                    return Err(Stop::Record(format!(
                        "the query ran past its time budget of {} ms on this record (partitioning.query_timeout_ms)",
                        limits.timeout.as_millis()
                    )));
                }
                Err(Failure::Ended(e)) => return Err(Stop::Record(self.ended(&e, limits))),
            }
        }
        Ok(())
    }

    fn send(&mut self, query: &str, records: &[&[u8]]) -> std::io::Result<()> {
        put_bytes(&mut self.stdin, query.as_bytes())?;
        put_u32(&mut self.stdin, records.len())?;
        for r in records {
            put_bytes(&mut self.stdin, r)?;
        }
        self.stdin.flush()
    }

    /// Why the child stopped answering: its exit status, read once it is gone.
    fn ended(&mut self, what: &str, limits: &QueryLimits) -> String {
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        format!(
            "the query's process ended ({status}; {what}): it went over its memory budget of {} MiB (partitioning.query_memory_mib) or its stack, or crashed",
            limits.memory_bytes >> 20
        )
    }

    fn answer(&mut self, deadline: Instant) -> Result<Keys, Failure> {
        let status = self.u8(deadline)?;
        match status {
            0 => {
                let pairs = self.u32(deadline)?;
                let mut keys = Vec::with_capacity(pairs.min(64));
                for _ in 0..pairs {
                    let k = self.text(deadline)?;
                    let v = self.text(deadline)?;
                    keys.push((k, v));
                }
                Ok(Ok(keys))
            }
            1 => Ok(Err(KeysError::Query(self.text(deadline)?))),
            other => Err(Failure::Ended(format!("garbled answer {other}"))),
        }
    }

    fn text(&mut self, deadline: Instant) -> Result<String, Failure> {
        let len = self.u32(deadline)?;
        // The worker bounds what it sends; more means it is not the worker any more.
        if len > MAX_ANSWER_TEXT_BYTES {
            return Err(Failure::Ended(format!("an answer of {len} bytes")));
        }
        let bytes = self.take(len, deadline)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn u8(&mut self, deadline: Instant) -> Result<u8, Failure> {
        Ok(self.take(1, deadline)?[0])
    }

    fn u32(&mut self, deadline: Instant) -> Result<usize, Failure> {
        let b = self.take(4, deadline)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// The next `n` bytes of the child's output, waiting for them until `deadline`.
    fn take(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, Failure> {
        while self.buf.len() - self.at < n {
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            self.fill(deadline)?;
        }
        let out = self.buf[self.at..self.at + n].to_vec();
        self.at += n;
        Ok(out)
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for a descriptor this worker owns, for the call's duration.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(Failure::Ended(format!("poll: {e}")));
        }
        if ready == 0 {
            return Err(Failure::Timeout);
        }
        let mut chunk = [0u8; 1 << 16];
        match self.stdout.read(&mut chunk) {
            Ok(0) => Err(Failure::Ended("no answer".into())),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(Failure::Ended(e.to_string())),
        }
    }
}

enum Failure {
    Timeout,
    Ended(String),
}

/// Why a worker stopped before answering every record of a request.
enum Stop {
    /// Over a budget on the first record without an answer (the reason), or dead.
    Record(String),
    /// The batch's time is spent: the records without an answer are not run.
    BatchSpent,
}

fn put_u32(w: &mut impl Write, n: usize) -> std::io::Result<()> {
    let n = u32::try_from(n).map_err(|_| std::io::Error::other("too large for the protocol"))?;
    w.write_all(&n.to_le_bytes())
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    put_u32(w, b.len())?;
    w.write_all(b)
}

/// The `jq-worker` subcommand: caps its own memory, then answers requests on stdin until it
/// closes. Exits non-zero on a protocol error; a query over budget ends it by a signal.
pub fn serve_worker(memory_bytes: u64) -> std::process::ExitCode {
    cap_memory(memory_bytes);
    let evaluator = std::thread::Builder::new()
        .name("jq-worker".into())
        .stack_size(WORKER_STACK_BYTES)
        .spawn(serve_requests);
    match evaluator.map(|t| t.join()) {
        Ok(Ok(Ok(()))) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::from(3),
    }
}

fn cap_memory(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: sets this process's own data limit from a valid struct.
    unsafe {
        libc::setrlimit(libc::RLIMIT_DATA, &limit);
    }
}

fn serve_requests() -> std::io::Result<()> {
    let mut input = BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut output = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut compiled: Option<(Vec<u8>, Result<Query, String>)> = None;
    loop {
        if input.fill_buf()?.is_empty() {
            return Ok(());
        }
        let text = get_bytes(&mut input)?;
        let count = get_u32(&mut input)?;
        let mut records = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            records.push(get_bytes(&mut input)?);
        }
        if compiled.as_ref().is_none_or(|(t, _)| *t != text) {
            let query = Query::compile(&String::from_utf8_lossy(&text));
            compiled = Some((text, query));
        }
        let Some((_, query)) = &compiled else {
            unreachable!("compiled just above")
        };
        for record in &records {
            let answer = match query {
                Ok(q) => q.keys(record),
                Err(m) => Err(m.clone()),
            };
            match answer {
                Ok(keys) => {
                    output.write_all(&[0])?;
                    put_u32(&mut output, keys.len())?;
                    for (k, v) in &keys {
                        put_bytes(&mut output, k.as_bytes())?;
                        put_bytes(&mut output, v.as_bytes())?;
                    }
                }
                Err(m) => {
                    output.write_all(&[1])?;
                    put_bytes(&mut output, m.as_bytes())?;
                }
            }
            // Per record: the daemon knows which record a child that goes over was on.
            output.flush()?;
        }
    }
}

fn get_u32(r: &mut impl Read) -> std::io::Result<usize> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b) as usize)
}

fn get_bytes(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let len = get_u32(r)?;
    let mut b = vec![0u8; len];
    r.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_answers_are_index_aligned() {
        let sandbox = QuerySandbox::new(
            None,
            QueryLimits {
                timeout: Duration::from_secs(1),
                memory_bytes: 64 << 20,
            },
        );
        let answers = sandbox.keys("{a: .x}", &[br#"{"x":"1"}"#, b"nope", br#"{"x":2}"#]);
        assert_eq!(answers[0], Ok(vec![("a".into(), "1".into())]));
        assert!(matches!(&answers[1], Err(KeysError::Query(m)) if m.contains("not JSON")));
        assert_eq!(answers[2], Ok(vec![("a".into(), "2".into())]));
        let bad = sandbox.keys("{a: .x", &[b"{}", b"{}"]);
        assert!(bad.iter().all(|a| matches!(a, Err(KeysError::Query(_)))));
    }
}
