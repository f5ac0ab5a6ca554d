//! HTTPS on the API listener, with certificates the tests make themselves (rcgen): the AWS SDK
//! for Rust and boto3 connect when they trust the CA and fail when they do not; TLS 1.2 and
//! 1.3 both work; a reload (SIGHUP, or the files changing as a Kubernetes Secret volume
//! changes them) swaps the certificate for new connections and keeps open ones; client
//! certificates for mutual TLS; `spillway probe` over https; bad files are refused at start.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA that signs server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "spillway test");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        Leaf {
            cert: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Leaf {
        self.sign(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

/// PEM files in a directory that outlives the daemon.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::TempDir::new().unwrap(),
        }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn tls_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut config = format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n");
    if let Some(ca) = client_ca {
        config.push_str(&format!("client_ca = {ca:?}\n"));
    }
    config
}

/// A daemon serving HTTPS on its API address; /readyz and /metrics on a plain admin address.
fn start(config: &str) -> Daemon {
    let admin = format!("127.0.0.1:{}", free_port());
    Daemon::start_with(config, &["--admin-listen", &admin], &[])
}

fn https(d: &Daemon) -> String {
    format!("https://localhost:{}", d.addr.port())
}

/// The AWS SDK for Rust over HTTPS, trusting `ca` (PEM) only, or the system's roots.
fn sdk(endpoint: &str, ca: Option<&str>) -> Client {
    use aws_smithy_http_client::tls;
    let trust = match ca {
        Some(pem) => tls::TrustStore::empty().with_pem_certificate(pem.as_bytes().to_vec()),
        None => tls::TrustStore::default(),
    };
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(
            tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .unwrap(),
        )
        .build_https();
    let conf = aws_sdk_firehose::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .http_client(http)
        .retry_config(aws_sdk_firehose::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    Client::from_conf(conf)
}

/// A rustls client trusting `ca` (PEM), with a client certificate if given, limited to
/// `versions`.
fn connector(
    ca: &str,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(d: &Daemon, connector: &tokio_rustls::TlsConnector) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(d.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// ListDeliveryStreams over an open connection, kept alive: the status, or an error when the
/// connection fails.
async fn list_streams(conn: &mut TlsStream) -> std::io::Result<u16> {
    let body = b"{}";
    let head = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: Firehose_20150804.ListDeliveryStreams\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    conn.flush().await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    return Ok(text[9..12].parse().unwrap());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::other("no answer"))?
}

async fn one_request(d: &Daemon, connector: &tokio_rustls::TlsConnector) -> std::io::Result<u16> {
    let mut conn = connect(d, connector).await?;
    list_streams(&mut conn).await
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_that_trust_the_ca_connect_and_clients_that_do_not_fail() {
    let ca = Ca::new("spillway test CA");
    let leaf = ca.server();
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let d = start(&tls_config(
        &files.write("tls.crt", &leaf.cert),
        &files.write("tls.key", &leaf.key),
        None,
    ));
    assert!(d.log().contains("listening on https://"), "{}", d.log());

    // The AWS SDK for Rust with the CA: the whole path, create to delivered object.
    let client = sdk(&https(&d), Some(&ca.pem));
    create_stream(&client, "over-tls", s3_destination("tls", 1, 1)).await;
    client
        .put_record_batch()
        .delivery_stream_name("over-tls")
        .records(
            Record::builder()
                .data(Blob::new(record(1, 100)))
                .build()
                .unwrap(),
        )
        .records(
            Record::builder()
                .data(Blob::new(record(2, 100)))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("PutRecordBatch over TLS");
    let delivered = wait_for(Duration::from_secs(30), || async {
        let files = walk(&d.data_dir.join("buckets/tls"));
        (!files.is_empty()).then_some(files)
    })
    .await
    .expect("the records are delivered");
    let bodies: Vec<Vec<u8>> = delivered
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    assert_eq!(ids_in(&bodies), [1, 2]);

    // Without the CA (the system's roots only), the SDK cannot connect.
    let untrusting = sdk(&https(&d), None);
    let err = untrusting
        .list_delivery_streams()
        .send()
        .await
        .expect_err("a client without the CA must not connect");
    assert!(
        format!("{:?}", err).to_lowercase().contains("certificate")
            || format!("{:?}", err).contains("DispatchFailure"),
        "{err:?}"
    );
    // Plain HTTP to the TLS port gets no answer.
    let plain = d
        .firehose_with_retries(1)
        .list_delivery_streams()
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP on the TLS port: {plain:?}");

    // TLS 1.2 and 1.3 each work on their own.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let status = one_request(&d, &connector(&ca.pem, None, &[version])).await;
        assert_eq!(status.unwrap(), 200, "{version:?}");
    }

    // boto3, with and without the CA.
    let script = r#"
import sys, boto3, botocore
endpoint, ca = sys.argv[1], sys.argv[2]
def fh(verify):
    return boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test", verify=verify,
        config=botocore.config.Config(retries={"max_attempts": 1}))
r = fh(ca).put_record(DeliveryStreamName="over-tls", Record={"Data": b'{"id": 3}\n'})
print("with ca", "ok" if r["RecordId"] else "no id")
try:
    fh(True).list_delivery_streams()
    print("without ca", "connected")
except botocore.exceptions.SSLError:
    print("without ca", "ssl error")
"#;
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(https(&d))
            .arg(&ca_file),
    );
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("with ca ok"), "{out}");
    assert!(out.contains("without ca ssl error"), "{out}");

    // Failed handshakes are counted: the SDK and boto3 without the CA, plain HTTP.
    assert!(d.metric("spillway_tls_handshake_failures_total{reason=\"failed\"}") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = Files::new();
    // Laid out as a Kubernetes Secret volume: the names are links into a directory that an
    // update replaces by swapping one link.
    let (old, new) = (old_ca.server(), new_ca.server());
    for (dir, leaf) in [("v1", &old), ("v2", &new)] {
        std::fs::create_dir(files.path(dir)).unwrap();
        files.write(&format!("{dir}/tls.crt"), &leaf.cert);
        files.write(&format!("{dir}/tls.key"), &leaf.key);
    }
    std::os::unix::fs::symlink("v1", files.path("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), files.path(name)).unwrap();
    }
    let mut d = start(&tls_config(
        &files.path("tls.crt"),
        &files.path("tls.key"),
        None,
    ));
    let (trusts_old, trusts_new) = (
        connector(&old_ca.pem, None, BOTH),
        connector(&new_ca.pem, None, BOTH),
    );
    let mut kept = connect(&d, &trusts_old).await.unwrap();
    assert_eq!(list_streams(&mut kept).await.unwrap(), 200);
    assert!(one_request(&d, &trusts_new).await.is_err());

    // SIGHUP after the files changed: new connections see the new certificate.
    swap_link(&files, "v2");
    let reloads = |d: &Daemon, outcome: &str| {
        d.metric_if_any(&format!(
            "spillway_tls_reloads_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap_or(0.0)
    };
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    wait_for(Duration::from_secs(10), || async {
        (reloads(&d, "ok") >= 1.0).then_some(())
    })
    .await
    .expect("a reload on SIGHUP");
    assert_eq!(one_request(&d, &trusts_new).await.unwrap(), 200);
    assert!(one_request(&d, &trusts_old).await.is_err());
    // The connection opened before the reload still works.
    assert_eq!(list_streams(&mut kept).await.unwrap(), 200);

    // No signal: the watcher sees the link swapped back within seconds.
    let before = reloads(&d, "ok");
    swap_link(&files, "v1");
    wait_for(Duration::from_secs(20), || async {
        (reloads(&d, "ok") > before).then_some(())
    })
    .await
    .expect("a reload when the files change");
    assert_eq!(one_request(&d, &trusts_old).await.unwrap(), 200);

    // A broken update is refused and the certificate in force stays.
    std::fs::create_dir(files.path("v3")).unwrap();
    files.write("v3/tls.crt", &new.cert);
    files.write("v3/tls.key", &old.key); // not the certificate's key
    swap_link(&files, "v3");
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    wait_for(Duration::from_secs(20), || async {
        (reloads(&d, "failed") >= 1.0).then_some(())
    })
    .await
    .expect("the failed reload is counted");
    assert_eq!(one_request(&d, &trusts_old).await.unwrap(), 200);
    assert!(d.log().contains("TLS reload failed"), "{}", d.log());
    assert!(!d.exited());
    d.terminate();
}

/// Replaces `..data` with a link to `target` in one rename, as the kubelet does.
fn swap_link(files: &Files, target: &str) {
    let staged = files.path("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(target, &staged).unwrap();
    std::fs::rename(&staged, files.path("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let (server_ca, client_ca, other_ca) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("other CA"),
    );
    let leaf = server_ca.server();
    let files = Files::new();
    let d = start(&tls_config(
        &files.write("tls.crt", &leaf.cert),
        &files.write("tls.key", &leaf.key),
        Some(&files.write("clients.pem", &client_ca.pem)),
    ));
    let producer = client_ca.sign(&["producer"], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = other_ca.sign(&["stranger"], ExtendedKeyUsagePurpose::ClientAuth);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let with_cert = connector(&server_ca.pem, Some(&producer), &[version]);
        assert_eq!(
            one_request(&d, &with_cert).await.unwrap(),
            200,
            "{version:?}"
        );
        let without = connector(&server_ca.pem, None, &[version]);
        assert!(one_request(&d, &without).await.is_err(), "{version:?}");
        let wrong = connector(&server_ca.pem, Some(&stranger), &[version]);
        assert!(one_request(&d, &wrong).await.is_err(), "{version:?}");
    }
    assert!(d.metric("spillway_tls_handshake_failures_total{reason=\"failed\"}") >= 4.0);
}

fn probe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap()
}

/// Without `admin_listen`, /healthz and /readyz are on the TLS listener: `spillway probe`
/// checks them with the CA or, as a Kubernetes `httpGet` probe with `scheme: HTTPS` does,
/// without checking the certificate.
#[test]
fn spillway_probe_checks_readiness_over_https() {
    let ca = Ca::new("probe CA");
    let leaf = ca.server();
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let d = Daemon::start_unready_with(
        &tls_config(
            &files.write("tls.crt", &leaf.cert),
            &files.write("tls.key", &leaf.key),
            None,
        ),
        &[],
    );
    let ready = format!("https://localhost:{}/readyz", d.addr.port());
    let ca_arg = ca_file.to_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !probe(&["--ca-file", ca_arg, &ready]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let by_ip = format!("https://127.0.0.1:{}/healthz", d.addr.port());
    assert!(probe(&["--ca-file", ca_arg, &by_ip]).status.success());
    assert!(probe(&["--insecure", &ready]).status.success());
    // Without the CA the certificate is not trusted; plain http gets no answer.
    let untrusted = probe(&[&ready]);
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("certificate"),
        "{untrusted:?}"
    );
    let plain = format!("http://127.0.0.1:{}/readyz", d.addr.port());
    assert!(!probe(&["--timeout-seconds", "2", &plain]).status.success());
}

#[test]
fn bad_certificate_files_stop_the_daemon_at_start_with_the_reason() {
    let ca = Ca::new("CA");
    let (one, two) = (ca.server(), ca.server());
    let files = Files::new();
    let cases = [
        (
            tls_config(
                &files.path("missing.crt"),
                &files.write("a.key", &one.key),
                None,
            ),
            "missing.crt",
        ),
        (
            tls_config(
                &files.write("b.crt", &one.cert),
                &files.write("b.key", &two.key),
                None,
            ),
            "b.key",
        ),
        (
            tls_config(
                &files.write("c.crt", "not pem\n"),
                &files.write("c.key", &one.key),
                None,
            ),
            "no certificate",
        ),
        (
            tls_config(
                &files.write("d.crt", &one.cert),
                &files.write("d.key", &one.cert),
                None,
            ),
            "no private key",
        ),
        (
            tls_config(
                &files.write("e.crt", &one.cert),
                &files.write("e.key", &one.key),
                Some(&files.write("e-ca.pem", "")),
            ),
            "e-ca.pem",
        ),
    ];
    for (config, reason) in cases {
        let path = files.write("spillway.toml", &config);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{reason} in {err}");
        let data = tempfile::TempDir::new().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args([
                "--config",
                path.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot set up TLS") && err.contains(reason),
            "{reason} in {err}"
        );
    }
}

/// A client that opens a connection and never finishes its handshake is cut off by
/// `http.header_read_timeout_seconds`, counted as a timeout.
#[test]
fn a_handshake_that_never_finishes_is_cut_off() {
    use std::io::{Read, Write};
    let ca = Ca::new("CA");
    let leaf = ca.server();
    let files = Files::new();
    let config = tls_config(
        &files.write("tls.crt", &leaf.cert),
        &files.write("tls.key", &leaf.key),
        None,
    ) + "[http]\nheader_read_timeout_seconds = 1\n";
    let d = start(&config);
    let silent = std::net::TcpStream::connect(d.addr).unwrap();
    // The first bytes of a ClientHello, then nothing.
    let mut partial = std::net::TcpStream::connect(d.addr).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for mut conn in [silent, partial] {
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = conn
            .read(&mut buf)
            .expect("closed, not timed out on our side");
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // The daemon counts a timeout as it drops the connection: the client may see the close
    // a moment before the count.
    let series = "spillway_tls_handshake_failures_total{reason=\"timeout\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.metric_if_any(series) != Some(2.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.metric(series), 2.0);
}

/// A certificate or key path that is not a regular file (a pipe here: an operator's mistake,
/// or a file on a hung mount behaves alike) fails the reload without blocking the daemon or
/// later reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_a_pipe_fails_without_blocking_anything() {
    let (ca, other) = (Ca::new("CA"), Ca::new("other CA"));
    let (leaf, next) = (ca.server(), other.server());
    let files = Files::new();
    let d = start(&tls_config(
        &files.write("tls.crt", &leaf.cert),
        &files.write("tls.key", &leaf.key),
        None,
    ));
    let reloads = |outcome: &str| {
        d.metric_if_any(&format!(
            "spillway_tls_reloads_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap_or(0.0)
    };
    std::fs::remove_file(files.path("tls.key")).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(files.path("tls.key"))
            .status()
            .unwrap()
            .success()
    );
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    // The file watcher may fail a reload first, between the removal and the pipe ("No such
    // file"): wait for the failure this test is about, the pipe's.
    wait_for(Duration::from_secs(10), || async {
        (reloads("failed") >= 1.0 && d.log().contains("is not a regular file")).then_some(())
    })
    .await
    .expect("the reload from a pipe fails");
    assert!(d.log().contains("is not a regular file"), "{}", d.log());
    assert_eq!(d.get("/healthz").0, 200);
    let trusts_old = connector(&ca.pem, None, BOTH);
    assert_eq!(one_request(&d, &trusts_old).await.unwrap(), 200);
    // Fixed files are picked up by the watcher as usual.
    std::fs::remove_file(files.path("tls.key")).unwrap();
    files.write("tls.crt", &next.cert);
    files.write("tls.key", &next.key);
    wait_for(Duration::from_secs(20), || async {
        (reloads("ok") >= 1.0).then_some(())
    })
    .await
    .expect("a reload once the files are fixed");
    let trusts_new = connector(&other.pem, None, BOTH);
    assert_eq!(one_request(&d, &trusts_new).await.unwrap(), 200);
}
