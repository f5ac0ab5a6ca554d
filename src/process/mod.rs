//! Record processing between the journal and the encoder, for streams with a
//! `ProcessingConfiguration` or dynamic partitioning: the transform (a WebAssembly component,
//! called on batches), partition keys from a jq query or from the transform, the delimiter, and
//! one error record per record that failed on the way. CPU-bound and blocking: run it off the
//! async workers. Knows nothing of journals, object names or uploads.

pub mod jq;
pub(crate) mod jq_path;
pub mod preprocess;
pub mod sandbox;

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;

use crate::definition::Processing;
use crate::definition::prefix::Piece;
use crate::metrics::StreamMetrics;
use crate::transform::{InputRecord, Module, Outcome};

/// Where a failed record goes: `!{firehose:error-output-type}` of the error prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorOutput {
    ProcessingFailed,
    PartitioningFailed,
    ActivePartitionExceeded,
    FormatConversionFailed,
    /// The `Decompression` processor could not decompress the record (last: each type's
    /// position names its error objects, so earlier ones keep theirs).
    DecompressionFailed,
}

impl ErrorOutput {
    pub const ALL: [ErrorOutput; 5] = [
        ErrorOutput::ProcessingFailed,
        ErrorOutput::PartitioningFailed,
        ErrorOutput::ActivePartitionExceeded,
        ErrorOutput::FormatConversionFailed,
        ErrorOutput::DecompressionFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorOutput::ProcessingFailed => "processing-failed",
            ErrorOutput::PartitioningFailed => "partitioning-failed",
            ErrorOutput::ActivePartitionExceeded => "activePartitionExceeded",
            ErrorOutput::FormatConversionFailed => "format-conversion-failed",
            ErrorOutput::DecompressionFailed => "decompression-failed",
        }
    }
}

/// Error codes of records that fail partitioning (transform codes come from
/// [`crate::transform::CallError::error_code`]).
pub mod codes {
    pub const PROCESSING_FAILED: &str = "Lambda.ProcessingFailed";
    pub const QUERY_FAILED: &str = "DynamicPartitioning.MetadataExtractionFailed";
    pub const KEY_MISSING: &str = "DynamicPartitioning.PartitionKeyMissing";
    pub const KEY_INVALID: &str = "DynamicPartitioning.PartitionKeyInvalid";
    pub const CAP_EXCEEDED: &str = "DynamicPartitioning.ActivePartitionExceeded";
    pub const CONVERSION_FAILED: &str = "DataFormatConversion.MalformedData";
    /// Processing itself failed on the batch (a panic, an encoding error): its records are
    /// delivered unprocessed so they cannot fail it again.
    pub const PROCESSING_CRASHED: &str = "Processing.Crashed";
}

/// A record as the journal holds it.
pub struct Record {
    pub id: String,
    pub arrival_ms: u64,
    pub data: Bytes,
}

/// What one stream does to its records.
pub struct Job<'a> {
    pub processing: Option<&'a Processing>,
    /// The loaded component of `processing.lambda`.
    pub transform: Option<&'a Module>,
    /// The data prefix, when dynamic partitioning is on: its holes name the keys.
    pub partition_by: Option<&'a [Piece]>,
    /// Record format conversion: records that do not fit the Parquet columns fail.
    pub converter: Option<&'a crate::encode::parquet::Converter>,
    /// Without `partition_by`: partitions named by this instead (an Iceberg stream's tables).
    pub route: Option<Router<'a>>,
    pub max_partitions: usize,
    /// Where `MetadataExtractionQuery` programs run, under their budget.
    pub queries: &'a sandbox::QuerySandbox,
    pub metrics: &'a StreamMetrics,
    /// When this attempt runs (ms since the epoch), for error records' `attemptEndingTimestamp`.
    pub now_ms: u64,
}

/// Records that go to one object.
pub struct Partition {
    /// The prefix rendered with the partition's keys (dynamic partitioning); `None` for the
    /// single partition of a stream without it. Partitions are told apart by this text, so
    /// key values that render the same prefix share an object instead of overwriting one.
    pub prefix: Option<String>,
    pub records: Vec<Bytes>,
    /// Each record's position in the batch given to [`run`].
    pub indexes: Vec<usize>,
    pub bytes: u64,
}

/// Picks a record's partition from its keys (query keys, then the transform's): the
/// partition's name, or the error code and message that send the record to
/// `partitioning-failed`.
pub type Router<'a> = &'a (
        dyn Fn(&[(String, String)], &[(String, String)]) -> Result<String, (&'static str, String)>
            + Sync
    );

#[derive(Default)]
pub struct Processed {
    /// In order of first appearance in the batch, so the same input yields the same objects.
    pub partitions: Vec<Partition>,
    /// Error records (JSON lines) by output type, in [`ErrorOutput::ALL`] order.
    pub errors: Vec<(ErrorOutput, Vec<Bytes>)>,
    pub dropped: u64,
}

struct Survivor {
    index: usize,
    data: Bytes,
    lambda_keys: Vec<(String, String)>,
    query_keys: Vec<(String, String)>,
}

/// Collects error records for one batch.
struct Failures<'a> {
    lambda_arn: Option<&'a str>,
    now_ms: u64,
    by_type: HashMap<ErrorOutput, Vec<Bytes>>,
}

impl Failures<'_> {
    fn add(&mut self, to: ErrorOutput, record: &Record, attempts: u32, code: &str, message: &str) {
        let line = error_record(
            record,
            attempts,
            code,
            message,
            self.lambda_arn,
            self.now_ms,
        );
        self.by_type.entry(to).or_default().push(line);
    }
}

/// Longest `errorMessage` in an error record, in bytes; longer messages are cut.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// `message`, cut to `max` bytes at a character boundary and marked with its full length.
pub fn cut_message(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &message[..end], message.len())
}

/// Firehose's error-record envelope, one JSON line: what failed, when, and the record's
/// original bytes in base64.
pub fn error_record(
    record: &Record,
    attempts: u32,
    code: &str,
    message: &str,
    lambda_arn: Option<&str>,
    ended_ms: u64,
) -> Bytes {
    // A transform's or a query's message is as long as it makes it; the record is what counts.
    let message = cut_message(message, MAX_ERROR_MESSAGE_BYTES);
    let mut v = serde_json::json!({
        "attemptsMade": attempts,
        "arrivalTimestamp": record.arrival_ms,
        "errorCode": code,
        "errorMessage": message,
        "attemptEndingTimestamp": ended_ms,
        "rawData": base64::engine::general_purpose::STANDARD.encode(&record.data),
        "recordId": record.id,
    });
    if let Some(arn) = lambda_arn {
        v["lambdaArn"] = serde_json::Value::String(arn.to_owned());
    }
    // Serializing a JSON value cannot fail.
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

pub fn run(job: &Job<'_>, records: &[Record]) -> Processed {
    let lambda = job.processing.and_then(|p| p.lambda.as_ref());
    let mut failures = Failures {
        lambda_arn: lambda.map(|l| l.arn.as_str()),
        now_ms: job.now_ms,
        by_type: HashMap::new(),
    };
    let mut out = Processed::default();
    let metrics = job.metrics;

    // Decompression, CloudWatch Logs message extraction and de-aggregation come first; what
    // follows sees their records (and an error record after them holds that record).
    let expanded;
    let records = match job.processing.filter(|p| preprocess::needed(p)) {
        None => records,
        Some(p) => {
            let e = preprocess::expand(p, records);
            for f in &e.failures {
                let to = if f.decompression {
                    ErrorOutput::DecompressionFailed
                } else {
                    ErrorOutput::ProcessingFailed
                };
                failures.add(to, &records[f.index], 1, f.code, &f.message);
            }
            out.dropped += e.dropped;
            expanded = e.records;
            &expanded[..]
        }
    };

    let mut survivors = match (lambda, job.transform) {
        (Some(lambda), Some(module)) => {
            let mut survivors = Vec::with_capacity(records.len());
            let mut start = 0;
            while start < records.len() {
                let end = call_end(records, start, lambda.call_bytes);
                transform_chunk(
                    module,
                    lambda.retries,
                    records,
                    start..end,
                    metrics,
                    &mut survivors,
                    &mut failures,
                    &mut out.dropped,
                );
                start = end;
            }
            survivors
        }
        // Configured, but the component is not loaded (a replay whose component is gone from
        // the cache and the stream): the records fail rather than pass untransformed.
        (Some(_), None) => {
            for record in records {
                failures.add(
                    ErrorOutput::ProcessingFailed,
                    record,
                    0,
                    "Lambda.InvokeFailed",
                    "the transform this batch was sealed with is not available",
                );
            }
            Vec::new()
        }
        _ => records
            .iter()
            .enumerate()
            .map(|(index, r)| Survivor {
                index,
                data: r.data.clone(),
                lambda_keys: Vec::new(),
                query_keys: Vec::new(),
            })
            .collect(),
    };

    if let Some(text) = job.processing.and_then(|p| p.metadata_query.as_deref()) {
        let inputs: Vec<&[u8]> = survivors.iter().map(|s| &s.data[..]).collect();
        let mut answers = job.queries.keys(text, &inputs).into_iter();
        drop(inputs);
        survivors.retain_mut(|s| {
            // A missing answer cannot happen (the sandbox answers every record); treated as
            // a failure of the record rather than a pass without keys.
            let answer = answers.next().unwrap_or_else(|| {
                Err(sandbox::KeysError::Budget(
                    "the query gave no answer".into(),
                ))
            });
            let (to, message) = match answer {
                Ok(keys) => {
                    s.query_keys = keys;
                    return true;
                }
                Err(sandbox::KeysError::Query(m)) => (ErrorOutput::PartitioningFailed, m),
                // Over its time, memory or stack budget: a failure of processing, like a
                // transform's timeout, not an answer about the record.
                Err(sandbox::KeysError::Budget(m)) => {
                    metrics.query_over_budget.inc();
                    (ErrorOutput::ProcessingFailed, m)
                }
            };
            failures.add(to, &records[s.index], 1, codes::QUERY_FAILED, &message);
            false
        });
    }

    // Parquet rows need no delimiter.
    let delimiter = job.processing.is_some_and(|p| p.append_delimiter) && job.converter.is_none();
    let mut slots: HashMap<String, usize> = HashMap::new();
    // The same keys always render the same prefix: most records find their partition here,
    // without rendering and checking it again.
    type Keys = (Vec<(String, String)>, Vec<(String, String)>);
    let mut slots_by_keys: HashMap<Keys, usize> = HashMap::new();
    for mut s in survivors {
        // The record's partition: an existing one, or one to open once the record has passed
        // every check (a partition never ends up empty).
        let keyed = job.partition_by.is_some() || job.route.is_some();
        let render = |keys: &Keys| match (job.partition_by, job.route) {
            (Some(pieces), _) => partition_prefix(pieces, &keys.0, &keys.1),
            (None, Some(route)) => route(&keys.0, &keys.1),
            (None, None) => Ok(String::new()),
        };
        let target: Result<usize, Option<(String, Keys)>> = match keyed {
            false if out.partitions.is_empty() => Err(None),
            false => Ok(0),
            true => {
                let keys = (
                    std::mem::take(&mut s.query_keys),
                    std::mem::take(&mut s.lambda_keys),
                );
                if let Some(&slot) = slots_by_keys.get(&keys) {
                    Ok(slot)
                } else {
                    let rendered = match render(&keys) {
                        Ok(v) => v,
                        Err((code, m)) => {
                            failures.add(
                                ErrorOutput::PartitioningFailed,
                                &records[s.index],
                                1,
                                code,
                                &m,
                            );
                            continue;
                        }
                    };
                    match slots.get(&rendered) {
                        Some(&slot) => {
                            slots_by_keys.insert(keys, slot);
                            Ok(slot)
                        }
                        None if slots.len() >= job.max_partitions => {
                            metrics.partition_cap_exceeded.inc();
                            failures.add(
                                ErrorOutput::ActivePartitionExceeded,
                                &records[s.index],
                                1,
                                codes::CAP_EXCEEDED,
                                &format!(
                                    "the batch already fills {} partitions (partitioning.max_active_partitions)",
                                    job.max_partitions
                                ),
                            );
                            continue;
                        }
                        None => Err(Some((rendered, keys))),
                    }
                }
            }
        };
        // Checked now, converted again while the object is encoded (a row group at a time,
        // so the batch is never held twice): the same bytes always convert the same way.
        if let Some(converter) = job.converter
            && let Err(m) = converter.check(&s.data)
        {
            failures.add(
                ErrorOutput::FormatConversionFailed,
                &records[s.index],
                1,
                codes::CONVERSION_FAILED,
                &m.0,
            );
            continue;
        }
        let slot = match target {
            Ok(slot) => slot,
            Err(prefix) => {
                let slot = out.partitions.len();
                let prefix = prefix.map(|(rendered, keys)| {
                    slots.insert(rendered.clone(), slot);
                    slots_by_keys.insert(keys, slot);
                    rendered
                });
                out.partitions.push(empty_partition(prefix));
                slot
            }
        };
        let data = if delimiter {
            let mut d = Vec::with_capacity(s.data.len() + 1);
            d.extend_from_slice(&s.data);
            d.push(b'\n');
            Bytes::from(d)
        } else {
            s.data
        };
        let p = &mut out.partitions[slot];
        p.bytes += data.len() as u64;
        p.records.push(data);
        p.indexes.push(s.index);
    }
    // Records share their request's buffer. A partition's buffer may wait a while for more
    // records, and one record kept from every request would keep every request's buffer (12
    // partitions, 12 times the memory the budget counts): each partition copies its records
    // into one buffer of its own, and the requests' buffers go with the batch.
    if job.partition_by.is_some() {
        for p in &mut out.partitions {
            compact(&mut p.records);
        }
    }

    let ok: usize = out.partitions.iter().map(|p| p.records.len()).sum();
    metrics.processed_ok.inc_by(ok as u64);
    metrics.processed_dropped.inc_by(out.dropped);
    for t in ErrorOutput::ALL {
        if let Some(lines) = failures.by_type.remove(&t) {
            metrics.processed_failed.inc_by(lines.len() as u64);
            out.errors.push((t, lines));
        }
    }
    out
}

/// The records, copied into one buffer, each a slice of it.
fn compact(records: &mut [Bytes]) {
    let mut buf = Vec::with_capacity(records.iter().map(Bytes::len).sum());
    for r in records.iter() {
        buf.extend_from_slice(r);
    }
    let buf = Bytes::from(buf);
    let mut start = 0;
    for r in records.iter_mut() {
        let end = start + r.len();
        *r = buf.slice(start..end);
        start = end;
    }
}

fn empty_partition(prefix: Option<String>) -> Partition {
    Partition {
        prefix,
        records: Vec::new(),
        indexes: Vec::new(),
        bytes: 0,
    }
}

/// The end of the call starting at `start`: records up to `max_bytes` of input, at least one.
fn call_end(records: &[Record], start: usize, max_bytes: u64) -> usize {
    let mut bytes = 0u64;
    let mut end = start;
    while end < records.len() {
        bytes += records[end].data.len() as u64;
        if end > start && bytes > max_bytes {
            break;
        }
        end += 1;
    }
    end
}

#[allow(clippy::too_many_arguments)]
fn transform_chunk(
    module: &Module,
    retries: u32,
    records: &[Record],
    range: std::ops::Range<usize>,
    metrics: &StreamMetrics,
    survivors: &mut Vec<Survivor>,
    failures: &mut Failures<'_>,
    dropped: &mut u64,
) {
    let input: Vec<InputRecord> = records[range.clone()]
        .iter()
        .map(|r| InputRecord {
            id: r.id.clone(),
            data: r.data.to_vec(),
            arrival_ms: r.arrival_ms,
        })
        .collect();
    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        let started = Instant::now();
        let result = module.call(&input);
        metrics
            .transform_call_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => break Ok(outcomes),
            Err(e) => {
                metrics.transform_failure(e.kind());
                tracing::warn!(
                    transform = module.name(),
                    records = input.len(),
                    attempt = attempts,
                    error = %e,
                    "transform call failed"
                );
                if attempts > retries {
                    break Err(e);
                }
            }
        }
    };
    match result {
        Ok(outcomes) => {
            for (index, outcome) in range.zip(outcomes) {
                match outcome {
                    Outcome::Ok(t) => survivors.push(Survivor {
                        index,
                        data: Bytes::from(t.data),
                        lambda_keys: t.partition_keys,
                        query_keys: Vec::new(),
                    }),
                    Outcome::Dropped => *dropped += 1,
                    Outcome::Failed(message) => failures.add(
                        ErrorOutput::ProcessingFailed,
                        &records[index],
                        attempts,
                        codes::PROCESSING_FAILED,
                        &message,
                    ),
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            for index in range {
                failures.add(
                    ErrorOutput::ProcessingFailed,
                    &records[index],
                    attempts,
                    e.error_code(),
                    &message,
                );
            }
        }
    }
}

/// The prefix rendered with the record's partition keys, each checked safe for an object key
/// and a local path.
fn partition_prefix(
    pieces: &[Piece],
    query: &[(String, String)],
    lambda: &[(String, String)],
) -> Result<String, (&'static str, String)> {
    for piece in pieces {
        let (keys, name, source) = match piece {
            Piece::Query(k) => (query, k, "partitionKeyFromQuery"),
            Piece::Lambda(k) => (lambda, k, "partitionKeyFromLambda"),
            _ => continue,
        };
        let Some((_, value)) = keys.iter().find(|(k, _)| k == name) else {
            return Err((
                codes::KEY_MISSING,
                format!("no value for !{{{source}:{name}}}"),
            ));
        };
        check_value(value).map_err(|m| {
            (
                codes::KEY_INVALID,
                format!("!{{{source}:{name}}} = {value:?}: {m}"),
            )
        })?;
    }
    let rendered = crate::definition::prefix::fill(pieces, query, lambda, "");
    check_prefix(&rendered).map_err(|m| (codes::KEY_INVALID, m))?;
    Ok(rendered)
}

/// Longest partition key value, in bytes (a file name is at most 255 bytes).
pub const MAX_VALUE_BYTES: usize = 200;
/// Longest rendered prefix of a partition: S3 keys are at most 1024 bytes, and the object
/// name after the prefix takes up to about 150 more.
pub const MAX_PREFIX_BYTES: usize = 800;
/// Punctuation a partition value may hold besides letters and digits: characters that object
/// stores and file systems keep as they are (no percent-encoding, no path meaning).
const VALUE_PUNCTUATION: &str = "-_.=+@,:;!$&'() ";

/// A partition value becomes part of an object key and, with the local store, of a path:
/// letters, digits and a few punctuation characters only, and not `.` or `..`. A value that
/// does not fit is refused, never rewritten (two values must not map to one partition).
pub fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("partition values cannot be empty");
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err("partition values are at most 200 bytes");
    }
    if value == "." || value == ".." {
        return Err("partition values cannot be . or ..");
    }
    if !value
        .chars()
        .all(|c| c.is_alphanumeric() || VALUE_PUNCTUATION.contains(c))
    {
        return Err("partition values may hold letters, digits, spaces and -_.=+@,:;!$&'() only");
    }
    Ok(())
}

/// The rendered prefix of a partition must leave room for the object name, and each of its
/// path segments must fit a file name.
fn check_prefix(rendered: &str) -> Result<(), String> {
    if rendered.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "the prefix would be {} bytes; at most {MAX_PREFIX_BYTES}",
            rendered.len()
        ));
    }
    crate::definition::prefix::check_key_prefix(rendered)
        .map_err(|m| format!("the rendered prefix {rendered:?}: {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_could_escape_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\\b",
            "a\nb",
            "\u{7f}",
            "a#b",
            "a%20",
            "~x",
            "a?b",
            "a*b",
            "[x]",
            "{x}",
            "a|b",
            "<x>",
            "\"q\"",
            "a^b",
            "a`b",
            &"x".repeat(201),
        ] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
        for good in [
            "KR",
            "2026",
            "a..b",
            "é",
            "x y",
            "a=b",
            "user@host",
            &"x".repeat(200),
        ] {
            assert!(check_value(good).is_ok(), "{good:?}");
        }
        let long = vec![
            Piece::Text("p/".into()),
            Piece::Query("a".into()),
            Piece::Query("b".into()),
            Piece::Text("/".into()),
        ];
        let keys = |a: usize, b: usize| {
            vec![
                ("a".to_string(), "x".repeat(a)),
                ("b".to_string(), "y".repeat(b)),
            ]
        };
        assert!(partition_prefix(&long, &keys(200, 55), &[]).is_ok());
        assert!(
            partition_prefix(&long, &keys(200, 56), &[]).is_err(),
            "a segment over 255 bytes"
        );
    }

    #[test]
    fn calls_split_by_input_bytes_with_at_least_one_record() {
        let recs: Vec<Record> = [400, 400, 400, 2000, 10]
            .iter()
            .map(|n| Record {
                id: String::new(),
                arrival_ms: 0,
                data: Bytes::from(vec![b'x'; *n]),
            })
            .collect();
        assert_eq!(call_end(&recs, 0, 1000), 2);
        assert_eq!(call_end(&recs, 2, 1000), 3);
        assert_eq!(call_end(&recs, 3, 1000), 4);
        assert_eq!(call_end(&recs, 4, 1000), 5);
    }

    #[test]
    fn the_error_record_carries_the_raw_data() {
        let r = Record {
            id: "abc".into(),
            arrival_ms: 17,
            data: Bytes::from_static(b"{\"a\":1}"),
        };
        let line = error_record(&r, 2, "Lambda.FunctionError", "boom", Some("x.wasm"), 7);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["attemptsMade"], 2);
        assert_eq!(v["arrivalTimestamp"], 17);
        assert_eq!(v["errorCode"], "Lambda.FunctionError");
        assert_eq!(v["errorMessage"], "boom");
        assert_eq!(v["rawData"], "eyJhIjoxfQ==");
        assert_eq!(v["lambdaArn"], "x.wasm");
        assert_eq!(v["attemptEndingTimestamp"], 7, "the time passed in");
    }
}
