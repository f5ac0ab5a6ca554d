//! Iceberg destinations: each sealed batch becomes Parquet data files in its table's location
//! and one append snapshot, exactly once across restarts.
//!
//! - Catalogs are configured once (`[iceberg.catalogs.NAME]`): a SQL catalog, SQLite (the
//!   `default` one, a file under the data directory) or PostgreSQL. Table files go through
//!   spillway's own object store ([`storage`]).
//! - A batch's data files are named after the batch (its journal position and the daemon's
//!   incarnation), and its snapshot's summary carries that name as `spillway.batch`. A replay
//!   of a batch whose snapshot is already in the table's history appends nothing.
//! - A commit that loses to another writer (the catalog's optimistic check) is retried by the
//!   library on the new table state, and counted; any other failure is retried with the
//!   uploads' backoff for as long as it takes.

mod compaction;
mod evolution;
mod maintenance;
pub mod storage;

pub use evolution::{Evolution, evolved, schema_moved};

pub use compaction::Rewrite;
pub use maintenance::{Maintenance, run as run_maintenance};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iceberg::spec::{DataFile, Schema, Transform as IcebergTransform, Type, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{
    Catalog, CatalogBuilder, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation,
    TableIdent,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};

use crate::definition::iceberg::{TableRoute, Transform};
use crate::metrics::Metrics;
use crate::sink::Stores;

/// The snapshot summary key that names the batch a snapshot appended.
pub const BATCH_PROPERTY: &str = "spillway.batch";

/// One configured catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogSettings {
    /// `sqlite:///path?mode=rwc` or `postgres://user:pass@host/db`.
    pub uri: String,
    /// Where new tables go: `s3://bucket/path` or `file:///path` under the local store.
    pub warehouse: String,
}

impl CatalogSettings {
    fn bind_style(&self) -> SqlBindStyle {
        if self.uri.starts_with("postgres") {
            SqlBindStyle::DollarNumeric
        } else {
            SqlBindStyle::QMark
        }
    }
}

/// The configured catalogs, connected when first used.
pub struct Catalogs {
    settings: BTreeMap<String, CatalogSettings>,
    stores: Arc<Stores>,
    metrics: Arc<Metrics>,
    connected: tokio::sync::Mutex<HashMap<String, Arc<dyn Catalog>>>,
    /// Appends waiting for each table (by catalog and table), committed together.
    appends: std::sync::Mutex<HashMap<String, Arc<TableAppends>>>,
    /// Each connected catalog's database, for location queries and the rewrite's commit.
    locations: tokio::sync::Mutex<HashMap<String, Arc<LocationsCell>>>,
}

/// One table's group commit: batches whose files are written queue here; whoever holds
/// `commit` takes every queued batch and commits them as one snapshot. Batches of this daemon
/// never race each other for the table (no self-inflicted conflicts), and while one commit is
/// in flight the next batches gather into the following one.
#[derive(Default)]
struct TableAppends {
    queue: std::sync::Mutex<Vec<Pending>>,
    commit: Arc<tokio::sync::Mutex<()>>,
}

struct Pending {
    batch: String,
    files: Vec<DataFile>,
    evolution: Option<Evolution>,
    done: tokio::sync::oneshot::Sender<Result<bool, (ErrorKind, String)>>,
}

impl Catalogs {
    pub fn new(
        settings: BTreeMap<String, CatalogSettings>,
        stores: Arc<Stores>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Catalogs {
            settings,
            stores,
            metrics,
            connected: Default::default(),
            appends: Default::default(),
            locations: Default::default(),
        }
    }

    /// Appends a batch's data files to the table (and adds the columns they were written
    /// with, if it evolves the schema), grouped with the other batches waiting for it into one
    /// snapshot whose summary names them all. True if this call made the commit (for counting
    /// commits once). A group takes at most one batch's new columns, and only if the table's
    /// schema is still the one they were derived from: any other evolving batch of the group
    /// fails with [`evolution::SCHEMA_MOVED`] and is written again.
    pub async fn append(
        &self,
        catalog: &dyn Catalog,
        ident: &TableIdent,
        batch: &str,
        files: Vec<DataFile>,
        evolution: Option<Evolution>,
    ) -> iceberg::Result<bool> {
        let table = self.table(catalog, ident);
        let (done, mut answer) = tokio::sync::oneshot::channel();
        table
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                batch: batch.to_owned(),
                files,
                evolution,
                done,
            });
        let _turn = table.commit.lock().await;
        // The previous holder may have committed this batch with its group.
        if let Ok(result) = answer.try_recv() {
            return result
                .map(|_| false)
                .map_err(|(k, m)| iceberg::Error::new(k, m));
        }
        let mut group = std::mem::take(&mut *table.queue.lock().unwrap_or_else(|p| p.into_inner()));
        while !group.is_empty() {
            group = self.commit_group(catalog, ident, group).await;
        }
        match answer.await {
            Ok(r) => r.map_err(|(k, m)| iceberg::Error::new(k, m)),
            Err(_) => Err(iceberg::Error::new(
                ErrorKind::Unexpected,
                "a group commit ended without an answer for this batch",
            )),
        }
    }

    /// Commits one group; returns the members to commit again (the group without its
    /// evolving batch, when that batch's schema moved during the commit).
    async fn commit_group(
        &self,
        catalog: &dyn Catalog,
        ident: &TableIdent,
        group: Vec<Pending>,
    ) -> Vec<Pending> {
        let moved = |p: Pending| {
            let _ = p.done.send(Err((
                ErrorKind::PreconditionFailed,
                evolution::SCHEMA_MOVED.into(),
            )));
        };
        let current = match catalog.load_table(ident).await {
            Ok(t) => t,
            Err(e) => {
                for p in group {
                    let _ = p.done.send(Err((e.kind(), e.to_string())));
                }
                return Vec::new();
            }
        };
        let base = evolution::base_of(&current);
        let mut adds: Option<usize> = None;
        let mut members = Vec::with_capacity(group.len());
        for p in group {
            match &p.evolution {
                None => members.push(p),
                Some(e) if adds.is_none() && e.base == base => {
                    adds = Some(members.len());
                    members.push(p);
                }
                Some(_) => moved(p),
            }
        }
        if members.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = members.iter().map(|p| p.batch.as_str()).collect();
        let files: Vec<DataFile> = members
            .iter()
            .flat_map(|p| p.files.iter().cloned())
            .collect();
        let evolution = adds.and_then(|i| members[i].evolution.as_ref());
        let started = std::time::Instant::now();
        let result = append(catalog, &current, &names.join(" "), files, evolution).await;
        tracing::debug!(table = %table_label(ident), batches = names.len(), ms = started.elapsed().as_millis() as u64, "group commit");
        if let (Err(e), Some(i)) = (&result, adds)
            && evolution::schema_moved(e)
        {
            // The schema moved under the evolving batch: it is written again; the others
            // (written against any schema with their columns) commit without it.
            moved(members.remove(i));
            return members;
        }
        let shared = result.map(drop).map_err(|e| (e.kind(), e.to_string()));
        // One member's caller counts the commit: the first's.
        for (i, p) in members.into_iter().enumerate() {
            let _ = p.done.send(shared.clone().map(|_| i == 0));
        }
        Vec::new()
    }

    /// The lock this daemon's commits to the table take (the group commit's), for another
    /// commit to the table (the small-file rewrite) to take too.
    pub fn table_lock(
        &self,
        catalog: &dyn Catalog,
        ident: &TableIdent,
    ) -> Arc<tokio::sync::Mutex<()>> {
        self.table(catalog, ident).commit.clone()
    }

    /// The table's group commit (by catalog and table).
    fn table(&self, catalog: &dyn Catalog, ident: &TableIdent) -> Arc<TableAppends> {
        let key = format!("{}\u{0}{}", catalog_key(catalog), table_label(ident));
        self.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Points the catalog's entry for the table from metadata `old` to `new`, if it still
    /// points at `old` (a compare-and-set, as the SQL catalog commits); false if it did not.
    pub async fn swap_location(
        &self,
        catalog: &str,
        ident: &TableIdent,
        old: &str,
        new: &str,
    ) -> iceberg::Result<bool> {
        let cell = self.locations.lock().await.get(catalog).cloned();
        let Some(locations) = (match cell {
            Some(cell) => cell.get().await,
            None => None,
        }) else {
            return Err(iceberg::Error::new(
                ErrorKind::Unexpected,
                format!("the catalog {catalog:?}'s database cannot be reached"),
            ));
        };
        locations.swap(ident, old, new).await
    }

    pub fn is_configured(&self, name: &str) -> bool {
        self.settings.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.settings.keys().cloned().collect()
    }

    /// The catalog called `name`, connected (once).
    pub async fn get(&self, name: &str) -> iceberg::Result<Arc<dyn Catalog>> {
        let mut connected = self.connected.lock().await;
        if let Some(c) = connected.get(name) {
            return Ok(c.clone());
        }
        let settings = self.settings.get(name).ok_or_else(|| {
            iceberg::Error::new(
                ErrorKind::DataInvalid,
                format!("no Iceberg catalog named {name:?} is configured"),
            )
        })?;
        if let Some(path) = settings.uri.strip_prefix("sqlite://")
            && let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                iceberg::Error::new(
                    ErrorKind::Unexpected,
                    format!("cannot create {}", dir.display()),
                )
                .with_source(e)
            })?;
        }
        migrate(&settings.uri).await;
        let catalog = SqlCatalogBuilder::default()
            .uri(settings.uri.clone())
            .warehouse_location(settings.warehouse.clone())
            .sql_bind_style(settings.bind_style())
            .with_storage_factory(Arc::new(storage::StoreStorageFactory::new(
                self.stores.clone(),
            )))
            .load(name, HashMap::new())
            .await?;
        // Connected when first needed, and again after a failure.
        let locations = Arc::new(LocationsCell {
            name: name.to_owned(),
            settings: settings.clone(),
            slot: Default::default(),
        });
        self.locations
            .lock()
            .await
            .insert(name.to_owned(), locations.clone());
        let counted: Arc<dyn Catalog> = Arc::new(Counted {
            inner: catalog,
            metrics: self.metrics.clone(),
            tables: Default::default(),
            locations,
        });
        connected.insert(name.to_owned(), counted.clone());
        Ok(counted)
    }
}

/// Catalogs that pyiceberg (or another tool) created lack the column iceberg-catalog-sql 0.10
/// reads (`iceberg_type`): add it, as nullable, which both read alike. Any failure (no such
/// table yet, the column exists already) is no concern of this step: the catalog's own
/// connection reports real problems.
async fn migrate(uri: &str) {
    sqlx::any::install_default_drivers();
    let Ok(pool) = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(uri)
        .await
    else {
        return;
    };
    if uri.starts_with("sqlite:") {
        // Write-ahead logging: a commit appends to the log and syncs it once, instead of a
        // rollback journal written, synced and deleted, and readers (pyiceberg, the other
        // replica) are not locked out while spillway commits. The mode is kept in the
        // database file, for every connection and other tools.
        if let Err(e) = sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "cannot turn on the SQLite catalog's write-ahead log");
        }
    }
    let has = sqlx::query("SELECT iceberg_type FROM iceberg_tables WHERE 1 = 0")
        .execute(&pool)
        .await;
    if let Err(e) = has
        && e.to_string().contains("iceberg_type")
    {
        match sqlx::query("ALTER TABLE iceberg_tables ADD COLUMN iceberg_type VARCHAR(5)")
            .execute(&pool)
            .await
        {
            Ok(_) => tracing::info!(
                "added the column iceberg_type to the catalog's iceberg_tables (a catalog another tool created)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot add iceberg_type to the catalog's iceberg_tables")
            }
        }
    }
    pool.close().await;
}

/// A catalog that counts the commits it refuses for a conflict (the library retries them),
/// and keeps each table as this daemon last loaded or committed it.
///
/// Loading a table reads its metadata file and parses it, and the metadata grows with every
/// snapshot (400 KB after 500 commits): loading it for every batch, and three times per
/// commit, cost a third of the Iceberg path's CPU. A load asks the catalog for the table's
/// current metadata location (one indexed query) and answers with the kept table when that is
/// still the one it holds; otherwise it loads the table. So a load sees what another writer
/// committed exactly as before, at the cost of a query instead of a parse.
struct Counted<C> {
    inner: C,
    metrics: Arc<Metrics>,
    tables: std::sync::Mutex<HashMap<TableIdent, Table>>,
    /// The catalog's own database, for the location queries (while it cannot be reached
    /// apart from the catalog, every load loads).
    locations: Arc<LocationsCell>,
}

/// A catalog's [`Locations`], connected when first asked for; a failed connection is tried
/// again at most every ten seconds (meanwhile loads load, and rewrites wait).
struct LocationsCell {
    name: String,
    settings: CatalogSettings,
    slot: tokio::sync::Mutex<(Option<Arc<Locations>>, Option<std::time::Instant>)>,
}

impl LocationsCell {
    async fn get(&self) -> Option<Arc<Locations>> {
        let mut slot = self.slot.lock().await;
        if let Some(l) = &slot.0 {
            return Some(l.clone());
        }
        if slot
            .1
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10))
        {
            return None;
        }
        slot.1 = Some(std::time::Instant::now());
        slot.0 = Locations::connect(&self.name, &self.settings)
            .await
            .map(Arc::new);
        slot.0.clone()
    }
}

/// Current metadata locations, read from the SQL catalog's table.
struct Locations {
    pool: sqlx::AnyPool,
    query: String,
    swap: String,
    catalog: String,
}

impl Locations {
    async fn connect(name: &str, settings: &CatalogSettings) -> Option<Locations> {
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&settings.uri)
            .await
            .inspect_err(|e| tracing::warn!(catalog = name, error = %e, "cannot open the catalog's database for location queries; every load reads the table's metadata"))
            .ok()?;
        let p = |n: usize| match settings.bind_style() {
            SqlBindStyle::DollarNumeric => format!("${n}"),
            SqlBindStyle::QMark => "?".to_owned(),
        };
        // The catalog library's own query for a table's location (iceberg-catalog-sql 0.10).
        let query = format!(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = {} AND table_name = {} AND table_namespace = {} AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)",
            p(1),
            p(2),
            p(3)
        );
        // Its commit's compare-and-set, as the library's SQL catalog makes it.
        let swap = format!(
            "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} WHERE catalog_name = {} AND table_name = {} AND table_namespace = {} AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6)
        );
        Some(Locations {
            pool,
            query,
            swap,
            catalog: name.to_owned(),
        })
    }

    /// The table's current metadata location; `None` if it cannot be told.
    async fn current(&self, ident: &TableIdent) -> Option<String> {
        let row = sqlx::query(&self.query)
            .bind(self.catalog.clone())
            .bind(ident.name().to_owned())
            .bind(ident.namespace().join("."))
            .fetch_optional(&self.pool)
            .await
            .ok()??;
        sqlx::Row::try_get::<String, _>(&row, 0).ok()
    }

    /// Points the table's entry from `old` to `new` if it is at `old`.
    async fn swap(&self, ident: &TableIdent, old: &str, new: &str) -> iceberg::Result<bool> {
        let done = sqlx::query(&self.swap)
            .bind(new.to_owned())
            .bind(old.to_owned())
            .bind(self.catalog.clone())
            .bind(ident.name().to_owned())
            .bind(ident.namespace().join("."))
            .bind(old.to_owned())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                iceberg::Error::new(ErrorKind::Unexpected, "the catalog's update failed")
                    .with_source(e)
            })?;
        Ok(done.rows_affected() == 1)
    }
}

impl<C: Catalog> Counted<C> {
    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<TableIdent, Table>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits as the library's SQL catalog does (the commit applied to the table as it is,
    /// its requirements checked, the next metadata file written, the catalog's entry moved
    /// to it by a compare-and-set), but on the kept table when the catalog still points at its
    /// metadata: the catalog would load and parse that same metadata again. Otherwise the
    /// library commits.
    /// The kept table if the catalog still points at its metadata, with the catalog's
    /// database and that location.
    async fn current_kept(&self, ident: &TableIdent) -> Option<(Table, Arc<Locations>, String)> {
        let kept = self.kept().get(ident).cloned()?;
        let locations = self.locations.get().await?;
        let current = locations
            .current(ident)
            .await
            .filter(|c| Some(c.as_str()) == kept.metadata_location())?;
        Some((kept, locations, current))
    }

    async fn commit(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let ident = commit.identifier().clone();
        let Some((kept, locations, current)) = self.current_kept(&ident).await else {
            return self.inner.update_table(commit).await;
        };
        let staged = commit.apply(kept)?;
        let location = std::str::FromStr::from_str(staged.metadata_location_result()?)?;
        staged
            .metadata()
            .write_to(staged.file_io(), &location)
            .await?;
        if locations
            .swap(&ident, &current, &location.to_string())
            .await?
        {
            Ok(staged)
        } else {
            Err(iceberg::Error::new(
                ErrorKind::CatalogCommitConflicts,
                format!("Commit conflicted for table: {ident}"),
            )
            .with_retryable(true))
        }
    }
}

impl<C: std::fmt::Debug> std::fmt::Debug for Counted<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl<C: Catalog> Catalog for Counted<C> {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        let loaded = match self.current_kept(table).await {
            Some((t, _, _)) => t,
            None => {
                let t = self.inner.load_table(table).await?;
                self.kept().insert(table.clone(), t.clone());
                t
            }
        };
        evolution::check(loaded).inspect_err(|_| {
            // The schema moved under a commit: the batch is written again against the table
            // as it is now.
            self.kept().remove(table);
        })
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.kept().remove(table);
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.kept().remove(table);
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.kept().remove(src);
        self.kept().remove(dest);
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let ident = commit.identifier().clone();
        let name = table_label(&ident);
        let injected = injected_conflict();
        let started = std::time::Instant::now();
        let result = match injected {
            Some(e) => Err(e),
            None => self.commit(commit).await,
        };
        tracing::debug!(table = %name, ms = started.elapsed().as_millis() as u64, "catalog update");
        match &result {
            Ok(t) => {
                self.kept().insert(t.identifier().clone(), t.clone());
            }
            Err(_) => {
                self.kept().remove(&ident);
            }
        }
        if let Err(e) = &result
            && e.kind() == ErrorKind::CatalogCommitConflicts
        {
            self.metrics
                .iceberg
                .commit_conflicts
                .with_label_values(&[&name])
                .inc();
        }
        result
    }
}

/// Test builds: a conflict injected (`iceberg-update-table`) as the catalog would report one.
fn injected_conflict() -> Option<iceberg::Error> {
    fail::fail_point!("iceberg-update-table", |_| Some(
        iceberg::Error::new(
            ErrorKind::CatalogCommitConflicts,
            "failpoint: commit conflict"
        )
        .with_retryable(true)
    ));
    None
}

pub fn table_label(ident: &TableIdent) -> String {
    format!("{}.{}", ident.namespace().join("."), ident.name())
}

pub fn ident(route: &TableRoute) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(route.database.clone()),
        route.table.clone(),
    )
}

/// Whether the table's history has the snapshot that appended `batch` (a snapshot names
/// the batches it appended, separated by spaces).
pub fn has_batch(table: &Table, batch: &str) -> bool {
    table.metadata().snapshots().any(|s| {
        s.summary()
            .additional_properties
            .get(BATCH_PROPERTY)
            .is_some_and(|b| b.split(' ').any(|b| b == batch))
    })
}

/// Tells catalogs apart for the group commits (their debug text names them).
fn catalog_key(catalog: &dyn Catalog) -> String {
    format!("{:p}", catalog as *const dyn Catalog as *const ())
}

/// The table, or `None` if it does not exist.
pub async fn load(catalog: &dyn Catalog, ident: &TableIdent) -> iceberg::Result<Option<Table>> {
    match catalog.load_table(ident).await {
        Ok(t) => Ok(Some(t)),
        Err(e)
            if e.kind() == ErrorKind::TableNotFound || e.kind() == ErrorKind::NamespaceNotFound =>
        {
            Ok(None)
        }
        Err(e) => {
            // The SQL catalog reports a missing table as a plain error.
            if matches!(catalog.table_exists(ident).await, Ok(false)) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Deepest nesting (structs and lists inside each other) of a table spillway writes: the
/// Parquet writer recurses per level, and records built to nest deeper must not exhaust a
/// thread's stack. Inferred types nested deeper become JSON text.
pub const MAX_NESTING: usize = 16;

/// An inferred field with its types nested deeper than [`MAX_NESTING`] as text.
fn shallow(field: &arrow_schema::Field, depth: usize) -> arrow_schema::Field {
    use arrow_schema::{DataType, Field};
    let text = || Field::new(field.name(), DataType::Utf8, true);
    match field.data_type() {
        DataType::Struct(_) | DataType::List(_) if depth >= MAX_NESTING => text(),
        DataType::Struct(fields) => Field::new(
            field.name(),
            DataType::Struct(fields.iter().map(|f| shallow(f, depth + 1)).collect()),
            true,
        ),
        DataType::List(item) => Field::new(
            field.name(),
            DataType::List(Arc::new(shallow(item, depth + 1))),
            true,
        ),
        _ => field.clone(),
    }
}

/// How deep a table's types nest.
pub fn nesting(schema: &Schema) -> usize {
    fn depth(ty: &Type) -> usize {
        match ty {
            Type::Primitive(_) => 0,
            Type::Struct(s) => {
                1 + s
                    .fields()
                    .iter()
                    .map(|f| depth(&f.field_type))
                    .max()
                    .unwrap_or(0)
            }
            Type::List(l) => 1 + depth(&l.element_field.field_type),
            Type::Map(m) => {
                1 + depth(&m.key_field.field_type).max(depth(&m.value_field.field_type))
            }
        }
    }
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| depth(&f.field_type))
        .max()
        .unwrap_or(0)
}

/// The columns a table spillway creates takes from records' inferred schema: nesting capped,
/// no overflow column (a table's columns are its schema; keys past the cap are not written).
pub fn table_fields(inferred: &arrow_schema::Schema) -> Vec<arrow_schema::Field> {
    inferred
        .fields()
        .iter()
        .filter(|f| f.name() != crate::encode::parquet::OVERFLOW_COLUMN)
        .filter(|f| column_name_ok(f.name()))
        .map(|f| shallow(f, 1))
        .collect()
}

/// Whether a record's key may name a column of a table spillway creates or evolves: 1-255
/// bytes, no control characters. Other engines (Glue, Hive, Spark, Trino) refuse empty names,
/// and a NUL or a newline in a column name breaks tools; such keys are not written, as any
/// key without a column.
pub fn column_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control)
}

/// Creates a table from an Arrow schema inferred from records, partitioned as `route` says.
/// Time transforms need a time column: their source columns are made timestamps; a source
/// column the records lack is added (nullable), and identity on a nested column makes it text.
pub async fn create(
    catalog: &dyn Catalog,
    route: &TableRoute,
    inferred: &arrow_schema::Schema,
) -> iceberg::Result<Table> {
    use arrow_schema::{DataType, Field, TimeUnit};
    let ns = NamespaceIdent::new(route.database.clone());
    if !catalog.namespace_exists(&ns).await? {
        match catalog.create_namespace(&ns, HashMap::new()).await {
            Ok(_) => {}
            // Another writer created it meanwhile.
            Err(_) if catalog.namespace_exists(&ns).await? => {}
            Err(e) => return Err(e),
        }
    }
    let mut fields = table_fields(inferred);
    for p in &route.partition {
        let wanted = match p.transform {
            Transform::Identity => None,
            _ => Some(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("+00:00".into()),
            )),
        };
        match fields.iter_mut().find(|f| f.name() == &p.source) {
            Some(f) => match &wanted {
                Some(ty) => *f = Field::new(&p.source, ty.clone(), true),
                None if f.data_type().is_nested() => {
                    *f = Field::new(&p.source, DataType::Utf8, true)
                }
                None => {}
            },
            None => fields.push(Field::new(
                &p.source,
                wanted.unwrap_or(DataType::Utf8),
                true,
            )),
        }
    }
    let schema =
        iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow_schema::Schema::new(fields))?;
    let mut spec = UnboundPartitionSpec::builder();
    for p in &route.partition {
        let field = schema.field_by_name(&p.source).ok_or_else(|| {
            iceberg::Error::new(ErrorKind::DataInvalid, "partition column vanished")
        })?;
        let transform = match p.transform {
            Transform::Identity => IcebergTransform::Identity,
            Transform::Year => IcebergTransform::Year,
            Transform::Month => IcebergTransform::Month,
            Transform::Day => IcebergTransform::Day,
            Transform::Hour => IcebergTransform::Hour,
        };
        let name = match p.transform {
            Transform::Identity => p.source.clone(),
            t => format!("{}_{}", p.source, t.name()),
        };
        spec = spec.add_partition_field(field.id, name, transform)?;
    }
    let creation = TableCreation::builder()
        .name(route.table.clone())
        .schema(schema)
        .partition_spec(spec.build())
        .build();
    match catalog.create_table(&ns, creation).await {
        Ok(t) => Ok(t),
        // Another writer created it meanwhile: use theirs.
        Err(e) => match catalog.load_table(&ident(route)).await {
            Ok(t) => Ok(t),
            Err(_) => Err(e),
        },
    }
}

/// Most top-level columns schema evolution grows a table to: records cannot make a table
/// arbitrarily wide (keys past it are not written, as for any key without a column).
pub const MAX_EVOLVED_COLUMNS: usize = 1000;

/// The columns records have that the table lacks, as nullable fields of their inferred types
/// (the key rules of the conversion decide what "lacks" means: keys are compared as the
/// converter compares them), up to [`MAX_EVOLVED_COLUMNS`] columns in all.
pub fn new_columns(
    schema: &Schema,
    inferred: &arrow_schema::Schema,
    same: impl Fn(&str, &str) -> bool,
) -> Vec<(String, Type)> {
    let existing: Vec<&str> = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let room = MAX_EVOLVED_COLUMNS.saturating_sub(existing.len());
    inferred
        .fields()
        .iter()
        .filter(|f| f.name() != crate::encode::parquet::OVERFLOW_COLUMN)
        .filter(|f| column_name_ok(f.name()))
        .filter(|f| !existing.iter().any(|e| same(e, f.name())))
        .filter_map(|f| {
            // Nested types need field ids to convert; the commit assigns the real ones.
            let one = arrow_schema::Schema::new(vec![shallow(f, 1)]);
            match iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&one) {
                Ok(schema) => schema
                    .as_struct()
                    .fields()
                    .first()
                    .map(|c| (f.name().clone(), (*c.field_type).clone())),
                Err(e) => {
                    tracing::warn!(column = %f.name(), error = %e, "a new column's type has no Iceberg equivalent; its values are not written");
                    None
                }
            }
        })
        .take(room)
        .collect()
}

/// Appends data files as one snapshot carrying `batch` in its summary, in the commit that
/// adds the columns of `evolution` (whose ids the files were written with).
pub async fn append(
    catalog: &dyn Catalog,
    table: &Table,
    batch: &str,
    files: Vec<DataFile>,
    evolution: Option<&Evolution>,
) -> iceberg::Result<Table> {
    let tx = Transaction::new(table);
    let tx = match evolution {
        Some(e) => evolution::add_columns(tx, &e.columns)?,
        None => tx,
    };
    let action = tx
        .fast_append()
        // The library's duplicate check reads every manifest of the table on each commit
        // (one request per manifest, so commits slow down as the table grows). A batch's
        // files are new by construction: their names are the batch's, and a batch whose
        // snapshot exists is never appended again.
        .with_check_duplicate(false)
        .add_data_files(files)
        .set_snapshot_properties(HashMap::from([(
            BATCH_PROPERTY.to_owned(),
            batch.to_owned(),
        )]));
    let tx = action.apply(tx)?;
    evolution::guarded(evolution.map(|e| e.base), tx.commit(catalog)).await
}
