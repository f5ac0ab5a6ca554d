//! Wiring: the one place that knows the order of startup and shutdown.
//!
//! Startup: lock the data dir, open the catalog (which replays every journal), then bind HTTP
//! and report ready. Shutdown (SIGTERM / SIGINT): not ready, stop accepting, answer requests in
//! flight, end every stream's input, flush every buffer, wait for uploads (up to the shutdown
//! timeout, after which the journal keeps the rest), exit 0.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    let stores = Stores::new(settings.store.clone());
    tracing::info!(store = %stores.describe(), data_dir = %data_dir.display(), fsync = settings.journal.fsync, "starting");
    let ctx = Arc::new(Context {
        metrics: metrics.clone(),
        memory: MemoryBudget::new(settings.max_memory_bytes, metrics.memory_reserved().clone()),
        journal_total: AtomicU64::new(0),
        journal: settings.journal.clone(),
        upload: settings.upload.clone(),
        stores,
        tracker: TaskTracker::new(),
        abandon: CancellationToken::new(),
        encode_slots: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
    });

    let catalog = Arc::new(
        Catalog::open(ctx.clone(), data_dir, &settings.streams)
            .await
            .context("cannot open the delivery streams")?,
    );
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let local = listener.local_addr().context("no local address")?;
    let api = Arc::new(Api {
        catalog: catalog.clone(),
        metrics,
        ready: Default::default(),
    });
    let stop = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, api.clone(), stop.clone(), DRAIN));
    api.ready.store(true, Ordering::Release);
    tracing::info!(
        streams = catalog.list().len(),
        "listening on http://{local}"
    );

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; flushing every stream");
    api.ready.store(false, Ordering::Release);
    stop.cancel();
    let _ = server.await;

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
    tracing::info!("stopped");
    drop(lock);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
