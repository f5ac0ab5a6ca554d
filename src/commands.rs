//! The subcommands next to the daemon: `check-config` and `probe`. Both run without a tokio
//! runtime and print for a human (or a container health check).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Cli, Settings, StoreSettings};
use crate::definition;

/// Validates `file` as the daemon would at startup; prints what it declares, or every problem.
pub fn check_config(file: &Path) -> ExitCode {
    let cli = Cli {
        config: Some(file.to_owned()),
        ..Cli::default()
    };
    match Settings::load(&cli) {
        Ok(settings) => {
            if let Some(Err(e)) = settings.tls.as_ref().map(crate::api::tls::check) {
                eprintln!("spillway: cannot set up TLS: {e}");
                return ExitCode::from(2);
            }
            print!("{}", summary(file, &settings));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spillway: {e}");
            ExitCode::from(2)
        }
    }
}

fn summary(file: &Path, s: &Settings) -> String {
    let store = match &s.store {
        StoreSettings::Local { root } => format!("local directory {}", root.display()),
        StoreSettings::S3(s3) => format!(
            "s3 at {} (region {})",
            s3.endpoint.as_deref().unwrap_or("AWS_ENDPOINT_URL or AWS"),
            s3.region.as_deref().unwrap_or("from AWS_REGION")
        ),
    };
    let mut out = format!(
        "{}: ok\n  listen         {}\n  data dir       {}\n  object store   {}\n  journal        fsync {}, cap {} MiB\n  memory cap     {} MiB\n  streams        {}\n",
        file.display(),
        s.listen,
        s.data_dir.display(),
        store,
        if s.journal.fsync { "on" } else { "off" },
        s.journal.max_bytes >> 20,
        s.max_memory_bytes >> 20,
        s.streams.len()
    );
    if let Some(admin) = s.admin_listen {
        out.push_str(&format!("  admin listen   {admin}\n"));
    }
    if !s.auth.is_empty() {
        out.push_str(&format!(
            "  auth           {} access keys; requests must be signed\n",
            s.auth.len()
        ));
    }
    if let Some(tls) = &s.tls {
        let clients = match &tls.client_ca {
            Some(ca) => format!(", client certificates from {}", ca.display()),
            None => String::new(),
        };
        out.push_str(&format!(
            "  tls            {}{clients}\n",
            tls.cert_file.display()
        ));
    }
    for definition::DeclaredStream {
        name,
        destination: raw,
        tags,
    } in &s.streams
    {
        // Validated by Settings::load already.
        if let Ok(d) = definition::validate(raw, &s.tables, crate::process::jq::check) {
            out.push_str(&format!(
                "    {name}: s3://{}/{} ({}, {} MiB / {} s)\n",
                d.bucket.as_str(),
                raw.prefix.as_deref().unwrap_or(""),
                d.compression.api_name(),
                d.buffer_bytes >> 20,
                d.buffer_interval.as_secs()
            ));
            if let Some(lambda) = d.processing.as_ref().and_then(|p| p.lambda.as_ref()) {
                // Checked for presence only: the daemon compiles it when the stream starts.
                let found = match &lambda.component {
                    definition::ComponentSource::File(path) if !path.exists() => {
                        " (not found on this machine)"
                    }
                    _ => "",
                };
                out.push_str(&format!("      transform {}{found}\n", lambda.arn));
            }
            if d.dynamic_partitioning {
                out.push_str("      dynamic partitioning on\n");
            }
            if let Some(b) = &d.backup {
                out.push_str(&format!(
                    "      backup of the source records to s3://{}/{} ({}, {} MiB / {} s)\n",
                    b.bucket.as_str(),
                    b.prefix.source(),
                    b.compression.api_name(),
                    b.buffer_bytes >> 20,
                    b.buffer_interval.as_secs()
                ));
            }
            if !tags.is_empty() {
                let keys: Vec<&str> = tags.iter().map(|t| t.key.as_str()).collect();
                out.push_str(&format!("      tags {}\n", keys.join(", ")));
            }
            if let Some(c) = &d.conversion {
                let schema = match (&c.columns, raw_table(raw)) {
                    (None, _) => "columns inferred per object".to_owned(),
                    (Some(cols), Some(table)) => format!("{} columns of table {table}", cols.len()),
                    (Some(cols), None) => format!("{} columns", cols.len()),
                };
                out.push_str(&format!(
                    "      parquet ({:?}), {schema}\n",
                    c.parquet.compression
                ));
            }
        }
    }
    if !s.tables.is_empty() {
        out.push_str(&format!("  tables         {}\n", s.tables.len()));
    }
    out
}

/// `database.table` named by a stream's `SchemaConfiguration`, if it names one.
fn raw_table(raw: &crate::definition::S3Destination) -> Option<String> {
    let schema = raw
        .data_format_conversion_configuration
        .as_ref()?
        .schema_configuration
        .as_ref()?;
    let table = schema.table_name.as_deref()?;
    Some(format!(
        "{}.{table}",
        schema.database_name.as_deref().unwrap_or("default")
    ))
}

/// Which server certificates `probe` accepts over https.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The system's CA roots.
    System,
    /// The CA certificates in a PEM file.
    CaFile(PathBuf),
    /// Any certificate: for checking that the daemon on this host answers.
    Anything,
}

/// GETs `url` (http or https) and succeeds on a 2xx status.
pub fn probe(url: &str, timeout: Duration, trust: &Trust) -> ExitCode {
    match get_status(url, timeout, trust) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("spillway probe: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("spillway probe: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn get_status(url: &str, timeout: Duration, trust: &Trust) -> Result<u16, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err("only http:// and https:// URLs are supported".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, with_port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => (host, authority.to_owned()),
        _ => (
            authority,
            format!("{authority}:{}", if tls { 443 } else { 80 }),
        ),
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let conn = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if tls {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host} is not a host name: {e}"))?;
        let client = rustls::ClientConnection::new(client_config(trust)?, name)
            .map_err(|e| e.to_string())?;
        status_line(rustls::StreamOwned::new(client, conn), &request)
    } else {
        status_line(conn, &request)
    }
}

/// Sends `request` and reads the status code of the answer.
fn status_line(mut conn: impl Read + Write, request: &str) -> Result<u16, String> {
    conn.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = conn.read(&mut head[len..]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = std::str::from_utf8(&head[..len]).map_err(|_| "not an HTTP answer")?;
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    let config = match trust {
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let roots = crate::api::tls::ca_roots(path).map_err(|e| e.to_string())?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// `--insecure`: accepts the server's certificate unchecked, but still checks that the server
/// holds its key (the handshake's signatures), so the probe talks TLS correctly.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_refuses_what_it_cannot_fetch() {
        let t = Duration::from_secs(1);
        assert!(get_status("ftp://localhost/healthz", t, &Trust::System).is_err());
        // Port 1 on loopback: nothing listens there.
        assert!(get_status("http://127.0.0.1:1/healthz", t, &Trust::System).is_err());
        assert!(get_status("https://127.0.0.1:1/healthz", t, &Trust::Anything).is_err());
    }
}
