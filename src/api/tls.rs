//! TLS on the API listener (`[tls]`): rustls with the aws-lc-rs provider, TLS 1.2 and 1.3
//! only, optional client certificates. The certificate is reloaded on SIGHUP and when its
//! files change; connections already open keep the configuration they started with, new ones
//! get the new one, and a reload that fails keeps the old one (and says so in the log and in
//! `spillway_tls_reloads_total{outcome="failed"}`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the certificate files are checked for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A reload that takes longer is reported as failed (and the next waits for it to end).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A PEM file larger than this is not a certificate chain or a key.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// `[tls]`, validated: where the PEM files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that sign the client certificates accepted; none: no client
    /// certificates asked for.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than {MAX_PEM_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{} holds no {what} in PEM form", path.display())]
    Missing { path: PathBuf, what: &'static str },
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client_ca {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
}

/// The listener's TLS configuration as it is now, and what it was built from.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like when `current` was built.
    seen: Mutex<Vec<Stamp>>,
    metrics: Arc<Metrics>,
}

impl Tls {
    /// Loads the files; an error here stops the daemon from starting.
    pub fn load(files: TlsFiles, metrics: Arc<Metrics>) -> Result<Tls, TlsError> {
        let seen = stamps(&files);
        let config = server_config(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(seen),
            metrics,
        })
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reads the files again; on an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = stamps(&self.files);
        let result = server_config(&self.files);
        // Remember the files as seen even when they are bad: a watcher retries them when they
        // change again, not every interval.
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        match result {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                self.metrics.tls_reload(true);
                tracing::info!(cert = %self.files.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.tls_reload(false);
                tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in use");
                Err(e)
            }
        }
    }

    /// Whether a file changed (modified, replaced, or a symbolic link swapped, as a
    /// Kubernetes Secret volume does) since the configuration in force was read.
    fn changed(&self) -> bool {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamps(&self.files)
    }

    /// Reloads on SIGHUP and when the files change, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; TLS files are still watched for changes");
                None
            }
        };
        // A reload still blocked in the file system: no other starts until it ends.
        let mut stuck: Option<tokio::task::JoinHandle<()>> = None;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = signalled => {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    true
                }
                _ = tick.tick() => false,
            };
            // File system calls off the runtime's threads, one at a time: a file on a hung
            // network mount stalls only the reload, and the next one waits for it.
            if stuck.as_ref().is_some_and(|w| !w.is_finished()) {
                continue;
            }
            let tls = self.clone();
            let mut work = tokio::task::spawn_blocking(move || {
                if forced || tls.changed() {
                    let _ = tls.reload();
                }
            });
            stuck = None;
            if tokio::time::timeout(RELOAD_TIMEOUT, &mut work)
                .await
                .is_err()
            {
                stuck = Some(work);
                tracing::error!(
                    "TLS reload has not finished after {} s (a hung file system?); the certificate in force stays",
                    RELOAD_TIMEOUT.as_secs()
                );
                self.metrics.tls_reload(false);
            }
        }
    }
}

/// Reads and checks the files as a start would (`spillway check-config`).
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    server_config(files).map(|_| ())
}

/// What identifies a file's content without reading it.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    let paths = [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.client_ca.as_ref(),
    ];
    paths
        .into_iter()
        .flatten()
        .map(|path| match std::fs::metadata(path) {
            Ok(m) => Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                #[cfg(unix)]
                inode: std::os::unix::fs::MetadataExt::ino(&m),
                #[cfg(not(unix))]
                inode: 0,
            },
            Err(_) => Stamp {
                modified: None,
                len: 0,
                inode: 0,
            },
        })
        .collect()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    // Not a pipe or a device, whose read could block the reload for ever.
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(TlsError::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = std::fs::File::open(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The CA certificates in a PEM file, as trust roots (the server's `client_ca`, and
/// `spillway probe --ca-file`).
pub fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

/// TLS 1.2 and 1.3 with aws-lc-rs; HTTP/1.1 offered by ALPN.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&files.cert_file)?;
    let key = private_key(&files.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Invalid {
            path: files.cert_file.clone(),
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = ca_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // rustls checks that the key is the certificate's.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Invalid {
            path: files.key_file.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
