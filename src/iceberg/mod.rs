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

mod maintenance;
pub mod storage;

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
        }
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
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                iceberg::Error::new(
                    ErrorKind::Unexpected,
                    format!("cannot create {}", dir.display()),
                )
                .with_source(e)
            })?;
        }
        let catalog = SqlCatalogBuilder::default()
            .uri(settings.uri.clone())
            .warehouse_location(settings.warehouse.clone())
            .sql_bind_style(settings.bind_style())
            .with_storage_factory(Arc::new(storage::StoreStorageFactory::new(
                self.stores.clone(),
            )))
            .load(name, HashMap::new())
            .await?;
        let counted: Arc<dyn Catalog> = Arc::new(Counted {
            inner: catalog,
            metrics: self.metrics.clone(),
        });
        connected.insert(name.to_owned(), counted.clone());
        Ok(counted)
    }
}

/// A catalog that counts the commits it refuses for a conflict (the library retries them).
struct Counted<C> {
    inner: C,
    metrics: Arc<Metrics>,
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
        self.inner.load_table(table).await
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
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
        let name = table_label(commit.identifier());
        let injected = injected_conflict();
        let result = match injected {
            Some(e) => Err(e),
            None => self.inner.update_table(commit).await,
        };
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

/// Whether the table's history has the snapshot that appended `batch`.
pub fn has_batch(table: &Table, batch: &str) -> bool {
    table.metadata().snapshots().any(|s| {
        s.summary()
            .additional_properties
            .get(BATCH_PROPERTY)
            .is_some_and(|b| b == batch)
    })
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

/// Creates a table from an Arrow schema inferred from records, partitioned as `route` says.
/// Time transforms need a time column: their source columns are made timestamps.
pub async fn create(
    catalog: &dyn Catalog,
    route: &TableRoute,
    inferred: &arrow_schema::Schema,
) -> iceberg::Result<Table> {
    let ns = NamespaceIdent::new(route.database.clone());
    if !catalog.namespace_exists(&ns).await? {
        match catalog.create_namespace(&ns, HashMap::new()).await {
            Ok(_) => {}
            // Another writer created it meanwhile.
            Err(_) if catalog.namespace_exists(&ns).await? => {}
            Err(e) => return Err(e),
        }
    }
    let mut fields: Vec<arrow_schema::Field> = inferred
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for p in &route.partition {
        let timed = p.transform != Transform::Identity;
        match fields.iter_mut().find(|f| f.name() == &p.source) {
            Some(f) if timed => {
                *f = arrow_schema::Field::new(
                    &p.source,
                    arrow_schema::DataType::Timestamp(
                        arrow_schema::TimeUnit::Microsecond,
                        Some("+00:00".into()),
                    ),
                    true,
                )
            }
            Some(_) => {}
            None => {
                return Err(iceberg::Error::new(
                    ErrorKind::DataInvalid,
                    format!(
                        "partition source column {:?} is not in the records' schema",
                        p.source
                    ),
                ));
            }
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
        .filter(|f| !existing.iter().any(|e| same(e, f.name())))
        .filter_map(|f| {
            let ty = iceberg::arrow::arrow_type_to_type(f.data_type()).ok()?;
            Some((f.name().clone(), ty))
        })
        .take(room)
        .collect()
}

/// Adds `columns` as optional columns in one commit.
pub async fn evolve(
    catalog: &dyn Catalog,
    table: &Table,
    columns: Vec<(String, Type)>,
) -> iceberg::Result<Table> {
    let tx = Transaction::new(table);
    let mut action = tx.update_schema();
    for (name, ty) in columns {
        action = action.add_column(iceberg::transaction::AddColumn::optional(name, ty));
    }
    let tx = action.apply(tx)?;
    tx.commit(catalog).await
}

/// Appends data files as one snapshot carrying `batch` in its summary.
pub async fn append(
    catalog: &dyn Catalog,
    table: &Table,
    batch: &str,
    files: Vec<DataFile>,
) -> iceberg::Result<Table> {
    let tx = Transaction::new(table);
    let action = tx
        .fast_append()
        .add_data_files(files)
        .set_snapshot_properties(HashMap::from([(
            BATCH_PROPERTY.to_owned(),
            batch.to_owned(),
        )]));
    let tx = action.apply(tx)?;
    tx.commit(catalog).await
}
