//! `IcebergDestinationConfiguration`: records go into Apache Iceberg tables of a configured
//! catalog instead of objects under a prefix.
//!
//! The API's configuration is kept as spillway keeps every destination: an [`S3Destination`]
//! whose bucket and error prefix are `S3Configuration`'s (where records that fail go), whose
//! buffering and processing are the Iceberg configuration's, and whose
//! [`ICEBERG_MEMBER`] holds the Iceberg members themselves, read here.
//!
//! [`S3Destination`]: super::S3Destination

use serde_json::{Map, Value};

/// The member of an [`super::S3Destination`]'s `other` that holds an Iceberg destination's own
/// settings. It is spillway's, never accepted from an S3 destination's input.
pub const ICEBERG_MEMBER: &str = "IcebergDestinationConfiguration";

/// Most tables one stream writes to (`DestinationTableConfigurationList`).
pub const MAX_TABLES: usize = 100;

/// Most partition fields of a table spillway creates.
pub const MAX_PARTITION_FIELDS: usize = 16;

/// A checked Iceberg destination.
#[derive(Clone, Debug, PartialEq)]
pub struct IcebergTarget {
    /// The configured catalog (`[iceberg.catalogs.NAME]`) the catalog ARN names.
    pub catalog: String,
    pub tables: Vec<TableRoute>,
    /// `TableCreationConfiguration.Enabled`: a missing table is created from the first
    /// records' inferred schema.
    pub create_tables: bool,
    /// `SchemaEvolutionConfiguration.Enabled`: new top-level fields become nullable columns.
    pub schema_evolution: bool,
}

/// One `DestinationTableConfiguration`.
#[derive(Clone, Debug, PartialEq)]
pub struct TableRoute {
    pub database: String,
    pub table: String,
    /// `PartitionSpec.Identity[].SourceName` for tables spillway creates: a column (identity)
    /// or `year(col)`, `month(col)`, `day(col)`, `hour(col)`.
    pub partition: Vec<PartitionField>,
    /// `S3ErrorOutputPrefix`: where this table's failed records go (in `S3Configuration`'s
    /// bucket) instead of the stream's `ErrorOutputPrefix`; a valid `ErrorOutputPrefix`.
    pub error_prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionField {
    pub source: String,
    pub transform: Transform,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    Identity,
    Year,
    Month,
    Day,
    Hour,
}

impl Transform {
    pub fn name(self) -> &'static str {
        match self {
            Transform::Identity => "identity",
            Transform::Year => "year",
            Transform::Month => "month",
            Transform::Day => "day",
            Transform::Hour => "hour",
        }
    }
}

/// The catalog an ARN names: `arn:aws:glue:REGION:ACCOUNT:catalog` is the `default`
/// catalog, `...:catalog/NAME` the catalog called NAME.
pub fn catalog_name(arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "glue" {
        return Err(format!(
            "CatalogConfiguration.CatalogARN must be arn:aws:glue:REGION:ACCOUNT:catalog[/NAME], got {arn:?}"
        ));
    }
    match parts[5] {
        "catalog" => Ok("default".into()),
        r => match r.strip_prefix("catalog/") {
            Some(name) if valid_catalog_name(name) => Ok(name.to_owned()),
            _ => Err(format!(
                "CatalogConfiguration.CatalogARN must end in catalog or catalog/NAME (letters, digits, _ and -), got {arn:?}"
            )),
        },
    }
}

/// Database and table names: Glue's rule (lower-case letters, digits, underscore; 1-255),
/// which also keeps them safe as path segments of table locations.
fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A configured catalog's name: 1-64 letters, digits, `_` or `-` (the config file's
/// `[iceberg.catalogs.NAME]` and the `catalog/NAME` of a CatalogARN).
pub fn valid_catalog_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn enabled(v: Option<&Value>, name: &str) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(m)) => match m.get("Enabled") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!("{name}.Enabled must be a boolean, got {other}")),
        },
        Some(other) => Err(format!("{name} must be an object, got {other}")),
    }
}

fn partition_field(source: &str) -> Result<PartitionField, String> {
    let (transform, column) = match source.split_once('(') {
        None => (Transform::Identity, source),
        Some((t, rest)) => {
            let column = rest.strip_suffix(')').ok_or_else(|| {
                format!("PartitionSpec SourceName {source:?}: expected transform(column)")
            })?;
            let t = match t {
                "identity" => Transform::Identity,
                "year" => Transform::Year,
                "month" => Transform::Month,
                "day" => Transform::Day,
                "hour" => Transform::Hour,
                _ => {
                    return Err(format!(
                        "PartitionSpec SourceName {source:?}: the transform must be identity, year, month, day or hour"
                    ));
                }
            };
            (t, column)
        }
    };
    if column.is_empty()
        || column.len() > 255
        || !column
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "PartitionSpec SourceName {source:?}: the column must be a top-level column as spillway names it (lower-case letters, digits and _; record keys are matched case-insensitively and a dot becomes _)"
        ));
    }
    Ok(PartitionField {
        source: column.to_owned(),
        transform,
    })
}

fn route(v: &Value) -> Result<TableRoute, String> {
    let Value::Object(m) = v else {
        return Err(format!(
            "DestinationTableConfigurationList entries must be objects, got {v}"
        ));
    };
    let name = |key: &str| -> Result<String, String> {
        match m.get(key) {
            Some(Value::String(s)) if valid_identifier(s) => Ok(s.clone()),
            Some(Value::String(s)) => Err(format!(
                "{key} {s:?} must be 1-255 lower-case letters, digits or underscores"
            )),
            None | Some(Value::Null) => Err(format!("{key} is required")),
            Some(other) => Err(format!("{key} must be a string, got {other}")),
        }
    };
    let (database, table) = (
        name("DestinationDatabaseName")?,
        name("DestinationTableName")?,
    );
    match m.get("UniqueKeys") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(format!(
                "UniqueKeys (table {database}.{table}) are for update and delete operations, which spillway does not support: the Iceberg library it uses cannot commit row-level deletes yet"
            ));
        }
    }
    let mut partition = Vec::new();
    match m.get("PartitionSpec") {
        None | Some(Value::Null) => {}
        Some(Value::Object(spec)) => {
            if let Some(k) = spec.keys().find(|k| *k != "Identity") {
                return Err(format!("PartitionSpec.{k} is not a setting spillway knows"));
            }
            let fields = match spec.get("Identity") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(fields)) => fields.clone(),
                Some(other) => {
                    return Err(format!(
                        "PartitionSpec.Identity must be a list, got {other}"
                    ));
                }
            };
            if fields.len() > MAX_PARTITION_FIELDS {
                return Err(format!(
                    "PartitionSpec.Identity has {} fields; at most {MAX_PARTITION_FIELDS}",
                    fields.len()
                ));
            }
            for f in &fields {
                match f.get("SourceName") {
                    Some(Value::String(s)) => partition.push(partition_field(s)?),
                    _ => {
                        return Err(
                            "PartitionSpec.Identity entries need a SourceName string".into()
                        );
                    }
                }
            }
        }
        Some(other) => return Err(format!("PartitionSpec must be an object, got {other}")),
    }
    for (i, p) in partition.iter().enumerate() {
        if partition[..i]
            .iter()
            .any(|q| q.source == p.source && q.transform == p.transform)
        {
            return Err(format!(
                "PartitionSpec lists {}({}) twice",
                p.transform.name(),
                p.source
            ));
        }
    }
    let error_prefix = match m.get("S3ErrorOutputPrefix") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            super::prefix::PrefixTemplate::parse_error_prefix(s)
                .map_err(|e| format!("S3ErrorOutputPrefix (table {database}.{table}): {e}"))?;
            Some(s.clone())
        }
        Some(other) => {
            return Err(format!(
                "S3ErrorOutputPrefix (table {database}.{table}) must be a string, got {other}"
            ));
        }
    };
    if let Some(k) = m.keys().find(|k| {
        ![
            "DestinationDatabaseName",
            "DestinationTableName",
            "UniqueKeys",
            "PartitionSpec",
            "S3ErrorOutputPrefix",
        ]
        .contains(&k.as_str())
    }) {
        return Err(format!(
            "DestinationTableConfiguration.{k} is not a setting spillway knows"
        ));
    }
    Ok(TableRoute {
        database,
        table,
        partition,
        error_prefix,
    })
}

/// Reads the Iceberg members (those [`ICEBERG_MEMBER`] holds).
pub fn validate(v: &Value) -> Result<IcebergTarget, String> {
    let Value::Object(m) = v else {
        return Err(format!("must be an object, got {v}"));
    };
    let catalog = match m.get("CatalogConfiguration") {
        None | Some(Value::Null) => return Err("CatalogConfiguration is required".into()),
        Some(Value::Object(c)) => {
            if let Some(k) = c
                .keys()
                .find(|k| *k != "CatalogARN" && *k != "WarehouseLocation")
            {
                return Err(format!(
                    "CatalogConfiguration.{k} is not a setting spillway knows"
                ));
            }
            if c.get("WarehouseLocation").is_some_and(|w| !w.is_null()) {
                return Err("CatalogConfiguration.WarehouseLocation is not supported: the warehouse is set with the catalog in spillway's config ([iceberg.catalogs.NAME] warehouse)".into());
            }
            match c.get("CatalogARN") {
                Some(Value::String(arn)) => catalog_name(arn)?,
                _ => return Err("CatalogConfiguration.CatalogARN is required".into()),
            }
        }
        Some(other) => {
            return Err(format!(
                "CatalogConfiguration must be an object, got {other}"
            ));
        }
    };
    let tables = match m.get("DestinationTableConfigurationList") {
        Some(Value::Array(list)) if !list.is_empty() => {
            if list.len() > MAX_TABLES {
                return Err(format!(
                    "DestinationTableConfigurationList has {} tables; at most {MAX_TABLES}",
                    list.len()
                ));
            }
            list.iter().map(route).collect::<Result<Vec<_>, _>>()?
        }
        _ => {
            return Err(
                "DestinationTableConfigurationList is required: spillway writes to the tables it lists".into(),
            );
        }
    };
    for (i, t) in tables.iter().enumerate() {
        if tables[..i]
            .iter()
            .any(|u| u.database == t.database && u.table == t.table)
        {
            return Err(format!(
                "DestinationTableConfigurationList lists {}.{} twice",
                t.database, t.table
            ));
        }
    }
    match m.get("S3BackupMode") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "FailedDataOnly" => {}
        Some(other) => {
            return Err(format!(
                "S3BackupMode {other}: spillway supports FailedDataOnly (records that fail go to S3Configuration's bucket)"
            ));
        }
    }
    match m.get("AppendOnly") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err("AppendOnly false (update and delete operations) is not supported: the Iceberg library spillway uses cannot commit row-level deletes yet".into()),
        Some(other) => return Err(format!("AppendOnly must be a boolean, got {other}")),
    }
    match m.get("RetryOptions") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => match r.get("DurationInSeconds") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_i64().is_some_and(|d| (0..=7200).contains(&d)) => {}
            Some(other) => {
                return Err(format!(
                    "RetryOptions.DurationInSeconds must be between 0 and 7200, got {other}"
                ));
            }
        },
        Some(other) => return Err(format!("RetryOptions must be an object, got {other}")),
    }
    Ok(IcebergTarget {
        catalog,
        tables,
        create_tables: enabled(
            m.get("TableCreationConfiguration"),
            "TableCreationConfiguration",
        )?,
        schema_evolution: enabled(
            m.get("SchemaEvolutionConfiguration"),
            "SchemaEvolutionConfiguration",
        )?,
    })
}

/// The members of an `IcebergDestinationConfiguration` that spillway keeps in
/// [`ICEBERG_MEMBER`] (the others map onto an S3 destination's).
pub const OWN_MEMBERS: &[&str] = &[
    "CatalogConfiguration",
    "DestinationTableConfigurationList",
    "TableCreationConfiguration",
    "SchemaEvolutionConfiguration",
    "S3BackupMode",
    "AppendOnly",
    "RetryOptions",
];

/// Splits an `IcebergDestinationConfiguration` into the S3 destination spillway keeps: the
/// shared members in place, the Iceberg ones under [`ICEBERG_MEMBER`].
pub fn to_s3_destination(input: Map<String, Value>) -> Result<Value, String> {
    let mut s3 = match input.get("S3Configuration") {
        Some(Value::Object(s3)) => s3.clone(),
        _ => return Err("S3Configuration is required (where records that fail go)".into()),
    };
    let mut own = Map::new();
    for (k, v) in input {
        match k.as_str() {
            "S3Configuration" => {}
            "RoleARN" => {
                s3.insert(k, v);
            }
            "BufferingHints" | "ProcessingConfiguration" | "CloudWatchLoggingOptions" => {
                s3.insert(k, v);
            }
            k2 if OWN_MEMBERS.contains(&k2) => {
                own.insert(k, v);
            }
            _ => return Err(format!("{k} is not a setting spillway knows")),
        }
    }
    // S3Configuration's own hints and compression are the error objects'; the stream's
    // buffering is the Iceberg configuration's.
    if !own.contains_key("S3BackupMode") {
        own.insert(
            "S3BackupMode".into(),
            Value::String("FailedDataOnly".into()),
        );
    }
    s3.remove("Prefix");
    s3.insert(ICEBERG_MEMBER.into(), Value::Object(own));
    Ok(Value::Object(s3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catalog_arns_name_configured_catalogs() {
        assert_eq!(
            catalog_name("arn:aws:glue:us-east-1:123:catalog").unwrap(),
            "default"
        );
        assert_eq!(
            catalog_name("arn:aws:glue:us-east-1:123:catalog/pg").unwrap(),
            "pg"
        );
        assert!(catalog_name("arn:aws:s3:::bucket").is_err());
        assert!(catalog_name("arn:aws:glue:us-east-1:123:catalog/../x").is_err());
    }

    #[test]
    fn tables_and_partitions_are_checked() {
        let ok = json!({
            "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:1:catalog"},
            "DestinationTableConfigurationList": [{
                "DestinationDatabaseName": "game", "DestinationTableName": "events",
                "PartitionSpec": {"Identity": [{"SourceName": "day(ts)"}, {"SourceName": "region"}]}
            }],
            "TableCreationConfiguration": {"Enabled": true},
        });
        let t = validate(&ok).unwrap();
        assert!(t.create_tables && !t.schema_evolution);
        assert_eq!(t.tables[0].partition[0].transform, Transform::Day);
        assert_eq!(t.tables[0].partition[1].transform, Transform::Identity);
        for (bad, why) in [
            (
                json!({"DestinationDatabaseName": "Game", "DestinationTableName": "e"}),
                "lower-case",
            ),
            (
                json!({"DestinationDatabaseName": "g", "DestinationTableName": "../e"}),
                "lower-case",
            ),
            (
                json!({"DestinationDatabaseName": "g", "DestinationTableName": "e", "UniqueKeys": ["id"]}),
                "row-level deletes",
            ),
            (
                json!({"DestinationDatabaseName": "g", "DestinationTableName": "e", "PartitionSpec": {"Identity": [{"SourceName": "week(ts)"}]}}),
                "transform must be",
            ),
        ] {
            let mut v = ok.clone();
            v["DestinationTableConfigurationList"] = json!([bad]);
            let e = validate(&v).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
