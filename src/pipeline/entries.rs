//! The journal's seal and flush entries as bytes: explicit on-disk structs, separate from the
//! pipeline's in-memory types, so that renaming or reshaping an in-memory field can never
//! change what is written, or make an entry written by an earlier version unreadable (which
//! would strand its batch). The journal stores these bytes opaquely.
//!
//! Version 1 is JSON, the format every seal and flush entry has had since partition buffers
//! and sealed settings existed; an entry without `"v"` is version 1. A later version adds its
//! own structs here and a branch in the decoders; `tests/fixtures/journal-v1/` holds a journal
//! written by version 1, and the golden test below must keep reading it.
//!
//! Must never: serialize an in-memory type directly, or write an empty entry when encoding
//! fails (an error is returned instead).

use serde::{Deserialize, Serialize};

use crate::definition::conversion::{
    Conversion, JsonInput, ParquetCompression, ParquetOptions, SerDe,
};
use crate::definition::prefix::Piece;
use crate::definition::{
    BucketName, ComponentSource, Compression, LambdaProcessor, ObjectNaming, Processing, SubRecords,
};
use crate::sink::{Layout, ObjectPlan, SealedSettings};

use super::partitions::FlushMeta;

/// The version this build writes.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("cannot encode a journal entry: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("unreadable journal entry: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("journal entry of version {0}; this build reads up to {VERSION}")]
    Version(u32),
    #[error("journal entry: {0}")]
    Invalid(String),
}

/// A seal entry's bytes for `plan`.
pub fn encode_seal(plan: &ObjectPlan) -> Result<Vec<u8>, EntryError> {
    let entry = SealV1 {
        v: Some(VERSION),
        plan: PlanV1::from(plan),
    };
    serde_json::to_vec(&entry).map_err(EntryError::Encode)
}

pub fn decode_seal(bytes: &[u8]) -> Result<ObjectPlan, EntryError> {
    let entry: SealV1 = serde_json::from_slice(bytes).map_err(EntryError::Decode)?;
    check_version(entry.v)?;
    entry.plan.into_plan()
}

/// A flush entry's bytes for `meta`.
pub fn encode_flush(meta: &FlushMeta) -> Result<Vec<u8>, EntryError> {
    let entry = FlushV1 {
        v: Some(VERSION),
        plan: PlanV1::from(&meta.plan),
        version: meta.version,
        partition: meta.partition.clone(),
        contributors: meta.contributors.clone(),
        naming: meta.naming.clone(),
    };
    serde_json::to_vec(&entry).map_err(EntryError::Encode)
}

pub fn decode_flush(bytes: &[u8]) -> Result<FlushMeta, EntryError> {
    let entry: FlushV1 = serde_json::from_slice(bytes).map_err(EntryError::Decode)?;
    check_version(entry.v)?;
    Ok(FlushMeta {
        plan: entry.plan.into_plan()?,
        version: entry.version,
        partition: entry.partition,
        contributors: entry.contributors,
        naming: entry.naming,
    })
}

fn check_version(v: Option<u32>) -> Result<(), EntryError> {
    match v.unwrap_or(1) {
        1 => Ok(()),
        other => Err(EntryError::Version(other)),
    }
}

// Version 1. Field names and shapes are the format: never rename or retype one.

/// A seal entry is the plan's fields at the top level, plus `v`.
#[derive(Serialize, Deserialize)]
struct SealV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<u32>,
    #[serde(flatten)]
    plan: PlanV1,
}

#[derive(Serialize, Deserialize)]
struct FlushV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<u32>,
    plan: PlanV1,
    version: u64,
    partition: String,
    contributors: Vec<u64>,
    #[serde(default, skip_serializing_if = "ObjectNaming::is_default")]
    naming: ObjectNaming,
}

#[derive(Serialize, Deserialize)]
struct PlanV1 {
    bucket: String,
    key: String,
    /// The `CompressionFormat`, as the API names it.
    compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layout: Option<LayoutV1>,
    /// The batch's backup object, when the stream has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backup: Option<Box<PlanV1>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<ConversionV1>,
}

#[derive(Serialize, Deserialize)]
struct LayoutV1 {
    prefix: Vec<PieceV1>,
    error_prefix: Vec<PieceV1>,
    at_ms: u64,
    version: u64,
    buffered: bool,
    settings: SettingsV1,
}

#[derive(Serialize, Deserialize)]
enum PieceV1 {
    Text(String),
    Query(String),
    Lambda(String),
    ErrorOutputType,
    RandomString,
}

#[derive(Serialize, Deserialize)]
struct SettingsV1 {
    processing: Option<ProcessingV1>,
    dynamic_partitioning: bool,
    transform_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conversion: Option<ConversionV1>,
    /// Written only when not the default (UTC, default extensions): entries from before it
    /// read as the default.
    #[serde(default, skip_serializing_if = "ObjectNaming::is_default")]
    naming: ObjectNaming,
}

#[derive(Serialize, Deserialize)]
struct ProcessingV1 {
    /// The processors before the transform, written only when on: entries from before them
    /// read as off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    decompression: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    message_extraction: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deaggregation: Option<SubRecordsV1>,
    lambda: Option<LambdaV1>,
    metadata_query: Option<String>,
    append_delimiter: bool,
}

#[derive(Serialize, Deserialize)]
enum SubRecordsV1 {
    Json,
    /// The delimiter's bytes.
    Delimited(Vec<u8>),
}

#[derive(Serialize, Deserialize)]
struct LambdaV1 {
    arn: String,
    component: ComponentV1,
    retries: u32,
    call_bytes: u64,
}

#[derive(Serialize, Deserialize)]
enum ComponentV1 {
    File(std::path::PathBuf),
    Object { bucket: String, key: String },
}

#[derive(Serialize, Deserialize)]
struct ConversionV1 {
    input: JsonInputV1,
    parquet: ParquetV1,
    columns: Option<Vec<(String, String)>>,
}

#[derive(Serialize, Deserialize)]
struct JsonInputV1 {
    /// `OpenX` or `Hive`.
    serde: String,
    case_insensitive: bool,
    dots_to_underscores: bool,
    key_mappings: Vec<(String, String)>,
    millis: bool,
}

#[derive(Serialize, Deserialize)]
struct ParquetV1 {
    /// `Uncompressed`, `Snappy`, `Gzip` or `Zstd`.
    compression: String,
    block_size_bytes: u64,
    page_size_bytes: u64,
    dictionary: bool,
    max_padding_bytes: u64,
    writer_v2: bool,
}

impl From<&ObjectPlan> for PlanV1 {
    fn from(p: &ObjectPlan) -> PlanV1 {
        PlanV1 {
            bucket: p.bucket.clone(),
            key: p.key.clone(),
            compression: p.compression.api_name().to_owned(),
            layout: p.layout.as_ref().map(|l| LayoutV1 {
                prefix: l.prefix.iter().map(PieceV1::from).collect(),
                error_prefix: l.error_prefix.iter().map(PieceV1::from).collect(),
                at_ms: l.at_ms,
                version: l.version,
                buffered: l.buffered,
                settings: SettingsV1 {
                    processing: l.settings.processing.as_ref().map(|p| ProcessingV1 {
                        decompression: p.decompression,
                        message_extraction: p.message_extraction,
                        deaggregation: p.deaggregation.as_ref().map(|d| match d {
                            SubRecords::Json => SubRecordsV1::Json,
                            SubRecords::Delimited(b) => SubRecordsV1::Delimited(b.clone()),
                        }),
                        lambda: p.lambda.as_ref().map(|l| LambdaV1 {
                            arn: l.arn.clone(),
                            component: match &l.component {
                                ComponentSource::File(path) => ComponentV1::File(path.clone()),
                                ComponentSource::Object { bucket, key } => ComponentV1::Object {
                                    bucket: bucket.as_str().to_owned(),
                                    key: key.clone(),
                                },
                            },
                            retries: l.retries,
                            call_bytes: l.call_bytes,
                        }),
                        metadata_query: p.metadata_query.clone(),
                        append_delimiter: p.append_delimiter,
                    }),
                    dynamic_partitioning: l.settings.dynamic_partitioning,
                    transform_sha256: l.settings.transform_sha256.clone(),
                    conversion: l.settings.conversion.as_ref().map(ConversionV1::from),
                    naming: l.settings.naming.clone(),
                },
            }),
            format: p.format.as_ref().map(ConversionV1::from),
            backup: p.backup.as_deref().map(|b| Box::new(PlanV1::from(b))),
        }
    }
}

impl From<&Piece> for PieceV1 {
    fn from(p: &Piece) -> PieceV1 {
        match p {
            Piece::Text(s) => PieceV1::Text(s.clone()),
            Piece::Query(k) => PieceV1::Query(k.clone()),
            Piece::Lambda(k) => PieceV1::Lambda(k.clone()),
            Piece::ErrorOutputType => PieceV1::ErrorOutputType,
            Piece::RandomString => PieceV1::RandomString,
        }
    }
}

impl From<PieceV1> for Piece {
    fn from(p: PieceV1) -> Piece {
        match p {
            PieceV1::Text(s) => Piece::Text(s),
            PieceV1::Query(k) => Piece::Query(k),
            PieceV1::Lambda(k) => Piece::Lambda(k),
            PieceV1::ErrorOutputType => Piece::ErrorOutputType,
            PieceV1::RandomString => Piece::RandomString,
        }
    }
}

impl From<&Conversion> for ConversionV1 {
    fn from(c: &Conversion) -> ConversionV1 {
        ConversionV1 {
            input: JsonInputV1 {
                serde: match c.input.serde {
                    SerDe::OpenX => "OpenX",
                    SerDe::Hive => "Hive",
                }
                .to_owned(),
                case_insensitive: c.input.case_insensitive,
                dots_to_underscores: c.input.dots_to_underscores,
                key_mappings: c.input.key_mappings.clone(),
                millis: c.input.millis,
            },
            parquet: ParquetV1 {
                compression: match c.parquet.compression {
                    ParquetCompression::Uncompressed => "Uncompressed",
                    ParquetCompression::Snappy => "Snappy",
                    ParquetCompression::Gzip => "Gzip",
                    ParquetCompression::Zstd => "Zstd",
                }
                .to_owned(),
                block_size_bytes: c.parquet.block_size_bytes,
                page_size_bytes: c.parquet.page_size_bytes,
                dictionary: c.parquet.dictionary,
                max_padding_bytes: c.parquet.max_padding_bytes,
                writer_v2: c.parquet.writer_v2,
            },
            columns: c.columns.clone(),
        }
    }
}

impl ConversionV1 {
    fn into_conversion(self) -> Result<Conversion, EntryError> {
        let invalid = |what: &str, v: &str| EntryError::Invalid(format!("unknown {what} {v:?}"));
        Ok(Conversion {
            input: JsonInput {
                serde: match self.input.serde.as_str() {
                    "OpenX" => SerDe::OpenX,
                    "Hive" => SerDe::Hive,
                    other => return Err(invalid("SerDe", other)),
                },
                case_insensitive: self.input.case_insensitive,
                dots_to_underscores: self.input.dots_to_underscores,
                key_mappings: self.input.key_mappings,
                millis: self.input.millis,
            },
            parquet: ParquetOptions {
                compression: match self.parquet.compression.as_str() {
                    "Uncompressed" => ParquetCompression::Uncompressed,
                    "Snappy" => ParquetCompression::Snappy,
                    "Gzip" => ParquetCompression::Gzip,
                    "Zstd" => ParquetCompression::Zstd,
                    other => return Err(invalid("Parquet compression", other)),
                },
                block_size_bytes: self.parquet.block_size_bytes,
                page_size_bytes: self.parquet.page_size_bytes,
                dictionary: self.parquet.dictionary,
                max_padding_bytes: self.parquet.max_padding_bytes,
                writer_v2: self.parquet.writer_v2,
            },
            columns: self.columns,
        })
    }
}

impl PlanV1 {
    fn into_plan(self) -> Result<ObjectPlan, EntryError> {
        let compression = Compression::from_api_name(&self.compression).ok_or_else(|| {
            EntryError::Invalid(format!("unknown compression {:?}", self.compression))
        })?;
        let layout = match self.layout {
            None => None,
            Some(l) => Some(Layout {
                prefix: l.prefix.into_iter().map(Piece::from).collect(),
                error_prefix: l.error_prefix.into_iter().map(Piece::from).collect(),
                at_ms: l.at_ms,
                version: l.version,
                buffered: l.buffered,
                settings: SealedSettings {
                    processing: l
                        .settings
                        .processing
                        .map(ProcessingV1::into_processing)
                        .transpose()?,
                    dynamic_partitioning: l.settings.dynamic_partitioning,
                    transform_sha256: l.settings.transform_sha256,
                    conversion: l
                        .settings
                        .conversion
                        .map(ConversionV1::into_conversion)
                        .transpose()?,
                    naming: l.settings.naming,
                },
            }),
        };
        Ok(ObjectPlan {
            bucket: self.bucket,
            key: self.key,
            compression,
            layout,
            format: self.format.map(ConversionV1::into_conversion).transpose()?,
            backup: match self.backup {
                None => None,
                Some(b) => Some(Box::new(b.into_plan()?)),
            },
        })
    }
}

impl ProcessingV1 {
    fn into_processing(self) -> Result<Processing, EntryError> {
        let lambda = match self.lambda {
            None => None,
            Some(l) => Some(LambdaProcessor {
                arn: l.arn,
                component: match l.component {
                    ComponentV1::File(path) => ComponentSource::File(path),
                    ComponentV1::Object { bucket, key } => ComponentSource::Object {
                        bucket: BucketName::from_arn(&format!("arn:aws:s3:::{bucket}"))
                            .map_err(EntryError::Invalid)?,
                        key,
                    },
                },
                retries: l.retries,
                call_bytes: l.call_bytes,
            }),
        };
        Ok(Processing {
            decompression: self.decompression,
            message_extraction: self.message_extraction,
            deaggregation: self.deaggregation.map(|d| match d {
                SubRecordsV1::Json => SubRecords::Json,
                SubRecordsV1::Delimited(b) => SubRecords::Delimited(b),
            }),
            lambda,
            metadata_query: self.metadata_query,
            append_delimiter: self.append_delimiter,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::journal::{Journal, JournalOptions};

    /// What the fixture journal's entries hold (see `write_fixture_journal` in the commit that
    /// added them): a plain batch, a processed one with a file transform, a partitioned one
    /// with an `s3://` transform and Parquet conversion, and a partition object's flush entry.
    fn conversion() -> Conversion {
        Conversion {
            input: JsonInput {
                serde: SerDe::OpenX,
                case_insensitive: true,
                dots_to_underscores: false,
                key_mappings: vec![("ts".into(), "timestamp".into())],
                millis: false,
            },
            parquet: ParquetOptions {
                compression: ParquetCompression::Zstd,
                block_size_bytes: 256 << 20,
                page_size_bytes: 1 << 20,
                dictionary: true,
                max_padding_bytes: 0,
                writer_v2: false,
            },
            columns: Some(vec![
                ("n".into(), "bigint".into()),
                ("c".into(), "string".into()),
            ]),
        }
    }

    fn expected_seals() -> Vec<ObjectPlan> {
        let plain = ObjectPlan {
            bucket: "bkt".into(),
            key: "events/2026/11/18/09/s-1-2026-11-18-09-33-20-0000000a-0000-0000-0000-000000000000.gz".into(),
            compression: Compression::Gzip,
            layout: None,
            format: None,
            backup: None,
        };
        let processed = ObjectPlan {
            bucket: "bkt".into(),
            key: "s-1-2026-11-18-09-33-20-0000000a-0000-0000-0000-000000000002".into(),
            compression: Compression::Uncompressed,
            layout: Some(Layout {
                prefix: vec![
                    Piece::Text("p/".into()),
                    Piece::Lambda("loc".into()),
                    Piece::Text("/".into()),
                ],
                error_prefix: vec![
                    Piece::Text("e/".into()),
                    Piece::ErrorOutputType,
                    Piece::Text("/".into()),
                ],
                at_ms: 1_795_000_000_002,
                version: 2,
                buffered: false,
                settings: SealedSettings {
                    processing: Some(Processing {
                        decompression: false,
                        message_extraction: false,
                        deaggregation: None,
                        lambda: Some(LambdaProcessor {
                            arn: "file:///opt/t.wasm".into(),
                            component: ComponentSource::File("/opt/t.wasm".into()),
                            retries: 3,
                            call_bytes: 1_000_000,
                        }),
                        metadata_query: Some("{c: .c}".into()),
                        append_delimiter: true,
                    }),
                    dynamic_partitioning: true,
                    transform_sha256: Some("ab".repeat(32)),
                    conversion: None,
                    naming: Default::default(),
                },
            }),
            format: None,
            backup: None,
        };
        let buffered = ObjectPlan {
            bucket: "lake".into(),
            key: "s-3-2026-11-18-09-33-20-0000000a-0000-0000-0000-000000000004".into(),
            compression: Compression::Uncompressed,
            layout: Some(Layout {
                prefix: vec![
                    Piece::Text("c=".into()),
                    Piece::Query("c".into()),
                    Piece::Text("/".into()),
                    Piece::RandomString,
                    Piece::Text("/".into()),
                ],
                error_prefix: vec![
                    Piece::Text("errors/".into()),
                    Piece::ErrorOutputType,
                    Piece::Text("/".into()),
                ],
                at_ms: 1_795_000_000_004,
                version: 3,
                buffered: true,
                settings: SealedSettings {
                    processing: Some(Processing {
                        decompression: false,
                        message_extraction: false,
                        deaggregation: None,
                        lambda: Some(LambdaProcessor {
                            arn: "s3://tbk/t.wasm".into(),
                            component: ComponentSource::Object {
                                bucket: BucketName::from_arn("arn:aws:s3:::tbk").unwrap(),
                                key: "t.wasm".into(),
                            },
                            retries: 0,
                            call_bytes: 200_000,
                        }),
                        metadata_query: None,
                        append_delimiter: false,
                    }),
                    dynamic_partitioning: true,
                    transform_sha256: None,
                    conversion: Some(conversion()),
                    naming: Default::default(),
                },
            }),
            format: None,
            backup: None,
        };
        vec![plain, processed, buffered]
    }

    fn expected_flush() -> FlushMeta {
        FlushMeta {
            plan: ObjectPlan {
                bucket: "lake".into(),
                key: "c=KR/Ab3dE5gH7jK/s-3-2026-11-18-09-33-20-0000000a-0000-0001-0000-000000000004.parquet".into(),
                compression: Compression::Uncompressed,
                layout: None,
                format: Some(conversion()),
                backup: None,
            },
            version: 3,
            partition: format!("c=KR/{}/", "\u{1}".repeat(11)),
            contributors: vec![4],
            naming: Default::default(),
        }
    }

    /// The fixture journal, written by version 1, must keep reading as it did: a change to
    /// the format that breaks this strands every batch sealed before an upgrade.
    #[test]
    fn the_version_1_fixture_journal_still_reads() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1");
        let dir = tempfile::tempdir().unwrap();
        for file in std::fs::read_dir(&fixture).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
        }
        let opts = JournalOptions {
            segment_bytes: 1 << 20,
            fsync: false,
            direct_io: false,
        };
        let (_, replay) = Journal::open(dir.path(), opts).unwrap();
        assert_eq!(replay.records.len(), 8);
        let seals: Vec<ObjectPlan> = replay
            .pending_seals
            .iter()
            .map(|s| decode_seal(&s.meta).unwrap())
            .collect();
        assert_eq!(seals, expected_seals());
        assert_eq!(replay.flushes.len(), 1);
        assert_eq!(decode_flush(&replay.flushes[0]).unwrap(), expected_flush());

        // What this build writes reads back the same, and is the fixture's JSON plus `"v":1`.
        for (plan, raw) in seals.iter().zip(&replay.pending_seals) {
            let written = encode_seal(plan).unwrap();
            assert_eq!(&decode_seal(&written).unwrap(), plan);
            let mut ours: serde_json::Value = serde_json::from_slice(&written).unwrap();
            let theirs: serde_json::Value = serde_json::from_slice(&raw.meta).unwrap();
            assert_eq!(ours["v"], 1);
            ours.as_object_mut().unwrap().remove("v");
            assert_eq!(ours, theirs);
        }
        let flush = encode_flush(&expected_flush()).unwrap();
        assert_eq!(decode_flush(&flush).unwrap(), expected_flush());
    }

    #[test]
    fn other_versions_and_damaged_entries_are_errors() {
        let mut newer: serde_json::Value =
            serde_json::from_slice(&encode_seal(&expected_seals()[0]).unwrap()).unwrap();
        newer["v"] = 2.into();
        let newer = serde_json::to_vec(&newer).unwrap();
        assert!(matches!(decode_seal(&newer), Err(EntryError::Version(2))));
        assert!(matches!(decode_seal(b""), Err(EntryError::Decode(_))));
        assert!(matches!(decode_flush(b"{}"), Err(EntryError::Decode(_))));
        let odd = br#"{"bucket":"b","key":"k","compression":"LZ4"}"#;
        assert!(matches!(decode_seal(odd), Err(EntryError::Invalid(_))));
        // A pre-release seal without sealed settings is no longer read.
        let old = br#"{"bucket":"b","key":"k","compression":"GZIP","layout":{"prefix":[],"error_prefix":[],"at_ms":1,"version":1}}"#;
        assert!(decode_seal(old).is_err());
    }
}
