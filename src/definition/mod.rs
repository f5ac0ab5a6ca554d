//! What a delivery stream is: its name, its S3 destination settings in Firehose's shape, and the
//! validation that turns those settings into trusted [`Destination`] values; with the prefix
//! language ([`prefix`]), record format conversion ([`conversion`]) and Hive column types
//! ([`hive_type`]) those settings are written in.
//!
//! The bottom layer: every other module may use it, and it uses nothing of spillway's but the
//! handle of a loaded transform ([`crate::transform::Module`]). What it cannot check alone (a
//! jq query compiles) its callers pass in. The same validation serves the API
//! (`CreateDeliveryStream`, `UpdateDestination`) and the TOML config, so a setting means the
//! same thing wherever it is written. Nothing here does I/O.

pub mod conversion;
pub mod hive_type;
pub mod iceberg;
pub mod prefix;
pub mod tags;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use prefix::{ParseOptions, Part, PrefixTemplate};

/// A validated delivery stream name: 1-64 characters of `[a-zA-Z0-9_.-]`, not only dots
/// (it names a directory under the data dir).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName(String);

impl StreamName {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "DeliveryStreamName must be 1 to 64 characters long, got {}",
                name.len()
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "DeliveryStreamName may only contain letters, digits, '_', '.' and '-', found {c:?}"
            ));
        }
        if name.chars().all(|c| c == '.') {
            return Err("DeliveryStreamName cannot consist only of dots".into());
        }
        Ok(StreamName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bucket name beginnings S3 reserves.
const RESERVED_BUCKET_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
/// Bucket name endings S3 reserves (access point aliases, Object Lambda, directory and table
/// buckets, Multi-Region Access Points).
const RESERVED_BUCKET_SUFFIXES: [&str; 5] =
    ["-s3alias", "--ol-s3", "--x-s3", "--table-s3", ".mrap"];

/// A validated S3 bucket name (from `BucketARN`), safe to use as a directory name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BucketName(String);

impl BucketName {
    pub fn from_arn(arn: &str) -> Result<Self, String> {
        let Some(name) = arn.strip_prefix("arn:aws:s3:::") else {
            return Err(format!(
                "must look like arn:aws:s3:::bucket-name, got {arn:?}"
            ));
        };
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        let edges_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !(3..=63).contains(&name.len()) || !valid_chars || !edges_ok {
            return Err(format!(
                "bucket name {name:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit)"
            ));
        }
        if let Some(pair) = ["..", ".-", "-."].iter().find(|p| name.contains(**p)) {
            return Err(format!(
                "bucket name {name:?} is not a valid S3 bucket name (it holds {pair:?})"
            ));
        }
        // Four dot-separated numbers, in range or not (`999.999.999.999`), as S3 refuses.
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "bucket name {name:?} is not a valid S3 bucket name (it has the form of an IP address)"
            ));
        }
        if let Some(p) = RESERVED_BUCKET_PREFIXES
            .iter()
            .find(|p| name.starts_with(**p))
        {
            return Err(format!(
                "bucket name {name:?} is not a valid S3 bucket name (the prefix {p:?} is reserved)"
            ));
        }
        if let Some(sfx) = RESERVED_BUCKET_SUFFIXES
            .iter()
            .find(|x| name.ends_with(**x))
        {
            return Err(format!(
                "bucket name {name:?} is not a valid S3 bucket name (the suffix {sfx:?} is reserved)"
            ));
        }
        Ok(BucketName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    Uncompressed,
    Gzip,
    /// One deflated entry in a ZIP archive.
    Zip,
    /// Snappy's framing format.
    Snappy,
    /// Snappy in Hadoop's block framing (`SnappyCodec`).
    HadoopSnappy,
}

impl Compression {
    pub fn api_name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
            Compression::Zip => "ZIP",
            Compression::Snappy => "Snappy",
            Compression::HadoopSnappy => "HADOOP_SNAPPY",
        }
    }

    /// The `CompressionFormat` named `name`, as the API spells it.
    pub fn from_api_name(name: &str) -> Option<Compression> {
        [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zip,
            Compression::Snappy,
            Compression::HadoopSnappy,
        ]
        .into_iter()
        .find(|c| c.api_name() == name)
    }

    /// What Firehose appends to the object name.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Uncompressed => "",
            Compression::Gzip => ".gz",
            Compression::Zip => ".zip",
            Compression::Snappy | Compression::HadoopSnappy => ".snappy",
        }
    }
}

/// Firehose's `BufferingHints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BufferingHints {
    #[serde(rename = "SizeInMBs", skip_serializing_if = "Option::is_none")]
    pub size_in_mbs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_in_seconds: Option<i64>,
}

/// An S3 destination exactly as the API (or the config file) states it, Firehose's field names.
/// Settings spillway does not implement are kept in `other` so they can be rejected by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct S3Destination {
    #[serde(rename = "RoleARN", skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(rename = "BucketARN", skip_serializing_if = "Option::is_none")]
    pub bucket_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_output_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffering_hints: Option<BufferingHints>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_configuration: Option<ProcessingConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_partitioning_configuration: Option<DynamicPartitioningConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_format_conversion_configuration: Option<conversion::DataFormatConversionConfiguration>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Firehose's `ProcessingConfiguration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessingConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<Processor>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Processor {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ProcessorParameter>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessorParameter {
    pub parameter_name: String,
    pub parameter_value: String,
}

/// Firehose's `DynamicPartitioningConfiguration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DynamicPartitioningConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_options: Option<RetryOptions>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetryOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_in_seconds: Option<i64>,
}

impl S3Destination {
    /// Applies an `UpdateDestination` body: present fields replace, absent ones stay.
    pub fn apply_update(&mut self, update: S3Destination) {
        if update.role_arn.is_some() {
            self.role_arn = update.role_arn;
        }
        if update.bucket_arn.is_some() {
            self.bucket_arn = update.bucket_arn;
        }
        if update.prefix.is_some() {
            self.prefix = update.prefix;
        }
        if update.error_output_prefix.is_some() {
            self.error_output_prefix = update.error_output_prefix;
        }
        if let Some(h) = update.buffering_hints {
            let current = self.buffering_hints.get_or_insert_with(Default::default);
            if h.size_in_mbs.is_some() {
                current.size_in_mbs = h.size_in_mbs;
            }
            if h.interval_in_seconds.is_some() {
                current.interval_in_seconds = h.interval_in_seconds;
            }
        }
        if update.compression_format.is_some() {
            self.compression_format = update.compression_format;
        }
        if update.processing_configuration.is_some() {
            self.processing_configuration = update.processing_configuration;
        }
        if update.dynamic_partitioning_configuration.is_some() {
            self.dynamic_partitioning_configuration = update.dynamic_partitioning_configuration;
        }
        if update.data_format_conversion_configuration.is_some() {
            self.data_format_conversion_configuration = update.data_format_conversion_configuration;
        }
        // `S3BackupUpdate` changes the backup's settings it names.
        let mut other = update.other;
        if let Some(Value::Object(backup_update)) = other.remove("S3BackupUpdate") {
            let entry = self
                .other
                .entry("S3BackupConfiguration")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(current) = entry {
                current.extend(backup_update);
            } else {
                *entry = Value::Object(backup_update);
            }
        }
        self.other.extend(other);
    }
}

/// A stream declared in the config file: its destination and its tags.
#[derive(Clone, Debug)]
pub struct DeclaredStream {
    pub name: StreamName,
    pub destination: S3Destination,
    pub tags: Vec<tags::Tag>,
}

/// `DeliveryStreamEncryptionConfigurationInput`: the key Firehose would encrypt its own
/// buffers with. spillway records it and describes it; it does not encrypt its journal (put
/// the data directory on an encrypted volume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamEncryption {
    pub key_type: String,
    #[serde(rename = "KeyARN", default, skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
}

impl StreamEncryption {
    pub fn check(&self) -> Result<(), String> {
        match (self.key_type.as_str(), &self.key_arn) {
            ("AWS_OWNED_CMK", None) => Ok(()),
            ("AWS_OWNED_CMK", Some(_)) => {
                Err("KeyARN must not be given when KeyType is AWS_OWNED_CMK".into())
            }
            ("CUSTOMER_MANAGED_CMK", None) => {
                Err("KeyARN is required when KeyType is CUSTOMER_MANAGED_CMK".into())
            }
            ("CUSTOMER_MANAGED_CMK", Some(arn)) => check_kms_arn(arn, "KeyARN"),
            (other, _) => Err(format!(
                "KeyType must be AWS_OWNED_CMK or CUSTOMER_MANAGED_CMK, got {other:?}"
            )),
        }
    }
}

/// A KMS key or alias ARN as Firehose accepts one: `arn:<partition>:kms:...`, 1-512 characters.
pub fn check_kms_arn(arn: &str, field: &str) -> Result<(), String> {
    let mut parts = arn.splitn(4, ':');
    let well_formed = parts.next() == Some("arn")
        && parts.next().is_some_and(|p| !p.is_empty())
        && parts.next() == Some("kms");
    if !well_formed || arn.len() > 512 || arn.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{field} must be a KMS key ARN (arn:aws:kms:region:account:key/id), at most 512 characters"
        ));
    }
    Ok(())
}

/// A setting, named the way the API and the config file each name it, so errors point at the
/// text the user wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    BucketArn,
    Prefix,
    ErrorOutputPrefix,
    SizeInMbs,
    IntervalInSeconds,
    CompressionFormat,
    Processing,
    DynamicPartitioning,
    DataFormatConversion,
    Other(&'static str),
    /// A setting spillway does not know; the message names it.
    Unknown,
}

impl Field {
    pub fn api_name(self) -> &'static str {
        match self {
            Field::BucketArn => "BucketARN",
            Field::Prefix => "Prefix",
            Field::ErrorOutputPrefix => "ErrorOutputPrefix",
            Field::SizeInMbs => "BufferingHints.SizeInMBs",
            Field::IntervalInSeconds => "BufferingHints.IntervalInSeconds",
            Field::CompressionFormat => "CompressionFormat",
            Field::Processing => "ProcessingConfiguration",
            Field::DynamicPartitioning => "DynamicPartitioningConfiguration",
            Field::DataFormatConversion => "DataFormatConversionConfiguration",
            Field::Other(name) => name,
            Field::Unknown => "ExtendedS3DestinationConfiguration",
        }
    }

    pub fn config_name(self) -> &'static str {
        match self {
            Field::BucketArn => "bucket_arn",
            Field::Prefix => "prefix",
            Field::ErrorOutputPrefix => "error_output_prefix",
            Field::SizeInMbs => "buffering_hints.size_in_mbs",
            Field::IntervalInSeconds => "buffering_hints.interval_in_seconds",
            Field::CompressionFormat => "compression_format",
            Field::Processing => "processing_configuration",
            Field::DynamicPartitioning => "dynamic_partitioning_configuration",
            Field::DataFormatConversion => "data_format_conversion_configuration",
            Field::Other(name) => name,
            Field::Unknown => "stream",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: Field,
    pub message: String,
}

pub const DEFAULT_BUFFER_MIB: i64 = 1;
pub const DEFAULT_BUFFER_SECONDS: i64 = 60;

/// A destination whose every setting has been checked: code past validation trusts it.
#[derive(Clone, Debug)]
pub struct Destination {
    pub bucket: BucketName,
    pub prefix: PrefixTemplate,
    pub error_output_prefix: PrefixTemplate,
    pub buffer_bytes: u64,
    pub buffer_interval: Duration,
    pub compression: Compression,
    /// Transform, metadata extraction and delimiter, in that order; `None` when disabled.
    pub processing: Option<Processing>,
    /// `DynamicPartitioningConfiguration.Enabled`: the prefixes may use partition keys.
    pub dynamic_partitioning: bool,
    /// `DataFormatConversionConfiguration`, when enabled: objects are Parquet.
    pub conversion: Option<conversion::Conversion>,
    /// `EncryptionConfiguration.KMSEncryptionConfig.AWSKMSKeyARN`: objects are written to S3
    /// with SSE-KMS under this key.
    pub kms_key: Option<String>,
    /// `CustomTimeZone` and `FileExtension`.
    pub naming: ObjectNaming,
    /// `S3BackupMode: Enabled`.
    pub backup: Option<BackupDestination>,
    /// `IcebergDestinationConfiguration`: records go into Iceberg tables; the bucket and
    /// error prefix above are where failed records go.
    pub iceberg: Option<iceberg::IcebergTarget>,
    /// The settings as given, with spillway's defaults filled in: what Describe echoes.
    pub raw: S3Destination,
}

/// A validated `ProcessingConfiguration`: the processors run in this order, whatever order
/// they were listed in (transform, then partition keys from the transformed record, then the
/// delimiter), as Firehose does.
/// Serializable: a sealed batch records the settings it is to be processed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Processing {
    /// `Decompression` (`CompressionFormat` GZIP): records arrive gzip'd.
    #[serde(default)]
    pub decompression: bool,
    /// `CloudWatchLogProcessing` (`DataMessageExtraction`): CloudWatch Logs envelopes become
    /// their log events' messages.
    #[serde(default)]
    pub message_extraction: bool,
    /// `RecordDeAggregation`: how one record splits into several.
    #[serde(default)]
    pub deaggregation: Option<SubRecords>,
    pub lambda: Option<LambdaProcessor>,
    /// `MetadataExtractionQuery`, already checked to compile.
    pub metadata_query: Option<String>,
    pub append_delimiter: bool,
}

/// `RecordDeAggregation`'s `SubRecordType`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubRecords {
    /// Concatenated JSON values, with or without white space between them.
    Json,
    /// Split at this delimiter (`Delimiter`, given in base64).
    Delimited(Vec<u8>),
}

/// The `Lambda` processor: a WebAssembly component in place of the Lambda function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LambdaProcessor {
    /// `LambdaArn` as written; error records carry it as `lambdaArn`.
    pub arn: String,
    /// Where the component is.
    pub component: ComponentSource,
    /// `NumberOfRetries`: further calls after a failed one before the records go to the
    /// error output. 0-300; 3.
    pub retries: u32,
    /// `BufferSizeInMBs`: input bytes per call, at least one record. 0.2-3 MB; 1.
    pub call_bytes: u64,
}

pub const DEFAULT_TRANSFORM_RETRIES: u32 = 3;

/// Where a transform component is read from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ComponentSource {
    /// A file (`file://` removed; relative to the daemon's working directory).
    File(PathBuf),
    /// An object in the daemon's object store (`s3://bucket/key`), fetched when the stream
    /// starts; the last copy fetched is kept and used while the store is unreachable.
    Object { bucket: BucketName, key: String },
}

/// What the pipeline needs to know about a stream: replaced whole on `UpdateDestination`.
#[derive(Clone, Debug)]
pub struct StreamDefinition {
    pub name: StreamName,
    /// Starts at 1 and goes up with each `UpdateDestination`; part of every object name.
    pub version: u64,
    pub destination: Destination,
    /// The loaded component of `destination.processing.lambda`, if any.
    pub transform: Option<std::sync::Arc<crate::transform::Module>>,
}

/// Settings accepted and ignored: they concern AWS services spillway does not talk to.
const IGNORED: &[&str] = &["CloudWatchLoggingOptions"];

/// Settings read from `other` by `validate` itself.
const READ: &[&str] = &[
    "EncryptionConfiguration",
    "CustomTimeZone",
    "FileExtension",
    "S3BackupMode",
    "S3BackupConfiguration",
    iceberg::ICEBERG_MEMBER,
];

/// `S3BackupMode: Enabled`: every source record, as received, also goes to this bucket and
/// prefix, with its own compression and encryption.
#[derive(Clone, Debug)]
pub struct BackupDestination {
    pub bucket: BucketName,
    pub prefix: PrefixTemplate,
    pub compression: Compression,
    pub kms_key: Option<String>,
    pub buffer_bytes: u64,
    pub buffer_interval: Duration,
}

/// Reads `S3BackupMode` and `S3BackupConfiguration` (`None`: no backup).
fn validate_backup(raw: &S3Destination) -> Result<Option<BackupDestination>, String> {
    match raw.other.get("S3BackupMode") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "Disabled" => return Ok(None),
        Some(Value::String(s)) if s == "Enabled" => {}
        Some(other) => {
            return Err(format!(
                "S3BackupMode must be Disabled or Enabled, got {other}"
            ));
        }
    }
    let config = match raw.other.get("S3BackupConfiguration") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => {
            return Err(
                "S3BackupMode Enabled needs S3BackupConfiguration (BucketARN, Prefix, BufferingHints, CompressionFormat)".into(),
            );
        }
    };
    let at = |m: String| format!("S3BackupConfiguration.{m}");
    let backup: S3Destination =
        serde_json::from_value(config).map_err(|e| at(format!("malformed: {e}")))?;
    let bucket = BucketName::from_arn(backup.bucket_arn.as_deref().unwrap_or(""))
        .map_err(|m| at(format!("BucketARN {m}")))?;
    let prefix = PrefixTemplate::parse_with(
        backup.prefix.as_deref().unwrap_or(""),
        prefix::PrefixField::Prefix,
        ParseOptions {
            allow_partition_keys: false,
        },
    )
    .map_err(|e| at(format!("Prefix: {e}")))?;
    let hints = backup.buffering_hints.clone().unwrap_or_default();
    let size = hints.size_in_mbs.unwrap_or(5);
    let interval = hints.interval_in_seconds.unwrap_or(300);
    check_size_mib(size).map_err(|m| at(format!("BufferingHints.SizeInMBs {m}")))?;
    check_interval_seconds(interval)
        .map_err(|m| at(format!("BufferingHints.IntervalInSeconds {m}")))?;
    let compression = compression(backup.compression_format.as_deref())
        .map_err(|m| at(format!("CompressionFormat {m}")))?;
    let kms_key = member(&backup.other, "EncryptionConfiguration", encryption_key)
        .map_err(|m| at(format!("EncryptionConfiguration: {m}")))?;
    let extra = [
        backup
            .processing_configuration
            .is_some()
            .then_some("ProcessingConfiguration"),
        backup
            .dynamic_partitioning_configuration
            .is_some()
            .then_some("DynamicPartitioningConfiguration"),
        backup
            .data_format_conversion_configuration
            .is_some()
            .then_some("DataFormatConversionConfiguration"),
    ];
    if let Some(name) = extra.into_iter().flatten().next().or_else(|| {
        backup
            .other
            .keys()
            .map(String::as_str)
            .find(|k| !matches!(*k, "EncryptionConfiguration" | "CloudWatchLoggingOptions"))
    }) {
        return Err(at(format!(
            "{name} is not a setting of a backup destination"
        )));
    }
    Ok(Some(BackupDestination {
        bucket,
        prefix,
        compression,
        kms_key,
        // Both ranges were checked above.
        buffer_bytes: size as u64 * 1024 * 1024,
        buffer_interval: Duration::from_secs(interval as u64),
    }))
}

/// Checks that a `MetadataExtractionQuery` compiles and fits its limits (the query engine
/// lives above this module: `process::jq::check`).
pub type QueryCheck = fn(&str) -> Result<(), String>;

/// Validates a destination; `tables` are the config file's, for `SchemaConfiguration`.
pub fn validate(
    raw: &S3Destination,
    tables: &conversion::Tables,
    check_query: QueryCheck,
) -> Result<Destination, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: Field, message: String| errors.push(FieldError { field, message });

    let bucket = match raw.bucket_arn.as_deref() {
        None => {
            err(Field::BucketArn, "is required".into());
            None
        }
        Some(arn) => BucketName::from_arn(arn)
            .map_err(|m| err(Field::BucketArn, m))
            .ok(),
    };
    let prefix_text = raw.prefix.as_deref().unwrap_or("");
    let options = ParseOptions {
        allow_partition_keys: raw
            .dynamic_partitioning_configuration
            .as_ref()
            .is_some_and(|dp| dp.enabled == Some(true)),
    };
    let prefix = PrefixTemplate::parse_with(prefix_text, prefix::PrefixField::Prefix, options)
        .map_err(|e| err(Field::Prefix, e.to_string()))
        .ok();
    // The error prefix's default depends on the prefix, so it is parsed with it; once the
    // prefix itself parsed, any error here is the error prefix's.
    let error_output_prefix = match prefix {
        Some(_) => PrefixTemplate::parse_destination_with(
            prefix_text,
            raw.error_output_prefix.as_deref().unwrap_or(""),
            options,
        )
        .map(|(_, e)| e)
        .map_err(|e| err(Field::ErrorOutputPrefix, e.to_string()))
        .ok(),
        None => None,
    };
    let hints = raw.buffering_hints.clone().unwrap_or_default();
    let size = hints.size_in_mbs.unwrap_or(DEFAULT_BUFFER_MIB);
    if let Err(m) = check_size_mib(size) {
        err(Field::SizeInMbs, m);
    }
    let interval = hints.interval_in_seconds.unwrap_or(DEFAULT_BUFFER_SECONDS);
    if let Err(m) = check_interval_seconds(interval) {
        err(Field::IntervalInSeconds, m);
    }
    let compression = compression(raw.compression_format.as_deref())
        .map_err(|m| err(Field::CompressionFormat, m))
        .ok();
    let dynamic_partitioning = match &raw.dynamic_partitioning_configuration {
        None => false,
        Some(dp) => {
            if let Some(d) = dp
                .retry_options
                .as_ref()
                .and_then(|r| r.duration_in_seconds)
                && !(0..=7200).contains(&d)
            {
                err(
                    Field::DynamicPartitioning,
                    format!("RetryOptions.DurationInSeconds must be between 0 and 7200, got {d}"),
                );
            }
            dp.enabled == Some(true)
        }
    };
    let processing = match &raw.processing_configuration {
        Some(p) if p.enabled.unwrap_or(!p.processors.is_empty()) => {
            match validate_processing(&p.processors, check_query) {
                Ok(p) => Some(p),
                Err(m) => {
                    err(Field::Processing, m);
                    None
                }
            }
        }
        _ => None,
    };
    let conversion = match &raw.data_format_conversion_configuration {
        Some(c) if c.enabled != Some(false) => match conversion::validate(c, tables) {
            Ok(c) => {
                // As in Firehose: the Parquet file compresses itself.
                if compression.is_some_and(|c| c != Compression::Uncompressed) {
                    err(
                        Field::CompressionFormat,
                        "must be UNCOMPRESSED when DataFormatConversionConfiguration is enabled (set ParquetSerDe.Compression instead)".into(),
                    );
                }
                Some(c)
            }
            Err(m) => {
                err(Field::DataFormatConversion, m);
                None
            }
        },
        _ => None,
    };
    // An Iceberg destination's MetadataExtraction routes records to tables, no prefix.
    if let Some(prefix) = &prefix
        && !raw.other.contains_key(iceberg::ICEBERG_MEMBER)
    {
        check_partitioning(
            prefix,
            raw.error_output_prefix.as_deref().unwrap_or(""),
            dynamic_partitioning,
            processing.as_ref(),
            &mut err,
        );
    }
    // The members read from `other`; a bad one is reported and read as absent.
    let mut setting = |name: &'static str, read: fn(&Value) -> Result<Option<String>, String>| {
        member(&raw.other, name, read).unwrap_or_else(|m| {
            err(Field::Other(name), m);
            None
        })
    };
    let naming = ObjectNaming {
        time_zone: setting("CustomTimeZone", |v| check_time_zone(text(v)?)),
        file_extension: setting("FileExtension", |v| check_file_extension(text(v)?)),
    };
    let kms_key = setting("EncryptionConfiguration", encryption_key);
    let backup = validate_backup(raw)
        .map_err(|m| err(Field::Other("S3BackupMode"), m))
        .ok()
        .flatten();
    let iceberg = match raw.other.get(iceberg::ICEBERG_MEMBER) {
        None | Some(Value::Null) => None,
        Some(v) => iceberg::validate(v)
            .map_err(|m| err(Field::Other("IcebergDestinationConfiguration"), m))
            .ok(),
    };
    if iceberg.is_some() {
        if dynamic_partitioning {
            err(
                Field::DynamicPartitioning,
                "is not a setting of Iceberg destinations (tables have partition specs)".into(),
            );
        }
        if raw.data_format_conversion_configuration.is_some() {
            err(
                Field::DataFormatConversion,
                "is not a setting of Iceberg destinations (tables are Parquet)".into(),
            );
        }
        if backup.is_some() {
            err(
                Field::Other("S3BackupMode"),
                "Iceberg destinations back up failed records only (FailedDataOnly)".into(),
            );
        }
    }
    for name in raw.other.keys() {
        if IGNORED.contains(&name.as_str()) || READ.contains(&name.as_str()) {
            continue;
        }
        err(Field::Unknown, format!("unknown setting {name:?}"));
    }

    let (Some(bucket), Some(prefix), Some(error_output_prefix), Some(compression)) =
        (bucket, prefix, error_output_prefix, compression)
    else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut normalized = raw.clone();
    normalized.buffering_hints = Some(BufferingHints {
        size_in_mbs: Some(size),
        interval_in_seconds: Some(interval),
    });
    normalized.compression_format = Some(compression.api_name().to_owned());
    Ok(Destination {
        bucket,
        prefix,
        error_output_prefix,
        // Both ranges were checked above, so the casts cannot wrap.
        buffer_bytes: size as u64 * 1024 * 1024,
        buffer_interval: Duration::from_secs(interval as u64),
        compression,
        processing,
        dynamic_partitioning,
        conversion,
        kms_key,
        naming,
        backup,
        iceberg,
        raw: normalized,
    })
}

/// How a stream's object names are made beyond its prefix: the time zone of their times and
/// the extension of its data objects. Sealed with each batch, so a replay names alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectNaming {
    /// An IANA zone name (`CustomTimeZone`); `None` is UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// `FileExtension`, replacing the default (`.gz`, `.parquet`, none) of data objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_extension: Option<String>,
}

impl ObjectNaming {
    pub fn is_default(&self) -> bool {
        self.time_zone.is_none() && self.file_extension.is_none()
    }

    /// The wall-clock time at `ms` (since the epoch) in the stream's zone, as a `DateTime`
    /// whose fields read that clock: what prefixes and object names print.
    pub fn local_time(&self, ms: u64) -> chrono::DateTime<chrono::Utc> {
        let offset_ms = self
            .time_zone
            .as_deref()
            .and_then(|name| zones().get(name).ok())
            .zip(jiff::Timestamp::from_millisecond(ms as i64).ok())
            .map_or(0, |(zone, at)| {
                i64::from(zone.to_offset(at).seconds()) * 1000
            });
        chrono::DateTime::from_timestamp_millis((ms as i64).saturating_add(offset_ms))
            .unwrap_or_default()
    }

    /// What ends a data object's name: the `FileExtension` if set, else `default`.
    pub fn data_suffix<'a>(&'a self, default: &'a str) -> &'a str {
        self.file_extension.as_deref().unwrap_or(default)
    }
}

/// The IANA zones built into spillway (jiff's bundled database), never the host's: names
/// like `localtime` that the host's zoneinfo may hold are not zones here, and a zone means the
/// same on every machine a journal is replayed on.
fn zones() -> &'static jiff::tz::TimeZoneDatabase {
    static ZONES: std::sync::OnceLock<jiff::tz::TimeZoneDatabase> = std::sync::OnceLock::new();
    ZONES.get_or_init(jiff::tz::TimeZoneDatabase::bundled)
}

/// `CustomTimeZone`: empty or `UTC` (no offset), or an IANA zone name of letters, `/` and `_`
/// (Firehose's pattern), at most 50 characters, spelled exactly as the bundled database
/// names it (`Asia/Tokyo`, not `asia/tokyo`).
fn check_time_zone(name: &str) -> Result<Option<String>, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(None);
    }
    if name.len() > 50
        || !name
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
    {
        return Err(format!(
            "must be an IANA time zone name of letters, '/' and '_', at most 50 characters, got {name:?}"
        ));
    }
    let unknown = || format!("{name:?} is not a known IANA time zone (like Asia/Tokyo)");
    let zone = zones().get(name).map_err(|_| unknown())?;
    match zone.iana_name() {
        Some(canonical) if canonical == name => Ok(Some(name.to_owned())),
        Some(canonical) => Err(format!(
            "{name:?} must be spelled as the time zone database names it: {canonical:?}"
        )),
        None => Err(unknown()),
    }
}

/// `FileExtension`: empty (the default extension), or `.` then one or more of `0-9 a-z ! - _
/// . * ' ( )`, at most 128 characters (Firehose's rule).
fn check_file_extension(ext: &str) -> Result<Option<String>, String> {
    if ext.is_empty() {
        return Ok(None);
    }
    let rest = ext.strip_prefix('.').unwrap_or("");
    let valid = ext.len() <= 128
        && !rest.is_empty()
        && rest.chars().all(|c| {
            c.is_ascii_digit()
                || c.is_ascii_lowercase()
                || matches!(c, '!' | '-' | '_' | '.' | '*' | '\'' | '(' | ')')
        });
    if !valid {
        return Err(format!(
            "must start with '.' followed by lowercase letters, digits or ! - _ . * ' ( ), at most 128 characters, got {ext:?}"
        ));
    }
    Ok(Some(ext.to_owned()))
}

/// The member `name` of `other`, read by `read` unless it is absent or null.
fn member<T>(
    other: &Map<String, Value>,
    name: &str,
    read: impl FnOnce(&Value) -> Result<Option<T>, String>,
) -> Result<Option<T>, String> {
    match other.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => read(v),
    }
}

fn text(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("must be a string, got {v}"))
}

/// `BufferingHints.SizeInMBs`: 1 to 128.
fn check_size_mib(size: i64) -> Result<(), String> {
    match (1..=128).contains(&size) {
        true => Ok(()),
        false => Err(format!("must be between 1 and 128 (MiB), got {size}")),
    }
}

/// `BufferingHints.IntervalInSeconds`: 0 to 900.
fn check_interval_seconds(interval: i64) -> Result<(), String> {
    match (0..=900).contains(&interval) {
        true => Ok(()),
        false => Err(format!(
            "must be between 0 and 900 (seconds), got {interval}"
        )),
    }
}

/// `CompressionFormat`, `UNCOMPRESSED` when absent.
fn compression(name: Option<&str>) -> Result<Compression, String> {
    let name = name.unwrap_or("UNCOMPRESSED");
    Compression::from_api_name(name).ok_or_else(|| {
        format!("must be UNCOMPRESSED, GZIP, ZIP, Snappy or HADOOP_SNAPPY, got {name:?}")
    })
}

/// Reads `EncryptionConfiguration`: `{"NoEncryptionConfig": "NoEncryption"}` or
/// `{"KMSEncryptionConfig": {"AWSKMSKeyARN": arn}}`, one of them.
fn encryption_key(v: &Value) -> Result<Option<String>, String> {
    let Some(map) = v.as_object() else {
        return Err("must be an object".into());
    };
    if let Some(k) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "NoEncryptionConfig" | "KMSEncryptionConfig"))
    {
        return Err(format!("unknown member {k:?}"));
    }
    match (
        map.get("NoEncryptionConfig"),
        map.get("KMSEncryptionConfig"),
    ) {
        (Some(_), Some(_)) => {
            Err("give only one of NoEncryptionConfig and KMSEncryptionConfig".into())
        }
        (Some(Value::String(s)), None) if s == "NoEncryption" => Ok(None),
        (Some(other), None) => Err(format!(
            "NoEncryptionConfig must be \"NoEncryption\", got {other}"
        )),
        (None, Some(kms)) => match kms.get("AWSKMSKeyARN") {
            Some(Value::String(arn)) if kms.as_object().is_some_and(|m| m.len() == 1) => {
                check_kms_arn(arn, "KMSEncryptionConfig.AWSKMSKeyARN")?;
                Ok(Some(arn.clone()))
            }
            _ => Err("KMSEncryptionConfig must be {\"AWSKMSKeyARN\": \"arn:aws:kms:...\"}".into()),
        },
        (None, None) => Ok(None),
    }
}

fn validate_processing(
    processors: &[Processor],
    check_query: QueryCheck,
) -> Result<Processing, String> {
    let mut out = Processing {
        decompression: false,
        message_extraction: false,
        deaggregation: None,
        lambda: None,
        metadata_query: None,
        append_delimiter: false,
    };
    if processors.is_empty() {
        return Err("Enabled is true but Processors lists none".into());
    }
    let mut seen = Vec::new();
    for (i, p) in processors.iter().enumerate() {
        let at = format!("Processors[{i}] ({})", p.kind);
        if seen.contains(&p.kind.as_str()) {
            return Err(format!(
                "{at}: a stream can have only one {} processor",
                p.kind
            ));
        }
        seen.push(p.kind.as_str());
        let mut params: Vec<(&str, &str)> = p
            .parameters
            .iter()
            .map(|x| (x.parameter_name.as_str(), x.parameter_value.as_str()))
            .collect();
        let mut take = |name: &str| -> Option<String> {
            let i = params.iter().position(|(n, _)| *n == name)?;
            Some(params.remove(i).1.to_owned())
        };
        match p.kind.as_str() {
            "Lambda" => {
                let arn = take("LambdaArn").ok_or(format!("{at}: LambdaArn is required"))?;
                let component = component_path(&arn).map_err(|m| format!("{at}: LambdaArn {m}"))?;
                let retries = match take("NumberOfRetries") {
                    None => DEFAULT_TRANSFORM_RETRIES,
                    Some(v) => v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 300)
                        .ok_or(format!("{at}: NumberOfRetries must be 0 to 300, got {v:?}"))?,
                };
                let call_bytes = match take("BufferSizeInMBs") {
                    None => 1_000_000,
                    Some(v) => v
                        .parse::<f64>()
                        .ok()
                        .filter(|mb| (0.2..=3.0).contains(mb))
                        .map(|mb| (mb * 1_000_000.0) as u64)
                        .ok_or(format!(
                            "{at}: BufferSizeInMBs must be between 0.2 and 3, got {v:?}"
                        ))?,
                };
                if let Some(v) = take("BufferIntervalInSeconds")
                    && !v.parse::<u32>().is_ok_and(|s| s <= 900)
                {
                    return Err(format!(
                        "{at}: BufferIntervalInSeconds must be 0 to 900, got {v:?}"
                    ));
                }
                // Accepted for compatibility: spillway runs no IAM.
                take("RoleArn");
                out.lambda = Some(LambdaProcessor {
                    arn,
                    component,
                    retries,
                    call_bytes,
                });
            }
            "MetadataExtraction" => {
                let query = take("MetadataExtractionQuery")
                    .ok_or(format!("{at}: MetadataExtractionQuery is required"))?;
                match take("JsonParsingEngine").as_deref() {
                    None | Some("JQ-1.6") => {}
                    Some(other) => {
                        return Err(format!(
                            "{at}: JsonParsingEngine must be JQ-1.6, got {other:?}"
                        ));
                    }
                }
                check_query(&query).map_err(|m| format!("{at}: MetadataExtractionQuery: {m}"))?;
                out.metadata_query = Some(query);
            }
            "AppendDelimiterToRecord" => {
                if let Some(d) = take("Delimiter")
                    && !matches!(d.as_str(), "\\n" | "\n")
                {
                    return Err(format!(
                        "{at}: only the newline delimiter is supported, got {d:?}"
                    ));
                }
                out.append_delimiter = true;
            }
            "Decompression" => {
                match take("CompressionFormat").as_deref() {
                    None | Some("GZIP") => {}
                    Some(other) => {
                        return Err(format!(
                            "{at}: CompressionFormat must be GZIP, got {other:?}"
                        ));
                    }
                }
                out.decompression = true;
            }
            "CloudWatchLogProcessing" => match take("DataMessageExtraction").as_deref() {
                Some("true") => out.message_extraction = true,
                Some("false") => {}
                other => {
                    return Err(format!(
                        "{at}: DataMessageExtraction must be \"true\" or \"false\", got {other:?}"
                    ));
                }
            },
            "RecordDeAggregation" => {
                let kind = take("SubRecordType");
                let delimiter = take("Delimiter");
                out.deaggregation = Some(match (kind.as_deref(), delimiter) {
                    (Some("JSON"), None) => SubRecords::Json,
                    (Some("JSON"), Some(_)) => {
                        return Err(format!(
                            "{at}: Delimiter is for SubRecordType DELIMITED only"
                        ));
                    }
                    (Some("DELIMITED"), Some(d)) => {
                        let bytes = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            d.as_bytes(),
                        )
                        .ok()
                        .filter(|b| (1..=MAX_DELIMITER_BYTES).contains(&b.len()))
                        .ok_or(format!(
                            "{at}: Delimiter must be 1 to {MAX_DELIMITER_BYTES} bytes in base64, got {d:?}"
                        ))?;
                        SubRecords::Delimited(bytes)
                    }
                    (Some("DELIMITED"), None) => {
                        return Err(format!(
                            "{at}: SubRecordType DELIMITED needs a Delimiter (base64)"
                        ));
                    }
                    (other, _) => {
                        return Err(format!(
                            "{at}: SubRecordType must be JSON or DELIMITED, got {other:?}"
                        ));
                    }
                });
            }
            other => {
                return Err(format!(
                    "{at}: unknown processor type {other:?} (RecordDeAggregation, Decompression, CloudWatchLogProcessing, Lambda, MetadataExtraction or AppendDelimiterToRecord)"
                ));
            }
        }
        if let Some((name, _)) = params.first() {
            return Err(format!("{at}: unknown parameter {name:?}"));
        }
    }
    // CloudWatch Logs sends its envelopes gzip'd; Firehose requires decompression with them.
    if out.message_extraction && !out.decompression {
        return Err(
            "CloudWatchLogProcessing needs the Decompression processor (CloudWatch Logs sends its records gzip'd)".into(),
        );
    }
    Ok(out)
}

/// Longest `RecordDeAggregation` `Delimiter`, in bytes.
pub const MAX_DELIMITER_BYTES: usize = 64;

/// `LambdaArn` names a component: a path, a `file://` URL or an `s3://bucket/key` URL.
fn component_path(arn: &str) -> Result<ComponentSource, String> {
    if let Some(path) = arn.strip_prefix("file://") {
        if path.is_empty() {
            return Err("file:// URL without a path".into());
        }
        return Ok(ComponentSource::File(PathBuf::from(path)));
    }
    if let Some(rest) = arn.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket = BucketName::from_arn(&format!("arn:aws:s3:::{bucket}"))?;
        if key.is_empty() || key.ends_with('/') {
            return Err(format!("s3:// URL without an object key: {arn:?}"));
        }
        return Ok(ComponentSource::Object {
            bucket,
            key: key.to_owned(),
        });
    }
    if arn.starts_with("arn:") || arn.contains("://") {
        return Err(format!(
            "must name a WebAssembly component (a path, a file:// URL or an s3://bucket/key URL), got {arn:?}"
        ));
    }
    if arn.is_empty() {
        return Err("is empty".into());
    }
    Ok(ComponentSource::File(PathBuf::from(arn)))
}

/// Firehose's rules tying the prefixes, dynamic partitioning and the processors together.
fn check_partitioning(
    prefix: &PrefixTemplate,
    error_prefix: &str,
    enabled: bool,
    processing: Option<&Processing>,
    err: &mut impl FnMut(Field, String),
) {
    let query_keys = prefix
        .parts()
        .iter()
        .any(|p| matches!(p, Part::PartitionKeyFromQuery(_)));
    let lambda_keys = prefix
        .parts()
        .iter()
        .any(|p| matches!(p, Part::PartitionKeyFromLambda(_)));
    let has_query = processing.is_some_and(|p| p.metadata_query.is_some());
    let has_lambda = processing.is_some_and(|p| p.lambda.is_some());
    if !enabled {
        if has_query {
            err(
                Field::Processing,
                "MetadataExtraction needs DynamicPartitioningConfiguration enabled".into(),
            );
        }
        return;
    }
    if error_prefix.is_empty() {
        err(
            Field::ErrorOutputPrefix,
            "is required when dynamic partitioning is enabled".into(),
        );
    }
    if !query_keys && !lambda_keys {
        err(
            Field::Prefix,
            "must use !{partitionKeyFromQuery:KEY} or !{partitionKeyFromLambda:KEY} when dynamic partitioning is enabled".into(),
        );
    }
    if query_keys && !has_query {
        err(
            Field::Prefix,
            "!{partitionKeyFromQuery:...} needs a MetadataExtraction processor".into(),
        );
    }
    if lambda_keys && !has_lambda {
        err(
            Field::Prefix,
            "!{partitionKeyFromLambda:...} needs a Lambda processor".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: QueryCheck = crate::process::jq::check;

    #[test]
    fn time_zones_and_file_extensions_at_their_edges() {
        assert_eq!(check_time_zone(""), Ok(None));
        assert_eq!(check_time_zone("UTC"), Ok(None));
        assert_eq!(check_time_zone("Asia/Tokyo"), Ok(Some("Asia/Tokyo".into())));
        assert_eq!(
            check_time_zone("America/Argentina/Buenos_Aires"),
            Ok(Some("America/Argentina/Buenos_Aires".into()))
        );
        for bad in [
            "Mars/Olympus",
            "Asia/Tokyo1",
            "Etc/GMT+5",
            "../../etc/passwd",
            &"A".repeat(51),
            "asia/tokyo",
            "localtime",
            "posixrules",
        ] {
            assert!(check_time_zone(bad).is_err(), "{bad}");
        }
        assert_eq!(check_file_extension(""), Ok(None));
        let longest = format!(".{}", "a".repeat(127));
        assert_eq!(check_file_extension(&longest), Ok(Some(longest.clone())));
        assert_eq!(
            check_file_extension(".json.gz!-_*'()9"),
            Ok(Some(".json.gz!-_*'()9".into()))
        );
        for bad in [
            ".",
            "json",
            ".JSON",
            ".a/b",
            ".a b",
            &format!(".{}", "a".repeat(128)),
        ] {
            assert!(check_file_extension(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_time_follows_the_zone_and_its_daylight_saving() {
        let naming = |z: Option<&str>| ObjectNaming {
            time_zone: z.map(Into::into),
            file_extension: None,
        };
        let at = |ms| naming(Some("America/New_York")).local_time(ms).to_rfc3339();
        // 2026-01-15T12:00:00Z: EST, UTC-5. 2026-07-15T12:00:00Z: EDT, UTC-4.
        assert_eq!(at(1_768_478_400_000), "2026-01-15T07:00:00+00:00");
        assert_eq!(at(1_784_116_800_000), "2026-07-15T08:00:00+00:00");
        assert_eq!(
            naming(Some("Asia/Tokyo"))
                .local_time(1_768_478_400_000)
                .to_rfc3339(),
            "2026-01-15T21:00:00+00:00"
        );
        assert_eq!(
            naming(None).local_time(1_768_478_400_000).to_rfc3339(),
            "2026-01-15T12:00:00+00:00"
        );
        assert_eq!(naming(None).data_suffix(".gz"), ".gz");
        let ext = ObjectNaming {
            time_zone: None,
            file_extension: Some(".json".into()),
        };
        assert_eq!(ext.data_suffix(".gz"), ".json");
    }

    #[test]
    fn bucket_names_follow_s3s_rules_at_their_edges() {
        let arn = |n: &str| format!("arn:aws:s3:::{n}");
        for ok in [
            "abc",
            &"a".repeat(63),
            "my.bucket-1",
            "1.2.3",
            "xn-a",
            "a-s3alia",
        ] {
            assert!(BucketName::from_arn(&arn(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "Abc",
            "-abc",
            "abc-",
            "a..b",
            "a.-b",
            "a-.b",
            "192.168.5.4",
            "999.999.999.999",
            "10.0.0.256",
            "xn--abc",
            "sthree-abc",
            "amzn-s3-demo-abc",
            "abc-s3alias",
            "abc--ol-s3",
            "abc--x-s3",
            "abc--table-s3",
            "abc.mrap",
            "a_b",
        ] {
            assert!(BucketName::from_arn(&arn(bad)).is_err(), "{bad}");
        }
    }

    fn raw(json: &str) -> S3Destination {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_follow_the_product_brief() {
        let d = validate(
            &raw(r#"{"BucketARN":"arn:aws:s3:::my-bucket"}"#),
            &Default::default(),
            CHECK,
        )
        .unwrap();
        assert_eq!(d.buffer_bytes, 1024 * 1024);
        assert_eq!(d.buffer_interval, Duration::from_secs(60));
        assert_eq!(d.compression, Compression::Uncompressed);
        assert_eq!(d.bucket.as_str(), "my-bucket");
    }

    #[test]
    fn buffering_limits_are_inclusive() {
        for (size, interval, ok) in [
            (1, 0, true),
            (128, 900, true),
            (0, 60, false),
            (129, 60, false),
            (1, -1, false),
            (1, 901, false),
        ] {
            let r = raw(&format!(
                r#"{{"BucketARN":"arn:aws:s3:::b-1","BufferingHints":{{"SizeInMBs":{size},"IntervalInSeconds":{interval}}}}}"#
            ));
            assert_eq!(
                validate(&r, &Default::default(), CHECK).is_ok(),
                ok,
                "{size} {interval}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errs = validate(&raw(
            r#"{"BucketARN":"arn:aws:s3:::UPPER","CompressionFormat":"LZ4","BufferingHints":{"SizeInMBs":0},"Prefix":"!{nope}","ProcessingConfiguration":{"Enabled":true}}"#,
        ), &Default::default(), CHECK)
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.api_name()).collect();
        assert_eq!(
            fields,
            [
                "BucketARN",
                "Prefix",
                "BufferingHints.SizeInMBs",
                "CompressionFormat",
                "ProcessingConfiguration"
            ]
        );
    }

    #[test]
    fn disabled_features_and_ignored_settings_are_accepted() {
        validate(&raw(
            r#"{"BucketARN":"arn:aws:s3:::b-1","ProcessingConfiguration":{"Enabled":false},"S3BackupMode":"Disabled","EncryptionConfiguration":{"NoEncryptionConfig":"NoEncryption"},"CloudWatchLoggingOptions":{"Enabled":true}}"#,
        ), &Default::default(), CHECK)
        .unwrap();
    }

    #[test]
    fn names_and_buckets() {
        assert!(StreamName::parse("game-events_1.v2").is_ok());
        assert!(StreamName::parse("..").is_err());
        assert!(StreamName::parse("a/b").is_err());
        assert!(StreamName::parse(&"x".repeat(65)).is_err());
        assert!(StreamName::parse(&"x".repeat(64)).is_ok());
        assert!(BucketName::from_arn("arn:aws:s3:::ab").is_err());
        assert!(BucketName::from_arn("arn:aws:s3:::a..b").is_err());
        assert!(BucketName::from_arn("s3://bucket").is_err());
        assert!(BucketName::from_arn("arn:aws:s3:::my.bucket-1").is_ok());
    }

    #[test]
    fn update_merges_hints() {
        let mut d = raw(
            r#"{"BucketARN":"arn:aws:s3:::b-1","BufferingHints":{"SizeInMBs":5,"IntervalInSeconds":10}}"#,
        );
        d.apply_update(raw(r#"{"BufferingHints":{"IntervalInSeconds":20}}"#));
        assert_eq!(
            d.buffering_hints,
            Some(BufferingHints {
                size_in_mbs: Some(5),
                interval_in_seconds: Some(20)
            })
        );
    }
}
