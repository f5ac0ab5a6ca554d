//! The subcommands next to the daemon: `check-config` and `probe`. Both run without a tokio
//! runtime and print for a human (or a container health check).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
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
    for (name, raw) in &s.streams {
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

/// GETs `url` (plain http) and succeeds on a 2xx status.
pub fn probe(url: &str, timeout: Duration) -> ExitCode {
    match get_status(url, timeout) {
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

fn get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_refuses_what_it_cannot_fetch() {
        assert!(get_status("https://localhost/healthz", Duration::from_secs(1)).is_err());
        // Port 1 on loopback: nothing listens there.
        assert!(get_status("http://127.0.0.1:1/healthz", Duration::from_secs(1)).is_err());
    }
}
