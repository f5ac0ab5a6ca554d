//! The bodies of the fuzz targets in `fuzz/` (cargo fuzz, libFuzzer): one function per target,
//! taking the fuzzer's bytes. They live in the library so that `tests/fuzz_regressions.rs`
//! replays every kept input with a plain `cargo test`, without nightly or libFuzzer.
//!
//! Each function feeds hostile bytes to one parser or decoder the daemon runs on input it does
//! not control (request bodies, headers, journal files) or on operator text (config, prefixes,
//! Hive types), and must never panic, loop or exhaust memory on any input. The `assert!`s here
//! are invariants the code claims (a rendered type parses back to itself, what `sign` signs
//! `verify` accepts, replay is stable across reopens); a failed one is a bug like a panic.
//!
//! Not part of the daemon's API: nothing else may call into this module.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use rand::SeedableRng;

use crate::api::auth::{self, AuthError, Class, Grant, Key, Keys, SignedRequest};
use crate::api::error::ApiError;
use crate::api::{control, data};
use crate::definition::conversion::{
    Conversion, JsonInput, ParquetCompression, ParquetOptions, SerDe, Tables,
};
use crate::definition::prefix::{self, ParseOptions, Piece, PrefixField, PrefixTemplate};
use crate::definition::{self, S3Destination, StreamName, hive_type};
use crate::encode::parquet;
use crate::journal::{Journal, JournalOptions, RecordRef};
use crate::pipeline::entries;

/// Splits off the first `n` bytes (fewer if there are not that many).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn take_u8(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fn take_u64(data: &mut &[u8]) -> u64 {
    let mut le = [0u8; 8];
    let head = take(data, 8);
    le[..head.len()].copy_from_slice(head);
    u64::from_le_bytes(le)
}

/// An instant between 1970 and the end of year 9999, from eight bytes.
fn instant(seconds: u64) -> DateTime<Utc> {
    const END_OF_9999: u64 = 253_402_300_799;
    let s = seconds % (END_OF_9999 + 1);
    DateTime::from_timestamp(s as i64, ((seconds >> 40) % 1_000_000_000) as u32).unwrap_or_default()
}

/// The clock every auth target runs at.
fn auth_now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_796_551_200, 0).unwrap_or_default() // 2026-12-06T10:00:00Z
}

fn fuzz_key(streams: &[&str], classes: Vec<Class>) -> Key {
    Key {
        access_key_id: "AKIDFUZZ".into(),
        secret: "fuzz-secret".into(),
        streams: streams.iter().map(|s| s.to_string()).collect(),
        classes,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The Firehose request parser.

/// First byte: the operation (and the grant); the rest: the request body. Every body is read as
/// the API reads it, then validated as the catalog validates a new or updated destination, and
/// a destination that validates must survive the catalog's persistence (JSON) and validate again.
pub fn request_parser(data: &[u8]) {
    let mut data = data;
    let op = take_u8(&mut data);
    let limited = fuzz_key(&["game-*", "s"], vec![Class::Put, Class::Manage]);
    let grant = if op & 0x80 == 0 {
        Grant::Anyone
    } else {
        Grant::Key(&limited)
    };
    let body = data;
    match op % 4 {
        0 => put(data::read_put_record(body, &grant), 1),
        1 => put(
            data::read_put_record_batch(body, &grant),
            crate::api::MAX_RECORDS,
        ),
        2 => {
            if let Ok(request) = control::read_create(body, &grant) {
                let _ = StreamName::parse(&request.name);
                let _ = crate::definition::tags::check_list(&request.tags, true);
                if let Some(e) = &request.encryption {
                    let _ = e.check();
                }
                check_destination(&request.destination);
            }
        }
        _ => {
            if let Ok(request) = control::read_update(body, &grant) {
                let mut merged = S3Destination {
                    bucket_arn: Some("arn:aws:s3:::fuzz-bucket".into()),
                    ..S3Destination::default()
                };
                merged.apply_update(request.update);
                check_destination(&merged);
            }
        }
    }
}

fn put(read: Result<data::PutRequest<'_>, ApiError>, max: usize) {
    let Ok(request) = read else { return };
    assert!((1..=max).contains(&request.records.len()));
    let total: usize = request.records.iter().map(Bytes::len).sum();
    assert!(
        request
            .records
            .iter()
            .all(|r| r.len() <= crate::api::MAX_RECORD_BYTES)
    );
    assert!(total <= crate::api::MAX_REQUEST_BYTES);
    let _: Cow<'_, str> = request.name;
}

fn check_destination(raw: &S3Destination) {
    let tables = Tables::default();
    if definition::validate(raw, &tables, crate::process::jq::check).is_err() {
        return;
    }
    let stored = serde_json::to_vec(raw).expect("a destination serializes");
    let back: S3Destination =
        serde_json::from_slice(&stored).expect("a stored destination reads back");
    assert!(
        definition::validate(&back, &tables, crate::process::jq::check).is_ok(),
        "a destination that validated does not after a persistence round trip: {raw:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. SigV4.

/// Input: `METHOD PATH[?QUERY]\n`, then `name: value` header lines, an empty line, and the body.
/// The first byte's low bit picks the mode: check and verify the request as it stands, or sign it
/// with the configured key first (as the SDKs and `auth::sign` do), after which `verify` must
/// accept it whenever it is a request the module documents it accepts. The first header line's
/// value is also given to the Authorization parser on its own.
pub fn sigv4(data: &[u8]) {
    let mut data = data;
    let mode = take_u8(&mut data);
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &b""[..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let mut parts = request_line.splitn(2, ' ');
    let method = parts.next().unwrap_or("POST").to_owned();
    let target = parts.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = HeaderMap::new();
    let mut first_value = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        first_value.get_or_insert(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(value) = first_value.and_then(|v| std::str::from_utf8(v).ok()) {
        let _ = auth::parse_authorization(value);
    }

    let key = fuzz_key(&["*"], vec![Class::Put, Class::Read, Class::Manage]);
    let keys = Keys::new(vec![key.clone()]);
    let now = auth_now();
    if mode & 1 == 0 {
        let _ = keys.check_headers(&headers, now);
        let request = SignedRequest {
            method: &method,
            path,
            query,
            headers: &headers,
            body,
        };
        if let Ok(k) = keys.verify(&request, now) {
            // Only a request signed with the key's secret verifies; the fuzzer cannot forge one.
            assert_eq!(k.access_key_id, key.access_key_id);
        }
        return;
    }

    headers.remove("authorization");
    headers.remove("x-amz-date");
    let unsigned = SignedRequest {
        method: &method,
        path,
        query,
        headers: &headers,
        body,
    };
    let (date, authorization) = auth::sign(
        &unsigned,
        &auth::sha256_hex(body),
        &key.access_key_id,
        &key.secret,
        "eu-west-1",
        now,
    );
    let mut signed_headers = headers.clone();
    let (Ok(date), Ok(authorization)) = (date.parse(), authorization.parse()) else {
        return;
    };
    signed_headers.insert("x-amz-date", date);
    signed_headers.insert("authorization", authorization);
    let signed = SignedRequest {
        headers: &signed_headers,
        ..unsigned
    };
    let verdict = keys.verify(&signed, now);
    if verify_must_accept(&signed_headers, body) {
        assert!(
            verdict.is_ok(),
            "a request signed as the SDKs sign it is refused: {:?}",
            verdict.err()
        );
    } else {
        assert!(!matches!(verdict, Err(AuthError::UnknownKey(m)) if m.contains("invalid")));
    }
}

/// What the auth module documents it refuses even when correctly signed: a request without the
/// headers that must be signed, with a session token, a steering header twice, a header value
/// that is not text, a body hash that does not match, header names outside SigV4's lowercase
/// token characters, too many signed headers, or signed headers too large to hash.
fn verify_must_accept(headers: &HeaderMap, body: &[u8]) -> bool {
    let names_ok = headers.keys().all(|n| {
        n.as_str()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    });
    let values_ok = headers.values().all(|v| v.to_str().is_ok());
    let once = ["authorization", "x-amz-date", "x-amz-target"]
        .iter()
        .all(|n| headers.get_all(*n).iter().count() <= 1);
    let hash_ok = headers
        .get("x-amz-content-sha256")
        .is_none_or(|v| v.to_str().ok() == Some(auth::sha256_hex(body).as_str()));
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 2)
        .sum();
    names_ok
        && values_ok
        && once
        && hash_ok
        && headers.contains_key("host")
        && headers.contains_key("x-amz-target")
        && !headers.contains_key("x-amz-security-token")
        // `authorization` itself is not signed.
        && headers.keys_len() <= 33
        && size < 32 * 1024
}

// ---------------------------------------------------------------------------------------------
// 3. Prefix templates.

/// Byte 0: which parse; bytes 1-8: the instant rendered at; bytes 9-16: RNG seed; the rest: the
/// template text (for a destination, `Prefix` and `ErrorOutputPrefix` split at the first `\n`,
/// which neither may contain). A template without partition keys that parsed must render to a
/// key prefix every store takes the same way, at any instant and for any error output type.
pub fn prefix_template(data: &[u8]) {
    let mut data = data;
    let how = take_u8(&mut data);
    let at = instant(take_u64(&mut data));
    let mut rng = rand::rngs::StdRng::seed_from_u64(take_u64(&mut data));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = ParseOptions {
        allow_partition_keys: how & 0x10 != 0,
    };
    let templates = match how % 4 {
        0 => PrefixTemplate::parse_prefix(text).map(|t| vec![t]),
        1 => PrefixTemplate::parse_error_prefix(text).map(|t| vec![t]),
        2 => PrefixTemplate::parse_with(text, PrefixField::Prefix, options).map(|t| vec![t]),
        _ => {
            let (p, e) = text.split_once('\n').unwrap_or((text, ""));
            PrefixTemplate::parse_destination_with(p, e, options).map(|(p, e)| vec![p, e])
        }
    };
    let Ok(templates) = templates else { return };
    for template in &templates {
        let pieces = template.partition_pieces(at);
        let keyed = pieces
            .iter()
            .any(|p| matches!(p, Piece::Query(_) | Piece::Lambda(_)));
        for kind in crate::process::ErrorOutput::ALL {
            let rendered = template.render(at, Some(kind.as_str()), &mut rng);
            if !keyed {
                assert!(
                    prefix::check_key_prefix(&rendered).is_ok(),
                    "{:?} rendered at {at} to {rendered:?}: {:?}",
                    template.source(),
                    prefix::check_key_prefix(&rendered)
                );
            }
            let name = prefix::object_name(&rendered, "fuzz-stream", 1, at, "0123abcd");
            assert!(name.starts_with(&rendered));
        }
        // Partition values as the processing step would give them (the text's words).
        let values: Vec<(String, String)> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Query(k) | Piece::Lambda(k) => Some(k.clone()),
                _ => None,
            })
            .zip(text.split(['/', '!', '{', '}', ':']).cycle())
            .filter(|(_, v)| crate::process::check_value(v).is_ok())
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        let filled = prefix::fill(&pieces, &values, &values, "processing-failed");
        let drawn = prefix::fill_random(&filled, &mut rng);
        assert_eq!(drawn.chars().count(), filled.chars().count());
        assert!(!drawn.contains(prefix::RANDOM_PLACEHOLDER));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The TOML config.

/// The bytes as a config file, parsed and validated as `spillway --config` does.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::Settings::from_toml(text, Path::new("fuzz.toml"));
}

// ---------------------------------------------------------------------------------------------
// 5. Hive types.

/// A type that parses renders, and its rendering parses back to the same type.
pub fn hive_type(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ty) = hive_type::parse(text) else {
        return;
    };
    let rendered = hive_type::render(&ty)
        .unwrap_or_else(|| panic!("{text:?} parsed to {ty:?}, which does not render"));
    assert_eq!(
        hive_type::parse(&rendered).as_ref(),
        Ok(&ty),
        "{text:?} rendered as {rendered:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. JSON to Parquet.

/// Columns of every type conversion knows, for inputs that do not bring their own.
const FIXED_COLUMNS: &[(&str, &str)] = &[
    ("b", "boolean"),
    ("t", "tinyint"),
    ("s", "smallint"),
    ("i", "int"),
    ("l", "bigint"),
    ("f", "float"),
    ("d", "double"),
    ("str", "string"),
    ("bin", "binary"),
    ("day", "date"),
    ("ts", "timestamp"),
    ("dec", "decimal(10,2)"),
    ("big_dec", "decimal(38,9)"),
    ("arr", "array<int>"),
    ("m", "map<string,double>"),
    (
        "st",
        "struct<a:int,`b c`:array<string>,d:map<int,timestamp>>",
    ),
    ("user_id", "varchar(20)"),
];

/// Byte 0: settings (SerDe, key rules, compression, which schema); then, when the input brings
/// its own schema, a first line with a Hive `struct<...>` whose fields are the columns; then one
/// JSON record per line. Records that `normalize` accepts must encode: a record that fit its
/// columns when its batch was processed can never fail its object later.
pub fn parquet_rows(data: &[u8]) {
    let mut data = data;
    let flags = take_u8(&mut data);
    let columns = match flags & 0x30 {
        0x00 => None,
        0x10 => {
            let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
            let line = take(&mut data, end + 1);
            let Ok(text) = std::str::from_utf8(line) else {
                return;
            };
            let Ok(arrow_schema::DataType::Struct(fields)) = hive_type::parse(text.trim_end())
            else {
                return;
            };
            let mut columns = Vec::new();
            for f in fields.iter() {
                let Some(ty) = hive_type::render(f.data_type()) else {
                    return;
                };
                columns.push((f.name().clone(), ty));
            }
            Some(columns)
        }
        _ => Some(
            FIXED_COLUMNS
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        ),
    };
    let conversion = Conversion {
        input: JsonInput {
            serde: if flags & 1 == 0 {
                SerDe::OpenX
            } else {
                SerDe::Hive
            },
            case_insensitive: flags & 2 != 0,
            dots_to_underscores: flags & 4 != 0,
            key_mappings: if flags & 0x40 != 0 {
                vec![("user_id".into(), "user.id".into())]
            } else {
                Vec::new()
            },
            millis: flags & 8 != 0,
        },
        parquet: ParquetOptions {
            compression: if flags & 0x80 != 0 {
                ParquetCompression::Snappy
            } else {
                ParquetCompression::Uncompressed
            },
            block_size_bytes: 64 << 20,
            page_size_bytes: 64 << 10,
            dictionary: flags & 0x40 == 0,
            max_padding_bytes: 0,
            writer_v2: flags & 0x80 == 0,
        },
        columns,
    };
    let converter = parquet::Converter::new(&conversion);
    let fit: Vec<Bytes> = data
        .split(|&b| b == b'\n')
        .filter(|line| converter.normalize(line).is_ok())
        .map(Bytes::copy_from_slice)
        .collect();
    if fit.is_empty() {
        return;
    }
    if let Err(e) = parquet::encode(&conversion, fit.clone()) {
        panic!("records that normalized do not encode: {e}; records {fit:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Journal segments and the pipeline's journal entries.

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A directory removed on drop, on tmpfs where there is one.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Option<Scratch> {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("spillway-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        Some(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds segment files from the input, then opens the journal on them as the daemon does after
/// a crash. The journal's CRCs would stop a fuzzer at the first frame, so by default frames are
/// built here with valid CRCs around fuzzed payloads; byte 0 bit 7 writes the bytes raw instead.
///
/// Framed layout: byte 0: segment count (1-3, low bits); per segment: a name byte (added to the
/// position the harness expects next), then ops until `0xff`: op byte (kind = low 3 bits;
/// `0x08`: a well-formed payload is built for the kind from what follows; `0x10`: bad CRC;
/// `0x20`: the frame is cut short and the segment ends), a length byte, and the payload.
///
/// Invariants: open succeeds on any bytes (damage is skipped, never fatal, apart from I/O);
/// reopening gives the same replay; a record appended after open is replayed.
pub fn journal_replay(data: &[u8]) {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let dir = scratch.0.join("journal");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let mut data = data;
    let flags = take_u8(&mut data);
    if flags & 0x80 != 0 {
        let name = take_u8(&mut data) as u64;
        if std::fs::write(dir.join(segment_name(name)), data).is_err() {
            return;
        }
    } else {
        let mut next = 0u64;
        for _ in 0..(flags % 3) + 1 {
            if data.is_empty() {
                break;
            }
            let first = next + u64::from(take_u8(&mut data) % 4);
            let bytes = build_segment(&mut data, first, &mut next);
            if std::fs::write(dir.join(segment_name(first)), bytes).is_err() {
                return;
            }
        }
    }
    let opts = JournalOptions {
        segment_bytes: 1 << 20,
        fsync: false,
        direct_io: false,
    };
    let (mut journal, first) = match Journal::open(&dir, opts) {
        Ok(opened) => opened,
        Err(e) => panic!("open failed on fuzzed segments: {e}"),
    };
    let position = journal
        .append_records(&[RecordRef {
            arrival_ms: 7,
            data: b"after open",
        }])
        .expect("append after open");
    journal.sync().expect("sync after open");
    drop(journal);
    let (_, second) = Journal::open(&dir, opts).expect("reopen");
    let mut expected = first.records.clone();
    assert_eq!(
        second.records.last().map(|r| (r.position, &r.data[..])),
        Some((position, &b"after open"[..])),
        "the record appended after open is not replayed last"
    );
    expected.push(second.records[second.records.len() - 1].clone());
    assert_eq!(second.records, expected, "replay changed across a reopen");
    assert_eq!(second.pending_seals, first.pending_seals);
    assert_eq!(second.flushes, first.flushes);
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn build_segment(data: &mut &[u8], first: u64, next: &mut u64) -> Vec<u8> {
    let mut out = Vec::new();
    // The header, unless the first op asks for none.
    if data.first() != Some(&0xfe) {
        let mut header = b"SPWYWAL\0".to_vec();
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&first.to_le_bytes());
        push_frame(&mut out, 0, &header, false);
    }
    if first > *next {
        *next = first;
    }
    while let Some(&op) = data.first() {
        *data = &data[1..];
        if op == 0xff {
            break;
        }
        let kind = op & 7;
        let len = usize::from(take_u8(data));
        let raw = take(data, len);
        let payload = if op & 0x08 != 0 {
            well_formed(kind, raw, next)
        } else {
            raw.to_vec()
        };
        if op & 0x20 != 0 {
            let mut frame = Vec::new();
            push_frame(&mut frame, kind, &payload, op & 0x10 != 0);
            let cut = usize::from(raw.first().copied().unwrap_or(0)) % frame.len();
            out.extend_from_slice(&frame[..cut]);
            break;
        }
        push_frame(&mut out, kind, &payload, op & 0x10 != 0);
    }
    out
}

/// A payload of `kind` the entry layer accepts, shaped by `raw`.
fn well_formed(kind: u8, raw: &[u8], next: &mut u64) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        1 => {
            let count = raw.len().min(16);
            out.extend_from_slice(&next.to_le_bytes());
            out.extend_from_slice(&(count as u32).to_le_bytes());
            for (i, b) in raw.iter().take(count).enumerate() {
                out.extend_from_slice(&(i as u64).to_le_bytes());
                let data = &raw[..usize::from(*b) % (raw.len() + 1)];
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
            }
            *next += count as u64;
        }
        2 | 3 => {
            let a = next.saturating_sub(u64::from(raw.first().copied().unwrap_or(0)));
            out.extend_from_slice(&a.to_le_bytes());
            if kind == 2 {
                let b = a + u64::from(raw.get(1).copied().unwrap_or(1));
                out.extend_from_slice(&b.to_le_bytes());
                out.extend_from_slice(raw.get(2..).unwrap_or_default());
            }
        }
        4 => out.resize(raw.len(), 0),
        _ => out.extend_from_slice(raw),
    }
    out
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8], bad_crc: bool) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    let crc = hasher.finalize() ^ u32::from(bad_crc);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// A seal or flush entry's bytes (byte 0 picks which), decoded as replay decodes them; what
/// decodes must encode and decode to the same value.
pub fn journal_entries(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(plan) = entries::decode_seal(bytes) {
            let again = entries::encode_seal(&plan).expect("a decoded seal encodes");
            assert_eq!(entries::decode_seal(&again).ok().as_ref(), Some(&plan));
        }
    } else if let Ok(meta) = entries::decode_flush(bytes) {
        let again = entries::encode_flush(&meta).expect("a decoded flush encodes");
        assert_eq!(entries::decode_flush(&again).ok().as_ref(), Some(&meta));
    }
}

// ---------------------------------------------------------------------------------------------
// 9. The in-daemon answer to plain-path partitioning queries.

/// The input up to the first NUL: a `MetadataExtractionQuery`; the rest: one record. Where the
/// one-pass path reader (`process::jq_path`) answers, jq (jaq, as the sandboxed workers run it)
/// must give the same keys: a replay may take either way, so they may never disagree.
pub fn partition_query(data: &[u8]) {
    let (query, record) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"{k: .a.b, j: .c}"[..], data),
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let Some(fast) = crate::process::jq_path::PathQuery::parse(query) else {
        return;
    };
    let jq = crate::process::jq::Query::compile(query)
        .unwrap_or_else(|e| panic!("{query:?} is a path query that jq refuses: {e}"));
    if let Some(keys) = fast.keys(record) {
        assert_eq!(jq.keys(record), Ok(keys), "{query:?}");
    }
}

/// The processors before the transform (`process::preprocess`): the first byte chooses them
/// (bit 0 Decompression, bit 1 CloudWatch Logs extraction, bits 2-3 de-aggregation: none,
/// JSON, DELIMITED with the next byte as delimiter, or JSON with every record wrapped as a KPL
/// aggregated record with a matching digest, so the protobuf reader sees the fuzzer's bytes);
/// the rest is records, split at `0xFF 0xFE`. Invariants: every record is accounted for once
/// (a failure, a dropped control message, or one or more records that carry its id), none
/// splits into more than the limit, a JSON sub-record is one JSON value, and a delimited one is
/// not empty and holds no delimiter.
pub fn preprocess(data: &[u8]) {
    use crate::process::Record;
    use crate::process::preprocess::{MAX_SUB_RECORDS, expand};
    use md5::Digest;
    let mut data = data;
    let choice = take(&mut data, 1).first().copied().unwrap_or(0);
    let delimiter = match choice >> 2 & 3 {
        2 => Some(take(&mut data, 1).to_vec()).filter(|d| !d.is_empty()),
        _ => None,
    };
    let kpl = choice >> 2 & 3 == 3;
    let processing = definition::Processing {
        decompression: choice & 1 != 0,
        message_extraction: choice & 2 != 0,
        deaggregation: match choice >> 2 & 3 {
            0 => None,
            2 => Some(definition::SubRecords::Delimited(
                delimiter.clone().unwrap_or_else(|| b"\n".to_vec()),
            )),
            _ => Some(definition::SubRecords::Json),
        },
        lambda: None,
        metadata_query: None,
        append_delimiter: false,
    };
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && records.len() < 64 {
        let end = rest
            .windows(2)
            .position(|w| w == [0xff, 0xfe])
            .unwrap_or(rest.len());
        let mut bytes = rest[..end].to_vec();
        rest = &rest[(end + 2).min(rest.len())..];
        if kpl {
            let digest = md5::Md5::digest(&bytes);
            let mut wrapped = vec![0xf3, 0x89, 0x9a, 0xc2];
            wrapped.append(&mut bytes);
            wrapped.extend_from_slice(&digest);
            bytes = wrapped;
        }
        records.push(Record {
            id: format!("r{}", records.len()),
            arrival_ms: 1,
            data: Bytes::from(bytes),
        });
    }
    let out = expand(&processing, &records);
    let mut seen = vec![0usize; records.len()];
    for f in &out.failures {
        seen[f.index] += 1;
        assert!(f.decompression == (f.code.starts_with("Decompression")));
    }
    let mut produced = vec![0usize; records.len()];
    for r in &out.records {
        let index: usize = r.id[1..]
            .split('.')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("an output id names its record");
        produced[index] += 1;
        if let Some(definition::SubRecords::Delimited(d)) = &processing.deaggregation
            && !kpl
        {
            assert!(!r.data.is_empty());
            assert!(!r.data.windows(d.len()).any(|w| w == &d[..]));
        }
    }
    for (i, n) in produced.iter().enumerate() {
        assert!(*n <= MAX_SUB_RECORDS, "record {i} split into {n}");
        if *n > 0 {
            seen[i] += 1;
        }
    }
    // Records neither failed nor producing anything are counted as dropped: control messages,
    // empty de-aggregations. Nothing is silent.
    let silent = seen.iter().filter(|s| **s == 0).count() as u64;
    assert!(seen.iter().all(|s| *s <= 1), "a record counted twice");
    assert_eq!(
        out.dropped, silent,
        "a record vanished without being counted"
    );
}
