//! The HTTP edge: accepts connections, routes `POST /` by `X-Amz-Target` to the Firehose
//! operations (JSON 1.1), and serves `/healthz`, `/readyz` and `/metrics`. It parses and
//! answers; it never buffers records itself nor knows how they are stored.

pub mod auth;
pub(crate) mod control;
pub(crate) mod data;
pub mod error;
pub mod tls;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::pipeline::MemoryBudget;
use crate::pipeline::budget::Reservation;
use error::{ApiError, ErrorKind};

pub use data::{MAX_RECORD_BYTES, MAX_RECORDS, MAX_REQUEST_BYTES};

/// Largest body read: 4 MiB of records grows by a third in base64, plus JSON around it.
const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
const TARGET_PREFIX: &str = "Firehose_20150804.";
const JSON: &str = "application/x-amz-json-1.1";

/// The HTTP server is up from the start: `/healthz` answers while the journal replays and
/// while draining, so an orchestrator does not kill a daemon that is busy recovering or
/// flushing. `/readyz` and the Firehose operations follow the phase.
pub struct Api {
    /// Set once the journal has replayed.
    catalog: OnceLock<Arc<Catalog>>,
    metrics: Arc<Metrics>,
    phase: AtomicU8,
    /// Request bodies held in memory while they are read (`http.max_body_memory_mib`): a
    /// reservation per chunk received, so a client that declares a large body and sends it
    /// slowly holds only what it sent, and many of them cannot take the daemon's memory.
    bodies: Arc<MemoryBudget>,
    /// `[auth]`: empty lets every request through.
    keys: auth::Keys,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Api {
    pub fn new(metrics: Arc<Metrics>, max_body_memory_bytes: u64, keys: auth::Keys) -> Api {
        metrics.set_ready(false);
        let bodies = Arc::new(MemoryBudget::new(
            max_body_memory_bytes,
            metrics.request_body_bytes().clone(),
        ));
        Api {
            catalog: OnceLock::new(),
            metrics,
            phase: AtomicU8::new(STARTING),
            bodies,
            keys,
        }
    }

    /// The journal has replayed: serve the Firehose API.
    pub fn serve_catalog(&self, catalog: Arc<Catalog>) {
        let _ = self.catalog.set(catalog);
        self.phase.store(READY, Ordering::Release);
        self.metrics.set_ready(true);
    }

    /// Shutting down: refuse new records and stream changes (with ServiceUnavailableException,
    /// which SDKs retry, by then on another replica) while buffers flush; reads still work.
    pub fn drain(&self) {
        self.phase.store(DRAINING, Ordering::Release);
        self.metrics.set_ready(false);
    }

    fn ready(&self) -> bool {
        self.phase.load(Ordering::Acquire) == READY
    }

    /// The catalog, if `operation` may run in the current phase.
    fn catalog_for(&self, operation: &str) -> Result<&Arc<Catalog>, ApiError> {
        let phase = self.phase.load(Ordering::Acquire);
        match self.catalog.get() {
            None => Err(ApiError::new(
                ErrorKind::ServiceUnavailable,
                "spillway is starting (replaying its journal); retry shortly.",
            )),
            Some(_) if phase == DRAINING && !READ_ONLY.contains(&operation) => Err(ApiError::new(
                ErrorKind::ServiceUnavailable,
                "spillway is shutting down and flushing its buffers; send to another instance or retry later.",
            )),
            Some(catalog) => Ok(catalog),
        }
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// The Firehose API and /metrics, /healthz, /readyz.
    All,
    /// The Firehose API only (`admin_listen` serves the rest).
    Api,
    /// /metrics, /healthz and /readyz only.
    Admin,
}

/// Serves until `stop` is cancelled, then stops accepting and waits (up to `drain`) for the
/// requests in flight to be answered. With `tls`, every connection is TLS, its handshake
/// bounded by the header read timeout.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    limits: crate::config::HttpSettings,
    tls: Option<Arc<tls::Tls>>,
    stop: CancellationToken,
    drain: Duration,
    routes: Routes,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap a connection is closed at once, so piled-up clients cannot use up
        // the descriptors that journals and uploads need.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            api.metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body_timeout = limits.body_read_timeout;
        let service = {
            let api = api.clone();
            service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, req, body_timeout, routes).await) }
            })
        };
        let http = http.clone();
        // Tracked by `graceful` (once past the handshake), which shutdown awaits below.
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let handshake_timeout = limits.header_read_timeout;
        let metrics = api.metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                let _ = watcher
                    .watch(http.serve_connection(TokioIo::new(stream), service))
                    .await;
                return;
            };
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    metrics.tls_handshake_failed("failed");
                }
                Err(_) => metrics.tls_handshake_failed("timeout"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::warn!("some connections were still open after the drain timeout"),
    }
}

async fn handle(
    api: &Api,
    req: Request<Incoming>,
    body_timeout: Duration,
    routes: Routes,
) -> Response<Full<Bytes>> {
    let (api_routes, admin_routes) = (routes != Routes::Admin, routes != Routes::Api);
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/") if api_routes => firehose(api, req, body_timeout).await,
        (&Method::GET, "/healthz") if admin_routes => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if admin_routes => readiness(api),
        (&Method::GET, "/metrics") if admin_routes => {
            if let Some(catalog) = api.catalog.get() {
                catalog.refresh_gauges();
            }
            let mut resp = Response::new(Full::new(Bytes::from(api.metrics.render())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/readyz`: 200 while serving, with a line per stalled stream; 503 while starting or
/// draining, and while a stream's journal refuses writes (a full or failing disk: a load
/// balancer should send producers to a replica that can take their records). A destination
/// that fails uploads keeps the replica ready: its journal still takes records, and every
/// replica shares the destination.
fn readiness(api: &Api) -> Response<Full<Bytes>> {
    if !api.ready() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    let mut detail = String::new();
    let mut journal_failed = false;
    if let Some(catalog) = api.catalog.get() {
        for entry in catalog.list() {
            let reasons = entry.runtime.shared().stalled();
            for reason in &reasons {
                let what = match *reason {
                    "journal" => "its journal refuses writes (disk full or failing); retrying",
                    "held" => {
                        "records this run cannot deliver stay in the journal (see the log); the next start retries them"
                    }
                    _ => "uploads are failing; records wait in the journal",
                };
                detail.push_str(&format!("stalled: stream {}: {what}\n", entry.name));
            }
            journal_failed |= reasons.contains(&"journal");
        }
    }
    if journal_failed {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{detail}"),
        )
    } else {
        text(StatusCode::OK, format!("ready\n{detail}"))
    }
}

/// Operation names as metric labels: a fixed set, so labels stay bounded.
const OPERATIONS: &[&str] = &[
    "PutRecord",
    "PutRecordBatch",
    "CreateDeliveryStream",
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "DeleteDeliveryStream",
    "UpdateDestination",
    "TagDeliveryStream",
    "UntagDeliveryStream",
    "ListTagsForDeliveryStream",
    "StartDeliveryStreamEncryption",
    "StopDeliveryStreamEncryption",
];

/// Operations that change nothing: answered while draining too.
const READ_ONLY: &[&str] = &[
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "ListTagsForDeliveryStream",
];

async fn firehose(
    api: &Api,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    let operation = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .and_then(|op| OPERATIONS.iter().find(|known| **known == op).copied());
    let started = Instant::now();
    let result = match operation {
        None => Err(ApiError::new(
            ErrorKind::UnknownOperation,
            "Missing or unknown X-Amz-Target; expected Firehose_20150804.<Operation>.",
        )),
        Some(op) => {
            let (parts, body) = req.into_parts();
            // A client without a well-formed signature by a known key never holds body memory.
            if !api.keys.is_empty()
                && let Err(e) = api.keys.check_headers(&parts.headers, chrono::Utc::now())
            {
                let e = ApiError::from(e);
                return respond(
                    api,
                    operation,
                    started,
                    Err(ApiError::unread_body(e.kind, e.message)),
                );
            }
            let body = read_body(api, body);
            match tokio::time::timeout(body_timeout, body).await {
                Err(_) => Err(ApiError::unread_body(
                    ErrorKind::InvalidArgument,
                    format!(
                        "Request body not received within {} s.",
                        body_timeout.as_secs()
                    ),
                )),
                Ok(Err(e)) => Err(e),
                // The body's memory is held until its records are in the stream's budget.
                Ok(Ok((body, _held))) => match authenticate(api, &parts, &body) {
                    Ok(grant) => dispatch(api, op, &body, &grant).await,
                    Err(e) => Err(e.into()),
                },
            }
        }
    };
    respond(api, operation, started, result)
}

/// The HTTP answer to a Firehose request, counted in the metrics.
fn respond(
    api: &Api,
    operation: Option<&str>,
    started: Instant,
    result: Result<Vec<u8>, ApiError>,
) -> Response<Full<Bytes>> {
    let label = operation.unwrap_or("unknown");
    let (status, body, outcome, close) = match result {
        Ok(body) => (StatusCode::OK, body, "ok", false),
        Err(e) => {
            tracing::debug!(operation = label, error = e.kind.aws_type(), message = %e.message, "request refused");
            (e.kind.status(), e.body(), e.kind.aws_type(), e.close)
        }
    };
    api.metrics
        .api_request(label, outcome, started.elapsed().as_secs_f64());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    if !api.ready() || close {
        // Starting or draining: close the connection so the client's retry opens a new one,
        // which a load balancer can send to another instance. Refused while reading: what is
        // left of the body is not read.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if outcome != "ok" {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(outcome));
    }
    if let Ok(id) = HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>())) {
        headers.insert("x-amzn-requestid", id);
    }
    resp
}

/// Reads a request body of at most [`MAX_BODY_BYTES`], reserving each chunk in the bodies'
/// memory budget as it arrives; past that budget the request is refused at once.
///
/// A body past the limit (declared, or found so while reading) is refused without keeping any
/// more of it: up to [`MAX_DISCARDED_BYTES`] of it in all is read and dropped first, so an
/// honest client that sent a few MiB too many is still writing when the answer comes and reads
/// it, instead of finding its connection reset. A larger one is answered at once.
async fn read_body(api: &Api, mut body: Incoming) -> Result<(Bytes, Reservation), ApiError> {
    let too_large = |what: String| {
        ApiError::unread_body(
            ErrorKind::InvalidArgument,
            format!("Request body {what} is larger than {MAX_BODY_BYTES} bytes."),
        )
    };
    let declared = hyper::body::Body::size_hint(&body).lower();
    if declared > MAX_BODY_BYTES as u64 {
        if declared <= MAX_DISCARDED_BYTES as u64 {
            discard(&mut body, 0).await;
        }
        return Err(too_large(format!("of {declared} bytes")));
    }
    let mut held = api.bodies.none();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::unread_body(ErrorKind::InvalidArgument, "Request body was cut off.")
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > MAX_BODY_BYTES {
            let read = buf.len() + data.len();
            drop((buf, held));
            discard(&mut body, read).await;
            return Err(too_large(format!("of more than {read} bytes")));
        }
        let Some(chunk) = api.bodies.try_reserve(data.len() as u64) else {
            api.metrics.body_refused();
            return Err(ApiError::unread_body(
                ErrorKind::ServiceUnavailable,
                "Too many request bodies are being received at once; retry later.",
            ));
        };
        held.merge(chunk);
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// Most of a refused body read (and dropped) before answering: see [`read_body`].
const MAX_DISCARDED_BYTES: usize = 16 * 1024 * 1024;

/// Reads and drops the rest of a body, until `MAX_DISCARDED_BYTES` were read in all.
async fn discard(body: &mut Incoming, mut read: usize) {
    while read <= MAX_DISCARDED_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// The request's signature checked against `[auth]` (when keys are configured): what the
/// key it was signed with may do.
fn authenticate<'a>(
    api: &'a Api,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<auth::Grant<'a>, auth::AuthError> {
    if api.keys.is_empty() {
        return Ok(auth::Grant::Anyone);
    }
    let request = auth::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body,
    };
    api.keys
        .verify(&request, chrono::Utc::now())
        .map(auth::Grant::Key)
}

async fn dispatch(
    api: &Api,
    operation: &str,
    body: &[u8],
    grant: &auth::Grant<'_>,
) -> Result<Vec<u8>, ApiError> {
    let catalog = api.catalog_for(operation)?;
    match operation {
        "PutRecord" => data::put_record(catalog, body, grant).await,
        "PutRecordBatch" => data::put_record_batch(catalog, body, grant).await,
        "CreateDeliveryStream" => control::create(catalog, body, grant).await,
        "DescribeDeliveryStream" => control::describe(catalog, body, grant),
        "ListDeliveryStreams" => control::list(catalog, body, grant),
        "DeleteDeliveryStream" => control::delete(catalog, body, grant).await,
        "UpdateDestination" => control::update(catalog, body, grant).await,
        "TagDeliveryStream" => control::tag(catalog, body, grant).await,
        "UntagDeliveryStream" => control::untag(catalog, body, grant).await,
        "ListTagsForDeliveryStream" => control::list_tags(catalog, body, grant),
        "StartDeliveryStreamEncryption" => control::start_encryption(catalog, body, grant).await,
        "StopDeliveryStreamEncryption" => control::stop_encryption(catalog, body, grant).await,
        _ => Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("Unknown operation {operation}."),
        )),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}
