//! The rewrite of a closed time partition's small files (`[iceberg.maintenance]`
//! `rewrite_small_files`), built on the library's public primitives because it has no
//! replace operation of its own: the files' rows are read with its Arrow reader and written
//! with the pipeline's writer, and the commit is made here: manifests that mark the old files
//! deleted and the new ones added (its manifest writers), a `replace` snapshot, the table's
//! next metadata file, and the catalog's compare-and-set on the metadata location, as its SQL
//! catalog commits.
//!
//! The rows stay the same rows: a file is rewritten only while it is live in the table when
//! the commit is made, under the lock this daemon's appends to the table take; another
//! writer's commit in between makes the compare-and-set fail (the rewrite is then dropped,
//! and tried again next run); a table with delete files is not rewritten.

use std::collections::HashMap;
use std::str::FromStr;

use futures::TryStreamExt;
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, Literal, ManifestFile, ManifestListWriter,
    ManifestWriterBuilder, Operation, PrimitiveLiteral, Snapshot, Summary, TableMetadata,
    Transform,
};
use iceberg::table::Table;
use iceberg::{Catalog, ErrorKind, MetadataLocation, TableIdent};

use super::Catalogs;

/// What the rewrite does, from `[iceberg.maintenance]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite {
    /// Files smaller than half of this are small; the rewrite writes files up to this size.
    pub target_bytes: u64,
    /// A partition is rewritten once it has at least this many small files.
    pub min_files: usize,
    /// A time partition is closed this long after its period ended (late records).
    pub closed_after: std::time::Duration,
}

/// Most partitions rewritten per table and run (each is read and written once).
const MAX_PARTITIONS_PER_RUN: usize = 4;

/// A live data file and the entry that lists it.
#[derive(Clone)]
struct Live {
    file: DataFile,
    manifest: String,
    /// The snapshot that added it.
    snapshot_id: i64,
    sequence_number: i64,
    file_sequence_number: Option<i64>,
}

/// What one run did to a table.
#[derive(Default, Debug)]
pub struct Rewritten {
    pub files_removed: u64,
    pub files_added: u64,
}

fn err(message: impl Into<String>) -> iceberg::Error {
    iceberg::Error::new(ErrorKind::Unexpected, message.into())
}

/// Milliseconds since the epoch at which a time partition's period ends, or `None` for a
/// field that is not a time transform (or a value it does not hold).
fn period_end_ms(transform: Transform, value: Option<&Literal>) -> Option<i64> {
    let Some(Literal::Primitive(PrimitiveLiteral::Int(v))) = value else {
        return None;
    };
    let v = i64::from(*v);
    let month_start = |months: i64| {
        let (year, month) = (1970 + months.div_euclid(12), months.rem_euclid(12) + 1);
        chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month as u32, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis())
    };
    match transform {
        Transform::Hour => Some((v + 1) * 3_600_000),
        Transform::Day => Some((v + 1) * 86_400_000),
        Transform::Month => month_start(v + 1),
        Transform::Year => month_start((v + 1) * 12),
        _ => None,
    }
}

/// The table's live data files, by manifest, as of its current snapshot (data files of the
/// default partition spec only), and the manifest list.
async fn live_files(table: &Table) -> iceberg::Result<Option<(Vec<ManifestFile>, Vec<Live>)>> {
    let metadata = table.metadata();
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(None);
    };
    let io = table.file_io();
    let list = io.new_input(snapshot.manifest_list())?.read().await?;
    let manifests: Vec<ManifestFile> =
        iceberg::spec::ManifestList::parse_with_version(&list, metadata.format_version())?
            .consume_entries()
            .into_iter()
            .collect();
    // Rows read now must be the rows when the rewrite commits: a delete committed in between
    // (by another engine) would not apply to the new files. spillway writes no deletes, so a
    // table with delete files is left to that engine's own maintenance.
    if manifests
        .iter()
        .any(|m| m.content != iceberg::spec::ManifestContentType::Data)
    {
        return Ok(None);
    }
    let mut live = Vec::new();
    for m in &manifests {
        if m.partition_spec_id != metadata.default_partition_spec_id() {
            continue;
        }
        let manifest = m.load_manifest(io).await?;
        for entry in manifest.entries() {
            if entry.is_alive() && entry.data_file().content_type() == DataContentType::Data {
                live.push(Live {
                    file: entry.data_file().clone(),
                    manifest: m.manifest_path.clone(),
                    snapshot_id: entry.snapshot_id().unwrap_or(m.added_snapshot_id),
                    sequence_number: entry.sequence_number().unwrap_or(0),
                    // Entries older writers left without one (it was not inherited): the data
                    // sequence number, which the manifest writer accepts.
                    file_sequence_number: entry.file_sequence_number.or(entry.sequence_number()),
                });
            }
        }
    }
    Ok(Some((manifests, live)))
}

/// Groups of small files to rewrite: per closed time partition with at least `min_files`
/// small files, the smallest up to the target size.
fn choose(table: &Table, live: &[Live], rewrite: &Rewrite, now_ms: i64) -> Vec<Vec<Live>> {
    let spec = table.metadata().default_partition_spec();
    let times: Vec<(usize, Transform)> = spec
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            matches!(
                f.transform,
                Transform::Year | Transform::Month | Transform::Day | Transform::Hour
            )
        })
        .map(|(i, f)| (i, f.transform))
        .collect();
    if times.is_empty() {
        return Vec::new();
    }
    let closed_before = now_ms - rewrite.closed_after.as_millis() as i64;
    let mut partitions: HashMap<String, Vec<Live>> = HashMap::new();
    for l in live {
        if l.file.file_size_in_bytes() * 2 >= rewrite.target_bytes {
            continue;
        }
        let values = l.file.partition().fields();
        let closed = times.iter().all(|(i, t)| {
            period_end_ms(*t, values.get(*i).and_then(|v| v.as_ref()))
                .is_some_and(|end| end <= closed_before)
        });
        if closed {
            partitions
                .entry(format!("{:?}", l.file.partition()))
                .or_default()
                .push(l.clone());
        }
    }
    let mut groups: Vec<Vec<Live>> = partitions
        .into_values()
        .filter_map(|mut files| {
            files.sort_by_key(|l| l.file.file_size_in_bytes());
            let mut total = 0;
            let group: Vec<Live> = files
                .into_iter()
                .take_while(|l| {
                    total += l.file.file_size_in_bytes();
                    total <= rewrite.target_bytes
                })
                .collect();
            (group.len() >= rewrite.min_files).then_some(group)
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    groups.truncate(MAX_PARTITIONS_PER_RUN);
    groups
}

/// Rewrites the table's small files in closed time partitions.
pub async fn run(
    catalogs: &Catalogs,
    catalog_name: &str,
    catalog: &dyn Catalog,
    ident: &TableIdent,
    rewrite: &Rewrite,
    max_open: usize,
) -> iceberg::Result<Rewritten> {
    let mut done = Rewritten::default();
    let Some(table) = super::load(catalog, ident).await? else {
        return Ok(done);
    };
    if table.metadata().format_version() != FormatVersion::V2 {
        return Ok(done);
    }
    let Some((_, live)) = live_files(&table).await? else {
        return Ok(done);
    };
    let now_ms = crate::pipeline::now_ms() as i64;
    for group in choose(&table, &live, rewrite, now_ms) {
        let written = write_group(&table, &group, rewrite, max_open).await?;
        let committed = {
            let lock = catalogs.table_lock(catalog, ident);
            let _turn = lock.lock().await;
            // The table as it is now: the commit is made on it, or not at all.
            match catalog.load_table(ident).await {
                Ok(current) => commit(catalogs, catalog_name, &current, &group, &written).await,
                Err(e) => Err(e),
            }
        };
        match committed {
            Ok(true) => {
                done.files_removed += group.len() as u64;
                done.files_added += written.len() as u64;
            }
            // Whether the catalog took the commit is not known (its update may have failed
            // after it was made): the new files stay, unused or not.
            Err(e) => return Err(e),
            Ok(false) => {
                // The new files are in no snapshot: remove them (what is left behind, if
                // this fails or the daemon stops here, is an orphan no reader sees).
                for f in &written {
                    if let Err(e) = table.file_io().delete(f.file_path()).await {
                        tracing::debug!(file = f.file_path(), error = %e, "cannot remove a rewrite's unused file");
                    }
                }
                tracing::info!(table = %super::table_label(ident), "the table changed while its small files were rewritten; the rewrite is dropped and tried again next run");
                break;
            }
        }
    }
    Ok(done)
}

/// Reads the group's rows and writes them as new files of the target size.
async fn write_group(
    table: &Table,
    group: &[Live],
    rewrite: &Rewrite,
    max_open: usize,
) -> iceberg::Result<Vec<DataFile>> {
    let paths: std::collections::HashSet<&str> = group.iter().map(|l| l.file.file_path()).collect();
    let tasks: Vec<_> = table
        .scan()
        .select_all()
        .build()?
        .plan_files()
        .await?
        .try_filter(|t| std::future::ready(paths.contains(t.data_file_path.as_str())))
        .try_collect()
        .await?;
    if tasks.len() != group.len() {
        return Err(err("the files to rewrite are no longer all in the table"));
    }
    let rows = table
        .reader_builder()
        .build()
        .read(Box::pin(futures::stream::iter(tasks.into_iter().map(Ok))))?
        .stream();
    // Named apart from every batch's files, and from another run's or replica's.
    let name = format!("rewrite-{}", unique());
    crate::pipeline::iceberg::write_files(
        table,
        &name,
        rows,
        max_open,
        Some(rewrite.target_bytes as usize),
    )
    .await
}

/// Commits the rewrite on `current` if every file of `group` is still live in it; false if
/// not, or if another commit won the compare-and-set.
async fn commit(
    catalogs: &Catalogs,
    catalog_name: &str,
    current: &Table,
    group: &[Live],
    written: &[DataFile],
) -> iceberg::Result<bool> {
    let metadata = current.metadata();
    let Some(parent) = metadata.current_snapshot() else {
        return Ok(false);
    };
    let Some((manifests, live)) = live_files(current).await? else {
        return Ok(false);
    };
    // Each replaced file must still be live; the manifests that list it now (an earlier
    // rewrite of this run may have moved it to a new one) are the ones rewritten.
    let now_in: HashMap<&str, &str> = live
        .iter()
        .map(|l| (l.file.file_path(), l.manifest.as_str()))
        .collect();
    if !group
        .iter()
        .all(|l| now_in.contains_key(l.file.file_path()))
    {
        return Ok(false);
    }
    let io = current.file_io();
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().as_ref().clone();
    let snapshot_id = new_snapshot_id(metadata);
    let sequence_number = metadata.next_sequence_number();
    let meta_dir = format!("{}/metadata", metadata.location().trim_end_matches('/'));
    let removed: std::collections::HashSet<&str> =
        group.iter().map(|l| l.file.file_path()).collect();
    let touched: std::collections::HashSet<&str> = group
        .iter()
        .filter_map(|l| now_in.get(l.file.file_path()).copied())
        .collect();
    let manifest_path = |n: usize| format!("{meta_dir}/{}-m{n}.avro", unique());
    let mut list = Vec::new();
    let mut n = 0;
    for m in manifests {
        if !touched.contains(m.manifest_path.as_str()) {
            list.push(m);
            continue;
        }
        // Its entries again: the rewritten files deleted, the others existing.
        let mut writer = ManifestWriterBuilder::new(
            io.new_output(manifest_path(n))?,
            Some(snapshot_id),
            schema.clone(),
            spec.clone(),
        )
        .build_v2_data();
        n += 1;
        for l in live.iter().filter(|l| l.manifest == m.manifest_path) {
            let (seq, file_seq) = (l.sequence_number, l.file_sequence_number);
            if removed.contains(l.file.file_path()) {
                writer.add_delete_file(l.file.clone(), seq, file_seq)?;
            } else {
                writer.add_existing_file(l.file.clone(), l.snapshot_id, seq, file_seq)?;
            }
        }
        list.push(writer.write_manifest_file().await?);
    }
    if !written.is_empty() {
        let mut added = ManifestWriterBuilder::new(
            io.new_output(manifest_path(n))?,
            Some(snapshot_id),
            schema.clone(),
            spec,
        )
        .build_v2_data();
        for f in written {
            added.add_file(f.clone(), sequence_number)?;
        }
        list.push(added.write_manifest_file().await?);
    }
    let list_path = format!("{meta_dir}/snap-{snapshot_id}-1-{}.avro", unique());
    let mut list_writer = ManifestListWriter::v2(
        io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        Some(parent.snapshot_id()),
        sequence_number,
    );
    list_writer.add_manifests(list.into_iter())?;
    list_writer.close().await?;

    let summary = summary(parent.summary(), group, written);
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(parent.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(crate::pipeline::now_ms() as i64)
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .build();
    let location = current
        .metadata_location()
        .ok_or_else(|| err("the table has no metadata location"))?
        .to_owned();
    let next = metadata
        .clone()
        .into_builder(Some(location.clone()))
        .set_branch_snapshot(snapshot, iceberg::spec::MAIN_BRANCH)?
        .build()?
        .metadata;
    let next_location = MetadataLocation::from_str(&location)?
        .with_next_version()
        .with_new_metadata(&next);
    next.write_to(io, &next_location).await?;
    catalogs
        .swap_location(
            catalog_name,
            current.identifier(),
            &location,
            &next_location.to_string(),
        )
        .await
}

/// 32 random hex digits, for names no other writer picks.
fn unique() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A snapshot id no snapshot of the table has.
fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let id = (rand::random::<u64>() >> 1) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// The `replace` snapshot's summary: what it removed and added, and the table's totals.
fn summary(parent: &Summary, group: &[Live], written: &[DataFile]) -> Summary {
    let removed_rows: u64 = group.iter().map(|l| l.file.record_count()).sum();
    let added_rows: u64 = written.iter().map(|f| f.record_count()).sum();
    let removed_bytes: u64 = group.iter().map(|l| l.file.file_size_in_bytes()).sum();
    let added_bytes: u64 = written.iter().map(|f| f.file_size_in_bytes()).sum();
    let mut p = HashMap::from([
        ("added-data-files".to_owned(), written.len().to_string()),
        ("deleted-data-files".to_owned(), group.len().to_string()),
        ("added-records".to_owned(), added_rows.to_string()),
        ("deleted-records".to_owned(), removed_rows.to_string()),
        ("added-files-size".to_owned(), added_bytes.to_string()),
        ("removed-files-size".to_owned(), removed_bytes.to_string()),
        ("spillway.rewrite".to_owned(), "small-files".to_owned()),
    ]);
    let total = |key: &str, minus: u64, plus: u64| {
        parent
            .additional_properties
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|t| (t.saturating_sub(minus) + plus).to_string())
    };
    for (key, minus, plus) in [
        ("total-data-files", group.len() as u64, written.len() as u64),
        ("total-records", removed_rows, added_rows),
        ("total-files-size", removed_bytes, added_bytes),
    ] {
        if let Some(v) = total(key, minus, plus) {
            p.insert(key.to_owned(), v);
        }
    }
    for key in [
        "total-delete-files",
        "total-position-deletes",
        "total-equality-deletes",
    ] {
        if let Some(v) = parent.additional_properties.get(key) {
            p.insert(key.to_owned(), v.clone());
        }
    }
    Summary {
        operation: Operation::Replace,
        additional_properties: p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_partitions_end_where_their_period_does() {
        let int = |v| Literal::Primitive(PrimitiveLiteral::Int(v));
        // 2026-12-01 is day 20788 since the epoch; its partition closes on 2026-12-02.
        assert_eq!(
            period_end_ms(Transform::Day, Some(&int(20788))),
            Some(1_796_169_600_000)
        );
        assert_eq!(
            period_end_ms(Transform::Hour, Some(&int(10))),
            Some(11 * 3_600_000)
        );
        // Month 0 is January 1970: it ends on 1970-02-01.
        assert_eq!(
            period_end_ms(Transform::Month, Some(&int(0))),
            Some(31 * 86_400_000)
        );
        // Year 1 is 1971: it ends on 1972-01-01.
        assert_eq!(
            period_end_ms(Transform::Year, Some(&int(1))),
            Some(730 * 86_400_000)
        );
        assert_eq!(period_end_ms(Transform::Identity, Some(&int(1))), None);
        assert_eq!(period_end_ms(Transform::Day, None), None);
    }
}
