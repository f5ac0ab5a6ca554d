//! What a delivery stream is: its name, its S3 destination settings in Firehose's shape, and the
//! validation that turns those settings into trusted [`Destination`] values.
//!
//! The same validation serves the API (`CreateDeliveryStream`, `UpdateDestination`) and the TOML
//! config, so a setting means the same thing wherever it is written. Nothing here does I/O.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::prefix::PrefixTemplate;

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

/// A validated S3 bucket name (from `BucketARN`), safe to use as a directory name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
        if !(3..=63).contains(&name.len()) || !valid_chars || !edges_ok || name.contains("..") {
            return Err(format!(
                "bucket name {name:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit)"
            ));
        }
        Ok(BucketName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    Gzip,
}

impl Compression {
    pub fn api_name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
        }
    }

    /// What Firehose appends to the object name.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Uncompressed => "",
            Compression::Gzip => ".gz",
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
    #[serde(flatten)]
    pub other: Map<String, Value>,
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
        self.other.extend(update.other);
    }
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
    /// The settings as given, with spillway's defaults filled in: what Describe echoes.
    pub raw: S3Destination,
}

/// What the pipeline needs to know about a stream: replaced whole on `UpdateDestination`.
#[derive(Clone, Debug)]
pub struct StreamDefinition {
    pub name: StreamName,
    /// Starts at 1 and goes up with each `UpdateDestination`; part of every object name.
    pub version: u64,
    pub destination: Destination,
}

/// Settings from Firehose's `ExtendedS3DestinationConfiguration` that spillway does not
/// implement yet. They are accepted only when they turn the feature off.
const UNSUPPORTED: &[&str] = &[
    "ProcessingConfiguration",
    "DataFormatConversionConfiguration",
    "DynamicPartitioningConfiguration",
    "S3BackupMode",
    "S3BackupConfiguration",
    "S3BackupUpdate",
    "FileExtension",
    "CustomTimeZone",
];

/// Settings accepted and ignored: they concern AWS services spillway does not talk to.
const IGNORED: &[&str] = &["EncryptionConfiguration", "CloudWatchLoggingOptions"];

fn feature_off(name: &str, value: &Value) -> bool {
    match (name, value) {
        (_, Value::Null) => true,
        ("S3BackupMode", Value::String(s)) => s == "Disabled",
        ("FileExtension", Value::String(s)) => s.is_empty(),
        ("CustomTimeZone", Value::String(s)) => s.is_empty() || s == "UTC",
        (_, Value::Object(map)) => map.get("Enabled") == Some(&Value::Bool(false)),
        _ => false,
    }
}

pub fn validate(raw: &S3Destination) -> Result<Destination, Vec<FieldError>> {
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
    let prefix = PrefixTemplate::parse_prefix(prefix_text)
        .map_err(|e| err(Field::Prefix, e.to_string()))
        .ok();
    // The error prefix's default depends on the prefix, so it is parsed with it; once the
    // prefix itself parsed, any error here is the error prefix's.
    let error_output_prefix = match prefix {
        Some(_) => PrefixTemplate::parse_destination(
            prefix_text,
            raw.error_output_prefix.as_deref().unwrap_or(""),
        )
        .map(|(_, e)| e)
        .map_err(|e| err(Field::ErrorOutputPrefix, e.to_string()))
        .ok(),
        None => None,
    };
    let hints = raw.buffering_hints.clone().unwrap_or_default();
    let size = hints.size_in_mbs.unwrap_or(DEFAULT_BUFFER_MIB);
    if !(1..=128).contains(&size) {
        err(
            Field::SizeInMbs,
            format!("must be between 1 and 128 (MiB), got {size}"),
        );
    }
    let interval = hints.interval_in_seconds.unwrap_or(DEFAULT_BUFFER_SECONDS);
    if !(0..=900).contains(&interval) {
        err(
            Field::IntervalInSeconds,
            format!("must be between 0 and 900 (seconds), got {interval}"),
        );
    }
    let compression = match raw.compression_format.as_deref().unwrap_or("UNCOMPRESSED") {
        "UNCOMPRESSED" => Some(Compression::Uncompressed),
        "GZIP" => Some(Compression::Gzip),
        other @ ("ZIP" | "Snappy" | "HADOOP_SNAPPY") => {
            err(
                Field::CompressionFormat,
                format!("{other} is not supported yet; use UNCOMPRESSED or GZIP"),
            );
            None
        }
        other => {
            err(
                Field::CompressionFormat,
                format!("must be UNCOMPRESSED or GZIP, got {other:?}"),
            );
            None
        }
    };
    for (name, value) in &raw.other {
        if IGNORED.contains(&name.as_str()) {
            continue;
        }
        if let Some(known) = UNSUPPORTED.iter().find(|u| **u == name.as_str()) {
            if !feature_off(name, value) {
                err(
                    Field::Other(known),
                    "is not supported by this version of spillway".into(),
                );
            }
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
        raw: normalized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> S3Destination {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_follow_the_product_brief() {
        let d = validate(&raw(r#"{"BucketARN":"arn:aws:s3:::my-bucket"}"#)).unwrap();
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
            assert_eq!(validate(&r).is_ok(), ok, "{size} {interval}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errs = validate(&raw(
            r#"{"BucketARN":"arn:aws:s3:::UPPER","CompressionFormat":"ZIP","BufferingHints":{"SizeInMBs":0},"Prefix":"!{nope}","ProcessingConfiguration":{"Enabled":true}}"#,
        ))
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
        ))
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
