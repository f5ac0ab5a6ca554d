//! What an operator relies on: readiness that follows the journal replay and the drain, the
//! `check-config` and `probe` commands, the stream's name on its log lines, and the gauges
//! dashboards and alerts compare against.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::types::CompressionFormat;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_spillway");

/// A PutRecordBatch body of one small record.
fn one_record_body(stream: &str) -> String {
    format!(r#"{{"DeliveryStreamName":"{stream}","Records":[{{"Data":"eyJhIjoxfQo="}}]}}"#)
}

/// A PutRecordBatch of one record over raw HTTP: (status, AWS error type or "").
fn raw_put(d: &Daemon, stream: &str) -> (u16, String) {
    let body = one_record_body(stream);
    let (status, text) = d.raw(Some("PutRecordBatch"), body.as_bytes());
    let kind = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["__type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_replay_and_the_drain() {
    // A large backlog in the journal: records buffered (128 MiB / 900 s hints), not delivered.
    let s3 = S3Server::start();
    s3.create_bucket("ready");
    let config = format!(
        "shutdown_timeout_seconds = 3\n[buffer]\nmax_memory_mib = 512\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n{}",
        s3.config()
    );
    let mut d = Daemon::start(&config);
    assert_eq!(d.metric("spillway_ready"), 1.0);
    let fh = d.firehose();
    create_stream(&fh, "ready", s3_destination("ready", 128, 900)).await;
    let acked = put_batches(&fh, "ready", 0..100_000, 1000).await.len();
    assert_eq!(acked, 100_000);
    d.kill9();

    // SIGTERM in the middle of the replay: a clean exit that keeps the journal as it was.
    d.restart_unready();
    d.send_term();
    let status = d.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(d.log().contains("stopped during startup"), "{}", d.log());

    // Alive while replaying ~100 MB, but not ready, and refusing records with the error SDKs
    // retry. Watched from the first moment the daemon listens.
    d.restart_unready();
    let mut starting_seen = false;
    // A put can race readiness and be accepted; those count as acknowledged.
    let mut acked = acked as u64;
    loop {
        // The gauge turns 1 only after /readyz does: a 1 means /readyz answers 200 from then on.
        let gauge = d.metric("spillway_ready");
        let (ready, _) = d.get("/readyz");
        if gauge == 1.0 {
            assert_eq!(ready, 200);
        }
        if ready == 200 {
            break;
        }
        assert_eq!(ready, 503);
        assert_eq!(d.get("/healthz").0, 200);
        let (status, kind) = raw_put(&d, "ready");
        acked += u64::from(status == 200);
        if d.get("/readyz").0 == 503 {
            // Still starting when the put was answered.
            assert_eq!(
                (status, kind.as_str()),
                (503, "ServiceUnavailableException")
            );
            starting_seen = true;
        }
    }
    assert!(
        starting_seen,
        "the replay ended before a request could see it"
    );
    assert_eq!(d.metric("spillway_ready"), 1.0);
    assert_eq!(raw_put(&d, "ready"), (200, String::new()));
    acked += 1;

    // Draining with the destination down: the shutdown timeout (3 s) keeps it draining.
    let mut s3 = s3;
    s3.stop();
    d.send_term();
    let until = Instant::now() + Duration::from_secs(1);
    let mut drain_seen = false;
    while Instant::now() < until {
        if d.get("/readyz").0 == 503 {
            drain_seen = true;
            assert_eq!(d.get("/healthz").0, 200);
            assert_eq!(
                raw_put(&d, "ready"),
                (503, "ServiceUnavailableException".into())
            );
            // A keep-alive request is answered on a closing connection, so the SDK's retry
            // reconnects (and a load balancer can pick another instance).
            let head = keep_alive_put_head(&d, "ready");
            assert!(head.starts_with("http/1.1 503"), "{head}");
            assert!(head.contains("connection: close"), "{head}");
            // Reads still work, and the metrics show the drain. One attempt each: an SDK retry
            // could land after the shutdown timeout, when nothing listens any more.
            let fh = d.firehose_with_retries(1);
            let described = fh
                .describe_delivery_stream()
                .delivery_stream_name("ready")
                .send()
                .await;
            assert!(described.is_ok(), "{described:?}");
            let created = fh
                .create_delivery_stream()
                .delivery_stream_name("late")
                .extended_s3_destination_configuration(
                    s3_destination("ready", 1, 60).build().unwrap(),
                )
                .send()
                .await
                .unwrap_err();
            assert_eq!(created.code(), Some("ServiceUnavailableException"));
            assert_eq!(d.metric("spillway_ready"), 0.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(drain_seen, "readiness never dropped after SIGTERM");
    let status = d.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(d.log().contains("shutdown timeout reached"));

    // Nothing acknowledged was lost: the next start delivers all of it.
    s3.resume();
    d.restart();
    let delivered = wait_for(Duration::from_secs(60), || async {
        let n = d.metric("spillway_delivered_records_total{stream=\"ready\"}");
        (n >= acked as f64).then_some(n)
    })
    .await;
    assert_eq!(delivered, Some(acked as f64));
}

/// The response head of a PutRecordBatch sent without `Connection: close`, lowercased.
fn keep_alive_put_head(d: &Daemon, stream: &str) -> String {
    use std::io::{Read, Write};
    let body = one_record_body(stream);
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.PutRecordBatch\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = Vec::new();
    // The server closes the connection after this answer, so reading to the end terminates.
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).to_lowercase();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Writes `text` to `dir/name` and runs `spillway check-config` on it.
fn check_config(dir: &std::path::Path, name: &str, text: &str) -> std::process::Output {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_config_reports_what_a_file_declares_or_everything_wrong_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        dir.path(),
        "good.toml",
        "listen = \"0.0.0.0:4573\"\n[[stream]]\nname = \"game-events\"\nbucket_arn = \"arn:aws:s3:::game-data\"\ncompression_format = \"GZIP\"\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("good.toml: ok"), "{text}");
    assert!(text.contains("game-events: s3://game-data/"), "{text}");
    assert!(text.contains("0.0.0.0:4573"), "{text}");

    let out = check_config(
        dir.path(),
        "bad.toml",
        "[journal]\nsegment_mib = 0\n[[stream]]\nname = \"s\"\nbucket_arn = \"arn:aws:s3:::b-1\"\nprefix = \"!{nope}\"\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("journal.segment_mib"), "{err}");
    assert!(err.contains("stream[0].prefix"), "{err}");

    let missing = Command::new(BIN)
        .args(["check-config", "/nonexistent/spillway.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/spillway.toml"));
}

#[test]
fn probe_exits_zero_only_on_a_2xx_answer() {
    let d = Daemon::start("");
    let probe = |url: String| Command::new(BIN).arg("probe").arg(url).status().unwrap();
    assert!(probe(format!("http://{}/healthz", d.addr)).success());
    assert!(probe(format!("http://{}/readyz", d.addr)).success());
    assert_eq!(probe(format!("http://{}/nope", d.addr)).code(), Some(1));
    drop(d);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_eq!(
        probe(format!("http://127.0.0.1:{port}/healthz")).code(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_about_a_stream_names_it_and_gauges_show_the_limits() {
    let s3 = S3Server::start();
    s3.create_bucket("logs");
    let config = format!(
        "log_format = \"json\"\n[journal]\nmax_mib = 512\nsegment_mib = 1\n[buffer]\nmax_memory_mib = 32\n{}",
        s3.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose();
    create_stream(&fh, "named", s3_destination("logs", 1, 7)).await;
    // Enough to roll and release journal segments (1 MiB each), which logs from the journal.
    let acked = put_batches(&fh, "named", 0..3000, 1000).await;
    assert_eq!(acked.len(), 3000);
    let delivered = wait_for(Duration::from_secs(30), || async {
        let n = d.metric("spillway_delivered_records_total{stream=\"named\"}");
        (n == 3000.0).then_some(n)
    })
    .await;
    assert!(delivered.is_some());

    let (_, metrics) = d.get("/metrics");
    for line in [
        "spillway_ready 1",
        "spillway_memory_limit_bytes 33554432",
        "spillway_journal_limit_bytes 536870912",
        "spillway_buffer_interval_seconds{stream=\"named\"} 7",
        "spillway_buffer_size_bytes{stream=\"named\"} 1048576",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(metrics.contains("process_resident_memory_bytes "));
    assert!(metrics.contains("process_cpu_seconds_total "));

    d.terminate();
    let log = d.log();
    let mut about_streams = 0;
    let mut journal_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let target = v["target"].as_str().unwrap_or_default();
        // Lines from a stream's journal, pipeline or uploads, as opposed to the daemon's own.
        let per_stream = ["spillway::journal", "spillway::pipeline", "spillway::sink"]
            .iter()
            .any(|t| target.starts_with(t));
        if !per_stream {
            continue;
        }
        about_streams += 1;
        journal_lines += usize::from(target.starts_with("spillway::journal"));
        let named = v["fields"]["stream"] == "named" || v["span"]["stream"] == "named";
        assert!(named, "no stream on: {line}");
    }
    assert!(journal_lines > 0, "no journal line to check:\n{log}");
    assert!(
        about_streams > journal_lines,
        "no pipeline or upload line to check:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_warnings_name_their_stream_at_warn_level_too() {
    let mut d = Daemon::start_with(
        "log_format = \"json\"\n",
        &[],
        &[("RUST_LOG", "warn,spillway::app=info")],
    );
    let fh = d.firehose();
    create_stream(&fh, "torn", s3_destination("b-1", 1, 900)).await;
    assert_eq!(put_batch(&fh, "torn", 0..10, 100).await.len(), 10);
    d.kill9();
    // A torn write at the end of the last segment, as a crash mid-append leaves it.
    let dir = d.data_dir.join("streams/torn/journal");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a journal segment");
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0xA5; 4096]);
    std::fs::write(last, bytes).unwrap();
    d.restart();
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("torn tail"))
        .unwrap_or_else(|| panic!("no torn-tail warning:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["span"]["stream"], "torn", "{line}");
    // The ten acknowledged records survived the cut.
    assert_eq!(d.metric("spillway_buffered_bytes{stream=\"torn\"}"), 1000.0);
}

/// Firehose's default quota is 5,000 streams a region. Each stream used to keep a blocking
/// thread for its journal, and tokio's blocking pool has 512: the 512th create never answered,
/// and a restart with that many streams never became ready. Now 2,000 streams are created,
/// each gets a record, and after a restart all are there, ready, and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_streams_create_deliver_and_restart() {
    const STREAMS: usize = 2000;
    let mut d = Daemon::start("");
    let fh = d.firehose();
    let name = |i: usize| format!("s{i:04}");
    let create = |i: usize| {
        let fh = fh.clone();
        async move {
            fh.create_delivery_stream()
                .delivery_stream_name(name(i))
                .extended_s3_destination_configuration(
                    s3_destination("many", 1, 900)
                        .prefix(format!("{}/", name(i)))
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("create {}: {e:?}", name(i)));
        }
    };
    all(STREAMS, create).await;
    let put = |i: usize, round: u64| {
        let fh = fh.clone();
        async move {
            let acked = put_batch(&fh, &name(i), round..round + 1, 64).await;
            assert_eq!(acked, [round], "{}", name(i));
        }
    };
    all(STREAMS, |i| put(i, 0)).await;
    // SIGTERM flushes every stream's buffer (the 900 s interval would not).
    assert!(d.terminate().success(), "{}", d.log());

    d.restart();
    let listed = fh
        .list_delivery_streams()
        .limit(10_000)
        .send()
        .await
        .expect("list");
    assert_eq!(listed.delivery_stream_names().len(), STREAMS);
    all(STREAMS, |i| put(i, 1)).await;
    assert!(d.terminate().success());

    let bucket = d.data_dir.join("buckets/many");
    for i in 0..STREAMS {
        let dir = bucket.join(name(i));
        let files = walk(&dir);
        let bodies: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let mut ids = ids_in(&bodies);
        ids.sort();
        assert_eq!(ids, [0, 1], "{}", name(i));
    }
}

/// Runs `work(0..n)`, 32 at a time. A call that never answers (the old failure: the 512th
/// create hung) fails the test after 5 minutes instead of hanging it.
async fn all<F: std::future::Future<Output = ()>>(n: usize, work: impl Fn(usize) -> F) {
    use futures::StreamExt as _;
    let calls = futures::stream::iter((0..n).map(work))
        .buffer_unordered(32)
        .collect::<Vec<()>>();
    tokio::time::timeout(Duration::from_secs(300), calls)
        .await
        .expect("every call answered");
}

/// Reads until the server closes the connection or `within` passes; true if it closed.
fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> (bool, String) {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset counts as closed too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (true, String::from_utf8_lossy(&got).into_owned());
            }
            Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

/// Slow or piled-up clients cannot hold the daemon: headers and bodies have read timeouts,
/// idle connections are closed, and past `http.max_connections` new connections are closed at
/// once, so the descriptors journals and uploads need stay free and `/healthz` answers.
#[test]
fn slow_and_piled_up_connections_are_cut_off() {
    use std::io::Write;
    use std::net::TcpStream;
    let d = Daemon::start(
        "[http]\nheader_read_timeout_seconds = 1\nbody_read_timeout_seconds = 1\nmax_connections = 16\n",
    );
    // Headers that never end.
    let mut slow = TcpStream::connect(d.addr).unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHo").unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).0,
        "a header that never ends"
    );
    // A connection that sends nothing.
    let mut idle = TcpStream::connect(d.addr).unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).0,
        "an idle connection"
    );
    // A keep-alive connection that was served once and then idles.
    let mut served = TcpStream::connect(d.addr).unwrap();
    served
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (closed, answer) = closed_within(&mut served, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle keep-alive connection");
    // A body that never ends: an AWS-shaped error, then the connection closes.
    let mut short = TcpStream::connect(d.addr).unwrap();
    write!(
        short,
        "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 1000\r\n\r\n{{\"a\":"
    )
    .unwrap();
    let (_, answer) = closed_within(&mut short, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not received within 1 s"), "{answer}");

    // Past the cap, connections are closed at once.
    let mut held: Vec<TcpStream> = (0..24)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    let refused = held
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(300)).0)
        .filter(|closed| *closed)
        .count();
    assert!(refused >= 8, "{refused} of 24 closed at once");
    assert!(d.metric("spillway_connections_refused_total") >= 8.0);
    drop(held);
    // Once they are gone, the daemon answers as before.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.get("/healthz").0, 200);
}

/// `http.max_header_kib` and `http.max_headers` at their edges: a request line and headers of
/// exactly the limit are served, one byte or one header more is answered 431 and closed.
#[test]
fn request_heads_are_limited_in_size_and_count() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let d = Daemon::start("[http]\nmax_header_kib = 8\nmax_headers = 20\n");
    let send = |extra: &[String]| -> String {
        let mut head = String::from(
            "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\nConnection: close\r\n",
        );
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(b"{}");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let base = send(&[]);
    assert!(base.starts_with("HTTP/1.1 200"), "{base}");
    // 5 headers above; 15 more make 20.
    let headers = |n: usize| (0..n).map(|i| format!("X-Pad-{i}: v")).collect::<Vec<_>>();
    assert!(send(&headers(15)).starts_with("HTTP/1.1 200"));
    assert!(send(&headers(16)).starts_with("HTTP/1.1 431"));
    // The head without padding, plus "X-Pad: " and its CRLF: pad to exactly 8192 bytes.
    let bare = "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n".len();
    let pad = |total: usize| {
        vec![format!(
            "X-Pad: {}",
            "v".repeat(total - bare - "X-Pad: \r\n".len())
        )]
    };
    assert!(send(&pad(8192)).starts_with("HTTP/1.1 200"));
    assert!(send(&pad(8193)).starts_with("HTTP/1.1 431"));
    assert_eq!(d.get("/healthz").0, 200);
}

/// A body past 6 MiB (4 MiB of records in base64 and JSON) is refused without being kept: one
/// declared far past the limit is answered before any of it is read; one a little past it (by
/// its declared length or, chunked, by its bytes) is read and dropped up to 16 MiB in all, so
/// its client reads the answer instead of a reset connection. One of exactly 6 MiB is served.
#[test]
fn request_bodies_past_the_limit_are_refused_without_being_kept() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    const LIMIT: usize = 6 * 1024 * 1024;
    let d = Daemon::start("");
    let head = |length: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Type: application/x-amz-json-1.1\r\n{length}\r\n\r\n"
        )
    };
    let answer = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    };
    // Declared 1 GiB: answered at once, nothing sent.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head("Content-Length: 1073741824").as_bytes())
        .unwrap();
    let started = Instant::now();
    let text = answer(&mut s);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("InvalidArgumentException"), "{text}");
    assert!(text.contains("1073741824 bytes is larger"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed, not timed out"
    );
    // Declared one byte past the limit, and sent: the client gets its answer.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head(&format!("Content-Length: {}", LIMIT + 1)).as_bytes())
        .unwrap();
    s.write_all(&vec![b' '; LIMIT + 1])
        .expect("the body is read while refused");
    let text = answer(&mut s);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains(&format!("{} bytes is larger", LIMIT + 1)),
        "{text}"
    );
    // Exactly the limit: read and served (JSON may lead with whitespace).
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head(&format!("Content-Length: {LIMIT}\r\nConnection: close")).as_bytes())
        .unwrap();
    let mut body = vec![b' '; LIMIT - 2];
    body.extend_from_slice(b"{}");
    s.write_all(&body).unwrap();
    let text = answer(&mut s);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    // Chunked, no declared length: refused once the bytes pass the limit, before the end.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(head("Transfer-Encoding: chunked").as_bytes())
        .unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    let mut refused_after = None;
    for sent in 1..=24 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).is_err() {
            refused_after = Some(sent);
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf)
            && n > 0
        {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(text.starts_with("HTTP/1.1 400"), "{text}");
            refused_after = Some(sent);
            break;
        }
    }
    let sent = refused_after.expect("a chunked body past the limit is refused");
    assert!((7..=19).contains(&sent), "refused after {sent} MiB");
    assert_eq!(d.metric("spillway_request_body_bytes"), 0.0);
}

/// Under sustained load from 8 producers, what a stream holds stays bounded by the memory
/// cap: delivered batches are committed and their journal segments released while the load
/// goes on, not only once it stops. (A build whose delivery tasks gave memory back before the
/// stream's task had committed them let producers run ahead: the journal grew with every
/// record sent until the load ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_sustained_load_the_journal_is_released_as_batches_land() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

    let d = Daemon::start("[buffer]\nmax_memory_mib = 16\n[journal]\nsegment_mib = 1\n");
    let fh = d.firehose();
    // GZIP: encoding is the slow stage, so delivered batches queue behind it.
    let dest = s3_destination("steady", 1, 1).compression_format(CompressionFormat::Gzip);
    create_stream(&fh, "steady", dest).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..8u64 {
        let (fh, stop, acked) = (fh.clone(), stop.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let mut next = p << 40;
            while !stop.load(Relaxed) {
                let ok = put_batch_or_throttled(&fh, "steady", next..next + 200, 1024).await;
                acked.fetch_add(ok.len() as u64 * 1024, Relaxed);
                next += 200;
            }
        }));
    }
    // Until 4 times the memory cap went through (or a minute passed on a slow machine).
    let target = 64u64 << 20;
    let mut peak = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(d.metric("spillway_journal_bytes{stream=\"steady\"}"));
    }
    stop.store(true, Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let sent_mib = acked.load(Relaxed) as f64 / 1048576.0;
    assert!(sent_mib >= 64.0, "enough load to tell: {sent_mib:.0} MiB");
    // Records in memory (16 MiB), a few 1 MiB segments, and room for a slow release.
    assert!(
        peak <= 40.0 * 1048576.0,
        "the journal reached {:.0} MiB while {sent_mib:.0} MiB were sent",
        peak / 1048576.0
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Request bodies count against `http.max_body_memory_mib` as they arrive. 40 connections
/// each declare a 6 MB body and send 2 MB of it, then stall (80 MB in all, against a 16 MiB
/// cap): the bodies held stay within the cap, those that would pass it are answered
/// `ServiceUnavailableException` and closed at once, the daemon's memory stays bounded, and a
/// normal request is answered once the stalled ones are gone (the body timeout ends them).
#[test]
fn request_bodies_being_read_are_bounded_in_memory() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let d = Daemon::start("[http]\nmax_body_memory_mib = 16\nbody_read_timeout_seconds = 3\n");
    let before = rss_kib(d.pid());
    let head = "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 6000000\r\n\r\n";
    let chunk = vec![b' '; 64 * 1024];
    let mut open: Vec<TcpStream> = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut sent_all = true;
        for _ in 0..32 {
            if s.write_all(&chunk).is_err() {
                sent_all = false;
                break;
            }
        }
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut answer = [0u8; 512];
        match s.read(&mut answer) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&answer[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                assert!(text.contains("ServiceUnavailableException"), "{text}");
                refused += 1;
            }
            _ if !sent_all => refused += 1,
            _ => open.push(s),
        }
        let held = d.metric("spillway_request_body_bytes");
        assert!(held <= 16.0 * 1048576.0, "{held} bytes of bodies held");
    }
    assert!(
        refused >= 30,
        "{refused} of 40 refused; {} held open",
        open.len()
    );
    assert!(
        open.len() >= 6,
        "the cap admits about 8 of these bodies: {}",
        open.len()
    );
    assert!(d.metric("spillway_request_bodies_refused_total") >= 30.0);
    let grew_mib = (rss_kib(d.pid()).saturating_sub(before)) / 1024;
    assert!(
        grew_mib < 64,
        "RSS grew {grew_mib} MiB for 80 MB of bodies offered"
    );
    // The stalled ones end at the body timeout, and their memory comes back.
    let drained = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        d.metric("spillway_request_body_bytes") == 0.0
    });
    assert!(drained, "{}", d.metric("spillway_request_body_bytes"));
    drop(open);
    let (status, body) = d.raw(Some("ListDeliveryStreams"), b"{}");
    assert_eq!(status, 200, "{body}");
}

/// `--admin-listen` moves /metrics, /healthz and /readyz to an address of their own, as
/// operators of Prometheus exporters expect: there they answer (and only they), and the API's
/// address serves only the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_can_have_their_own_address() {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_with("", &["--admin-listen", &admin], &[]);
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            d.get_from(admin, path).0,
            200,
            "{path} on the admin address"
        );
        assert_eq!(
            d.get_from(d.addr, path).0,
            404,
            "{path} not on the API address"
        );
    }
    let fh = d.firehose();
    create_stream(&fh, "adm", s3_destination("adm", 1, 60)).await;
    assert_eq!(
        d.metric("spillway_memory_reserved_bytes"),
        0.0,
        "metrics read from the admin address"
    );
    let (status, _) = d.raw(Some("ListDeliveryStreams"), b"{}");
    assert_eq!(status, 200);
    // The API is not on the admin address.
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(d.terminate().success());
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// 500 connections that trickle a header one byte at a time: a normal client's
/// PutRecordBatch is answered meanwhile, the trickling sockets are closed by the header
/// timeout, and the daemon's descriptors and memory stay bounded (measured, and back to where
/// they were once the timeout has closed them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_trickling_connections_do_not_starve_a_normal_client() {
    use std::io::Write;
    let mut d = Daemon::start("[http]\nheader_read_timeout_seconds = 2\n");
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "calm", s3_destination("calm", 1, 1)).await;
    let (fds_before, rss_before) = (open_fds(d.pid()), rss_kib(d.pid()));
    let mut slow: Vec<std::net::TcpStream> = (0..500)
        .map(|_| std::net::TcpStream::connect(d.addr).unwrap())
        .collect();
    for s in &mut slow {
        let _ = s.write_all(b"P");
    }
    let fds_during = open_fds(d.pid());
    assert!(
        fds_during <= fds_before + 520,
        "{fds_during} descriptors with 500 slow clients (from {fds_before})"
    );
    // One byte more each, while a normal client puts.
    for s in &mut slow {
        let _ = s.write_all(b"O");
    }
    let acked = put_batch(&fh, "calm", 0..100, 1024).await;
    assert_eq!(acked.len(), 100, "the normal client was answered");
    for s in &mut slow {
        let _ = s.write_all(b"S");
    }
    // The header timeout closes them all; descriptors and memory come back.
    let settled = wait_for(Duration::from_secs(15), || async {
        (open_fds(d.pid()) <= fds_before + 10).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "{} descriptors left open (from {fds_before})",
        open_fds(d.pid())
    );
    let grew_mib = rss_kib(d.pid()).saturating_sub(rss_before) / 1024;
    assert!(grew_mib < 64, "RSS grew {grew_mib} MiB");
    // Closed: a read returns at once (the end, or an answer before it), not a timeout.
    let mut closed = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 256];
        if std::io::Read::read(s, &mut buf).is_ok() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 500,
        "every trickling socket was closed by the daemon"
    );
    assert!(d.terminate().success());
}
