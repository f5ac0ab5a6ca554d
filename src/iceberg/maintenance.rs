//! `[iceberg.maintenance]`: a background job that expires old snapshots of the tables this
//! daemon's streams write to, so table metadata does not grow with every flush forever, and
//! rewrites the small files of their closed time partitions into larger ones
//! ([`super::compaction`]).
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
    /// Snapshots older than this are expired; `None`: none are.
    pub expire_after: Option<Duration>,
    pub retain: usize,
    pub interval: Duration,
    /// Small files of closed time partitions are rewritten; `None`: they are not.
    pub rewrite: Option<super::Rewrite>,
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
            let mut outcome = "ok";
            if let Some(after) = settings.expire_after {
                match expire(&ctx, after, settings.retain, &catalog, &ident).await {
                    Ok(expired) => {
                        m.snapshots_expired
                            .with_label_values(&[&label])
                            .inc_by(expired);
                    }
                    Err(e) => {
                        outcome = "failed";
                        tracing::warn!(table = %label, error = %e, "expiring the Iceberg table's snapshots failed; it runs again next interval");
                    }
                }
            }
            if let Some(rewrite) = &settings.rewrite {
                let done = match ctx.iceberg.get(&catalog).await {
                    Ok(c) => {
                        super::compaction::run(
                            &ctx.iceberg,
                            &catalog,
                            c.as_ref(),
                            &ident,
                            rewrite,
                            ctx.max_active_partitions,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match done {
                    Ok(done) => {
                        if done.files_removed > 0 {
                            tracing::info!(table = %label, removed = done.files_removed, added = done.files_added, "rewrote small files");
                        }
                        m.files_rewritten
                            .with_label_values(&[&label])
                            .inc_by(done.files_removed);
                    }
                    Err(e) => {
                        outcome = "failed";
                        tracing::warn!(table = %label, error = %e, "rewriting the Iceberg table's small files failed; it runs again next interval");
                    }
                }
            }
            m.maintenance_runs
                .with_label_values(&[&label, outcome])
                .inc();
        }
    }
}

/// Expires the table's old snapshots; returns how many.
async fn expire(
    ctx: &Context,
    expire_after: Duration,
    retain: usize,
    catalog: &str,
    ident: &TableIdent,
) -> iceberg::Result<u64> {
    let catalog = ctx.iceberg.get(catalog).await?;
    let Some(current) = super::load(catalog.as_ref(), ident).await? else {
        return Ok(0);
    };
    let before = current.metadata().snapshots().count();
    if before <= retain {
        return Ok(0);
    }
    let cutoff = crate::pipeline::now_ms() as i64 - expire_after.as_millis() as i64;
    let tx = Transaction::new(&current);
    let action = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(retain);
    let tx = action.apply(tx)?;
    let after = tx.commit(catalog.as_ref()).await?;
    Ok(before.saturating_sub(after.metadata().snapshots().count()) as u64)
}
