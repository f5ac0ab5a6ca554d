//! The processors Firehose runs before the transform, in its order: `Decompression` (GZIP),
//! `CloudWatchLogProcessing` (`DataMessageExtraction`), then `RecordDeAggregation` (JSON,
//! DELIMITED, and records aggregated by the Kinesis Producer Library). A record may become
//! none (a CloudWatch Logs control message), one, or many; each limit below is checked, and a
//! record past one fails whole, to the error output, never cut short.

use std::io::Read;

use bytes::Bytes;
use serde::Deserialize;

use super::Record;
use crate::definition::{Processing, SubRecords};

/// Bytes one record may decompress to. A CloudWatch Logs batch is at most 1 MiB of events
/// before its JSON envelope; gzip'd log lines from an agent are under Firehose's 1,000 KiB
/// record limit before compression.
pub const MAX_DECOMPRESSED_RECORD: usize = 4 << 20;
/// Bytes a whole batch may decompress to: gzip can expand about 1000 times, so without this a
/// batch of small records could ask for gigabytes.
pub const MAX_DECOMPRESSED_BATCH: usize = 64 << 20;
/// Records one record may split into (CloudWatch Logs puts at most 10,000 events in a batch).
pub const MAX_SUB_RECORDS: usize = 10_000;
/// Records a whole batch may split into: each costs a few hundred bytes of bookkeeping on its
/// way through processing, so tiny sub-records (`a|a|a|...`, gzip'd) must not run to millions.
/// Batches of a stream with these processors are at most [`PREPROCESS_INTAKE_BYTES`] of input.
pub const MAX_BATCH_RECORDS: usize = 100_000;
/// Largest batch of a stream with `Decompression` or `RecordDeAggregation`, whatever its
/// buffering hint: a batch expands before it is processed, and its expansion is capped
/// ([`MAX_DECOMPRESSED_BATCH`], [`MAX_BATCH_RECORDS`]), so batches stay small enough that
/// ordinary records (64 times smaller gzip'd, 100 times more records) never reach the caps.
pub const PREPROCESS_INTAKE_BYTES: u64 = 1 << 20;

/// The first four bytes of a record aggregated by the Kinesis Producer Library; its protobuf
/// message follows, then the MD5 of that message.
const KPL_MAGIC: [u8; 4] = [0xf3, 0x89, 0x9a, 0xc2];
const KPL_DIGEST: usize = 16;

/// Why a record failed before the transform, and where it goes.
pub struct Failure {
    /// Index of the record in the batch.
    pub index: usize,
    /// `decompression-failed` (true) or `processing-failed` (false).
    pub decompression: bool,
    pub code: &'static str,
    pub message: String,
}

pub mod codes {
    pub const DECOMPRESSION_FAILED: &str = "Decompression.Failed";
    pub const DECOMPRESSION_TOO_LARGE: &str = "Decompression.TooLarge";
    pub const NOT_CLOUDWATCH_LOGS: &str = "CloudWatchLogProcessing.InvalidRecord";
    pub const DEAGGREGATION_FAILED: &str = "RecordDeAggregation.InvalidRecord";
    pub const TOO_MANY_SUB_RECORDS: &str = "RecordDeAggregation.TooManySubRecords";
    pub const BATCH_TOO_LARGE: &str = "Processing.BatchLimitExceeded";
}

/// What the processors before the transform made of a batch.
pub struct Expanded {
    pub records: Vec<Record>,
    pub failures: Vec<Failure>,
    /// Records that became no record: CloudWatch Logs control messages (dropped as Firehose
    /// drops them), data messages without events, KPL aggregates of no records, JSON records of
    /// white space only. Counted, never silent.
    pub dropped: u64,
}

/// Whether `p` has a processor that runs before the transform.
pub fn needed(p: &Processing) -> bool {
    p.decompression || p.message_extraction || p.deaggregation.is_some()
}

/// Runs the processors before the transform on `records`. A record that becomes several
/// keeps its id for the first and gets `<id>.<n>` for the n-th after it, so ids stay unique
/// within the batch.
pub fn expand(p: &Processing, records: &[Record]) -> Expanded {
    let mut out = Expanded {
        records: Vec::with_capacity(records.len()),
        failures: Vec::new(),
        dropped: 0,
    };
    let mut decompressed_total = 0usize;
    for (index, record) in records.iter().enumerate() {
        let mut fail = |decompression: bool, code: &'static str, message: String| {
            out.failures.push(Failure {
                index,
                decompression,
                code,
                message,
            })
        };
        let data = if p.decompression {
            let budget = MAX_DECOMPRESSED_RECORD.min(MAX_DECOMPRESSED_BATCH - decompressed_total);
            match gunzip(&record.data, budget) {
                Ok(data) => {
                    decompressed_total += data.len();
                    data
                }
                Err(Gunzip::TooLarge) if budget < MAX_DECOMPRESSED_RECORD => {
                    fail(
                        true,
                        codes::DECOMPRESSION_TOO_LARGE,
                        format!(
                            "the batch's records decompress to more than {MAX_DECOMPRESSED_BATCH} bytes; this one is past that"
                        ),
                    );
                    continue;
                }
                Err(Gunzip::TooLarge) => {
                    fail(
                        true,
                        codes::DECOMPRESSION_TOO_LARGE,
                        format!("decompresses to more than {MAX_DECOMPRESSED_RECORD} bytes"),
                    );
                    continue;
                }
                Err(Gunzip::Invalid(m)) => {
                    fail(
                        true,
                        codes::DECOMPRESSION_FAILED,
                        format!("not GZIP data: {m}"),
                    );
                    continue;
                }
            }
        } else {
            record.data.clone()
        };
        let parts = if p.message_extraction {
            match log_messages(&data) {
                Ok(None) => {
                    out.dropped += 1;
                    continue;
                }
                Ok(Some(messages)) => messages,
                Err(m) => {
                    fail(false, codes::NOT_CLOUDWATCH_LOGS, m);
                    continue;
                }
            }
        } else {
            vec![data]
        };
        let parts = match &p.deaggregation {
            None => parts,
            Some(kind) => {
                let mut split = Vec::new();
                let mut failed = None;
                for part in parts {
                    match deaggregate(kind, part, MAX_SUB_RECORDS - split.len()) {
                        Ok(subs) => split.extend(subs),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => split,
                    Some((code, m)) => {
                        fail(false, code, m);
                        continue;
                    }
                }
            }
        };
        if parts.len() > MAX_SUB_RECORDS {
            fail(
                false,
                codes::TOO_MANY_SUB_RECORDS,
                format!("holds {} records, more than {MAX_SUB_RECORDS}", parts.len()),
            );
            continue;
        }
        if out.records.len() + parts.len() > MAX_BATCH_RECORDS {
            fail(
                false,
                codes::BATCH_TOO_LARGE,
                format!(
                    "the batch's records split into more than {MAX_BATCH_RECORDS} records; this one is past that"
                ),
            );
            continue;
        }
        if parts.is_empty() {
            out.dropped += 1;
            continue;
        }
        for (n, data) in parts.into_iter().enumerate() {
            out.records.push(Record {
                id: if n == 0 {
                    record.id.clone()
                } else {
                    format!("{}.{n}", record.id)
                },
                arrival_ms: record.arrival_ms,
                data,
            });
        }
    }
    out
}

enum Gunzip {
    TooLarge,
    Invalid(String),
}

/// The decompressed bytes of one or more gzip members, refusing to produce more than `max`.
fn gunzip(data: &[u8], max: usize) -> Result<Bytes, Gunzip> {
    let mut out = Vec::with_capacity((data.len() * 4).min(max) + 1);
    let read = flate2::read::MultiGzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Err(e) => Err(Gunzip::Invalid(e.to_string())),
        Ok(_) if out.len() > max => Err(Gunzip::TooLarge),
        Ok(_) => Ok(Bytes::from(out)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogsEnvelope {
    message_type: String,
    #[serde(default)]
    log_events: Vec<LogEvent>,
}

#[derive(Deserialize)]
struct LogEvent {
    message: String,
}

/// A CloudWatch Logs subscription record's log event messages, one record each, each ending in
/// a newline (as Firehose writes them); `None` for a control message.
fn log_messages(data: &[u8]) -> Result<Option<Vec<Bytes>>, String> {
    let envelope: LogsEnvelope = serde_json::from_slice(data)
        .map_err(|e| format!("not a CloudWatch Logs subscription record: {e}"))?;
    match envelope.message_type.as_str() {
        "CONTROL_MESSAGE" => Ok(None),
        "DATA_MESSAGE" => {
            if envelope.log_events.len() > MAX_SUB_RECORDS {
                return Err(format!(
                    "holds {} log events, more than {MAX_SUB_RECORDS}",
                    envelope.log_events.len()
                ));
            }
            Ok(Some(
                envelope
                    .log_events
                    .into_iter()
                    .map(|e| {
                        let mut line = e.message.into_bytes();
                        line.push(b'\n');
                        Bytes::from(line)
                    })
                    .collect(),
            ))
        }
        other => Err(format!(
            "messageType is {other:?}, not DATA_MESSAGE or CONTROL_MESSAGE"
        )),
    }
}

/// Splits one record into at most `max` records (one more is an error): a KPL aggregated record
/// into its user records whatever the sub-record type, else JSON values or delimited pieces.
fn deaggregate(
    kind: &SubRecords,
    data: Bytes,
    max: usize,
) -> Result<Vec<Bytes>, (&'static str, String)> {
    let too_many = || {
        (
            codes::TOO_MANY_SUB_RECORDS,
            format!("holds more than {MAX_SUB_RECORDS} records"),
        )
    };
    if let Some(records) = kpl_records(&data) {
        let records = records.map_err(|m| (codes::DEAGGREGATION_FAILED, m))?;
        if records.len() > max {
            return Err(too_many());
        }
        return Ok(records);
    }
    let mut out = Vec::new();
    match kind {
        SubRecords::Json => {
            let mut values =
                serde_json::Deserializer::from_slice(&data).into_iter::<serde::de::IgnoredAny>();
            let mut start = 0;
            while let Some(value) = values.next() {
                value.map_err(|e| {
                    (
                        codes::DEAGGREGATION_FAILED,
                        format!("not concatenated JSON values: {e}"),
                    )
                })?;
                let end = values.byte_offset();
                while start < end && data[start].is_ascii_whitespace() {
                    start += 1;
                }
                if out.len() == max {
                    return Err(too_many());
                }
                out.push(data.slice(start..end));
                start = end;
            }
        }
        SubRecords::Delimited(delimiter) => {
            let mut start = 0;
            let push = |piece: std::ops::Range<usize>, out: &mut Vec<Bytes>| {
                // Empty pieces (a trailing delimiter, two in a row) are not records.
                if piece.is_empty() {
                    return Ok(());
                }
                if out.len() == max {
                    return Err(too_many());
                }
                out.push(data.slice(piece));
                Ok(())
            };
            let mut i = 0;
            while i + delimiter.len() <= data.len() {
                if data[i..].starts_with(delimiter) {
                    push(start..i, &mut out)?;
                    i += delimiter.len();
                    start = i;
                } else {
                    i += 1;
                }
            }
            push(start..data.len(), &mut out)?;
        }
    }
    Ok(out)
}

/// The user records of a KPL aggregated record: `None` if `data` is not one (no magic, too
/// short, or a digest that does not match, as the KPL's own readers decide), an error if it
/// is one but its message cannot be read.
fn kpl_records(data: &Bytes) -> Option<Result<Vec<Bytes>, String>> {
    use md5::Digest;
    if data.len() < KPL_MAGIC.len() + KPL_DIGEST || !data.starts_with(&KPL_MAGIC) {
        return None;
    }
    let message = &data[KPL_MAGIC.len()..data.len() - KPL_DIGEST];
    let digest = md5::Md5::digest(message);
    if digest[..] != data[data.len() - KPL_DIGEST..] {
        return None;
    }
    let offset = KPL_MAGIC.len();
    // AggregatedRecord: field 3 repeats Record; a Record's field 3 is its data.
    let result = (|| {
        let mut records = Vec::new();
        for field in Fields::new(message) {
            let (number, value) = field?;
            if number == 3 {
                let Value::Bytes(range) = value else {
                    return Err("a record that is not a message".to_owned());
                };
                let record = &message[range.clone()];
                let mut payload = None;
                for inner in Fields::new(record) {
                    if let (3, Value::Bytes(r)) = inner? {
                        let start = offset + range.start + r.start;
                        payload = Some(data.slice(start..start + r.len()));
                    }
                }
                if records.len() == MAX_SUB_RECORDS {
                    return Err(format!("holds more than {MAX_SUB_RECORDS} records"));
                }
                records.push(payload.ok_or("a record without data")?);
            }
        }
        Ok(records)
    })();
    Some(result.map_err(|m| format!("a KPL aggregated record that cannot be read: {m}")))
}

enum Value {
    Varint,
    Bytes(std::ops::Range<usize>),
    Fixed,
}

/// The fields of a protobuf message, in order: enough of the wire format to find the KPL's
/// records (varints, length-delimited, fixed 32 and 64 bit), every length checked.
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Fields { data, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.at).ok_or("a varint cut short")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn skip(&mut self, n: usize) -> Result<std::ops::Range<usize>, String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or("a field longer than its message")?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<(u64, Value), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.data.len() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => {
                    self.varint()?;
                    Value::Varint
                }
                1 => {
                    self.skip(8)?;
                    Value::Fixed
                }
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                    Value::Bytes(self.skip(len)?)
                }
                5 => {
                    self.skip(4)?;
                    Value::Fixed
                }
                other => return Err(format!("wire type {other}")),
            };
            Ok((key >> 3, value))
        })();
        if field.is_err() {
            // One error ends the message.
            self.at = self.data.len();
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn processing(
        decompression: bool,
        message_extraction: bool,
        deaggregation: Option<SubRecords>,
    ) -> Processing {
        Processing {
            decompression,
            message_extraction,
            deaggregation,
            lambda: None,
            metadata_query: None,
            append_delimiter: false,
        }
    }

    fn record(id: &str, data: &[u8]) -> Record {
        Record {
            id: id.into(),
            arrival_ms: 7,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn datas(e: &Expanded) -> Vec<&[u8]> {
        e.records.iter().map(|r| &r.data[..]).collect()
    }

    #[test]
    fn cloudwatch_logs_envelopes_become_their_messages() {
        let data = br#"{"messageType":"DATA_MESSAGE","owner":"1","logGroup":"g","logStream":"s","subscriptionFilters":["f"],"logEvents":[{"id":"1","timestamp":1,"message":"first"},{"id":"2","timestamp":2,"message":"second \"quoted\""}]}"#;
        let control = br#"{"messageType":"CONTROL_MESSAGE","logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE"}]}"#;
        let p = processing(true, true, None);
        let e = expand(
            &p,
            &[
                record("a", &gzip(data)),
                record("b", &gzip(control)),
                record("c", b"not gzip"),
                record("d", &gzip(b"{\"messageType\":\"OTHER\"}")),
            ],
        );
        assert_eq!(datas(&e), [&b"first\n"[..], b"second \"quoted\"\n"]);
        assert_eq!(e.records[1].id, "a.1");
        assert_eq!(e.dropped, 1);
        assert_eq!(e.failures.len(), 2);
        assert!(e.failures[0].decompression && e.failures[0].index == 2);
        assert!(!e.failures[1].decompression && e.failures[1].index == 3);
    }

    #[test]
    fn decompression_limits_hold_per_record_and_per_batch() {
        let p = processing(true, false, None);
        let exact = gzip(&vec![b'a'; MAX_DECOMPRESSED_RECORD]);
        let over = gzip(&vec![b'a'; MAX_DECOMPRESSED_RECORD + 1]);
        let e = expand(&p, &[record("a", &exact), record("b", &over)]);
        assert_eq!(e.records.len(), 1);
        assert_eq!(e.failures[0].code, codes::DECOMPRESSION_TOO_LARGE);
        // 16 records of 4 MiB fill the batch's 64 MiB; the 17th fails.
        let batch: Vec<Record> = (0..17).map(|i| record(&i.to_string(), &exact)).collect();
        let e = expand(&p, &batch);
        assert_eq!(e.records.len(), 16);
        assert_eq!(e.failures.len(), 1);
        assert_eq!(e.failures[0].index, 16);
        // Two gzip members decompress to both.
        let mut two = gzip(b"one ");
        two.extend(gzip(b"two"));
        let e = expand(&p, &[record("a", &two)]);
        assert_eq!(datas(&e), [&b"one two"[..]]);
    }

    #[test]
    fn json_sub_records_split_with_or_without_white_space() {
        let p = processing(false, false, Some(SubRecords::Json));
        let e = expand(
            &p,
            &[
                record("a", b"{\"n\":1}{\"n\":2}\n {\"n\":[3,{\"x\":\"}{\"}]}\n"),
                record("b", b"{\"n\":1} {broken"),
                record("c", b""),
            ],
        );
        assert_eq!(
            datas(&e),
            [
                &b"{\"n\":1}"[..],
                b"{\"n\":2}",
                b"{\"n\":[3,{\"x\":\"}{\"}]}"
            ]
        );
        assert_eq!(
            e.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "a.1", "a.2"]
        );
        assert_eq!(e.failures.len(), 1);
        assert_eq!(e.failures[0].index, 1);
    }

    #[test]
    fn delimited_sub_records_and_their_limit() {
        let p = processing(false, false, Some(SubRecords::Delimited(b"||".to_vec())));
        let e = expand(&p, &[record("a", b"x||y||||z||")]);
        assert_eq!(datas(&e), [&b"x"[..], b"y", b"z"]);
        let at_limit = b"a|".repeat(MAX_SUB_RECORDS);
        let p = processing(false, false, Some(SubRecords::Delimited(b"|".to_vec())));
        let e = expand(&p, &[record("a", &at_limit)]);
        assert_eq!(e.records.len(), MAX_SUB_RECORDS);
        let over = b"a|".repeat(MAX_SUB_RECORDS + 1);
        let e = expand(&p, &[record("a", &over)]);
        assert!(e.records.is_empty());
        assert_eq!(e.failures[0].code, codes::TOO_MANY_SUB_RECORDS);
    }

    /// A KPL aggregated record, written by hand from its definition.
    fn kpl(records: &[&[u8]]) -> Vec<u8> {
        use md5::Digest;
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
            varint(n << 3 | 2, out);
            varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
        let mut message = Vec::new();
        bytes_field(1, b"partition-key", &mut message);
        for r in records {
            let mut inner = Vec::new();
            varint(1 << 3, &mut inner);
            varint(0, &mut inner);
            bytes_field(3, r, &mut inner);
            bytes_field(3, &inner, &mut message);
        }
        let mut out = KPL_MAGIC.to_vec();
        out.extend_from_slice(&message);
        out.extend_from_slice(&md5::Md5::digest(&message));
        out
    }

    #[test]
    fn kpl_aggregated_records_become_their_user_records() {
        let p = processing(false, false, Some(SubRecords::Json));
        let agg = kpl(&[b"{\"a\":1}", b"{\"a\":2}{\"a\":3}", b""]);
        let mut wrong_digest = agg.clone();
        *wrong_digest.last_mut().unwrap() ^= 1;
        let mut cut = kpl(&[b"{\"a\":1}"]);
        // A record field whose length runs past the message, with the digest made to match.
        let message_len = cut.len() - KPL_MAGIC.len() - KPL_DIGEST;
        cut[KPL_MAGIC.len() + message_len - 8] = 0x7f;
        let message = cut[KPL_MAGIC.len()..KPL_MAGIC.len() + message_len].to_vec();
        use md5::Digest;
        let digest = md5::Md5::digest(&message);
        let n = cut.len();
        cut[n - KPL_DIGEST..].copy_from_slice(&digest);
        let e = expand(&p, &[record("a", &agg), record("b", &cut)]);
        // User records are final: the second is not split again.
        assert_eq!(datas(&e), [&b"{\"a\":1}"[..], b"{\"a\":2}{\"a\":3}", b""]);
        assert_eq!(e.failures.len(), 1);
        assert_eq!(e.failures[0].index, 1);
        // A digest that does not match: not an aggregated record, split as JSON (and it is not).
        let e = expand(&p, &[record("c", &wrong_digest)]);
        assert!(e.records.is_empty());
        assert_eq!(e.failures[0].code, codes::DEAGGREGATION_FAILED);
    }

    #[test]
    fn records_that_become_none_are_counted_and_a_batch_splits_into_at_most_its_limit() {
        let p = processing(false, false, Some(SubRecords::Json));
        let empty_kpl = kpl(&[]);
        let e = expand(
            &p,
            &[
                record("a", b"  \n"),
                record("b", &empty_kpl),
                record("c", b"{}"),
            ],
        );
        assert_eq!(datas(&e), [&b"{}"[..]]);
        assert_eq!(e.dropped, 2);
        assert!(e.failures.is_empty());
        let p = processing(true, true, None);
        let no_events = br#"{"messageType":"DATA_MESSAGE","logEvents":[]}"#;
        let e = expand(&p, &[record("a", &gzip(no_events))]);
        assert_eq!((e.records.len(), e.dropped), (0, 1));

        // 10 records of 10,000 sub-records fill the batch; the 11th fails, whole.
        let p = processing(false, false, Some(SubRecords::Delimited(b"|".to_vec())));
        let full = b"a|".repeat(MAX_SUB_RECORDS);
        let batch: Vec<Record> = (0..=MAX_BATCH_RECORDS / MAX_SUB_RECORDS)
            .map(|i| record(&i.to_string(), &full))
            .collect();
        let e = expand(&p, &batch);
        assert_eq!(e.records.len(), MAX_BATCH_RECORDS);
        assert_eq!(e.failures.len(), 1);
        assert_eq!(e.failures[0].code, codes::BATCH_TOO_LARGE);
        assert_eq!(e.failures[0].index, MAX_BATCH_RECORDS / MAX_SUB_RECORDS);
    }
}
