//! `[iceberg.maintenance]`: a background job that expires old snapshots of the tables this
//! daemon's streams write to, so table metadata does not grow with every flush forever.
//!
//! A snapshot carries the batch it appended (`spillway.batch`); a batch still pending in a
//! journal is recognized as committed only while its snapshot exists. The newest
//! `retain_snapshots` always stay and the first run waits one interval after the start (the
//! journal's replays run first), so only a batch committed longer ago than
//! `expire_snapshots_after_seconds` whose journal commit was lost could be appended again.

use std::sync::Arc;
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog as Streams;
use crate::pipeline::Context;

/// The job's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Maintenance {
    pub expire_after: Duration,
    pub retain: usize,
    pub interval: Duration,
}

/// Runs the job every `interval` until `stop`.
pub async fn run(
    settings: Maintenance,
    streams: Arc<Streams>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
        // The tables of the streams that exist now, each once.
        let mut tables: Vec<(String, TableIdent)> = Vec::new();
        for entry in streams.list() {
            let Some(target) = entry.runtime.definition().destination.iceberg.clone() else {
                continue;
            };
            for route in &target.tables {
                let table = (target.catalog.clone(), super::ident(route));
                if !tables.contains(&table) {
                    tables.push(table);
                }
            }
        }
        for (catalog, ident) in tables {
            let label = super::table_label(&ident);
            let m = &ctx.metrics.iceberg;
            match expire(&ctx, &settings, &catalog, &ident).await {
                Ok(expired) => {
                    m.maintenance_runs.with_label_values(&[&label, "ok"]).inc();
                    m.snapshots_expired
                        .with_label_values(&[&label])
                        .inc_by(expired);
                }
                Err(e) => {
                    m.maintenance_runs
                        .with_label_values(&[&label, "failed"])
                        .inc();
                    tracing::warn!(table = %label, error = %e, "Iceberg maintenance failed; it runs again next interval");
                }
            }
        }
    }
}

/// Expires the table's old snapshots; returns how many.
async fn expire(
    ctx: &Context,
    settings: &Maintenance,
    catalog: &str,
    ident: &TableIdent,
) -> iceberg::Result<u64> {
    let catalog = ctx.iceberg.get(catalog).await?;
    let Some(current) = super::load(catalog.as_ref(), ident).await? else {
        return Ok(0);
    };
    let before = current.metadata().snapshots().count();
    if before <= settings.retain {
        return Ok(0);
    }
    let cutoff = crate::pipeline::now_ms() as i64 - settings.expire_after.as_millis() as i64;
    let tx = Transaction::new(&current);
    let action = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(settings.retain);
    let tx = action.apply(tx)?;
    let after = tx.commit(catalog.as_ref()).await?;
    Ok(before.saturating_sub(after.metadata().snapshots().count()) as u64)
}
