//! Data plane: `PutRecord` and `PutRecordBatch`. Parses and checks the request against
//! Firehose's limits (500 records, 1,000 KiB per decoded record, 4 MiB per request) before any
//! record is journaled, then answers per record.

use std::borrow::Cow;

use base64_simd::{Out, STANDARD};
use bytes::Bytes;
use serde::Deserialize;

use super::auth::Grant;
use super::error::{ApiError, ErrorKind, from_json_error};
use crate::catalog::Catalog;
use crate::pipeline::now_ms;

pub const MAX_RECORDS: usize = 500;
pub const MAX_RECORD_BYTES: usize = 1_024_000;
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
struct RecordIn<'a> {
    #[serde(rename = "Data", borrow)]
    data: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PutRecordIn<'a> {
    #[serde(rename = "DeliveryStreamName", borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "Record", borrow)]
    record: RecordIn<'a>,
}

#[derive(Deserialize)]
struct PutRecordBatchIn<'a> {
    #[serde(rename = "DeliveryStreamName", borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "Records", borrow)]
    records: Vec<RecordIn<'a>>,
}

pub async fn put_record(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let PutRequest { name, records } = read_put_record(body, grant)?;
    let entry = catalog.get(&name)?;
    // A put that accepts nothing is an error, so the one record was accepted.
    let outcome = entry.runtime.put(now_ms(), records).await?;
    let id = entry.runtime.shared().record_id(outcome.first);
    Ok(format!(r#"{{"RecordId":"{id}","Encrypted":false}}"#).into_bytes())
}

pub async fn put_record_batch(
    catalog: &Catalog,
    body: &[u8],
    grant: &Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let PutRequest { name, records } = read_put_record_batch(body, grant)?;
    let n = records.len();
    let entry = catalog.get(&name)?;
    let outcome = entry.runtime.put(now_ms(), records).await?;

    let shared = entry.runtime.shared();
    let mut out = String::with_capacity(64 + n * 56);
    out.push_str(r#"{"FailedPutCount":"#);
    out.push_str(&(n - outcome.accepted).to_string());
    out.push_str(r#","Encrypted":false,"RequestResponses":["#);
    let mut position = outcome.first;
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        if i < outcome.accepted {
            out.push_str(r#"{"RecordId":""#);
            out.push_str(&shared.record_id(position));
            out.push_str(r#""}"#);
            position = position.next();
        } else {
            out.push_str(
                r#"{"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down: the memory buffer is at its cap."}"#,
            );
        }
    }
    out.push_str("]}");
    Ok(out.into_bytes())
}

/// A put request as read from its body: the stream it names (which the grant allows) and
/// its records, decoded and within Firehose's limits.
pub(crate) struct PutRequest<'a> {
    pub name: Cow<'a, str>,
    pub records: Vec<Bytes>,
}

/// Reads a `PutRecord` body: everything but the catalog lookup.
pub(crate) fn read_put_record<'a>(
    body: &'a [u8],
    grant: &Grant<'_>,
) -> Result<PutRequest<'a>, ApiError> {
    let input: PutRecordIn<'_> = serde_json::from_slice(body).map_err(|e| from_json_error(&e))?;
    grant.stream("PutRecord", &input.name)?;
    let records = decode(std::slice::from_ref(&input.record), "Record.Data")?;
    Ok(PutRequest {
        name: input.name,
        records,
    })
}

/// Reads a `PutRecordBatch` body: everything but the catalog lookup.
pub(crate) fn read_put_record_batch<'a>(
    body: &'a [u8],
    grant: &Grant<'_>,
) -> Result<PutRequest<'a>, ApiError> {
    let input: PutRecordBatchIn<'_> =
        serde_json::from_slice(body).map_err(|e| from_json_error(&e))?;
    grant.stream("PutRecordBatch", &input.name)?;
    let n = input.records.len();
    if n == 0 || n > MAX_RECORDS {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("Records must hold 1 to {MAX_RECORDS} records, got {n}."),
        ));
    }
    let records = decode(&input.records, "Records")?;
    Ok(PutRequest {
        name: input.name,
        records,
    })
}

/// Decodes every record into one buffer (one allocation per request) and slices it.
fn decode(records: &[RecordIn<'_>], field: &str) -> Result<Vec<Bytes>, ApiError> {
    let invalid = |i: usize| {
        ApiError::invalid(format!(
            "{} is not valid base64 (standard alphabet, with padding).",
            record_field(field, i)
        ))
    };
    // Exact sizes first (from length and padding alone), so limits are checked before any
    // decoding and the whole request decodes into one buffer of the right size.
    let mut total = 0usize;
    for (i, r) in records.iter().enumerate() {
        let size = STANDARD
            .decoded_length(r.data.as_bytes())
            .map_err(|_| invalid(i))?;
        if size > MAX_RECORD_BYTES {
            return Err(too_large(field, i, size));
        }
        total += size;
    }
    if total > MAX_REQUEST_BYTES {
        return Err(request_too_large(total));
    }
    // Written into uninitialized capacity: zeroing 4 MiB first would cost a pass over it.
    let mut buf: Vec<u8> = Vec::with_capacity(total);
    let mut ends = Vec::with_capacity(records.len());
    let mut at = 0;
    for (i, r) in records.iter().enumerate() {
        let written = STANDARD
            .decode(
                r.data.as_bytes(),
                Out::from_uninit_slice(&mut buf.spare_capacity_mut()[at..]),
            )
            .map_err(|_| invalid(i))?
            .len();
        at += written;
        ends.push(at);
    }
    // SAFETY: the decoder initialized exactly `at` bytes from the start of the capacity
    // (each record's output starts where the previous one ended), and `at <= total`.
    unsafe { buf.set_len(at) };
    let mut all = Bytes::from(buf);
    let mut out = Vec::with_capacity(records.len());
    let mut start = 0;
    for end in ends {
        out.push(all.split_to(end - start));
        start = end;
    }
    Ok(out)
}

fn record_field(field: &str, i: usize) -> String {
    if field == "Records" {
        format!("Records[{i}].Data")
    } else {
        field.to_owned()
    }
}

fn too_large(field: &str, i: usize, size: usize) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidArgument,
        format!(
            "{} is {size} bytes after base64 decoding; the limit is {MAX_RECORD_BYTES} bytes (1,000 KiB).",
            record_field(field, i)
        ),
    )
}

fn request_too_large(size: usize) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidArgument,
        format!(
            "The request carries {size} bytes of record data; the limit is {MAX_REQUEST_BYTES} bytes (4 MiB)."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    fn rec(data: &str) -> RecordIn<'_> {
        RecordIn {
            data: Cow::Borrowed(data),
        }
    }

    #[test]
    fn decodes_into_slices_in_order() {
        let a = STANDARD.encode(b"hello\n");
        let b = STANDARD.encode(b"");
        let c = STANDARD.encode(b"world");
        let out = decode(&[rec(&a), rec(&b), rec(&c)], "Records").unwrap();
        assert_eq!(out, [&b"hello\n"[..], b"", b"world"]);
    }

    #[test]
    fn record_limit_is_exact() {
        let ok = STANDARD.encode(vec![b'x'; MAX_RECORD_BYTES]);
        assert_eq!(
            decode(&[rec(&ok)], "Records").unwrap()[0].len(),
            MAX_RECORD_BYTES
        );
        let over = STANDARD.encode(vec![b'x'; MAX_RECORD_BYTES + 1]);
        let e = decode(&[rec(&over)], "Records").unwrap_err();
        assert!(e.message.contains("Records[0].Data"), "{}", e.message);
    }

    #[test]
    fn request_limit_is_exact() {
        // 4 records of 1,000 KiB plus one of the remainder: exactly 4 MiB.
        let full = STANDARD.encode(vec![b'x'; MAX_RECORD_BYTES]);
        let rest = MAX_REQUEST_BYTES - 4 * MAX_RECORD_BYTES;
        let tail = STANDARD.encode(vec![b'y'; rest]);
        let tail_over = STANDARD.encode(vec![b'y'; rest + 1]);
        let mut records = vec![rec(&full), rec(&full), rec(&full), rec(&full), rec(&tail)];
        assert!(decode(&records, "Records").is_ok());
        records[4] = rec(&tail_over);
        assert!(decode(&records, "Records").is_err());
    }

    #[test]
    fn bad_base64_names_the_record() {
        let good = STANDARD.encode(b"ok");
        let e = decode(&[rec(&good), rec("not base64!")], "Records").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("Records[1].Data"), "{}", e.message);
    }
}
