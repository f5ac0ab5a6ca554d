//! Firehose's record format conversion settings (`DataFormatConversionConfiguration`): the API
//! shapes, and their validation into a [`Conversion`] the encoder trusts. JSON in (OpenX or
//! Hive JSON SerDe), Parquet out, with the columns declared inline or inferred.
//!
//! spillway has no Glue Data Catalog: `SchemaConfiguration` (`DatabaseName`, `TableName`) names
//! a table declared in the config file (`[[table]]`, see [`Tables`]), looked up each time the
//! stream is validated (creation, update, daemon start). A stream in the config file may list
//! its columns instead; with neither, each object's schema is inferred from its records.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::hive_type;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataFormatConversionConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_configuration: Option<SchemaConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_format_configuration: Option<InputFormatConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format_configuration: Option<OutputFormatConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SchemaConfiguration {
    /// Glue's `Column` shape: `Name`, `Type` (a Hive type), optional `Comment`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<Column>,
    #[serde(rename = "TableName", skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    #[serde(rename = "DatabaseName", skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    #[serde(rename = "RoleARN", skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Column {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InputFormatConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deserializer: Option<DeserializerConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeserializerConfig {
    #[serde(rename = "OpenXJsonSerDe", skip_serializing_if = "Option::is_none")]
    pub openx: Option<OpenXJsonSerDe>,
    #[serde(rename = "HiveJsonSerDe", skip_serializing_if = "Option::is_none")]
    pub hive: Option<HiveJsonSerDe>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenXJsonSerDe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convert_dots_in_json_keys_to_underscores: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_insensitive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column_to_json_key_mappings: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HiveJsonSerDe {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timestamp_formats: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OutputFormatConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serializer: Option<SerializerConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SerializerConfig {
    #[serde(rename = "ParquetSerDe", skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSerDe>,
    #[serde(rename = "OrcSerDe", skip_serializing_if = "Option::is_none")]
    pub orc: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ParquetSerDe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_dictionary_compression: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_padding_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_version: Option<String>,
}

/// Validated conversion settings. Serializable: a sealed batch records them, so a replay
/// converts it as the first attempt did.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conversion {
    pub input: JsonInput,
    pub parquet: ParquetOptions,
    /// Declared columns: (name, Hive type), each type checked to parse. `None`: inferred per
    /// object from its records.
    pub columns: Option<Vec<(String, String)>>,
}

/// How JSON keys find their columns and timestamps are read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JsonInput {
    /// Which SerDe was configured (for Describe and error messages).
    pub serde: SerDe,
    pub case_insensitive: bool,
    pub dots_to_underscores: bool,
    /// Column -> JSON key, for keys that are not valid column names.
    pub key_mappings: Vec<(String, String)>,
    /// HiveJsonSerDe `TimestampFormats` containing `millis`: numbers are epoch milliseconds.
    /// Without it numbers are read as seconds below 10^11 and as milliseconds above.
    pub millis: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SerDe {
    OpenX,
    Hive,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParquetOptions {
    pub compression: ParquetCompression,
    pub block_size_bytes: u64,
    pub page_size_bytes: u64,
    pub dictionary: bool,
    pub max_padding_bytes: u64,
    pub writer_v2: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParquetCompression {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
}

/// Firehose's limits and defaults for `ParquetSerDe`.
pub const MIN_BLOCK_SIZE: i64 = 64 << 20;
pub const DEFAULT_BLOCK_SIZE: i64 = 256 << 20;
pub const MIN_PAGE_SIZE: i64 = 64 << 10;
pub const DEFAULT_PAGE_SIZE: i64 = 1 << 20;

/// The tables of the config file (`[[table]]`): spillway's stand-in for the Glue Data Catalog.
#[derive(Clone, Debug, Default)]
pub struct Tables(std::collections::BTreeMap<(String, String), Vec<Column>>);

impl Tables {
    /// Adds a table; names are compared without case, as Glue does.
    pub fn insert(
        &mut self,
        database: &str,
        name: &str,
        columns: Vec<Column>,
    ) -> Result<(), String> {
        let key = (database.to_ascii_lowercase(), name.to_ascii_lowercase());
        if self.0.contains_key(&key) {
            return Err(format!("table {database}.{name} is declared twice"));
        }
        self.0.insert(key, columns);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, database: &str, name: &str) -> Option<&Vec<Column>> {
        self.0
            .get(&(database.to_ascii_lowercase(), name.to_ascii_lowercase()))
    }
}

/// Validates an enabled configuration, looking its table up in `tables`. Errors name the field
/// inside `DataFormatConversionConfiguration`.
pub fn validate(
    raw: &DataFormatConversionConfiguration,
    tables: &Tables,
) -> Result<Conversion, String> {
    let input = match raw
        .input_format_configuration
        .as_ref()
        .and_then(|i| i.deserializer.as_ref())
    {
        None => return Err("InputFormatConfiguration.Deserializer is required".into()),
        Some(d) => match (&d.openx, &d.hive) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(
                    "InputFormatConfiguration.Deserializer must have exactly one of OpenXJsonSerDe and HiveJsonSerDe"
                        .into(),
                );
            }
            (Some(o), None) => JsonInput {
                serde: SerDe::OpenX,
                case_insensitive: o.case_insensitive.unwrap_or(true),
                dots_to_underscores: o.convert_dots_in_json_keys_to_underscores.unwrap_or(false),
                key_mappings: o
                    .column_to_json_key_mappings
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                millis: false,
            },
            (None, Some(h)) => {
                let mut millis = false;
                for f in &h.timestamp_formats {
                    if f == "millis" {
                        millis = true;
                    } else {
                        return Err(format!(
                            "HiveJsonSerDe.TimestampFormats: only \"millis\" is supported besides the default ISO-8601 formats, got {f:?}"
                        ));
                    }
                }
                JsonInput {
                    serde: SerDe::Hive,
                    case_insensitive: true,
                    dots_to_underscores: false,
                    key_mappings: Vec::new(),
                    millis,
                }
            }
        },
    };
    let serializer = raw
        .output_format_configuration
        .as_ref()
        .and_then(|o| o.serializer.as_ref());
    let parquet = match serializer {
        None => return Err("OutputFormatConfiguration.Serializer is required".into()),
        Some(s) if s.orc.is_some() => {
            return Err("OrcSerDe is not supported; use ParquetSerDe".into());
        }
        Some(SerializerConfig { parquet: None, .. }) => {
            return Err("OutputFormatConfiguration.Serializer.ParquetSerDe is required".into());
        }
        Some(SerializerConfig {
            parquet: Some(p), ..
        }) => parquet_options(p)?,
    };
    let mut schema = raw.schema_configuration.clone().unwrap_or_default();
    if let Some(table) = &schema.table_name {
        if !schema.columns.is_empty() {
            return Err("SchemaConfiguration: give TableName or Columns, not both".into());
        }
        let database = schema.database_name.as_deref().unwrap_or("default");
        match tables.get(database, table) {
            Some(columns) => schema.columns = columns.clone(),
            None => {
                return Err(format!(
                    "SchemaConfiguration: table {database}.{table} is not declared in the config file (spillway's tables are [[table]] entries with database, name and columns)"
                ));
            }
        }
    }
    let columns = if schema.columns.is_empty() {
        None
    } else {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, c) in schema.columns.iter().enumerate() {
            if !valid_column_name(&c.name) {
                return Err(format!(
                    "SchemaConfiguration.Columns[{i}].Name {:?} must be 1-255 letters, digits or '_'",
                    c.name
                ));
            }
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(format!(
                    "SchemaConfiguration.Columns[{i}].Name {:?} is declared twice (column names are compared without case)",
                    c.name
                ));
            }
            let ty = hive_type::parse(&c.kind).map_err(|e| {
                format!(
                    "SchemaConfiguration.Columns[{i}].Type {:?} ({}): {e}",
                    c.kind, c.name
                )
            })?;
            if has_non_string_map_key(&ty) {
                return Err(format!(
                    "SchemaConfiguration.Columns[{i}].Type {:?} ({}): map keys must be string (JSON object keys are text)",
                    c.kind, c.name
                ));
            }
            out.push((c.name.clone(), c.kind.clone()));
        }
        Some(out)
    };
    Ok(Conversion {
        input,
        parquet,
        columns,
    })
}

fn has_non_string_map_key(ty: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType;
    match ty {
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) => {
                kv[0].data_type() != &DataType::Utf8 || has_non_string_map_key(kv[1].data_type())
            }
            _ => true,
        },
        DataType::List(item) => has_non_string_map_key(item.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_non_string_map_key(f.data_type())),
        _ => false,
    }
}

fn valid_column_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parquet_options(p: &ParquetSerDe) -> Result<ParquetOptions, String> {
    let compression = match p.compression.as_deref().unwrap_or("SNAPPY") {
        "SNAPPY" => ParquetCompression::Snappy,
        "GZIP" => ParquetCompression::Gzip,
        "ZSTD" => ParquetCompression::Zstd,
        "UNCOMPRESSED" => ParquetCompression::Uncompressed,
        other => {
            return Err(format!(
                "ParquetSerDe.Compression must be SNAPPY, GZIP, ZSTD or UNCOMPRESSED, got {other:?}"
            ));
        }
    };
    let block = p.block_size_bytes.unwrap_or(DEFAULT_BLOCK_SIZE);
    if block < MIN_BLOCK_SIZE {
        return Err(format!(
            "ParquetSerDe.BlockSizeBytes must be at least {MIN_BLOCK_SIZE} (64 MiB), got {block}"
        ));
    }
    let page = p.page_size_bytes.unwrap_or(DEFAULT_PAGE_SIZE);
    if page < MIN_PAGE_SIZE {
        return Err(format!(
            "ParquetSerDe.PageSizeBytes must be at least {MIN_PAGE_SIZE} (64 KiB), got {page}"
        ));
    }
    let padding = p.max_padding_bytes.unwrap_or(0);
    if padding < 0 {
        return Err(format!(
            "ParquetSerDe.MaxPaddingBytes must be 0 or more, got {padding}"
        ));
    }
    let writer_v2 = match p.writer_version.as_deref().unwrap_or("V1") {
        "V1" => false,
        "V2" => true,
        other => {
            return Err(format!(
                "ParquetSerDe.WriterVersion must be V1 or V2, got {other:?}"
            ));
        }
    };
    Ok(ParquetOptions {
        compression,
        // Checked positive above.
        block_size_bytes: block as u64,
        page_size_bytes: page as u64,
        dictionary: p.enable_dictionary_compression.unwrap_or(false),
        max_padding_bytes: padding as u64,
        writer_v2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<Conversion, String> {
        let mut tables = Tables::default();
        tables
            .insert(
                "game",
                "Players",
                vec![Column {
                    name: "age".into(),
                    kind: "int".into(),
                    comment: None,
                }],
            )
            .unwrap();
        validate(&serde_json::from_str(json).unwrap(), &tables)
    }

    const IO: &str = r#""InputFormatConfiguration":{"Deserializer":{"OpenXJsonSerDe":{}}},
        "OutputFormatConfiguration":{"Serializer":{"ParquetSerDe":{}}}"#;

    #[test]
    fn defaults_follow_firehose() {
        let c = conf(&format!("{{{IO}}}")).unwrap();
        assert!(c.input.case_insensitive && !c.input.dots_to_underscores);
        assert_eq!(c.parquet.compression, ParquetCompression::Snappy);
        assert_eq!(c.parquet.block_size_bytes, 256 << 20);
        assert_eq!(c.parquet.page_size_bytes, 1 << 20);
        assert!(!c.parquet.dictionary && !c.parquet.writer_v2);
        assert_eq!(c.columns, None);
    }

    #[test]
    fn limits_at_their_edges() {
        let with = |p: &str| {
            conf(&format!(
                r#"{{"InputFormatConfiguration":{{"Deserializer":{{"OpenXJsonSerDe":{{}}}}}},
                "OutputFormatConfiguration":{{"Serializer":{{"ParquetSerDe":{{{p}}}}}}}}}"#
            ))
        };
        assert!(with(r#""BlockSizeBytes":67108864"#).is_ok());
        assert!(
            with(r#""BlockSizeBytes":67108863"#)
                .unwrap_err()
                .contains("BlockSizeBytes")
        );
        assert!(with(r#""PageSizeBytes":65536"#).is_ok());
        assert!(
            with(r#""PageSizeBytes":65535"#)
                .unwrap_err()
                .contains("PageSizeBytes")
        );
        assert!(
            with(r#""MaxPaddingBytes":-1"#)
                .unwrap_err()
                .contains("MaxPaddingBytes")
        );
        assert!(
            with(r#""Compression":"LZ4""#)
                .unwrap_err()
                .contains("Compression")
        );
        assert!(
            with(r#""WriterVersion":"V3""#)
                .unwrap_err()
                .contains("WriterVersion")
        );
        assert_eq!(
            with(r#""Compression":"ZSTD","WriterVersion":"V2""#)
                .unwrap()
                .parquet,
            ParquetOptions {
                compression: ParquetCompression::Zstd,
                block_size_bytes: 256 << 20,
                page_size_bytes: 1 << 20,
                dictionary: false,
                max_padding_bytes: 0,
                writer_v2: true,
            }
        );
    }

    #[test]
    fn schemas_are_checked() {
        let with = |s: &str| conf(&format!(r#"{{{IO},"SchemaConfiguration":{s}}}"#));
        let ok = with(
            r#"{"Columns":[{"Name":"age","Type":"int"},{"Name":"tags","Type":"array<string>"}]}"#,
        )
        .unwrap();
        assert_eq!(
            ok.columns.unwrap()[1],
            ("tags".into(), "array<string>".into())
        );
        assert!(
            with(r#"{"TableName":"t","DatabaseName":"d"}"#)
                .unwrap_err()
                .contains("table d.t is not declared")
        );
        let found = with(r#"{"TableName":"players","DatabaseName":"GAME"}"#).unwrap();
        assert_eq!(
            found.columns.unwrap(),
            [("age".to_string(), "int".to_string())]
        );
        assert!(with(r#"{"TableName":"players","DatabaseName":"game","Columns":[{"Name":"a","Type":"int"}]}"#).unwrap_err().contains("not both"));
        assert!(
            with(r#"{"Columns":[{"Name":"a","Type":"intt"}]}"#)
                .unwrap_err()
                .contains("Columns[0].Type")
        );
        assert!(
            with(r#"{"Columns":[{"Name":"A","Type":"int"},{"Name":"a","Type":"int"}]}"#)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            with(r#"{"Columns":[{"Name":"a-b","Type":"int"}]}"#)
                .unwrap_err()
                .contains("Columns[0].Name")
        );
        assert!(
            with(r#"{"Columns":[{"Name":"m","Type":"array<map<int,string>>"}]}"#)
                .unwrap_err()
                .contains("map keys must be string")
        );
        assert!(with(r#"{"Columns":[{"Name":"m","Type":"map<string,map<string,int>>"}]}"#).is_ok());
    }

    #[test]
    fn serdes_are_exclusive_and_orc_is_refused() {
        assert!(
            conf(r#"{"OutputFormatConfiguration":{"Serializer":{"ParquetSerDe":{}}}}"#)
                .unwrap_err()
                .contains("Deserializer")
        );
        assert!(conf(r#"{"InputFormatConfiguration":{"Deserializer":{"OpenXJsonSerDe":{},"HiveJsonSerDe":{}}},"OutputFormatConfiguration":{"Serializer":{"ParquetSerDe":{}}}}"#).unwrap_err().contains("exactly one"));
        assert!(conf(r#"{"InputFormatConfiguration":{"Deserializer":{"OpenXJsonSerDe":{}}},"OutputFormatConfiguration":{"Serializer":{"OrcSerDe":{}}}}"#).unwrap_err().contains("OrcSerDe"));
        let hive = conf(r#"{"InputFormatConfiguration":{"Deserializer":{"HiveJsonSerDe":{"TimestampFormats":["millis"]}}},"OutputFormatConfiguration":{"Serializer":{"ParquetSerDe":{}}}}"#).unwrap();
        assert!(hive.input.millis);
        assert!(conf(r#"{"InputFormatConfiguration":{"Deserializer":{"HiveJsonSerDe":{"TimestampFormats":["yyyy"]}}},"OutputFormatConfiguration":{"Serializer":{"ParquetSerDe":{}}}}"#).unwrap_err().contains("TimestampFormats"));
    }
}
