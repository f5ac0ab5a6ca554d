//! Schema evolution in the commit of the rows that need it.
//!
//! The library assigns the new columns' field ids when it commits (the table's last column id
//! plus one, in order), but the data files must carry those ids and are written before the
//! commit. So the ids are found first by running the library's own schema update on a catalog
//! that keeps nothing ([`evolved`]); the files are written against that schema; and the
//! commit adds the columns and the files in one snapshot ([`super::append`]). The ids are
//! right only if the table's schema is still the one they were derived from when the commit
//! lands: while the commit runs, every load of the table checks that, and a table whose schema
//! moved (another writer, or another batch, added columns first) fails the commit with
//! [`SCHEMA_MOVED`], before anything is written. The batch is then written again against the
//! new schema.

use std::collections::HashMap;

use iceberg::spec::Type;
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{
    Catalog, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};

/// Columns a batch adds to its table, and the schema its files were written against.
#[derive(Clone, Debug)]
pub struct Evolution {
    pub columns: Vec<(String, Type)>,
    /// The table's current schema id and last column id the new ids were derived from.
    pub base: (i32, i32),
}

/// The message of the error a commit fails with when the table's schema is no longer the one
/// its evolution was derived from.
pub const SCHEMA_MOVED: &str =
    "the table's schema changed since this batch's files were written with its new columns";

/// Whether `e` is the [`SCHEMA_MOVED`] failure (the batch is to be written again).
pub fn schema_moved(e: &iceberg::Error) -> bool {
    e.kind() == ErrorKind::PreconditionFailed && e.message() == SCHEMA_MOVED
}

pub(super) fn base_of(table: &Table) -> (i32, i32) {
    let m = table.metadata();
    (m.current_schema_id(), m.last_column_id())
}

tokio::task_local! {
    /// Set while a commit with an evolution runs: the schema it was derived from.
    static BASE: (i32, i32);
}

/// Runs `commit` (a transaction's commit) so that each load of the table it makes fails with
/// [`SCHEMA_MOVED`] if the table's schema is no longer `base`'s.
pub async fn guarded<T>(
    base: Option<(i32, i32)>,
    commit: impl Future<Output = iceberg::Result<T>>,
) -> iceberg::Result<T> {
    match base {
        Some(base) => BASE.scope(base, commit).await,
        None => commit.await,
    }
}

/// Called on every load of a table: inside [`guarded`], a table whose schema moved is an
/// error.
pub fn check(table: Table) -> iceberg::Result<Table> {
    match BASE.try_with(|b| *b) {
        Ok(base) if base != base_of(&table) => Err(moved()),
        _ => Ok(table),
    }
}

fn moved() -> iceberg::Error {
    iceberg::Error::new(ErrorKind::PreconditionFailed, SCHEMA_MOVED)
}

/// Adds `columns` to the transaction as optional top-level columns.
pub fn add_columns(tx: Transaction, columns: &[(String, Type)]) -> iceberg::Result<Transaction> {
    let mut action = tx.update_schema();
    for (name, ty) in columns {
        action = action.add_column(AddColumn::optional(name.clone(), ty.clone()));
    }
    action.apply(tx)
}

/// The table as it will be once `columns` are added (the ids its commit will assign), in
/// memory only, and the evolution to commit with the rows written against it.
pub async fn evolved(
    table: &Table,
    columns: Vec<(String, Type)>,
) -> iceberg::Result<(Table, Evolution)> {
    let tx = add_columns(Transaction::new(table), &columns)?;
    let planned = tx
        .commit(&DryRun {
            table: table.clone(),
        })
        .await?;
    Ok((
        planned,
        Evolution {
            columns,
            base: base_of(table),
        },
    ))
}

/// A catalog holding one table that applies a commit in memory and keeps nothing: the
/// library's own update logic, run without writing.
#[derive(Debug)]
struct DryRun {
    table: Table,
}

fn unsupported() -> iceberg::Error {
    iceberg::Error::new(ErrorKind::FeatureUnsupported, "a dry run only updates")
}

#[async_trait::async_trait]
impl Catalog for DryRun {
    async fn list_namespaces(
        &self,
        _parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        Err(unsupported())
    }
    async fn create_namespace(
        &self,
        _namespace: &NamespaceIdent,
        _properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        Err(unsupported())
    }
    async fn get_namespace(&self, _namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        Err(unsupported())
    }
    async fn namespace_exists(&self, _namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        Err(unsupported())
    }
    async fn update_namespace(
        &self,
        _namespace: &NamespaceIdent,
        _properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        Err(unsupported())
    }
    async fn drop_namespace(&self, _namespace: &NamespaceIdent) -> iceberg::Result<()> {
        Err(unsupported())
    }
    async fn list_tables(&self, _namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        Err(unsupported())
    }
    async fn create_table(
        &self,
        _namespace: &NamespaceIdent,
        _creation: TableCreation,
    ) -> iceberg::Result<Table> {
        Err(unsupported())
    }
    async fn load_table(&self, _table: &TableIdent) -> iceberg::Result<Table> {
        Ok(self.table.clone())
    }
    async fn drop_table(&self, _table: &TableIdent) -> iceberg::Result<()> {
        Err(unsupported())
    }
    async fn purge_table(&self, _table: &TableIdent) -> iceberg::Result<()> {
        Err(unsupported())
    }
    async fn table_exists(&self, _table: &TableIdent) -> iceberg::Result<bool> {
        Ok(true)
    }
    async fn rename_table(&self, _src: &TableIdent, _dest: &TableIdent) -> iceberg::Result<()> {
        Err(unsupported())
    }
    async fn register_table(
        &self,
        _table: &TableIdent,
        _metadata_location: String,
    ) -> iceberg::Result<Table> {
        Err(unsupported())
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        commit.apply(self.table.clone())
    }
}
