//! Delivery of a sealed batch to an Iceberg table: process it (against the table's schema),
//! write its failed records to the error output, write its rows as Parquet data files named
//! after the batch, and commit them as one append snapshot that names the batch. A replay of
//! a batch whose snapshot is in the table's history appends nothing.

use std::sync::Arc;

use arrow_json::ReaderBuilder;
use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
use iceberg::spec::DataFile;
use iceberg::spec::PartitionKey;
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{FileNameGenerator, LocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::definition::StreamDefinition;
use crate::definition::conversion::{JsonInput, SerDe};
use crate::definition::iceberg::TableRoute;
use crate::definition::prefix::PrefixTemplate;
use crate::encode::parquet::Converter;
use crate::iceberg as ice;
use crate::process::ErrorOutput;
use crate::sink::{self, Layout, ObjectPlan};

use super::Shared;
use super::delivery::{
    Input, Slot, Unprocessed, error_objects, error_objects_at, in_slot, process_records, write_all,
};
use super::intake::Batch;
use super::naming;

/// A timestamp column of this name that a record leaves out (or sets to null) is filled with
/// the record's arrival time: a table created with `day(arrival)` is partitioned by the day
/// records arrived.
pub const ARRIVAL_COLUMN: &str = "arrival";

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
    /// The table's schema moved while the batch's new columns were being committed: write it
    /// again against the new schema, now.
    Again,
}

/// Attempts in a row that may end in [`Attempt::Again`] before the next waits as a failure
/// does (a table whose schema keeps moving under the batch).
const MAX_AGAIN: u32 = 8;

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
    let label = target
        .tables
        .iter()
        .map(label)
        .collect::<Vec<_>>()
        .join(",");
    // Failures are counted against the stream's first table (the one a record without
    // routing metadata goes to).
    let first = self::label(&target.tables[0]);
    let labels = [shared.name.as_str(), first.as_str()];
    let unprocessed = Unprocessed::of(&batch, &plan, &layout);
    let input = Arc::new((batch.start, batch.records.clone(), batch.arrivals.clone()));
    drop(batch);
    let tables = Arc::new(target.tables.clone());
    let routed = match processed(shared, &input, &layout, &definition, tables).await {
        Slot::Done(p) => Arc::new(Routed::of(p, &target)),
        Slot::Failed => {
            return match unprocessed.objects(shared).await {
                Some(objects) => write_all(shared, objects).await,
                None => false,
            };
        }
        Slot::Abandoned => return false,
    };
    let mut delay = ctx.upload.retry_initial;
    let mut again = 0;
    loop {
        // In a task of its own: a panic in the Iceberg library (a value it cannot handle)
        // fails this batch to the error output instead of leaving it pending forever.
        let job = {
            let (shared, input, plan, layout, target, routed) = (
                shared.clone(),
                input.clone(),
                plan.clone(),
                layout.clone(),
                target.clone(),
                routed.clone(),
            );
            tokio::spawn(
                async move { attempt(&shared, &input, &plan, &layout, &target, &routed).await },
            )
        };
        let attempt = match job.await {
            Ok(a) => a,
            // Part of it is in a table or the error output: not all of it can go there.
            Err(e) if routed.partly_delivered() => Attempt::Retry(format!(
                "writing this batch to its tables panicked after part of it was delivered: {e}"
            )),
            Err(e) => {
                tracing::error!(stream = %shared.name, error = %e, "writing this batch to its tables panicked; its records go to processing-failed");
                shared.metrics.delivery_failure("process");
                Attempt::Unprocessable
            }
        };
        match attempt {
            Attempt::Done => {
                shared.uploads_landed();
                return true;
            }
            Attempt::Abandoned => return false,
            Attempt::Again if again < MAX_AGAIN => {
                again += 1;
                tracing::info!(stream = %shared.name, table = %label, "the table's schema moved under this batch's new columns; writing it again");
                continue;
            }
            Attempt::Again => {
                again = 0;
                shared.uploads_failed();
                tracing::warn!(stream = %shared.name, table = %label, "the table's schema keeps changing under this batch's new columns; will retry");
                if !sink::backoff(&mut delay, &ctx.upload, &ctx.abandon).await {
                    return false;
                }
            }
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

/// Error codes of records an Iceberg stream cannot route.
pub mod codes {
    /// The record's metadata names a table the stream does not list.
    pub const TABLE_NOT_LISTED: &str = "Iceberg.TableNotListed";
    /// The record's metadata asks for `update` or `delete`.
    pub const OPERATION_NOT_SUPPORTED: &str = "Iceberg.OperationNotSupported";
}

/// Picks each record's table from its metadata (the transform's keys first, then the
/// query's): `destinationDatabaseName` and `destinationTableName`, each defaulting to the
/// first listed table's; `operation` must be `insert` if given. The table must be listed.
type Keys = [(String, String)];
type RouteResult = Result<String, (&'static str, String)>;

fn router(tables: &[TableRoute]) -> impl Fn(&Keys, &Keys) -> RouteResult + Sync + use<'_> {
    move |query, lambda| {
        let get = |name: &str| {
            lambda
                .iter()
                .chain(query)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(op) = get("operation")
            && !op.eq_ignore_ascii_case("insert")
        {
            return Err((
                codes::OPERATION_NOT_SUPPORTED,
                format!(
                    "operation {op:?}: spillway appends (insert) only; update and delete need row-level deletes, which the Iceberg library it uses cannot commit yet"
                ),
            ));
        }
        let first = &tables[0];
        let database = get("destinationDatabaseName").unwrap_or(&first.database);
        let table = get("destinationTableName").unwrap_or(&first.table);
        match tables
            .iter()
            .find(|t| t.database == database && t.table == table)
        {
            Some(t) => Ok(label(t)),
            None => Err((
                codes::TABLE_NOT_LISTED,
                format!(
                    "the record's metadata names the table {:?}.{:?}, which is not in the stream's DestinationTableConfigurationList",
                    crate::process::cut_message(database, 256),
                    crate::process::cut_message(table, 256)
                ),
            )),
        }
    }
}

fn label(t: &TableRoute) -> String {
    ice::table_label(&ice::ident(t))
}

/// Processes the batch in a slot, its records routed to the stream's tables.
async fn processed(
    shared: &Arc<Shared>,
    input: &Shared3,
    layout: &Layout,
    definition: &Arc<StreamDefinition>,
    tables: Arc<Vec<TableRoute>>,
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
        let route = router(&tables);
        Ok(process_records(
            &job_shared,
            input,
            &layout,
            &definition,
            None,
            Some(&route),
        ))
    })
    .await
}

/// The records of one table, as processing left them, with their positions in the batch.
#[derive(Clone)]
struct TableRecords {
    route: TableRoute,
    records: Vec<bytes::Bytes>,
    indexes: Vec<usize>,
}

/// What one attempt does to one table.
enum TableOutcome {
    /// Its snapshot of this batch exists already.
    Committed,
    /// Rows to append, and the records that do not fit its schema.
    Rows(Box<Rows>),
}

struct Rows {
    /// `None` when no table could be made of the records (all of them are misfits).
    table: Option<Table>,
    catalog: Arc<dyn iceberg::Catalog>,
    /// The data files written (once [`write_table`] ran).
    files: Vec<DataFile>,
    /// Columns the files were written with that the commit adds to the table.
    evolution: Option<ice::Evolution>,
    rows: u64,
    misfits: Vec<(usize, String)>,
}

/// A processed batch, its records grouped by table: processed once per delivery (the
/// transform runs and the processing metrics count once, however many attempts it takes).
struct Routed {
    groups: Vec<TableRecords>,
    errors: Vec<(ErrorOutput, Vec<bytes::Bytes>)>,
    /// Each table's records written to the error output by an attempt (their index in the
    /// table's records, and why): a later attempt keeps them out of the table, whatever the
    /// table's schema has become, so no record is both in the table and in the error output.
    misfits: std::sync::Mutex<std::collections::HashMap<String, Vec<(usize, String)>>>,
    /// An attempt wrote error objects, committed to a table or found a table committed: the
    /// batch is partly delivered, so it can no longer go to the error output as a whole.
    delivered: std::sync::atomic::AtomicBool,
}

impl Routed {
    fn partly_delivered(&self) -> bool {
        self.delivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn delivered_part(&self) {
        self.delivered
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn of(
        processed: crate::process::Processed,
        target: &crate::definition::iceberg::IcebergTarget,
    ) -> Routed {
        let groups = processed
            .partitions
            .into_iter()
            .filter_map(|p| {
                let route = match &p.prefix {
                    Some(name) => target.tables.iter().find(|t| &label(t) == name)?,
                    None => &target.tables[0],
                };
                Some(TableRecords {
                    route: route.clone(),
                    records: p.records,
                    indexes: p.indexes,
                })
            })
            .collect();
        Routed {
            groups,
            errors: processed.errors,
            misfits: Default::default(),
            delivered: Default::default(),
        }
    }
}

async fn attempt(
    shared: &Arc<Shared>,
    input: &Shared3,
    plan: &ObjectPlan,
    layout: &Layout,
    target: &crate::definition::iceberg::IcebergTarget,
    routed: &Routed,
) -> Attempt {
    let ctx = &shared.ctx;
    let errors = routed.errors.clone();
    let groups = &routed.groups;
    let batch_name = plan.key.clone();
    let mut outcomes = Vec::with_capacity(groups.len());
    for group in groups {
        match prepare_table(shared, target, group, &batch_name).await {
            Ok(o) => {
                if matches!(o, TableOutcome::Committed) {
                    routed.delivered_part();
                }
                outcomes.push(o);
            }
            Err(a) => return once_delivered(a, routed.partly_delivered()),
        }
    }
    for (group, outcome) in groups.iter().zip(outcomes.iter_mut()) {
        let written = routed
            .misfits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&label(&group.route))
            .cloned()
            .unwrap_or_default();
        if let TableOutcome::Rows(r) = outcome
            && let Err(a) = write_table(shared, group, r, &batch_name, written, &input.2).await
        {
            return once_delivered(a, routed.partly_delivered());
        }
    }
    // Records that do not fit their table, in the usual envelope: one object per table (so
    // an attempt after a table committed neither drops nor repeats its misfits), under the
    // table's own S3ErrorOutputPrefix if it has one, else the stream's ErrorOutputPrefix.
    let ended_ms = super::now_ms();
    let mut objects = error_objects(shared, input.0, plan, layout, errors);
    for (group, outcome) in groups.iter().zip(&outcomes) {
        let TableOutcome::Rows(r) = outcome else {
            continue;
        };
        if r.misfits.is_empty() {
            continue;
        }
        let lines = r
            .misfits
            .iter()
            .map(|(i, why)| {
                let at = group.indexes[*i];
                let record = crate::process::Record {
                    id: shared.record_id(crate::journal::Position(input.0.0 + at as u64)),
                    arrival_ms: input.2[at],
                    data: input.1[at].clone(),
                };
                crate::process::error_record(
                    &record,
                    1,
                    crate::process::codes::CONVERSION_FAILED,
                    why,
                    None,
                    ended_ms,
                )
            })
            .collect();
        let index = target
            .tables
            .iter()
            .position(|t| *t == group.route)
            .unwrap_or(0);
        let own = own_error_prefix(&group.route)
            .map(|template| table_error_layout(layout, &template, &plan.key, &label(&group.route)));
        let base = naming::ERROR_OBJECT_BASE + ((index as u64 + 1) << 8);
        let lines = vec![(ErrorOutput::FormatConversionFailed, lines)];
        let table_layout = own.as_ref().unwrap_or(layout);
        objects = objects.and_then(|mut all| {
            all.extend(error_objects_at(
                shared,
                input.0,
                plan,
                table_layout,
                lines,
                base,
            )?);
            Ok(all)
        });
    }
    match objects {
        Ok(objects) => {
            let any = !objects.is_empty();
            if !write_all(shared, objects).await {
                return Attempt::Abandoned;
            }
            if any {
                routed.delivered_part();
            }
        }
        Err(_) => return once_delivered(Attempt::Unprocessable, routed.partly_delivered()),
    }
    // Written: these records stay misfits in any later attempt at this batch.
    {
        let mut written = routed.misfits.lock().unwrap_or_else(|p| p.into_inner());
        for (group, outcome) in groups.iter().zip(&outcomes) {
            if let TableOutcome::Rows(r) = outcome {
                written.insert(label(&group.route), r.misfits.clone());
            }
        }
    }
    for (group, outcome) in groups.iter().zip(outcomes) {
        let name = label(&group.route);
        let labels = [shared.name.as_str(), name.as_str()];
        let TableOutcome::Rows(r) = outcome else {
            ctx.metrics
                .iceberg
                .skipped_replays
                .with_label_values(&labels)
                .inc();
            continue;
        };
        let Rows {
            table,
            catalog,
            files,
            evolution,
            rows,
            ..
        } = *r;
        let Some(table) = table.filter(|_| rows > 0) else {
            continue;
        };
        let started = std::time::Instant::now();
        let file_count = files.len() as u64;
        fail::fail_point!("iceberg-before-commit");
        let ident = table.identifier().clone();
        let led = match ctx
            .iceberg
            .append(catalog.as_ref(), &ident, &batch_name, files, evolution)
            .await
        {
            Ok(led) => {
                routed.delivered_part();
                led
            }
            Err(e) if ice::schema_moved(&e) => {
                // A conflict on the schema: counted with the catalog's conflicts.
                count_conflict(shared, &name);
                return Attempt::Again;
            }
            // Failed records are written by now.
            Err(e) => return once_delivered(classify(shared, e), true),
        };
        fail::fail_point!("iceberg-after-commit");
        tracing::debug!(stream = %shared.name, table = %name, rows, ms = started.elapsed().as_millis() as u64, led, "appended");
        let m = &ctx.metrics.iceberg;
        if led {
            m.commits.with_label_values(&labels).inc();
        }
        m.data_files.with_label_values(&labels).inc_by(file_count);
        m.rows.with_label_values(&labels).inc_by(rows);
        shared.metrics.delivered_records.inc_by(rows);
    }
    Attempt::Done
}

fn count_conflict(shared: &Shared, table: &str) {
    shared
        .ctx
        .metrics
        .iceberg
        .commit_conflicts
        .with_label_values(&[table])
        .inc();
}

/// The table's `S3ErrorOutputPrefix`, parsed (it was checked when the stream was created).
fn own_error_prefix(route: &TableRoute) -> Option<PrefixTemplate> {
    PrefixTemplate::parse_error_prefix(route.error_prefix.as_deref()?).ok()
}

/// The batch's layout with a table's own error prefix rendered in place of the stream's, at
/// the batch's instant. Its random strings are derived from the batch's name, the table and
/// their place (SHA-256, mapped to letters and digits), so a replay names the table's error
/// objects as the first attempt did, whatever version of a random number library renders
/// them.
fn table_error_layout(
    layout: &Layout,
    template: &PrefixTemplate,
    batch: &str,
    table: &str,
) -> Layout {
    use crate::definition::prefix::{Piece, RANDOM_STRING_LEN};
    use sha2::Digest;
    const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let at = layout.settings.naming.local_time(layout.at_ms);
    let error_prefix = template
        .partition_pieces(at)
        .into_iter()
        .enumerate()
        .map(|(n, piece)| match piece {
            Piece::RandomString => {
                let digest = sha2::Sha256::digest(format!("{batch}\u{0}{table}\u{0}{n}"));
                Piece::Text(
                    digest[..RANDOM_STRING_LEN]
                        .iter()
                        .map(|b| char::from(ALPHANUMERIC[usize::from(*b) % ALPHANUMERIC.len()]))
                        .collect(),
                )
            }
            other => other,
        })
        .collect();
    Layout {
        error_prefix,
        ..layout.clone()
    }
}

/// A batch part of which is delivered already (a table has its snapshot, or its failed
/// records were written) cannot go to the error output as a whole without delivering those
/// records twice: a failure about its data is retried instead (the stream stalls, counted and
/// logged, until the table takes it).
fn once_delivered(a: Attempt, partly: bool) -> Attempt {
    match a {
        Attempt::Unprocessable if partly => Attempt::Retry(
            "a table refused part of a batch whose other part is already delivered; retrying rather than delivering records twice".into(),
        ),
        a => a,
    }
}

/// Errors about the data itself (a schema the library refuses, say) would fail every
/// attempt: the batch goes to the error output instead of holding the stream forever.
/// Others (catalog or store unreachable) are retried.
fn classify(shared: &Shared, e: iceberg::Error) -> Attempt {
    match e.kind() {
        iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => {
            tracing::error!(stream = %shared.name, error = %error_chain(&e), "the table refuses this batch; its records go to processing-failed");
            Attempt::Unprocessable
        }
        _ => Attempt::Retry(error_chain(&e)),
    }
}

/// Loads (or creates, or evolves) one table and converts its records against its schema.
async fn prepare_table(
    shared: &Arc<Shared>,
    target: &crate::definition::iceberg::IcebergTarget,
    group: &TableRecords,
    batch_name: &str,
) -> Result<TableOutcome, Attempt> {
    let ctx = &shared.ctx;
    let route = &group.route;
    let name = label(route);
    let catalog = ctx
        .iceberg
        .get(&target.catalog)
        .await
        .map_err(|e| classify(shared, e))?;
    let ident = ice::ident(route);
    // Keys as the converter will compare them (lower case, no dots): what inference reads.
    let inferred = || {
        let keys = Converter::inferring(json_input());
        crate::encode::parquet::infer(group.records.iter().filter_map(|r| keys.normalize(r).ok()))
    };
    // Inferred once, for creation and evolution alike.
    let mut schema = None;
    let mut table = match ice::load(catalog.as_ref(), &ident).await {
        Ok(Some(t)) => t,
        Ok(None) if target.create_tables => {
            let schema = schema.get_or_insert_with(inferred);
            if ice::table_fields(schema).is_empty() {
                // Nothing to make a column of (no record is an object with keys): the
                // records fail, and a later batch creates the table.
                let why = "no column can be made of this record (the table does not exist yet, and TableCreationConfiguration infers its columns from objects with keys)";
                return Ok(TableOutcome::Rows(Box::new(Rows {
                    table: None,
                    catalog,
                    files: Vec::new(),
                    evolution: None,
                    rows: 0,
                    misfits: (0..group.records.len())
                        .map(|i| (i, why.to_owned()))
                        .collect(),
                })));
            }
            ice::create(catalog.as_ref(), route, schema)
                .await
                .map_err(|e| classify(shared, e))?
        }
        Ok(None) => {
            return Err(Attempt::Retry(format!(
                "table {name} does not exist and TableCreationConfiguration is not enabled"
            )));
        }
        Err(e) => return Err(classify(shared, e)),
    };
    if ice::has_batch(&table, batch_name) {
        return Ok(TableOutcome::Committed);
    }
    if ice::nesting(table.metadata().current_schema()) > ice::MAX_NESTING {
        tracing::error!(stream = %shared.name, table = %name, "the table's types nest deeper than {} levels, which spillway does not write; this batch goes to processing-failed", ice::MAX_NESTING);
        return Err(Attempt::Unprocessable);
    }
    let mut evolution = None;
    if target.schema_evolution {
        let schema = schema.get_or_insert_with(inferred);
        let columns = ice::new_columns(table.metadata().current_schema(), schema, |a, b| {
            a.eq_ignore_ascii_case(b)
        });
        if !columns.is_empty() {
            tracing::info!(stream = %shared.name, table = %name, columns = ?columns.iter().map(|c| &c.0).collect::<Vec<_>>(), "adding columns (SchemaEvolutionConfiguration)");
            // The files are written with the ids the commit will give the new columns.
            let (planned, adds) = ice::evolved(&table, columns)
                .await
                .map_err(|e| classify(shared, e))?;
            table = planned;
            evolution = Some(adds);
        }
    }
    Ok(TableOutcome::Rows(Box::new(Rows {
        table: Some(table),
        catalog,
        files: Vec::new(),
        evolution,
        rows: 0,
        misfits: Vec::new(),
    })))
}

/// Converts one table's records against its schema and writes them as its data files, in an
/// encode slot on a blocking thread (CPU work, like every other stream's encoding, kept off
/// the runtime's workers that serve the API; and the Arrow and Parquet buffers of at most one
/// batch per core exist at a time).
async fn write_table(
    shared: &Arc<Shared>,
    group: &TableRecords,
    rows: &mut Rows,
    batch_name: &str,
    written_misfits: Vec<(usize, String)>,
    arrivals: &[u64],
) -> Result<(), Attempt> {
    let ctx = &shared.ctx;
    let Some(table) = rows.table.clone() else {
        return Ok(());
    };
    let arrow = Arc::new(
        schema_to_arrow_schema(table.metadata().current_schema())
            .map_err(|e| classify(shared, e))?,
    );
    let Ok(slot) = ctx.encode_slots.clone().acquire_owned().await else {
        return Err(Attempt::Abandoned);
    };
    let (runtime, max_open, batch) = (
        tokio::runtime::Handle::current(),
        ctx.max_active_partitions,
        batch_name.to_owned(),
    );
    let records = group.records.clone();
    // A timestamp column named `arrival` that a record leaves out holds its arrival time.
    let arrivals = arrow
        .field_with_name(ARRIVAL_COLUMN)
        .is_ok_and(|f| matches!(f.data_type(), arrow_schema::DataType::Timestamp(_, _)))
        .then(|| {
            group
                .indexes
                .iter()
                .map(|&i| arrivals[i])
                .collect::<Vec<u64>>()
        });
    let written = tokio::task::spawn_blocking(move || {
        let converter = Converter::with_schema(json_input(), arrow.clone());
        let out = match decode(
            &converter,
            arrow,
            &records,
            written_misfits,
            arrivals.as_deref(),
        ) {
            Ok((batches, count, misfits)) if count > 0 => runtime
                .block_on(write_files(
                    &table,
                    &batch,
                    futures::stream::iter(batches.into_iter().map(Ok)),
                    max_open,
                    None,
                ))
                .map(|files| Ok((files, count, misfits))),
            Ok((_, count, misfits)) => Ok(Ok((Vec::new(), count, misfits))),
            Err(e) => Ok(Err(e)),
        };
        drop(slot);
        out
    })
    .await;
    let (files, count, misfits) = match written {
        Ok(Ok(Ok(w))) => w,
        Ok(Ok(Err(e))) => {
            tracing::error!(stream = %shared.name, table = %label(&group.route), error = %e, "records that fit the table's schema did not decode");
            return Err(Attempt::Unprocessable);
        }
        Ok(Err(e)) => return Err(classify(shared, e)),
        // A panic while writing: the batch fails as a whole (see `deliver`).
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return Err(Attempt::Abandoned),
    };
    rows.files = files;
    rows.rows = count;
    rows.misfits = misfits;
    Ok(())
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

/// Records as Arrow batches against the table's schema, with the rows written and the
/// records that do not fit it (their index in `records` and why).
#[allow(clippy::type_complexity)]
fn decode(
    converter: &Converter,
    schema: arrow_schema::SchemaRef,
    records: &[bytes::Bytes],
    written_misfits: Vec<(usize, String)>,
    arrivals: Option<&[u64]>,
) -> Result<(Vec<arrow_array::RecordBatch>, u64, Vec<(usize, String)>), String> {
    let written: std::collections::HashMap<usize, String> = written_misfits.into_iter().collect();
    let mut decoder = ReaderBuilder::new(schema)
        .with_batch_size(DECODE_ROWS)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut misfits = Vec::new();
    let mut rows = 0u64;
    for (i, r) in records.iter().enumerate() {
        if let Some(why) = written.get(&i) {
            misfits.push((i, why.clone()));
            continue;
        }
        let mut row = match converter.fit(r) {
            Ok(row) => row,
            Err(why) => {
                misfits.push((i, why.0));
                continue;
            }
        };
        if let (Some(arrivals), serde_json::Value::Object(map)) = (arrivals, &mut row)
            && map.get(ARRIVAL_COLUMN).is_none_or(|v| v.is_null())
            && let Some(at) = arrivals
                .get(i)
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(*ms as i64))
        {
            map.insert(
                ARRIVAL_COLUMN.to_owned(),
                serde_json::Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
        }
        decoder
            .serialize(std::slice::from_ref(&row))
            .map_err(|e| e.to_string())?;
        rows += 1;
        if decoder.len() >= DECODE_ROWS
            && let Some(b) = decoder.flush().map_err(|e| e.to_string())?
        {
            out.push(b);
        }
    }
    if let Some(b) = decoder.flush().map_err(|e| e.to_string())? {
        out.push(b);
    }
    Ok((out, rows, misfits))
}

/// Data file names of one batch: the batch's name and a counter shared by every writer of the
/// batch, so no two of its files share a name, whichever partition they are in.
#[derive(Clone, Debug)]
struct BatchFileNames {
    batch: String,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl FileNameGenerator for BatchFileNames {
    fn generate_file_name(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:05}.parquet", self.batch)
    }
}

/// Data file locations with partition values made safe: Iceberg's Rust library puts values
/// into paths as they are, so a value with `/`, `..`, a newline, `#` or 300 bytes would make a
/// path that cannot be written or read back. A value (or field name) of `[A-Za-z0-9._-]` only
/// and at most [`MAX_SEGMENT`] bytes stays as it is; any other has its other characters made
/// `_`, is cut to 96 bytes and gets `-` and 16 hex digits of a SHA-256 of the whole, so
/// different values stay apart. (No `%` escapes: readers such as pyarrow decode them in
/// paths.) Readers take partition values from the manifests, not from paths.
#[derive(Clone, Debug)]
struct EscapedLocations {
    data: String,
}

/// Longest partition value kept as it is in a path (file systems allow 255 bytes a segment).
const MAX_SEGMENT: usize = 128;

fn escape(text: &str) -> String {
    use std::fmt::Write;
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if text.len() <= MAX_SEGMENT
        && !text.is_empty()
        && text.bytes().all(safe)
        && text != "."
        && text != ".."
    {
        return text.to_owned();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut out: String = text
        .bytes()
        .take(96)
        .map(|b| if safe(b) { b as char } else { '_' })
        .collect();
    out.push('-');
    for b in &digest[..8] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl LocationGenerator for EscapedLocations {
    fn generate_location(&self, key: Option<&PartitionKey>, file_name: &str) -> String {
        let Some(key) = key.filter(|k| !PartitionKey::is_effectively_none(Some(*k))) else {
            return format!("{}/{file_name}", self.data);
        };
        let types = key.spec().partition_type(key.schema()).ok();
        let path: Vec<String> = key
            .spec()
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let value = key.data().fields().get(i).and_then(|v| v.as_ref());
                let human = match types.as_ref().and_then(|t| t.fields().get(i)) {
                    Some(t) => f.transform.to_human_string(&t.field_type, value),
                    None => "null".to_owned(),
                };
                format!("{}={}", escape(&f.name), escape(&human))
            })
            .collect();
        format!("{}/{}/{file_name}", self.data, path.join("/"))
    }
}

/// Writes the batches as the table's data files (split by its partition spec). At most
/// `max_open` partitions' writers are open at once (each holds a Parquet writer's buffers):
/// past that, the open ones are closed into files and new ones start.
/// Writes record batches as the table's data files (split by its partition spec, rolled at
/// `target_size` bytes), named after `batch`; what the pipeline and the small-file rewrite
/// both write with.
pub(crate) async fn write_files(
    table: &Table,
    batch: &str,
    mut batches: impl futures::Stream<Item = iceberg::Result<arrow_array::RecordBatch>> + Unpin,
    max_open: usize,
    target_size: Option<usize>,
) -> iceberg::Result<Vec<DataFile>> {
    use futures::StreamExt;
    // A panic in the library while writing (test builds: `iceberg-write=1*panic`).
    fail::fail_point!("iceberg-write");
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(format!("spillway {}", env!("CARGO_PKG_VERSION")));
    if target_size.is_some() {
        // A rewrite reads many files into one: bound what it buffers before a row group is
        // written. (A batch's files hold one batch: its row groups are as the default makes
        // them.)
        props = props.set_max_row_group_row_count(Some(16 * 1024));
    }
    let props = props.build();
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
    let locations = EscapedLocations {
        data: format!("{}/data", metadata.location().trim_end_matches('/')),
    };
    let parquet = ParquetWriterBuilder::new(props, schema.clone());
    let io = table.file_io().clone();
    let rolling = match target_size {
        Some(size) => RollingFileWriterBuilder::new(parquet, size, io, locations, names),
        None => RollingFileWriterBuilder::new_with_default_file_size(parquet, io, locations, names),
    };
    let spec = metadata.default_partition_spec();
    if spec.is_unpartitioned() {
        let mut writer = DataFileWriterBuilder::new(rolling).build(None).await?;
        while let Some(b) = batches.next().await {
            writer.write(b?).await?;
        }
        return writer.close().await;
    }
    let splitter =
        RecordBatchPartitionSplitter::try_new_with_computed_values(schema.clone(), spec.clone())?;
    let mut files = Vec::new();
    let mut fanout = FanoutWriter::new(DataFileWriterBuilder::new(rolling.clone()));
    let mut open = std::collections::HashSet::new();
    while let Some(b) = batches.next().await {
        for (key, part) in splitter.split(&b?)? {
            if !open.contains(key.data()) && open.len() >= max_open.max(1) {
                let full = std::mem::replace(
                    &mut fanout,
                    FanoutWriter::new(DataFileWriterBuilder::new(rolling.clone())),
                );
                files.extend(full.close().await?);
                open.clear();
            }
            open.insert(key.data().clone());
            fanout.write(key, part).await?;
        }
    }
    files.extend(fanout.close().await?);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::iceberg::TableRoute;
    use crate::definition::prefix::PrefixTemplate;

    fn tables() -> Vec<TableRoute> {
        ["players", "sessions"]
            .iter()
            .map(|t| TableRoute {
                database: "game".into(),
                table: (*t).into(),
                partition: Vec::new(),
                error_prefix: None,
            })
            .collect()
    }

    fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_tables_error_prefix_renders_the_same_for_a_replay_and_apart_per_table() {
        let template = PrefixTemplate::parse_error_prefix(
            "t/!{firehose:error-output-type}/!{timestamp:yyyy}/!{firehose:random-string}/",
        )
        .unwrap();
        let layout = Layout {
            prefix: Vec::new(),
            error_prefix: Vec::new(),
            at_ms: 1_767_225_600_000,
            version: 1,
            buffered: false,
            settings: crate::sink::SealedSettings {
                processing: None,
                dynamic_partitioning: false,
                transform_sha256: None,
                conversion: None,
                naming: Default::default(),
            },
        };
        let render = |batch: &str, index| {
            let l = table_error_layout(&layout, &template, batch, &format!("game.t{index}"));
            crate::definition::prefix::fill(&l.error_prefix, &[], &[], "format-conversion-failed")
        };
        let first = render("batch-1", 0);
        assert!(
            first.starts_with("t/format-conversion-failed/2026/"),
            "{first}"
        );
        assert_eq!(first.len(), "t/format-conversion-failed/2026/".len() + 12);
        assert_eq!(render("batch-1", 0), first);
        assert_ne!(render("batch-1", 1), first);
        assert_ne!(render("batch-2", 0), first);
    }

    #[test]
    fn records_route_by_the_transforms_keys_first_then_the_querys() {
        let tables = tables();
        let route = router(&tables);
        // Nothing named: the first listed table.
        assert_eq!(route(&[], &[]).unwrap(), "game.players");
        // The query's keys.
        let query = keys(&[("destinationTableName", "sessions")]);
        assert_eq!(route(&query, &[]).unwrap(), "game.sessions");
        // The transform's keys win over the query's.
        let lambda = keys(&[("destinationTableName", "players")]);
        assert_eq!(route(&query, &lambda).unwrap(), "game.players");
        // A table the stream does not list, and operations other than insert.
        let unlisted = keys(&[
            ("destinationDatabaseName", "other"),
            ("destinationTableName", "players"),
        ]);
        assert_eq!(
            route(&[], &unlisted).unwrap_err().0,
            codes::TABLE_NOT_LISTED
        );
        for op in ["update", "delete", "UPSERT"] {
            let op = keys(&[("operation", op)]);
            assert_eq!(
                route(&op, &[]).unwrap_err().0,
                codes::OPERATION_NOT_SUPPORTED
            );
        }
        assert!(route(&keys(&[("operation", "INSERT")]), &[]).is_ok());
    }

    #[test]
    fn partition_values_become_safe_path_segments() {
        assert_eq!(escape("kr"), "kr");
        assert_eq!(escape("2026-12-06"), "2026-12-06");
        for hostile in [
            "a/b",
            "..",
            ".",
            "",
            "line\nbreak",
            "a#b?c",
            &"x".repeat(300),
            "é",
        ] {
            let safe = escape(hostile);
            assert!(
                !safe.is_empty()
                    && safe.len() <= MAX_SEGMENT
                    && safe != "."
                    && safe != ".."
                    && safe
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{hostile:?} -> {safe:?}"
            );
        }
        // Values that only differ where they are made safe stay apart.
        assert_ne!(escape("a/b"), escape("a#b"));
    }
}
