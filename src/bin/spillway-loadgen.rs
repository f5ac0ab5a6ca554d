//! `spillway-loadgen`: closed-loop load generator for the Firehose-compatible API of
//! the spillway daemon. It produces the numbers of the README's benchmark table.
//!
//! Each of `--connections` workers holds exactly one HTTP/1.1 connection and sends
//! `PutRecordBatch` requests back to back. Request bodies are built up front (a small
//! pool of distinct batches of JSON-lines records shaped like a mobile game's events),
//! so the generator spends its CPU on sending. After a warmup that is not measured, it
//! measures for `--duration` seconds (or for exactly `--requests` requests), then
//! polls the daemon's `/metrics` until every accepted record has been delivered, and
//! prints throughput, latency percentiles, time until delivered and, with
//! `--daemon-pid`, the daemon's peak RSS.
//!
//! ```text
//! # start the daemon, then:
//! cargo run --release --bin spillway-loadgen -- \
//!     --endpoint http://127.0.0.1:4573 --stream bench --create-stream --bucket bench \
//!     --compression GZIP --connections 8 --record-size 1024 --batch 500 \
//!     --duration 30 --daemon-pid "$(pidof spillway)"
//!
//! # machine-readable: the table goes to stderr, one JSON object to stdout
//! spillway-loadgen --requests 2000 --json | jq .records_per_s
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

const AMZ_JSON: &str = "application/x-amz-json-1.1";
const TARGET_PUT_BATCH: &str = "Firehose_20150804.PutRecordBatch";
const TARGET_CREATE: &str = "Firehose_20150804.CreateDeliveryStream";
const DELIVERED_METRIC: &str = "spillway_delivered_records_total";
const PROCESSED_METRIC: &str = "spillway_processed_records_total";
const ERROR_RECORDS_METRIC: &str = "spillway_error_records_total";

/// Distinct request bodies built up front (fewer if they would not fit in `POOL_BYTES`).
const POOL_BODIES: usize = 16;
const POOL_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ONESHOT_TIMEOUT: Duration = Duration::from_secs(30);
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const THROTTLE_BACKOFF_MIN: Duration = Duration::from_millis(2);
const THROTTLE_BACKOFF_MAX: Duration = Duration::from_millis(50);
const METRICS_POLL: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(
    name = "spillway-loadgen",
    version,
    about = "Closed-loop PutRecordBatch load generator for a spillway (Firehose-compatible) daemon",
    long_about = "Closed-loop PutRecordBatch load generator for a spillway (Firehose-compatible) \
                  daemon. Opens exactly --connections HTTP/1.1 connections, each sending requests \
                  back to back, then waits until the daemon reports every accepted record as \
                  delivered and prints throughput, latency and memory figures."
)]
struct Args {
    /// Base URL of the daemon's Firehose API (plain http only)
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:4573")]
    endpoint: String,

    /// URL of the daemon's Prometheus metrics [default: <endpoint>/metrics]
    #[arg(long, value_name = "URL")]
    metrics_url: Option<String>,

    /// Delivery stream to write to
    #[arg(long, value_name = "NAME", default_value = "bench")]
    stream: String,

    /// Create the delivery stream first (an existing stream is fine)
    #[arg(long)]
    create_stream: bool,

    /// Bucket of the stream created by --create-stream
    #[arg(
        long,
        value_name = "BUCKET",
        default_value = "bench",
        requires = "create_stream"
    )]
    bucket: String,

    /// Compression of the stream created by --create-stream
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        default_value = "UNCOMPRESSED",
        requires = "create_stream"
    )]
    compression: Compression,

    /// Buffering size hint (MiB) of the stream created by --create-stream
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 1,
        requires = "create_stream"
    )]
    buffer_mib: u32,

    /// Buffering interval hint (seconds) of the stream created by --create-stream
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        requires = "create_stream"
    )]
    buffer_seconds: u32,

    /// WebAssembly transform (a component file) of the stream created by --create-stream:
    /// a `Lambda` processor with this `LambdaArn`
    #[arg(long, value_name = "FILE", requires = "create_stream")]
    transform: Option<String>,

    /// Dynamic partitioning for the stream created by --create-stream: a jq query takes each
    /// record's `location` as the partition key, under `location=<key>/`
    #[arg(long, requires = "create_stream")]
    partition_by_location: bool,

    /// Record format conversion for the stream created by --create-stream: Parquet with this
    /// compression (SNAPPY, GZIP, ZSTD or UNCOMPRESSED), OpenX JSON in, columns inferred per
    /// object (or, with --parquet-table, from the daemon's config table `bench.events`)
    #[arg(long, value_name = "COMPRESSION", requires = "create_stream")]
    parquet: Option<String>,

    /// With --parquet: name the config file's table `bench.events` as the schema
    #[arg(long, requires = "parquet")]
    parquet_table: bool,

    /// Create an Iceberg stream instead (IcebergDestinationConfiguration): the table
    /// `bench.<stream>` of the daemon's default catalog, created from the first records, with
    /// failed records under --bucket
    #[arg(long, requires = "create_stream", conflicts_with_all = ["parquet", "partition_by_location", "transform"])]
    iceberg: bool,

    /// Number of concurrent connections, one closed-loop worker each
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,

    /// Size of each record in bytes, including its trailing newline
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    record_size: usize,

    /// Records per PutRecordBatch request
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,

    /// Measured duration in seconds (after the warmup)
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    duration: u64,

    /// Send exactly N measured requests in total instead of running for --duration
    #[arg(long, value_name = "N")]
    requests: Option<u64>,

    /// Offered load in MiB/s of payload across all connections. Each connection sends on a
    /// fixed schedule and latency is measured from the scheduled send time, so falling behind
    /// shows as latency (no coordinated omission). Without it, connections send back to back.
    #[arg(long, value_name = "MIB_PER_S")]
    rate: Option<f64>,

    /// Seconds of unmeasured load before measuring starts
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    warmup: u64,

    /// After sending, wait up to SECS for the daemon's metrics to report every accepted
    /// record as delivered (0 = do not wait)
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    wait_delivered: u64,

    /// PID of the daemon: report its peak (VmHWM) and current (VmRSS) resident memory
    #[arg(long, value_name = "PID")]
    daemon_pid: Option<u32>,

    /// Print the results as one JSON object on stdout (the table goes to stderr)
    #[arg(long)]
    json: bool,

    /// Sign every request with AWS Signature Version 4 as KEY_ID:SECRET (a key of the
    /// daemon's [auth]); body hashes are computed once per pooled body, as an SDK that
    /// streams a prepared payload would
    #[arg(long, value_name = "KEY_ID:SECRET")]
    sign: Option<String>,

    /// Print a table of gzip levels 1-9 (compressed size and single-core MiB/s, spillway's own
    /// encoder) over 64 MiB of the records this generator sends, and exit; sends nothing
    #[arg(long)]
    gzip_table: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Compression {
    #[value(name = "UNCOMPRESSED")]
    Uncompressed,
    #[value(name = "GZIP")]
    Gzip,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::Uncompressed => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
        }
    }
}

/// Where to send HTTP requests: a resolved socket address plus the `Host` header value.
#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
    /// `--sign`: the access key id and secret.
    sign: Option<Arc<(String, String)>>,
}

impl Target {
    async fn from_url(url: &str) -> Result<Target> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("unsupported scheme {other:?} in {url:?} (only http)"),
            None => bail!("URL {url:?} has no scheme (expected http://host:port)"),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host().trim_matches(['[', ']']), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", authority.host()))?;
        let host = HeaderValue::from_str(authority.as_str())
            .with_context(|| format!("invalid host in {url:?}"))?;
        let path = match uri.path_and_query() {
            Some(pq) if !pq.as_str().is_empty() => Uri::try_from(pq.as_str())?,
            _ => Uri::from_static("/"),
        };
        Ok(Target {
            addr,
            host,
            path,
            sign: None,
        })
    }

    fn with_path(&self, path: &'static str) -> Target {
        Target {
            path: Uri::from_static(path),
            ..self.clone()
        }
    }
}

fn api_request(target: &Target, action: &'static str, body: Bytes) -> Request<Full<Bytes>> {
    let hash = target
        .sign
        .as_ref()
        .map(|_| spillway::api::auth::sha256_hex(&body));
    api_request_hashed(target, action, body, hash.as_deref())
}

/// A request, signed when `--sign` was given (with `body_sha256`, the body's hash).
fn api_request_hashed(
    target: &Target,
    action: &'static str,
    body: Bytes,
    body_sha256: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut headers = hyper::HeaderMap::new();
    headers.insert(HOST, target.host.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    headers.insert(
        HeaderName::from_static("x-amz-target"),
        HeaderValue::from_static(action),
    );
    if let (Some(key), Some(hash)) = (&target.sign, body_sha256) {
        let unsigned = spillway::api::auth::SignedRequest {
            method: "POST",
            path: target.path.path(),
            query: target.path.query().unwrap_or(""),
            headers: &headers,
            body: &body,
        };
        let (date, authorization) = spillway::api::auth::sign(
            &unsigned,
            hash,
            &key.0,
            &key.1,
            "us-east-1",
            chrono::Utc::now(),
        );
        for (name, value) in [("x-amz-date", date), ("authorization", authorization)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target.path.clone();
    *req.headers_mut() = headers;
    req
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection's error, if any, surfaces through the next send_request.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole response body.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> hyper::Result<(StatusCode, Bytes)> {
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One request on a fresh connection, for the few requests outside the measured load.
async fn oneshot(target: &Target, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
    let fut = async {
        let mut sender = connect(target.addr).await?;
        sender.ready().await?;
        Ok::<_, anyhow::Error>(exchange(&mut sender, req).await?)
    };
    timeout(ONESHOT_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("request to {} timed out", target.addr))?
}

/// `{"__type":"...","message":"..."}` of a failed API call.
#[derive(Debug, Default)]
struct ApiError {
    kind: String,
    message: String,
}

impl ApiError {
    fn parse(body: &[u8]) -> ApiError {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            let text = String::from_utf8_lossy(body);
            return ApiError {
                kind: String::new(),
                message: text.chars().take(200).collect(),
            };
        };
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let kind = field("__type").unwrap_or_default();
        // AWS sometimes prefixes the type with a namespace: "ns#ResourceNotFoundException".
        let kind = kind.rsplit('#').next().unwrap_or_default().to_owned();
        let message = field("message")
            .or_else(|| field("Message"))
            .unwrap_or_default();
        ApiError { kind, message }
    }

    fn describe(&self, status: StatusCode) -> String {
        match (self.kind.is_empty(), self.message.is_empty()) {
            (true, true) => format!("HTTP {status}"),
            (true, false) => format!("HTTP {status}: {}", self.message),
            (false, true) => format!("HTTP {status} {}", self.kind),
            (false, false) => format!("HTTP {status} {}: {}", self.kind, self.message),
        }
    }
}

#[derive(Deserialize)]
struct PutBatchResponse {
    #[serde(rename = "FailedPutCount")]
    failed_put_count: u64,
}

/// `error: cause: cause...`, since hyper's own Display leaves out the cause.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

static FIRST_ERROR: AtomicBool = AtomicBool::new(false);
static FIRST_RECORD_FAILURE: AtomicBool = AtomicBool::new(false);

fn report_first_error(msg: impl FnOnce() -> String) {
    if !FIRST_ERROR.swap(true, Ordering::Relaxed) {
        eprintln!("first error: {}", msg());
    }
}

fn report_first_record_failure(body: &[u8]) {
    if FIRST_RECORD_FAILURE.swap(true, Ordering::Relaxed) {
        return;
    }
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("RequestResponses")?
                .as_array()?
                .iter()
                .find(|r| r.get("ErrorCode").is_some())
                .map(|r| r.to_string())
        })
        .unwrap_or_else(|| "(no ErrorCode in RequestResponses)".to_owned());
    eprintln!("first failed record: {detail}");
}

// ---------------------------------------------------------------------------------------
// Records and request bodies
// ---------------------------------------------------------------------------------------

const LOCATIONS: [&str; 12] = [
    "KR", "JP", "US", "DE", "BR", "IN", "FR", "GB", "VN", "TW", "ID", "MX",
];

struct Event {
    user_id: u32,
    age: u32,
    location: &'static str,
    play_time_s: u32,
    premium: bool,
    ts_seconds: u32,
}

impl Event {
    fn random(rng: &mut impl Rng) -> Event {
        Event {
            user_id: rng.random_range(1..=9_999_999),
            age: rng.random_range(13..=79),
            location: LOCATIONS[rng.random_range(0..LOCATIONS.len())],
            play_time_s: rng.random_range(0..=36_000),
            premium: rng.random_bool(0.1),
            ts_seconds: rng.random_range(0..86_400),
        }
    }

    /// The event with the widest values, to compute the smallest possible record size.
    fn widest() -> Event {
        Event {
            user_id: 9_999_999,
            age: 79,
            location: "KR",
            play_time_s: 36_000,
            premium: false,
            ts_seconds: 0,
        }
    }

    /// Everything up to and including `"pad":"`.
    fn prefix(&self) -> String {
        let t = self.ts_seconds;
        format!(
            "{{\"user_id\":{},\"age\":{},\"location\":\"{}\",\"play_time_s\":{},\
             \"premium\":{},\"ts\":\"2026-11-22T{:02}:{:02}:{:02}Z\",\"pad\":\"",
            self.user_id,
            self.age,
            self.location,
            self.play_time_s,
            self.premium,
            t / 3600,
            t / 60 % 60,
            t % 60
        )
    }
}

const RECORD_SUFFIX: &str = "\"}\n";

fn min_record_size() -> usize {
    Event::widest().prefix().len() + RECORD_SUFFIX.len()
}

/// One JSON record of exactly `size` bytes including the trailing newline.
/// Words for the padding: random picks compress about as well as real event JSON (3-5x with
/// gzip), where a run of one repeated byte would flatter compressed benchmarks.
const PAD_WORDS: &[&str] = &[
    "level", "quest", "arena", "guild", "coins", "shop", "boss", "daily", "reward", "skin",
    "match", "ranked", "casual", "party", "loot", "crate", "pvp", "pve", "season", "pass",
    "android", "ios", "tablet", "wifi", "lte", "5g", "seoul", "busan", "berlin", "paris", "lima",
    "tokyo", "ok", "retry", "timeout", "login", "logout", "purchase", "refund", "ad", "view",
];

fn make_record(rng: &mut impl Rng, size: usize) -> Vec<u8> {
    let mut rec = Event::random(rng).prefix().into_bytes();
    let end = size.saturating_sub(RECORD_SUFFIX.len());
    while rec.len() < end {
        let word = PAD_WORDS[rng.random_range(0..PAD_WORDS.len())].as_bytes();
        let room = end - rec.len();
        rec.extend_from_slice(&word[..word.len().min(room)]);
        if rec.len() < end {
            rec.push(if rng.random_bool(0.2) { b'-' } else { b' ' });
        }
        if rng.random_bool(0.1) && rec.len() + 6 < end {
            rec.extend_from_slice(format!("{:05}", rng.random_range(0..100_000)).as_bytes());
        }
    }
    rec.extend_from_slice(RECORD_SUFFIX.as_bytes());
    debug_assert_eq!(rec.len(), size);
    rec
}

/// `--gzip-table`: each level over 64 MiB of records, in 1 MiB objects as a stream with the
/// default buffer writes them, best of three passes.
fn gzip_table(record_size: usize) {
    let mut rng = rand::rng();
    let per_object = (1 << 20) / record_size;
    let objects: Vec<Vec<Bytes>> = (0..64)
        .map(|_| {
            (0..per_object)
                .map(|_| Bytes::from(make_record(&mut rng, record_size)))
                .collect()
        })
        .collect();
    let raw: usize = objects.iter().flatten().map(Bytes::len).sum();
    println!("| gzip level | ratio | MiB/s of records, one core |");
    println!("|---|---|---|");
    for level in 1..=9 {
        let mut best = f64::MAX;
        let mut compressed = 0;
        for _ in 0..3 {
            let started = Instant::now();
            compressed = 0;
            for records in &objects {
                let body = spillway::encode::encode(
                    spillway::definition::Compression::Gzip,
                    level,
                    records.clone(),
                    "table",
                )
                .expect("encoding into memory cannot fail");
                compressed += spillway::encode::len(&body);
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!(
            "| {level} | {:.2}:1 | {:.0} |",
            raw as f64 / compressed as f64,
            raw as f64 / 1048576.0 / best
        );
    }
}

fn make_body(rng: &mut impl Rng, stream_json: &str, records: usize, size: usize) -> Bytes {
    let b64_len = size.div_ceil(3) * 4;
    let mut body = String::with_capacity(64 + stream_json.len() + records * (b64_len + 12));
    body.push_str("{\"DeliveryStreamName\":");
    body.push_str(stream_json);
    body.push_str(",\"Records\":[");
    for i in 0..records {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"Data\":\"");
        BASE64.encode_string(make_record(rng, size), &mut body);
        body.push_str("\"}");
    }
    body.push_str("]}");
    Bytes::from(body)
}

fn create_stream_body(args: &Args) -> Bytes {
    if args.iceberg {
        let table: String = args
            .stream
            .chars()
            .map(|c| match c.is_ascii_alphanumeric() {
                true => c.to_ascii_lowercase(),
                false => '_',
            })
            .collect();
        let role = "arn:aws:iam::000000000000:role/spillway";
        let body = serde_json::json!({
            "DeliveryStreamName": args.stream,
            "DeliveryStreamType": "DirectPut",
            "IcebergDestinationConfiguration": {
                "RoleARN": role,
                "CatalogConfiguration": { "CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog" },
                "DestinationTableConfigurationList": [
                    { "DestinationDatabaseName": "bench", "DestinationTableName": table },
                ],
                "TableCreationConfiguration": { "Enabled": true },
                "BufferingHints": {
                    "SizeInMBs": args.buffer_mib,
                    "IntervalInSeconds": args.buffer_seconds,
                },
                "S3Configuration": {
                    "RoleARN": role,
                    "BucketARN": format!("arn:aws:s3:::{}", args.bucket),
                    "ErrorOutputPrefix": "errors/",
                },
            },
        });
        return Bytes::from(body.to_string());
    }
    let mut body = serde_json::json!({
        "DeliveryStreamName": args.stream,
        "DeliveryStreamType": "DirectPut",
        "ExtendedS3DestinationConfiguration": {
            "RoleARN": "arn:aws:iam::000000000000:role/spillway",
            "BucketARN": format!("arn:aws:s3:::{}", args.bucket),
            "CompressionFormat": args.compression.as_str(),
            "BufferingHints": {
                "SizeInMBs": args.buffer_mib,
                "IntervalInSeconds": args.buffer_seconds,
            },
        },
    });
    let dest = &mut body["ExtendedS3DestinationConfiguration"];
    let mut processors = Vec::new();
    if let Some(component) = &args.transform {
        processors.push(serde_json::json!({
            "Type": "Lambda",
            "Parameters": [{ "ParameterName": "LambdaArn", "ParameterValue": component }],
        }));
    }
    if args.partition_by_location {
        processors.push(serde_json::json!({
            "Type": "MetadataExtraction",
            "Parameters": [
                { "ParameterName": "MetadataExtractionQuery", "ParameterValue": "{location: .location}" },
                { "ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6" },
            ],
        }));
        dest["Prefix"] = "location=!{partitionKeyFromQuery:location}/".into();
        dest["ErrorOutputPrefix"] = "errors/!{firehose:error-output-type}/".into();
        dest["DynamicPartitioningConfiguration"] = serde_json::json!({ "Enabled": true });
    }
    if let Some(compression) = &args.parquet {
        let mut conversion = serde_json::json!({
            "Enabled": true,
            "InputFormatConfiguration": { "Deserializer": { "OpenXJsonSerDe": {} } },
            "OutputFormatConfiguration": {
                "Serializer": { "ParquetSerDe": { "Compression": compression } },
            },
        });
        if args.parquet_table {
            conversion["SchemaConfiguration"] = serde_json::json!({
                "DatabaseName": "bench",
                "TableName": "events",
                "RoleARN": "arn:aws:iam::000000000000:role/spillway",
            });
        }
        dest["DataFormatConversionConfiguration"] = conversion;
        if dest["ErrorOutputPrefix"].is_null() {
            dest["ErrorOutputPrefix"] = "errors/!{firehose:error-output-type}/".into();
        }
    }
    if !processors.is_empty() {
        dest["ProcessingConfiguration"] = serde_json::json!({
            "Enabled": true,
            "Processors": processors,
        });
    }
    Bytes::from(body.to_string())
}

// ---------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Plan {
    /// Measure requests that finish within `[warmup_end, end]`.
    Duration { end: Instant },
    /// After the warmup, send exactly this many measured requests in total.
    Requests { total: u64 },
}

struct Shared {
    target: Target,
    bodies: Vec<Bytes>,
    /// With --sign: each body's SHA-256, computed once.
    body_hashes: Vec<String>,
    batch: u64,
    warmup_end: Instant,
    plan: Plan,
    /// Tickets handed out for `Plan::Requests`.
    issued: AtomicU64,
    /// With --rate: when the schedule starts and the gap between one connection's requests.
    pacing: Option<(Instant, Duration)>,
    connections: usize,
}

#[derive(Default)]
struct WorkerStats {
    requests_ok: u64,
    records_accepted: u64,
    records_failed: u64,
    throttled: u64,
    errors: u64,
    /// Microseconds, one entry per measured successful request.
    latencies_us: Vec<u32>,
    /// Records accepted at any time, warmup included: what the daemon must deliver.
    accepted_all: u64,
    /// Completion of the last request of any kind.
    last_done: Option<Instant>,
    /// Completion of the last measured request (end of the window for `Plan::Requests`).
    last_measured_done: Option<Instant>,
}

impl WorkerStats {
    fn merge(&mut self, o: WorkerStats) {
        self.requests_ok += o.requests_ok;
        self.records_accepted += o.records_accepted;
        self.records_failed += o.records_failed;
        self.throttled += o.throttled;
        self.errors += o.errors;
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.accepted_all += o.accepted_all;
        self.last_done = self.last_done.max(o.last_done);
        self.last_measured_done = self.last_measured_done.max(o.last_measured_done);
    }
}

async fn worker(shared: Arc<Shared>, index: usize) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut next_body = index % shared.bodies.len();
    // Connections are staggered across one interval so paced sends do not arrive together.
    let mut scheduled = shared.pacing.map(|(start, interval)| {
        start + interval.mul_f64(index as f64 / shared.connections as f64)
    });

    loop {
        if let Some(at) = scheduled {
            tokio::time::sleep_until(at).await;
        }
        // Decide whether to send another request, and whether it is measured by ticket.
        let now = Instant::now();
        let ticketed = match shared.plan {
            Plan::Duration { end } => {
                if now >= end {
                    break;
                }
                false
            }
            Plan::Requests { total } => {
                if now >= shared.warmup_end {
                    if shared.issued.fetch_add(1, Ordering::Relaxed) >= total {
                        break;
                    }
                    true
                } else {
                    false
                }
            }
        };
        let measured_at = |t: Instant| match shared.plan {
            Plan::Duration { end } => t >= shared.warmup_end && t <= end,
            Plan::Requests { .. } => ticketed,
        };
        let body = shared.bodies[next_body].clone();
        let body_hash = shared.body_hashes.get(next_body).map(String::as_str);
        next_body = (next_body + 1) % shared.bodies.len();

        let mut backoff = THROTTLE_BACKOFF_MIN;
        loop {
            // (Re)connect; a closed idle connection is not an error, a failed connect is.
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = None;
            }
            let s = match sender.as_mut() {
                Some(s) => s,
                None => match connect(shared.target.addr).await {
                    Ok(s) => sender.insert(s),
                    Err(e) => {
                        let t = Instant::now();
                        if measured_at(t) {
                            stats.errors += 1;
                        }
                        report_first_error(|| format!("{e:#}"));
                        stats.last_done = Some(t);
                        sleep(RECONNECT_PAUSE).await;
                        break;
                    }
                },
            };
            if s.ready().await.is_err() {
                // The server closed the connection between requests: reconnect and resend.
                sender = None;
                continue;
            }

            let req = api_request_hashed(&shared.target, TARGET_PUT_BATCH, body.clone(), body_hash);
            // Paced: from when the request should have gone out, so a backlog counts.
            let start = scheduled.map_or_else(Instant::now, |at| at.min(Instant::now()));
            let result = exchange(s, req).await;
            let done = Instant::now();
            let measured = measured_at(done);
            stats.last_done = Some(done);
            if measured {
                stats.last_measured_done = Some(done);
            }

            match result {
                Ok((StatusCode::OK, resp)) => {
                    match serde_json::from_slice::<PutBatchResponse>(&resp) {
                        Ok(r) => {
                            let failed = r.failed_put_count.min(shared.batch);
                            let accepted = shared.batch - failed;
                            if failed > 0 {
                                report_first_record_failure(&resp);
                            }
                            stats.accepted_all += accepted;
                            if measured {
                                stats.requests_ok += 1;
                                stats.records_accepted += accepted;
                                stats.records_failed += failed;
                                let us = (done - start).as_micros();
                                stats
                                    .latencies_us
                                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                            }
                        }
                        Err(e) => {
                            if measured {
                                stats.errors += 1;
                            }
                            report_first_error(|| {
                                format!(
                                    "unparsable PutRecordBatch response ({e}): {}",
                                    String::from_utf8_lossy(&resp[..resp.len().min(200)])
                                )
                            });
                        }
                    }
                    break;
                }
                Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                    if measured {
                        stats.throttled += 1;
                    }
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(THROTTLE_BACKOFF_MAX);
                    if let Plan::Duration { end } = shared.plan
                        && Instant::now() >= end
                    {
                        break;
                    }
                    // Resend the same request.
                }
                Ok((status, resp)) => {
                    if measured {
                        stats.errors += 1;
                    }
                    report_first_error(|| ApiError::parse(&resp).describe(status));
                    break;
                }
                Err(e) => {
                    if measured {
                        stats.errors += 1;
                    }
                    report_first_error(|| format!("request failed: {}", error_chain(&e)));
                    sender = None;
                    break;
                }
            }
        }
        if let (Some(at), Some((_, interval))) = (scheduled.as_mut(), shared.pacing) {
            *at += interval;
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------
// Metrics and memory
// ---------------------------------------------------------------------------------------

/// Records of the stream that reached their end: delivered, dropped on purpose by its
/// transform, or written to its error output. Sums the series labelled with the stream; a
/// missing series counts as 0.
fn parse_delivered(text: &str, stream: &str) -> f64 {
    let label = format!("stream=\"{stream}\"");
    let sum = |metric: &str, also: Option<&str>| -> f64 {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
                let (labels, value) = rest.split_once('}')?;
                let mut labels = labels.split(',').map(str::trim);
                let wanted = labels.clone().any(|l| l == label)
                    && also.is_none_or(|a| labels.any(|l| l == a));
                if !wanted {
                    return None;
                }
                value.split_whitespace().next()?.parse::<f64>().ok()
            })
            .sum()
    };
    sum(DELIVERED_METRIC, None)
        + sum(PROCESSED_METRIC, Some("result=\"dropped\""))
        + sum(ERROR_RECORDS_METRIC, None)
}

async fn fetch_delivered(metrics: &Target, stream: &str) -> Result<f64> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = metrics.path.clone();
    req.headers_mut().insert(HOST, metrics.host.clone());
    let (status, body) = oneshot(metrics, req).await?;
    if status != StatusCode::OK {
        bail!("GET {} answered HTTP {status}", metrics.path);
    }
    Ok(parse_delivered(&String::from_utf8_lossy(&body), stream))
}

struct Memory {
    peak_mib: f64,
    current_mib: f64,
}

fn daemon_memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = |key: &str| -> Result<f64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| anyhow!("{path} has no {key}"))?;
        let n: f64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("bad {key} line in {path}"))?;
        Ok(n)
    };
    Ok(Memory {
        peak_mib: kib("VmHWM:")? / 1024.0,
        current_mib: kib("VmRSS:")? / 1024.0,
    })
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

enum Delivery {
    Skipped,
    Delivered(Duration),
    NotDelivered {
        waited: u64,
        delivered: f64,
        target: u64,
    },
    Unknown(String),
}

async fn wait_delivered(
    metrics: &Target,
    stream: &str,
    baseline: f64,
    target: u64,
    last_send: Instant,
    wait_secs: u64,
) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let mut delivered = 0.0;
    eprintln!("waiting up to {wait_secs} s for {target} records to be delivered...");
    loop {
        let last_err = match fetch_delivered(metrics, stream).await {
            Ok(v) => {
                delivered = (v - baseline).max(0.0);
                if delivered >= target as f64 {
                    return Delivery::Delivered(last_send.elapsed());
                }
                None
            }
            Err(e) => Some(format!("{e:#}")),
        };
        if Instant::now() >= deadline {
            return match last_err {
                Some(e) => Delivery::Unknown(format!("metrics unavailable: {e}")),
                None => Delivery::NotDelivered {
                    waited: wait_secs,
                    delivered,
                    target,
                },
            };
        }
        sleep(METRICS_POLL).await;
    }
}

async fn create_stream(api: &Target, args: &Args) -> Result<()> {
    let req = api_request(api, TARGET_CREATE, create_stream_body(args));
    let (status, body) = oneshot(api, req)
        .await
        .context("CreateDeliveryStream failed")?;
    if status == StatusCode::OK {
        eprintln!("created delivery stream {:?}", args.stream);
        return Ok(());
    }
    let err = ApiError::parse(&body);
    if status == StatusCode::BAD_REQUEST && err.kind == "ResourceInUseException" {
        eprintln!("delivery stream {:?} exists already", args.stream);
        return Ok(());
    }
    bail!("CreateDeliveryStream failed: {}", err.describe(status))
}

/// Sends one single-record batch to check that the stream exists and accepts records.
/// Returns the number of records accepted (0 or 1).
async fn preflight(api: &Target, body: Bytes, stream: &str) -> Result<u64> {
    let mut backoff = THROTTLE_BACKOFF_MIN;
    for _ in 0..50 {
        let req = api_request(api, TARGET_PUT_BATCH, body.clone());
        let (status, resp) = oneshot(api, req).await.context("PutRecordBatch failed")?;
        match status {
            StatusCode::OK => {
                let r: PutBatchResponse = serde_json::from_slice(&resp).with_context(|| {
                    format!(
                        "unparsable PutRecordBatch response: {}",
                        String::from_utf8_lossy(&resp[..resp.len().min(200)])
                    )
                })?;
                if r.failed_put_count > 0 {
                    report_first_record_failure(&resp);
                }
                return Ok(u64::from(r.failed_put_count == 0));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                sleep(backoff).await;
                backoff = (backoff * 2).min(THROTTLE_BACKOFF_MAX);
            }
            _ => {
                let err = ApiError::parse(&resp);
                if err.kind == "ResourceNotFoundException" {
                    bail!(
                        "delivery stream {stream:?} does not exist ({}); \
                         pass --create-stream to create it",
                        err.describe(status)
                    );
                }
                bail!("PutRecordBatch failed: {}", err.describe(status));
            }
        }
    }
    bail!("PutRecordBatch stayed throttled (503) during the preflight request")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("spillway-loadgen: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let min_size = min_record_size();
    if args.record_size < min_size {
        bail!("--record-size must be at least {min_size} bytes (the event without padding)");
    }
    if args.gzip_table {
        gzip_table(args.record_size);
        return Ok(());
    }
    if args.requests.is_none() && args.duration == 0 {
        bail!("--duration must be at least 1 second (or use --requests)");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of MiB/s");
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if args.record_size > 1000 * 1024 || args.batch > 500 {
        eprintln!(
            "warning: Amazon Data Firehose allows at most 500 records of 1000 KiB per \
             request; the daemon may reject these requests"
        );
    }

    let mut api = Target::from_url(&args.endpoint).await?;
    if let Some(pair) = &args.sign {
        let (id, secret) = pair
            .split_once(':')
            .ok_or_else(|| anyhow!("--sign wants KEY_ID:SECRET"))?;
        api.sign = Some(Arc::new((id.to_owned(), secret.to_owned())));
    }
    let metrics = match &args.metrics_url {
        Some(url) => Target::from_url(url).await?,
        None => api.with_path("/metrics"),
    };

    // Reachability first, for a clear message.
    drop(
        connect(api.addr)
            .await
            .with_context(|| format!("endpoint {} is unreachable", args.endpoint))?,
    );

    if args.create_stream {
        create_stream(&api, &args).await?;
    }

    let baseline = match fetch_delivered(&metrics, &args.stream).await {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("warning: cannot read delivered records from metrics: {e:#}");
            None
        }
    };

    let stream_json = serde_json::to_string(&args.stream)?;
    let mut rng = rand::rng();
    let preflight_accepted = preflight(
        &api,
        make_body(&mut rng, &stream_json, 1, args.record_size),
        &args.stream,
    )
    .await?;

    // Build the request pool up front.
    let batch = args.batch as usize;
    let est_body = batch * (args.record_size.div_ceil(3) * 4 + 12) + 64;
    let pool = (POOL_BYTES / est_body.max(1)).clamp(1, POOL_BODIES);
    let bodies: Vec<Bytes> = (0..pool)
        .map(|_| make_body(&mut rng, &stream_json, batch, args.record_size))
        .collect();
    let body_bytes = bodies.first().map_or(0, Bytes::len);
    if body_bytes > 4 << 20 {
        eprintln!(
            "warning: request bodies are {:.1} MiB, over Firehose's 4 MiB limit",
            body_bytes as f64 / f64::from(1 << 20)
        );
    }

    let start = Instant::now();
    let warmup_end = start + Duration::from_secs(args.warmup);
    let plan = match args.requests {
        Some(total) => Plan::Requests { total },
        None => Plan::Duration {
            end: warmup_end + Duration::from_secs(args.duration),
        },
    };
    let body_hashes = match api.sign {
        Some(_) => bodies
            .iter()
            .map(|b| spillway::api::auth::sha256_hex(b))
            .collect(),
        None => Vec::new(),
    };
    let shared = Arc::new(Shared {
        target: api.clone(),
        bodies,
        body_hashes,
        batch: u64::from(args.batch),
        warmup_end,
        plan,
        issued: AtomicU64::new(0),
        pacing: args.rate.map(|mib_per_s| {
            // One connection's share of the rate, as the gap between its requests.
            let request_mib =
                f64::from(args.batch) * args.record_size as f64 / f64::from(1u32 << 20);
            let per_connection = mib_per_s / f64::from(args.connections);
            (start, Duration::from_secs_f64(request_mib / per_connection))
        }),
        connections: args.connections as usize,
    });
    match plan {
        Plan::Duration { .. } => eprintln!(
            "sending: {} connections, {} x {} B records per request, {} s warmup + {} s measured",
            args.connections, args.batch, args.record_size, args.warmup, args.duration
        ),
        Plan::Requests { total } => eprintln!(
            "sending: {} connections, {} x {} B records per request, {} s warmup + {total} requests",
            args.connections, args.batch, args.record_size, args.warmup
        ),
    }

    let handles: Vec<_> = (0..args.connections as usize)
        .map(|i| tokio::spawn(worker(Arc::clone(&shared), i)))
        .collect();
    let mut total = WorkerStats::default();
    for h in handles {
        total.merge(h.await.context("worker task failed")?);
    }

    let measured_secs = match plan {
        Plan::Duration { .. } => args.duration as f64,
        Plan::Requests { .. } => total.last_measured_done.map_or(0.0, |t| {
            t.saturating_duration_since(warmup_end).as_secs_f64()
        }),
    };
    total.latencies_us.sort_unstable();
    let p50 = percentile_ms(&total.latencies_us, 0.50);
    let p99 = percentile_ms(&total.latencies_us, 0.99);
    let max = total.latencies_us.last().map(|&us| f64::from(us) / 1000.0);
    let per_sec = |n: f64| {
        if measured_secs > 0.0 {
            n / measured_secs
        } else {
            0.0
        }
    };
    let records_per_s = per_sec(total.records_accepted as f64);
    let payload_mib_s =
        per_sec(total.records_accepted as f64 * args.record_size as f64) / f64::from(1 << 20);

    let delivery_target = total.accepted_all + preflight_accepted;
    let last_send = total.last_done.unwrap_or_else(Instant::now);
    let delivery = match baseline {
        _ if args.wait_delivered == 0 => Delivery::Skipped,
        None => Delivery::Unknown("metrics unavailable".to_owned()),
        Some(base) => {
            wait_delivered(
                &metrics,
                &args.stream,
                base,
                delivery_target,
                last_send,
                args.wait_delivered,
            )
            .await
        }
    };

    let memory = match args.daemon_pid.map(daemon_memory) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            eprintln!("warning: daemon memory unknown: {e:#}");
            None
        }
    };

    // Table.
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<22} {v}");
    };
    row("connections", args.connections.to_string());
    row("record size", format!("{} B", args.record_size));
    row(
        "offered rate",
        args.rate
            .map_or("as fast as answered (closed loop)".into(), |r| {
                format!("{r} MiB/s (latency from scheduled send)")
            }),
    );
    row("batch", format!("{} records/request", args.batch));
    row(
        "measured",
        format!("{measured_secs:.1} s (after {} s warmup)", args.warmup),
    );
    row("requests ok", total.requests_ok.to_string());
    row("records accepted", total.records_accepted.to_string());
    row("records failed", total.records_failed.to_string());
    row("throttled (503)", total.throttled.to_string());
    row("other errors", total.errors.to_string());
    row("records/s", format!("{records_per_s:.0}"));
    row("payload MiB/s", format!("{payload_mib_s:.2}"));
    row("latency p50", ms(p50));
    row("latency p99", ms(p99));
    row("latency max", ms(max));
    row(
        "delivered after",
        match &delivery {
            Delivery::Skipped => "not waited (--wait-delivered 0)".to_owned(),
            Delivery::Delivered(d) => format!("{:.2} s", d.as_secs_f64()),
            Delivery::NotDelivered {
                waited,
                delivered,
                target,
            } => format!("not delivered within {waited} s ({delivered:.0} of {target})"),
            Delivery::Unknown(why) => format!("unknown ({why})"),
        },
    );
    row(
        "daemon peak RSS",
        memory.as_ref().map_or_else(
            || "-".to_owned(),
            |m| format!("{:.1} MiB (now {:.1} MiB)", m.peak_mib, m.current_mib),
        ),
    );
    let header = format!(
        "spillway-loadgen: stream {:?} at {}\n",
        args.stream, args.endpoint
    );

    if args.json {
        eprint!("{header}{t}");
        let (delivered, delivered_after_s) = match &delivery {
            Delivery::Delivered(d) => (Some(true), Some(d.as_secs_f64())),
            Delivery::NotDelivered { .. } => (Some(false), None),
            Delivery::Skipped | Delivery::Unknown(_) => (None, None),
        };
        let json = serde_json::json!({
            "endpoint": args.endpoint,
            "stream": args.stream,
            "connections": args.connections,
            "record_size": args.record_size,
            "batch": args.batch,
            "warmup_s": args.warmup,
            "measured_s": measured_secs,
            "requests_ok": total.requests_ok,
            "records_accepted": total.records_accepted,
            "records_failed": total.records_failed,
            "throttled": total.throttled,
            "errors": total.errors,
            "records_per_s": records_per_s,
            "payload_mib_per_s": payload_mib_s,
            "latency_ms": { "p50": p50, "p99": p99, "max": max },
            "delivered": delivered,
            "delivered_after_s": delivered_after_s,
            "delivery_target_records": delivery_target,
            "daemon_peak_rss_mib": memory.as_ref().map(|m| m.peak_mib),
            "daemon_rss_mib": memory.as_ref().map(|m| m.current_mib),
        });
        println!("{json}");
    } else {
        print!("{header}{t}");
    }
    Ok(())
}

// In tests, `expect` is the failure report.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_exact_size_and_parse() {
        let mut rng = rand::rng();
        for size in [min_record_size(), 200, 1024, 4096] {
            for _ in 0..200 {
                let rec = make_record(&mut rng, size);
                assert_eq!(rec.len(), size);
                assert_eq!(rec.last(), Some(&b'\n'));
                let v: serde_json::Value = serde_json::from_slice(&rec).expect("valid JSON");
                assert!(v.get("user_id").is_some());
            }
        }
    }

    #[test]
    fn body_is_valid_put_record_batch() {
        let mut rng = rand::rng();
        let body = make_body(&mut rng, "\"s\"", 3, 300);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let recs = v["Records"].as_array().expect("Records array");
        assert_eq!(recs.len(), 3);
        let data = BASE64
            .decode(recs[0]["Data"].as_str().expect("Data string"))
            .expect("base64");
        assert_eq!(data.len(), 300);
    }

    #[test]
    fn delivered_metric_is_summed_per_stream() {
        let text = "# HELP x\n\
            spillway_delivered_records_total{stream=\"bench\"} 12345\n\
            spillway_delivered_records_total{stream=\"other\"} 7\n\
            spillway_delivered_records_total{destination=\"s3\",stream=\"bench\"} 5\n\
            spillway_delivered_records_total_x{stream=\"bench\"} 100\n\
            spillway_processed_records_total{result=\"dropped\",stream=\"bench\"} 3\n\
            spillway_processed_records_total{result=\"ok\",stream=\"bench\"} 12345\n\
            spillway_error_records_total{stream=\"bench\",type=\"processing-failed\"} 2\n";
        assert_eq!(parse_delivered(text, "bench"), 12355.0);
        assert_eq!(parse_delivered(text, "none"), 0.0);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&v, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[], 0.99), None);
    }

    #[test]
    fn api_error_strips_namespace() {
        let e = ApiError::parse(br#"{"__type":"a.b#ResourceNotFoundException","message":"m"}"#);
        assert_eq!(e.kind, "ResourceNotFoundException");
        assert_eq!(e.message, "m");
    }
}
