//! SigV4 verification end to end, with the AWS SDK for Rust signing for real: a right key, a
//! wrong secret, an unknown key, a key limited to `put` on some streams trying more, a request
//! without a signature, and a body changed after signing.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use aws_sdk_firehose::{Client, Config};
use common::*;

const CONFIG: &str = r#"
[[auth.keys]]
access_key_id = "AKIDADMIN"
secret = "admin-secret"

[[auth.keys]]
access_key_id = "AKIDPUT"
secret_env = "SPILLWAY_TEST_PUT_SECRET"
streams = ["game-*"]
operations = ["put"]

[[auth.keys]]
access_key_id = "AKIDREAD"
secret = "read-secret"
streams = ["game-*"]
operations = ["read"]
"#;

fn client(endpoint: &str, key: &str, secret: &str) -> Client {
    let conf = Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
        .retry_config(aws_sdk_firehose::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    Client::from_conf(conf)
}

async fn put(c: &Client, stream: &str) -> Result<(), (String, String)> {
    c.put_record()
        .delivery_stream_name(stream)
        .record(
            Record::builder()
                .data(Blob::new(b"{}\n".to_vec()))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            let e = e.into_service_error();
            (
                e.code().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_verified_and_keys_do_only_what_they_may() {
    let mut d = Daemon::start_with(CONFIG, &[], &[("SPILLWAY_TEST_PUT_SECRET", "put-secret")]);
    let endpoint = d.endpoint();
    let admin = client(&endpoint, "AKIDADMIN", "admin-secret");
    for name in ["game-events", "billing"] {
        create_stream(&admin, name, s3_destination("auth", 1, 60)).await;
    }
    put(&admin, "billing").await.unwrap();
    let listed = admin.list_delivery_streams().send().await.unwrap();
    assert_eq!(listed.delivery_stream_names().len(), 2);

    let wrong = client(&endpoint, "AKIDADMIN", "not-the-secret");
    let (code, _) = put(&wrong, "billing").await.unwrap_err();
    assert_eq!(code, "InvalidSignatureException");
    let unknown = client(&endpoint, "AKIDNOBODY", "whatever");
    let (code, _) = put(&unknown, "billing").await.unwrap_err();
    assert_eq!(code, "UnrecognizedClientException");

    let putter = client(&endpoint, "AKIDPUT", "put-secret");
    put(&putter, "game-events").await.unwrap();
    let (code, msg) = put(&putter, "billing").await.unwrap_err();
    assert_eq!(code, "AccessDeniedException", "{msg}");
    let e = putter
        .delete_delivery_stream()
        .delivery_stream_name("billing")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e:?}");
    let e = putter
        .list_delivery_streams()
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e:?}");
    // Nothing was deleted.
    let listed = admin.list_delivery_streams().send().await.unwrap();
    assert_eq!(listed.delivery_stream_names().len(), 2);
    // A key limited to some streams lists only those.
    let reader = client(&endpoint, "AKIDREAD", "read-secret");
    let seen = reader.list_delivery_streams().send().await.unwrap();
    assert_eq!(seen.delivery_stream_names(), ["game-events"]);

    // Without a signature, a body is not even read: refused at once, connection closed,
    // no body memory held.
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Firehose_20150804.PutRecordBatch\r\nContent-Length: 6000000\r\n\r\n{\"DeliveryStreamName\":").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(d.metric("spillway_request_body_bytes"), 0.0);

    // No signature at all.
    let (status, body) = d.raw(Some("ListDeliveryStreams"), b"{}");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("MissingAuthenticationTokenException"),
        "{body}"
    );

    // A request the SDK signed, captured on its way: sent as is it is accepted; with one
    // byte of its body changed, or with its date more than 15 minutes off, it is refused.
    let captured = capture_signed_put(&client_to_capture("AKIDPUT", "put-secret")).await;
    assert_eq!(send_raw(&d, &captured).0, 200);
    let at = captured.len() - 3;
    let mut changed = captured.clone();
    changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
    let (status, body) = send_raw(&d, &changed);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidSignatureException"), "{body}");
    assert!(d.terminate().success());
}

/// A client whose endpoint is a listener of this test, to capture what the SDK sends.
fn client_to_capture(key: &str, secret: &str) -> (Client, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    (client(&endpoint, key, secret), listener)
}

/// The raw bytes of one signed PutRecord to `game-events`.
async fn capture_signed_put((c, listener): &(Client, std::net::TcpListener)) -> Vec<u8> {
    let listener = listener.try_clone().unwrap();
    let got = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = s.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        buf
    });
    let _ = put(c, "game-events").await;
    got.join().unwrap()
}

/// Sends raw request bytes to the daemon; its status and body.
fn send_raw(d: &Daemon, request: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.write_all(request).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .to_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// boto3 and the AWS CLI (v1, from the test command's venv) sign as the daemon verifies: a
/// right key works, a wrong secret and an unknown key get AWS's error types, and a key
/// limited to `put` cannot delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_sign_as_the_daemon_verifies() {
    let mut d = Daemon::start_with(CONFIG, &[], &[("SPILLWAY_TEST_PUT_SECRET", "put-secret")]);
    let admin = client(&d.endpoint(), "AKIDADMIN", "admin-secret");
    create_stream(&admin, "game-py", s3_destination("auth", 1, 60)).await;

    let script = r#"
import sys, boto3, botocore
endpoint = sys.argv[1]
def fh(key, secret):
    return boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}))
def code(call):
    try:
        call()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
admin = fh("AKIDADMIN", "admin-secret")
putter = fh("AKIDPUT", "put-secret")
print("put", code(lambda: putter.put_record(DeliveryStreamName="game-py", Record={"Data": b"{}\n"})))
print("batch", code(lambda: putter.put_record_batch(DeliveryStreamName="game-py", Records=[{"Data": b"{}\n"}] * 3)))
print("describe", code(lambda: admin.describe_delivery_stream(DeliveryStreamName="game-py")))
print("wrong", code(lambda: fh("AKIDADMIN", "nope").list_delivery_streams()))
print("unknown", code(lambda: fh("AKIDWHO", "nope").list_delivery_streams()))
print("denied", code(lambda: putter.delete_delivery_stream(DeliveryStreamName="game-py")))
"#;
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(d.endpoint()),
    );
    let out = String::from_utf8(out).unwrap();
    for line in [
        "put ok",
        "batch ok",
        "describe ok",
        "wrong InvalidSignatureException",
        "unknown UnrecognizedClientException",
        "denied AccessDeniedException",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }

    let aws = venv_python().with_file_name("aws");
    let cli = |key: &str, secret: &str, args: &[&str]| {
        std::process::Command::new(&aws)
            .args(args)
            .args(["--endpoint-url", &d.endpoint(), "--region", "us-east-1"])
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap()
    };
    let listed = cli(
        "AKIDADMIN",
        "admin-secret",
        &["firehose", "list-delivery-streams"],
    );
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("game-py"));
    let refused = cli("AKIDADMIN", "nope", &["firehose", "list-delivery-streams"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("InvalidSignatureException"),
        "{refused:?}"
    );
    let denied = cli(
        "AKIDPUT",
        "put-secret",
        &[
            "firehose",
            "delete-delivery-stream",
            "--delivery-stream-name",
            "game-py",
        ],
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("AccessDeniedException"),
        "{denied:?}"
    );
    assert!(d.terminate().success());
}

/// The AWS SDK for JavaScript v3 (`@aws-sdk/client-firehose` from npm, installed by the test
/// command into `target/test-node`, run with the machine's Node.js) signs as the daemon
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_sdk_for_javascript_signs_as_the_daemon_verifies() {
    let modules =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-node/node_modules");
    assert!(
        modules.join("@aws-sdk/client-firehose").exists(),
        "{} has no @aws-sdk/client-firehose: run the test command (bash .ci/run), which installs it",
        modules.display()
    );
    let mut d = Daemon::start_with(CONFIG, &[], &[("SPILLWAY_TEST_PUT_SECRET", "put-secret")]);
    let admin = client(&d.endpoint(), "AKIDADMIN", "admin-secret");
    create_stream(&admin, "game-js", s3_destination("auth", 1, 60)).await;
    let script = r#"
const { FirehoseClient, PutRecordBatchCommand, ListDeliveryStreamsCommand, DeleteDeliveryStreamCommand } = require("@aws-sdk/client-firehose");
const endpoint = process.env.SPILLWAY_ENDPOINT;
const fh = (accessKeyId, secretAccessKey) => new FirehoseClient({ endpoint, region: "us-east-1", maxAttempts: 1, credentials: { accessKeyId, secretAccessKey } });
const code = async (p) => { try { await p; return "ok"; } catch (e) { return e.name; } };
(async () => {
  const putter = fh("AKIDPUT", "put-secret");
  console.log("batch", await code(putter.send(new PutRecordBatchCommand({ DeliveryStreamName: "game-js", Records: [{ Data: Buffer.from("{}\n") }] }))));
  console.log("list", await code(fh("AKIDADMIN", "admin-secret").send(new ListDeliveryStreamsCommand({}))));
  console.log("wrong", await code(fh("AKIDADMIN", "nope").send(new ListDeliveryStreamsCommand({}))));
  console.log("unknown", await code(fh("AKIDWHO", "nope").send(new ListDeliveryStreamsCommand({}))));
  console.log("denied", await code(putter.send(new DeleteDeliveryStreamCommand({ DeliveryStreamName: "game-js" }))));
})();
"#;
    let out = stdout_of(
        std::process::Command::new("node")
            .arg("-e")
            .arg(script)
            .env("SPILLWAY_ENDPOINT", d.endpoint())
            .env("NODE_PATH", &modules),
    );
    let out = String::from_utf8(out).unwrap();
    for line in [
        "batch ok",
        "list ok",
        "wrong InvalidSignatureException",
        "unknown UnrecognizedClientException",
        "denied AccessDeniedException",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
    assert!(d.terminate().success());
}

/// The load generator signs with `--sign`, so the README's benchmark can measure what
/// verification costs; without it, a daemon with keys refuses it.
#[test]
fn the_load_generator_signs_with_sign() {
    let mut d = Daemon::start_with(CONFIG, &[], &[("SPILLWAY_TEST_PUT_SECRET", "put-secret")]);
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_spillway-loadgen"))
            .args([
                "--endpoint",
                &d.endpoint(),
                "--create-stream",
                "--stream",
                "lg",
            ])
            .args([
                "--bucket",
                "auth",
                "--buffer-seconds",
                "1",
                "--connections",
                "2",
            ])
            .args([
                "--batch",
                "20",
                "--duration",
                "1",
                "--warmup",
                "0",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let unsigned = run(&[]);
    assert!(!unsigned.status.success());
    assert!(
        String::from_utf8_lossy(&unsigned.stderr).contains("MissingAuthenticationToken"),
        "{unsigned:?}"
    );
    let signed = run(&["--sign", "AKIDADMIN:admin-secret"]);
    assert!(signed.status.success(), "{signed:?}");
    let out: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    assert_eq!(out["delivered"], true, "{out}");
    assert!(out["records_accepted"].as_u64().unwrap() > 0, "{out}");
    assert!(d.terminate().success());
}
