//! `spillway-baseline`: the least a durable Firehose endpoint must do, as a yardstick for
//! benchmarks. It parses `PutRecordBatch`, base64-decodes the records, appends them to one file,
//! group-commits with `fdatasync` (every request waiting when a sync starts shares it) and
//! answers. No buffering for objects, no S3, no per-stream anything: what "acknowledged means
//! durable" costs on this machine, which spillway can approach but not pass.
//!
//! It speaks just enough of the protocol for `spillway-loadgen`: `CreateDeliveryStream` is
//! accepted and ignored, and `/metrics` reports records made durable as
//! `spillway_delivered_records_total{stream=...}`, so the load generator's "delivered" means
//! "in the file and synced". The file is replaced by a new one every `--file-mib`, the old one
//! deleted, so long runs do not fill the disk.
//!
//! ```text
//! spillway-baseline --listen 127.0.0.1:4580 --dir /tmp/baseline &
//! spillway-loadgen --endpoint http://127.0.0.1:4580 --stream bench --duration 15
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

#[derive(Parser, Debug)]
#[command(
    name = "spillway-baseline",
    about = "A bare durable Firehose endpoint (parse, base64, append, group fdatasync, answer) to measure spillway against"
)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:4580")]
    listen: SocketAddr,
    /// Directory for the record file.
    #[arg(long, default_value = "./baseline-data")]
    dir: PathBuf,
    /// Start a new file (and delete the old one) past this many MiB.
    #[arg(long, default_value_t = 512)]
    file_mib: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatch<'a> {
    #[serde(borrow)]
    delivery_stream_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    records: Vec<Record<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record<'a> {
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
}

/// One request's records, appended and synced together with whatever else is waiting.
struct Append {
    bytes: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

struct State {
    appends: mpsc::Sender<Append>,
    durable: Mutex<HashMap<String, u64>>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let (tx, rx) = mpsc::channel::<Append>(1024);
    let dir = args.dir.clone();
    let limit = args.file_mib << 20;
    std::thread::Builder::new()
        .name("baseline-writer".into())
        .spawn(move || writer(dir, limit, rx))?;
    let state = Arc::new(State {
        appends: tx,
        durable: Mutex::new(HashMap::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args.listen, state))
}

/// The group commit: takes every append waiting, writes them, syncs once, answers them all.
fn writer(dir: PathBuf, limit: u64, mut rx: mpsc::Receiver<Append>) -> Result<()> {
    let mut number = 0u64;
    let path = |n: u64| dir.join(format!("records-{n:08}.bin"));
    let mut file = File::create(path(number))?;
    let mut written = 0u64;
    let mut round = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        round.push(first);
        while let Ok(more) = rx.try_recv() {
            round.push(more);
        }
        let mut result = Ok(());
        for append in &round {
            if let Err(e) = file.write_all(&append.bytes) {
                result = Err(e);
                break;
            }
            written += append.bytes.len() as u64;
        }
        if result.is_ok() {
            result = file.sync_data();
        }
        for append in round.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = append.done.send(answer);
        }
        if written >= limit {
            let _ = std::fs::remove_file(path(number));
            number += 1;
            file = File::create(path(number))?;
            written = 0;
        }
    }
    Ok(())
}

async fn serve(listen: SocketAddr, state: Arc<State>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!(
        "spillway-baseline listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    resp
}

fn error(kind: &str, message: &str) -> Response<Full<Bytes>> {
    answer(
        StatusCode::BAD_REQUEST,
        format!(r#"{{"__type":"{kind}","message":"{message}"}}"#),
    )
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/metrics" {
        let durable = state.durable.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        for (stream, n) in durable.iter() {
            text.push_str(&format!(
                "spillway_delivered_records_total{{stream=\"{stream}\"}} {n}\n"
            ));
        }
        return answer(StatusCode::OK, text);
    }
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match Limited::new(req.into_body(), 8 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error("InvalidArgumentException", "body too large or cut off"),
    };
    match target.as_str() {
        "Firehose_20150804.PutRecordBatch" => put_record_batch(state, &body).await,
        "Firehose_20150804.CreateDeliveryStream" => answer(
            StatusCode::OK,
            r#"{"DeliveryStreamARN":"arn:aws:firehose:us-east-1:000000000000:deliverystream/baseline"}"#,
        ),
        _ => error("UnknownOperationException", "not served by the baseline"),
    }
}

async fn put_record_batch(state: &State, body: &[u8]) -> Response<Full<Bytes>> {
    let request: PutRecordBatch<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(_) => return error("SerializationException", "not a PutRecordBatch body"),
    };
    // Each record as its length and its bytes, as a journal would frame it.
    let mut bytes = Vec::with_capacity(body.len());
    for record in &request.records {
        let decoded = match base64_simd::STANDARD.decode_to_vec(record.data.as_bytes()) {
            Ok(d) => d,
            Err(_) => return error("InvalidArgumentException", "record data is not base64"),
        };
        bytes.extend_from_slice(&(decoded.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&decoded);
    }
    let (done, synced) = oneshot::channel();
    if state.appends.send(Append { bytes, done }).await.is_err() {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "writer stopped");
    }
    match synced.await {
        Ok(Ok(())) => {}
        _ => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"__type":"ServiceUnavailableException","message":"write failed"}"#,
            );
        }
    }
    let first = {
        let mut durable = state.durable.lock().unwrap_or_else(|p| p.into_inner());
        let n = durable
            .entry(request.delivery_stream_name.into_owned())
            .or_insert(0);
        let first = *n;
        *n += request.records.len() as u64;
        first
    };
    let mut out = String::with_capacity(64 + request.records.len() * 80);
    out.push_str(r#"{"FailedPutCount":0,"Encrypted":false,"RequestResponses":["#);
    for i in 0..request.records.len() as u64 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#"{{"RecordId":"{:056x}"}}"#, first + i));
    }
    out.push_str("]}");
    answer(StatusCode::OK, out)
}
