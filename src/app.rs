//! Wiring: the one place that knows the order of startup and shutdown.
//!
//! Startup: lock the data dir, bind HTTP (alive, not ready), open the catalog (which replays
//! every journal), then report ready. Shutdown (SIGTERM / SIGINT): not ready, refuse new records
//! with ServiceUnavailableException, end every stream's input, flush every buffer, wait for
//! uploads (up to the shutdown timeout, after which the journal keeps the rest), stop the HTTP
//! server (answering requests in flight), exit 0.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Api};
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pipeline::{Context, MemoryBudget};
use crate::sink::Stores;

/// How long shutdown waits for requests in flight to be answered.
const DRAIN: Duration = Duration::from_secs(15);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // First of all: a SIGTERM from here on starts a clean shutdown instead of killing.
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let lock_path = data_dir.join("spillway.lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    // Two daemons on one journal would interleave writes; the lock ends with the process.
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "data dir {} is in use by another spillway process",
            data_dir.display()
        )
    })?;

    let metrics = Arc::new(Metrics::new());
    metrics.set_limits(settings.max_memory_bytes, settings.journal.max_bytes);
    let store = match &settings.store {
        // Absolute, so table files can be named file:// locations readers open directly.
        crate::config::StoreSettings::Local { root } => {
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create {}", root.display()))?;
            crate::config::StoreSettings::Local {
                root: root
                    .canonicalize()
                    .with_context(|| format!("cannot resolve {}", root.display()))?,
            }
        }
        s3 => s3.clone(),
    };
    let iceberg_catalogs = iceberg_catalogs(&settings, &store)?;
    let stores = Arc::new(Stores::new(store));
    tracing::info!(store = %stores.describe(), data_dir = %data_dir.display(), fsync = settings.journal.fsync, "starting");
    let transforms = crate::transform::Host::new(
        settings.transform.cache_dir.clone(),
        crate::transform::Limits {
            memory_bytes: settings.transform.memory_bytes as usize,
            timeout: settings.transform.timeout,
        },
        settings.transform.component_dirs.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the WebAssembly engine: {e}"))?;
    // Encodes and processed batches each run one per core at most.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ctx = Arc::new(Context {
        metrics: metrics.clone(),
        memory: Arc::new(MemoryBudget::new(
            settings.max_memory_bytes,
            metrics.memory_reserved().clone(),
        )),
        memory_wait: settings.memory_wait,
        journal_total: AtomicU64::new(0),
        journal: settings.journal.clone(),
        upload: settings.upload.clone(),
        stores: stores.clone(),
        tracker: TaskTracker::new(),
        abandon: CancellationToken::new(),
        encode_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
        process_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
        transforms,
        max_active_partitions: settings.max_active_partitions,
        queries: crate::process::sandbox::QuerySandbox::for_this_binary(
            settings.query_limits.clone(),
        ),
        tables: settings.tables.clone(),
        iceberg: Arc::new(crate::iceberg::Catalogs::new(
            iceberg_catalogs,
            stores.clone(),
            metrics.clone(),
        )),
    });

    // Listen before replaying: /healthz answers during a long replay, /readyz does not yet.
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr().context("no local address")?;
    let keys = crate::api::auth::Keys::new(settings.auth.clone());
    if keys.is_empty() && !local.ip().is_loopback() {
        tracing::warn!(listen = %local, "no [auth] keys: anyone who can reach this address can create, delete and write to every delivery stream");
    }
    let api = Arc::new(Api::new(
        metrics.clone(),
        settings.http.max_body_memory_bytes,
        keys,
    ));
    let stop = CancellationToken::new();
    let tls = match &settings.tls {
        Some(files) => {
            let tls = Arc::new(
                crate::api::tls::Tls::load(files.clone(), metrics.clone())
                    .context("cannot set up TLS")?,
            );
            tokio::spawn(tls.clone().watch(stop.clone()));
            Some(tls)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin = match settings.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin_listen)"))?,
        ),
        None => None,
    };
    let routes = if admin.is_some() {
        api::Routes::Api
    } else {
        api::Routes::All
    };
    let server = tokio::spawn(api::serve(
        listener,
        api.clone(),
        settings.http.clone(),
        tls,
        stop.clone(),
        DRAIN,
        routes,
    ));
    let admin_server = match admin {
        Some(listener) => {
            let addr = listener.local_addr().context("no local address")?;
            tracing::info!("admin endpoints (/metrics, /healthz, /readyz) on http://{addr}");
            Some(tokio::spawn(api::serve(
                listener,
                api.clone(),
                settings.http.clone(),
                None,
                stop.clone(),
                DRAIN,
                api::Routes::Admin,
            )))
        }
        None => None,
    };
    tracing::info!("listening on {scheme}://{local}; replaying the journal");

    let opened = tokio::select! {
        opened = Catalog::open(ctx.clone(), data_dir, &settings.streams, settings.max_streams) => opened,
        _ = &mut shutdown => {
            // Streams that opened already are dropped with their tasks; everything they
            // acknowledged before is in the journal, which the next start replays again.
            // Replay threads may still run until the process exits: the data-dir lock stays
            // held until then (the OS releases it).
            std::mem::forget(lock);
            tracing::info!("stopped during startup");
            return Ok(());
        }
    };
    let catalog = Arc::new(opened.context("cannot open the delivery streams")?);
    api.serve_catalog(catalog.clone());
    tracing::info!(streams = catalog.list().len(), "ready");
    if let Some(m) = settings.iceberg_maintenance.clone() {
        tokio::spawn(crate::iceberg::run_maintenance(
            m,
            catalog.clone(),
            ctx.clone(),
            stop.clone(),
        ));
    }

    shutdown.await;
    tracing::info!("shutting down: not ready, refusing new records; flushing every stream");
    api.drain();

    let abandon = ctx.abandon.clone();
    let timeout = settings.shutdown_timeout;
    let give_up = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        tracing::warn!(
            "shutdown timeout reached: undelivered batches stay in the journal for the next start"
        );
        abandon.cancel();
    });
    catalog.close().await;
    ctx.tracker.close();
    ctx.tracker.wait().await;
    give_up.abort();
    stop.cancel();
    let _ = server.await;
    if let Some(admin) = admin_server {
        let _ = admin.await;
    }
    tracing::info!("stopped");
    drop(lock);
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: from then on neither signal can kill the process before shutdown
/// runs.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    tracing::warn!("cannot install the SIGTERM handler; stop with Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The configured Iceberg catalogs with their defaults resolved: SQLite under the data
/// directory, the warehouse in the object store.
fn iceberg_catalogs(
    settings: &Settings,
    store: &crate::config::StoreSettings,
) -> anyhow::Result<std::collections::BTreeMap<String, crate::iceberg::CatalogSettings>> {
    let data_dir = settings
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", settings.data_dir.display()))?;
    let default_warehouse = match store {
        crate::config::StoreSettings::Local { root } => {
            format!("file://{}/iceberg/warehouse", root.display())
        }
        crate::config::StoreSettings::S3(_) => "s3://iceberg/warehouse".to_owned(),
    };
    Ok(settings
        .iceberg_catalogs
        .iter()
        .map(|(name, c)| {
            let uri = c.uri.clone().unwrap_or_else(|| {
                format!(
                    "sqlite://{}/iceberg/catalog.db?mode=rwc",
                    data_dir.display()
                )
            });
            let warehouse = c
                .warehouse
                .clone()
                .unwrap_or_else(|| default_warehouse.clone());
            (
                name.clone(),
                crate::iceberg::CatalogSettings { uri, warehouse },
            )
        })
        .collect())
}
