//! Delivery of a sealed batch to an Iceberg table: process it (against the table's schema),
//! write its failed records to the error output, write its rows as Parquet data files named
//! after the batch, and commit them as one append snapshot that names the batch. A replay of
//! a batch whose snapshot is in the table's history appends nothing.

use std::sync::Arc;

use arrow_json::ReaderBuilder;
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, FileNameGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::definition::StreamDefinition;
use crate::definition::conversion::{JsonInput, SerDe};
use crate::encode::parquet::Converter;
use crate::iceberg as ice;
use crate::sink::{self, Layout, ObjectPlan};

use super::Shared;
use super::delivery::{
    Input, Slot, Unprocessed, error_objects, in_slot, process_records, write_all,
};
use super::intake::Batch;

/// Rows decoded into one Arrow batch at a time.
const DECODE_ROWS: usize = 4096;

/// How one attempt at a batch ended.
enum Attempt {
    /// Committed (or found committed), its error objects landed.
    Done,
    /// Shutdown gave up.
    Abandoned,
    /// Processing or encoding failed on the batch itself (not the catalog or the store): its
    /// records go to the error output as received.
    Unprocessable,
    /// The catalog or the store failed: try again later.
    Retry(String),
}

/// Delivers a batch to the stream's table; false only when shutdown gave up.
pub async fn deliver(
    shared: &Arc<Shared>,
    batch: Batch,
    plan: ObjectPlan,
    layout: Layout,
    definition: Arc<StreamDefinition>,
) -> bool {
    let ctx = &shared.ctx;
    let Some(target) = definition.destination.iceberg.clone() else {
        return false;
    };
    // One table per stream for now (validation refuses more).
    let route = target.tables[0].clone();
    let label = format!("{}.{}", route.database, route.table);
    let labels = [shared.name.as_str(), label.as_str()];
    let unprocessed = Unprocessed::of(&batch, &plan, &layout);
    let input = Arc::new((batch.start, batch.records.clone(), batch.arrivals.clone()));
    drop(batch);
    let mut delay = ctx.upload.retry_initial;
    loop {
        let attempt = attempt(
            shared,
            &input,
            &plan,
            &layout,
            &definition,
            (&target, &route),
        )
        .await;
        match attempt {
            Attempt::Done => {
                shared.uploads_landed();
                return true;
            }
            Attempt::Abandoned => return false,
            Attempt::Unprocessable => {
                return match unprocessed.objects(shared).await {
                    Some(objects) => write_all(shared, objects).await,
                    None => false,
                };
            }
            Attempt::Retry(why) => {
                ctx.metrics
                    .iceberg
                    .commit_failures
                    .with_label_values(&labels)
                    .inc();
                shared.uploads_failed();
                tracing::warn!(stream = %shared.name, table = %label, error = %why, "Iceberg append failed; will retry");
                if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
                    return false;
                }
            }
        }
    }
}

/// The conversion rules of Iceberg destinations: OpenX's defaults (keys match columns
/// case-insensitively).
fn json_input() -> JsonInput {
    JsonInput {
        serde: SerDe::OpenX,
        case_insensitive: true,
        // Iceberg reads a dot in a column name as nesting: `a.b` becomes `a_b`.
        dots_to_underscores: true,
        key_mappings: Vec::new(),
        millis: false,
    }
}

type Shared3 = Arc<(crate::journal::Position, Vec<bytes::Bytes>, Vec<u64>)>;

/// Processes the batch in a slot, converting with `converter` if given.
async fn processed(
    shared: &Arc<Shared>,
    input: &Shared3,
    layout: &Layout,
    definition: &Arc<StreamDefinition>,
    converter: Option<Converter>,
) -> Slot<crate::process::Processed> {
    let (job_shared, input, layout, definition) = (
        shared.clone(),
        input.clone(),
        layout.clone(),
        definition.clone(),
    );
    in_slot(shared, &shared.ctx.process_slots, move || {
        let input = Input {
            start: input.0,
            records: input.1.clone(),
            arrivals: input.2.clone(),
        };
        Ok(process_records(
            &job_shared,
            input,
            &layout,
            &definition,
            converter.as_ref(),
        ))
    })
    .await
}

/// The Arrow schema records would get without a table: inferred from what processing lets
/// through.
async fn inferred(
    shared: &Arc<Shared>,
    input: &Shared3,
    layout: &Layout,
    definition: &Arc<StreamDefinition>,
) -> Result<arrow_schema::SchemaRef, Attempt> {
    match processed(shared, input, layout, definition, None).await {
        Slot::Done(p) => {
            // Keys as the converter will compare them (lower case, no dots).
            let keys = Converter::inferring(json_input());
            let records = p
                .partitions
                .into_iter()
                .flat_map(|p| p.records)
                .filter_map(|r| keys.normalize(&r).ok());
            Ok(crate::encode::parquet::infer(records))
        }
        Slot::Failed => Err(Attempt::Unprocessable),
        Slot::Abandoned => Err(Attempt::Abandoned),
    }
}

async fn attempt(
    shared: &Arc<Shared>,
    input: &Shared3,
    plan: &ObjectPlan,
    layout: &Layout,
    definition: &Arc<StreamDefinition>,
    (target, route): (
        &crate::definition::iceberg::IcebergTarget,
        &crate::definition::iceberg::TableRoute,
    ),
) -> Attempt {
    let ctx = &shared.ctx;
    // Errors about the data itself (a schema the library refuses, say) would fail every
    // attempt: the batch goes to the error output instead of holding the stream forever.
    let retry = |e: iceberg::Error| match e.kind() {
        iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => {
            tracing::error!(stream = %shared.name, error = %error_chain(&e), "the table refuses this batch; its records go to processing-failed");
            Attempt::Unprocessable
        }
        _ => Attempt::Retry(error_chain(&e)),
    };
    let label = format!("{}.{}", route.database, route.table);
    let labels = [shared.name.as_str(), label.as_str()];
    let catalog = match ctx.iceberg.get(&target.catalog).await {
        Ok(c) => c,
        Err(e) => return retry(e),
    };
    let ident = ice::ident(route);
    let mut table = match ice::load(catalog.as_ref(), &ident).await {
        Ok(Some(t)) => t,
        Ok(None) if target.create_tables => {
            let schema = match inferred(shared, input, layout, definition).await {
                Ok(s) => s,
                Err(a) => return a,
            };
            match ice::create(catalog.as_ref(), route, &schema).await {
                Ok(t) => t,
                Err(e) => return retry(e),
            }
        }
        Ok(None) => {
            return Attempt::Retry(format!(
                "table {label} does not exist and TableCreationConfiguration is not enabled"
            ));
        }
        Err(e) => return retry(e),
    };
    let batch_name = plan.key.clone();
    if ice::has_batch(&table, &batch_name) {
        // Its error objects were written before its commit.
        ctx.metrics
            .iceberg
            .skipped_replays
            .with_label_values(&labels)
            .inc();
        return Attempt::Done;
    }
    if target.schema_evolution {
        let schema = match inferred(shared, input, layout, definition).await {
            Ok(s) => s,
            Err(a) => return a,
        };
        let columns = ice::new_columns(table.metadata().current_schema(), &schema, |a, b| {
            a.eq_ignore_ascii_case(b)
        });
        if !columns.is_empty() {
            tracing::info!(stream = %shared.name, table = %label, columns = ?columns.iter().map(|c| &c.0).collect::<Vec<_>>(), "adding columns (SchemaEvolutionConfiguration)");
            table = match ice::evolve(catalog.as_ref(), &table, columns).await {
                Ok(t) => t,
                Err(e) => return retry(e),
            };
        }
    }
    let arrow = match schema_to_arrow_schema(table.metadata().current_schema()) {
        Ok(s) => Arc::new(s),
        Err(e) => return retry(e),
    };
    let converter = Converter::with_schema(json_input(), arrow.clone());
    let processed = match processed(shared, input, layout, definition, Some(converter)).await {
        Slot::Done(p) => p,
        Slot::Failed => return Attempt::Unprocessable,
        Slot::Abandoned => return Attempt::Abandoned,
    };
    // Failed records land before the commit: a batch whose snapshot exists is complete.
    match error_objects(shared, input.0, plan, layout, processed.errors) {
        Ok(objects) => {
            if !write_all(shared, objects).await {
                return Attempt::Abandoned;
            }
        }
        Err(_) => return Attempt::Unprocessable,
    }
    let records: Vec<bytes::Bytes> = processed
        .partitions
        .into_iter()
        .flat_map(|p| p.records)
        .collect();
    if records.is_empty() {
        return Attempt::Done;
    }
    let rows = records.len() as u64;
    let converter = Converter::with_schema(json_input(), arrow.clone());
    let batches = match decode(&converter, arrow, &records) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(stream = %shared.name, table = %label, error = %e, "records that fit the table's schema did not decode");
            return Attempt::Unprocessable;
        }
    };
    let files = match write_files(&table, &batch_name, batches).await {
        Ok(f) => f,
        Err(e) => return retry(e),
    };
    let file_count = files.len() as u64;
    fail::fail_point!("iceberg-before-commit");
    if let Err(e) = ice::append(catalog.as_ref(), &table, &batch_name, files).await {
        return retry(e);
    }
    fail::fail_point!("iceberg-after-commit");
    let m = &ctx.metrics.iceberg;
    m.commits.with_label_values(&labels).inc();
    m.data_files.with_label_values(&labels).inc_by(file_count);
    m.rows.with_label_values(&labels).inc_by(rows);
    shared.metrics.delivered_records.inc_by(rows);
    Attempt::Done
}

fn error_chain(e: &iceberg::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Records that fit the schema as Arrow batches.
fn decode(
    converter: &Converter,
    schema: arrow_schema::SchemaRef,
    records: &[bytes::Bytes],
) -> Result<Vec<arrow_array::RecordBatch>, String> {
    let mut decoder = ReaderBuilder::new(schema)
        .with_batch_size(DECODE_ROWS)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in records {
        let row = converter.fit(r).map_err(|e| e.to_string())?;
        decoder
            .serialize(std::slice::from_ref(&row))
            .map_err(|e| e.to_string())?;
        if decoder.len() >= DECODE_ROWS
            && let Some(b) = decoder.flush().map_err(|e| e.to_string())?
        {
            out.push(b);
        }
    }
    if let Some(b) = decoder.flush().map_err(|e| e.to_string())? {
        out.push(b);
    }
    Ok(out)
}

/// Data file names of one batch: the batch's name and a counter, so a replay writes the same
/// names (each partition's writer counts from 0 in its own directory).
#[derive(Debug)]
struct BatchFileNames {
    batch: String,
    next: std::sync::atomic::AtomicU64,
}

impl Clone for BatchFileNames {
    fn clone(&self) -> Self {
        BatchFileNames {
            batch: self.batch.clone(),
            next: std::sync::atomic::AtomicU64::new(
                self.next.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }
}

impl FileNameGenerator for BatchFileNames {
    fn generate_file_name(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:05}.parquet", self.batch)
    }
}

/// Writes the batches as the table's data files (split by its partition spec).
async fn write_files(
    table: &Table,
    batch: &str,
    batches: Vec<arrow_array::RecordBatch>,
) -> iceberg::Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("spillway {}", env!("CARGO_PKG_VERSION")))
        .build();
    let names = BatchFileNames {
        // Object names may hold characters a file name should not: keep it plain.
        batch: batch
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect(),
        next: Default::default(),
    };
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        ParquetWriterBuilder::new(props, schema.clone()),
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        names,
    );
    let builder = DataFileWriterBuilder::new(rolling);
    let spec = metadata.default_partition_spec();
    if spec.is_unpartitioned() {
        let mut writer = builder.build(None).await?;
        for b in batches {
            writer.write(b).await?;
        }
        return writer.close().await;
    }
    let splitter =
        RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec.clone())?;
    let mut fanout = FanoutWriter::new(builder);
    for b in batches {
        for (key, part) in splitter.split(&b)? {
            fanout.write(key, part).await?;
        }
    }
    fanout.close().await
}
