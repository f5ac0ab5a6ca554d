//! Harness for black-box tests: a real S3-protocol server (`s3s-fs`, installed by the test
//! command) on a loopback port, the real `spillway` binary on `127.0.0.1:0`, the AWS SDK for
//! Rust to drive it, and an S3 client (object_store) to read back what landed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{
    BufferingHints, CompressionFormat, ExtendedS3DestinationConfiguration, Processor,
    ProcessorParameter, ProcessorParameterName, ProcessorType, Record,
};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ObjectStore, ObjectStoreExt};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "spillway-test";
pub const SECRET_KEY: &str = "spillway-test-secret";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("S3S_FS") {
        return PathBuf::from(p);
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let p = home.join("bin/s3s-fs");
    assert!(
        p.exists(),
        "s3s-fs not found at {}: run the test command from the README (bash .ci/run), which installs it",
        p.display()
    );
    p
}

/// An `s3s-fs` server: a real S3 protocol implementation storing objects as files.
pub struct S3Server {
    pub root: TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = TempDir::new().unwrap();
        let mut server = S3Server {
            root,
            port: free_port(),
            child: None,
        };
        server.resume();
        server
    }

    /// (Re)starts the server on the same port and directory.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server: the destination is unreachable until `resume`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.path().join(bucket)).unwrap();
    }

    /// An S3 client for reading back, over the network like any other client.
    pub fn client(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap()
    }

    /// The `[object_store]` section pointing spillway at this server.
    pub fn config(&self) -> String {
        format!(
            "[object_store]\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every object in a bucket, sorted by key.
pub async fn objects(store: &dyn ObjectStore) -> Vec<(String, Bytes)> {
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.push((m.location.to_string(), data));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// A running daemon with its own data dir, config and captured log.
pub struct Daemon {
    pub data_dir: PathBuf,
    _dir: Option<TempDir>,
    config: Option<PathBuf>,
    extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts with a config file holding `config` (none if empty) in a fresh data dir.
    pub fn start(config: &str) -> Daemon {
        Daemon::start_with(config, &[], &[])
    }

    /// Starts with extra flags and environment variables.
    pub fn start_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::start_stopped(config);
        d.extra_args = args.iter().map(|s| s.to_string()).collect();
        d.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.launch(None);
        d
    }

    /// Starts with extra flags and returns once it listens, before it is ready: for daemons
    /// whose readiness the test checks its own way (over TLS, say).
    pub fn start_unready_with(config: &str, args: &[&str]) -> Daemon {
        let mut d = Daemon::start_stopped(config);
        d.extra_args = args.iter().map(|s| s.to_string()).collect();
        d.launch_unready(None);
        d
    }

    /// Starts with `data_dir` as its data directory (a mount the test made, say).
    pub fn start_in(config: &str, data_dir: &std::path::Path) -> Daemon {
        let mut d = Daemon::start_stopped(config);
        d.data_dir = data_dir.to_path_buf();
        d.launch(None);
        d
    }

    fn start_stopped(config: &str) -> Daemon {
        let dir = TempDir::new().unwrap();
        let data_dir = dir.path().join("data");
        let config_path = (!config.is_empty()).then(|| {
            let p = dir.path().join("spillway.toml");
            std::fs::write(&p, config).unwrap();
            p
        });
        Daemon {
            data_dir,
            _dir: Some(dir),
            config: config_path,
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            log: Arc::default(),
        }
    }

    /// Starts the binary and waits until it is ready (its journal replayed); `listen` keeps the
    /// previous port across restarts.
    fn launch(&mut self, listen: Option<SocketAddr>) {
        self.launch_unready(listen);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get("/readyz").0 != 200 {
            assert!(!self.exited(), "spillway exited; log:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "spillway never became ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the binary and returns once it listens, which is before it is ready.
    fn launch_unready(&mut self, listen: Option<SocketAddr>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
        cmd.arg("--data-dir").arg(&self.data_dir);
        cmd.arg("--listen")
            .arg(listen.map_or("127.0.0.1:0".to_string(), |a| a.to_string()));
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(&self.extra_args);
        cmd.env("RUST_LOG", "info,spillway=debug")
            .env("NO_COLOR", "1")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("SPILLWAY_OBJECT_STORE")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start spillway");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line
                    .find("listening on http://")
                    .map(|at| at + 20)
                    .or_else(|| line.find("listening on https://").map(|at| at + 21))
                {
                    // Text or JSON logs: the address runs until the first character that
                    // cannot be part of it.
                    let addr: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                        .collect();
                    let _ = tx.send(addr);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => self.addr = addr.parse().expect("listening address"),
            Err(_) => panic!("spillway did not start; log:\n{}", self.log()),
        }
    }

    /// Replaces the config file; it is read at the next (re)start.
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(self.config.as_ref().expect("started with a config"), config).unwrap();
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The AWS SDK for Rust pointed at the daemon, with the SDK's standard retries.
    pub fn firehose(&self) -> Client {
        self.firehose_with_retries(3)
    }

    pub fn firehose_with_retries(&self, attempts: u32) -> Client {
        let conf = aws_sdk_firehose::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .retry_config(
                aws_sdk_firehose::config::retry::RetryConfig::standard()
                    .with_max_attempts(attempts),
            )
            .build();
        Client::from_conf(conf)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_term();
        self.wait_exit()
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        let addr = self.addr;
        self.launch(Some(addr));
    }

    /// Restarts and returns as soon as the daemon listens, usually while it still replays.
    pub fn restart_unready(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        let addr = self.addr;
        self.launch_unready(Some(addr));
    }

    /// Sends SIGTERM and returns at once; `wait_exit` collects the exit status.
    pub fn send_term(&self) {
        let id = self.child.as_ref().expect("daemon running").id();
        Command::new("kill")
            .args(["-TERM", &id.to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit (after `send_term`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (without reaping it).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A raw HTTP/1.1 request, for inputs no SDK would send.
    pub fn raw(&self, target: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = target {
            req.push_str(&format!("X-Amz-Target: Firehose_20150804.{t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// A GET of /metrics, /healthz or /readyz, from the admin address when the daemon was
    /// started with `--admin-listen`, else from its API address.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_from(self.admin_addr().unwrap_or(self.addr), path)
    }

    /// `--admin-listen`'s address, if the daemon was started with one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let at = self.extra_args.iter().position(|a| a == "--admin-listen")?;
        self.extra_args.get(at + 1)?.parse().ok()
    }

    pub fn get_from(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// A sample's value from /metrics, e.g. `metric("spillway_delivered_records_total{stream=\"s\"}")`.
    /// Panics if the series is not there: a misspelled name must fail a test, not read as 0.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_if_any(series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// A sample's value, or `None` if the series does not exist (yet).
    pub fn metric_if_any(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- spillway log ---\n{}", self.log());
        }
    }
}

/// A stream configuration like the console's defaults, with the given bucket and hints.
pub fn s3_destination(
    bucket: &str,
    size_mib: i32,
    interval_s: i32,
) -> aws_sdk_firehose::types::builders::ExtendedS3DestinationConfigurationBuilder {
    ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::000000000000:role/firehose")
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .buffering_hints(
            BufferingHints::builder()
                .size_in_mbs(size_mib)
                .interval_in_seconds(interval_s)
                .build(),
        )
        .compression_format(CompressionFormat::Uncompressed)
}

pub async fn create_stream(
    client: &Client,
    name: &str,
    dest: aws_sdk_firehose::types::builders::ExtendedS3DestinationConfigurationBuilder,
) {
    client
        .create_delivery_stream()
        .delivery_stream_name(name)
        .extended_s3_destination_configuration(dest.build().unwrap())
        .send()
        .await
        .expect("create stream");
}

/// A create the daemon must refuse with `InvalidArgumentException`; returns its message.
pub async fn create_refused(
    client: &Client,
    name: &str,
    dest: aws_sdk_firehose::types::builders::ExtendedS3DestinationConfigurationBuilder,
) -> String {
    let e = client
        .create_delivery_stream()
        .delivery_stream_name(name)
        .extended_s3_destination_configuration(dest.build().unwrap())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(e.code(), Some("InvalidArgumentException"), "{e:?}");
    e.message().unwrap_or("").to_owned()
}

/// A processor of `kind` with these parameters, in order.
pub fn processor(kind: ProcessorType, params: &[(ProcessorParameterName, &str)]) -> Processor {
    let mut p = Processor::builder().r#type(kind);
    for (name, value) in params {
        p = p.parameters(
            ProcessorParameter::builder()
                .parameter_name(name.clone())
                .parameter_value(*value)
                .build()
                .unwrap(),
        );
    }
    p.build().unwrap()
}

/// A newline-terminated JSON record carrying a unique id, padded to `size` bytes.
pub fn record(id: u64, size: usize) -> Vec<u8> {
    let mut r = format!(r#"{{"id":{id},"pad":""#).into_bytes();
    let tail = b"\"}\n";
    while r.len() + tail.len() < size {
        r.push(b'x');
    }
    r.extend_from_slice(tail);
    r
}

/// Sends `records` in one PutRecordBatch, which must accept them all; returns their record ids.
pub async fn put_all(client: &Client, stream: &str, records: &[impl AsRef<[u8]>]) -> Vec<String> {
    let out = client
        .put_record_batch()
        .delivery_stream_name(stream)
        .set_records(Some(
            records
                .iter()
                .map(|r| {
                    Record::builder()
                        .data(Blob::new(r.as_ref()))
                        .build()
                        .unwrap()
                })
                .collect(),
        ))
        .send()
        .await
        .expect("put_record_batch");
    assert_eq!(out.failed_put_count(), 0);
    out.request_responses()
        .iter()
        .map(|r| r.record_id().unwrap().to_owned())
        .collect()
}

/// Sends records `ids` in one PutRecordBatch; returns the ids the daemon acknowledged.
pub async fn put_batch(
    client: &Client,
    stream: &str,
    ids: std::ops::Range<u64>,
    size: usize,
) -> Vec<u64> {
    try_put_batch(client, stream, ids, size)
        .await
        .unwrap_or_else(|e| panic!("put_record_batch: {e:?}"))
}

/// Like [`put_batch`], but a request refused as a whole with ServiceUnavailableException
/// acknowledges nothing instead of failing the test.
pub async fn put_batch_or_throttled(
    client: &Client,
    stream: &str,
    ids: std::ops::Range<u64>,
    size: usize,
) -> Vec<u64> {
    match try_put_batch(client, stream, ids, size).await {
        Ok(acked) => acked,
        Err(e) => {
            assert!(e.is_service_unavailable_exception(), "{e:?}");
            Vec::new()
        }
    }
}

/// One PutRecordBatch of records `ids`: the acknowledged ids, or the request's error.
pub async fn try_put_batch(
    client: &Client,
    stream: &str,
    ids: std::ops::Range<u64>,
    size: usize,
) -> Result<Vec<u64>, aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError> {
    let records: Vec<Record> = ids
        .clone()
        .map(|i| {
            Record::builder()
                .data(Blob::new(record(i, size)))
                .build()
                .unwrap()
        })
        .collect();
    let out = client
        .put_record_batch()
        .delivery_stream_name(stream)
        .set_records(Some(records))
        .send()
        .await
        .map_err(|e| e.into_service_error())?;
    Ok(ids
        .zip(out.request_responses())
        .filter(|(_, r)| r.record_id().is_some())
        .map(|(i, _)| i)
        .collect())
}

/// Every file below `dir`, at any depth (none if it does not exist).
pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Sends records `ids` as PutRecordBatch requests of up to 500 (the API's limit), in order;
/// returns the ids the daemon acknowledged.
pub async fn put_batches(
    client: &Client,
    stream: &str,
    ids: std::ops::Range<u64>,
    size: usize,
) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut start = ids.start;
    while start < ids.end {
        let end = (start + 500).min(ids.end);
        acked.extend(put_batch(client, stream, start..end, size).await);
        start = end;
    }
    acked
}

/// The ids of every record in the given object bodies (JSON lines with an "id" field).
pub fn ids_in(bodies: &[Vec<u8>]) -> Vec<u64> {
    let mut ids = Vec::new();
    for body in bodies {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("JSON line");
            ids.push(v["id"].as_u64().expect("id"));
        }
    }
    ids
}

/// Polls `check` until it returns Some or the timeout passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback TCP proxy in front of the S3 server. While `hold` is set, requests still reach
/// the server (objects land) but answers are held back: the window between "the object is
/// written" and "the daemon knows it", made as wide as a test needs.
pub struct HoldingProxy {
    pub port: u16,
    pub hold: Arc<std::sync::atomic::AtomicBool>,
    /// Every request line sent through the proxy (`PUT /bucket/key?partNumber=1&... HTTP/1.1`).
    pub requests: Arc<Mutex<Vec<String>>>,
    /// The header block (request line and headers) of each of those requests, lowercased.
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl HoldingProxy {
    pub fn start(target_port: u16) -> HoldingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let held = hold.clone();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen_heads = heads.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let seen = seen.clone();
                let seen_heads = seen_heads.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    loop {
                        let n = match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // Request lines, as far as they start a read (enough for tests that
                        // count requests of one kind).
                        for method in ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "] {
                            if buf[..n].starts_with(method.as_bytes())
                                && let Some(end) = buf[..n].iter().position(|b| *b == b'\r')
                            {
                                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                                seen.lock().unwrap().push(line);
                                let head_end = buf[..n]
                                    .windows(4)
                                    .position(|w| w == b"\r\n\r\n")
                                    .unwrap_or(n);
                                let head = String::from_utf8_lossy(&buf[..head_end]);
                                seen_heads.lock().unwrap().push(head.to_lowercase());
                            }
                        }
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                let held = held.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while held.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        HoldingProxy {
            port,
            hold,
            requests,
            heads,
        }
    }

    pub fn set_hold(&self, on: bool) {
        self.hold.store(on, std::sync::atomic::Ordering::Release);
    }

    /// The `[object_store]` section pointing spillway at the proxy.
    pub fn config(&self) -> String {
        format!(
            "[object_store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
            self.port
        )
    }
}

/// The example transform `examples/transforms/<name>` as a component, built by its own
/// build script into `target/transforms/<name>.wasm` (again only when a source is newer).
/// componentize-py comes from the test venv that the test command creates.
pub fn component(name: &str) -> PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let source = root.join("examples/transforms").join(name);
    let out = target.join("transforms").join(format!("{name}.wasm"));
    let newest_source = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([root.join("wit/transform.wit")])
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .max()
        .unwrap();
    let fresh = std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= newest_source);
    if fresh {
        return out;
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let partial = out.with_extension("partial.wasm");
    let mut cmd = Command::new("bash");
    cmd.arg(source.join("build.sh")).arg(&partial);
    let venv_tool = target.join("test-venv/bin/componentize-py");
    if venv_tool.exists() {
        cmd.env("COMPONENTIZE_PY", venv_tool);
    }
    // A nested `cargo run` would wait forever on the build directory lock this test run holds.
    let componentize = target.join("debug/examples/componentize");
    if componentize.exists() {
        cmd.env("COMPONENTIZE", componentize);
    }
    let result = cmd.output().expect("run the transform's build script");
    assert!(
        result.status.success(),
        "building {name} failed (the test command installs componentize-py, clang and lld):\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&partial, &out).unwrap();
    out
}

/// The Python of the test venv the test command creates (boto3, pyarrow).
pub fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let python = target.join("test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the test command (bash tests/run.sh), which creates it",
        python.display()
    );
    python
}

/// Runs a command that must succeed; returns its standard output.
pub fn stdout_of(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `spillway check-config` on a file of this repository, which must pass; returns its output.
pub fn check_config(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_spillway"))
            .arg("check-config")
            .arg(root.join(path)),
    );
    String::from_utf8(out).unwrap()
}

/// A fault a [`FaultProxy`] applies to one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and S3 error code (`InternalError`, `SlowDown`, ...).
    Status(u16, &'static str),
    /// Reset the connection once the request's headers are read.
    Reset,
    /// Forward the headers and this many bytes of the body, then reset both sides: a
    /// connection that breaks in the middle of an upload.
    ResetMidBody(usize),
    /// Forward the request, and hold the answer back this long.
    Delay(Duration),
}

/// A loopback proxy in front of the S3 server that breaks chosen requests. Each rule is a
/// substring of the request line (`PUT /bucket/`, `partNumber=2`) with a fault and how many
/// requests it hits; rules are tried in order, and requests that match none pass through.
/// Every request goes on its own connection (the proxy asks for `Connection: close`), so each
/// one is seen and judged.
pub struct FaultProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<(String, Fault, usize)>>>,
    /// Request lines and what was done to them (`pass` or the fault).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules: Arc<Mutex<Vec<(String, Fault, usize)>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, l) = (rules.clone(), log.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (rules, log) = (r.clone(), l.clone());
                std::thread::spawn(move || serve_one(client, target_port, &rules, &log));
            }
        });
        FaultProxy { port, rules, log }
    }

    /// Breaks the next `times` requests whose request line contains `matching`.
    pub fn inject(&self, matching: &str, fault: Fault, times: usize) {
        self.rules
            .lock()
            .unwrap()
            .push((matching.to_owned(), fault, times));
    }

    /// Drops every fault not applied yet: from now on requests pass.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Faults not applied yet.
    pub fn pending(&self) -> usize {
        self.rules.lock().unwrap().iter().map(|r| r.2).sum()
    }

    pub fn config(&self) -> String {
        format!(
            "[object_store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
            self.port
        )
    }
}

fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option struct; SO_LINGER 0 makes close send a reset.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn serve_one(
    mut client: TcpStream,
    target_port: u16,
    rules: &Mutex<Vec<(String, Fault, usize)>>,
    log: &Mutex<Vec<String>>,
) {
    // The request's header block.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or("").to_owned();
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|(m, _, n)| *n > 0 && line.contains(m.as_str()))
            .map(|(_, f, n)| {
                *n -= 1;
                f.clone()
            })
    };
    log.lock().unwrap().push(format!(
        "{line} -> {}",
        fault.as_ref().map_or("pass".into(), |f| format!("{f:?}"))
    ));
    // Every request on its own connection, so the next one is judged too.
    let mut headers: String = text
        .split("\r\n")
        .filter(|h| !h.is_empty() && !h.to_ascii_lowercase().starts_with("connection:"))
        .map(|h| format!("{h}\r\n"))
        .collect();
    headers.push_str("Connection: close\r\n\r\n");
    match fault {
        Some(Fault::Status(status, code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            );
            let _ = write!(
                client,
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Some(Fault::Reset) => reset(&client),
        Some(Fault::ResetMidBody(n)) => {
            if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target_port)) {
                let _ = server.write_all(headers.as_bytes());
                let mut body = vec![0u8; n];
                if client.read_exact(&mut body).is_ok() {
                    let _ = server.write_all(&body);
                }
                reset(&server);
            }
            reset(&client);
        }
        Some(Fault::Delay(wait)) => pass(client, target_port, &headers, Some(wait)),
        None => pass(client, target_port, &headers, None),
    }
}

/// Forwards the rest of the connection both ways; the answer starts after `delay`.
fn pass(client: TcpStream, target_port: u16, headers: &str, delay: Option<Duration>) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target_port)) else {
        return;
    };
    if server.write_all(headers.as_bytes()).is_err() {
        return;
    }
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(std::net::Shutdown::Write);
    });
    if let Some(wait) = delay {
        std::thread::sleep(wait);
    }
    let mut c_write = client;
    let _ = std::io::copy(&mut server, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Write);
}
