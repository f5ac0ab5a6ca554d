//! Command line + TOML file -> validated [`Settings`].
//!
//! Raw serde structs mirror the file (unknown keys are errors, defaults are documented with
//! units); [`Settings::load`] checks everything once and reports every problem together, each
//! with its path in the file. Code past startup never sees the raw structs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::definition::tags::Tag;
use crate::definition::{self, BufferingHints, DeclaredStream, S3Destination, StreamName};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4573";
pub const DEFAULT_DATA_DIR: &str = "spillway-data";
const MIB: u64 = 1024 * 1024;

/// spillway: a self-hosted, Firehose-compatible delivery daemon.
///
/// Accepts the Amazon Data Firehose API (PutRecord, PutRecordBatch, CreateDeliveryStream, ...)
/// over HTTP, journals every record to disk before acknowledging it, and delivers buffered
/// objects to S3, an S3-compatible server (MinIO) or a local directory.
#[derive(Debug, Default, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (see the README's configuration reference). Without it,
    /// spillway runs with built-in defaults and a local directory store under the data dir.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve the Firehose API, /metrics and /healthz on [default: 127.0.0.1:4573].
    /// Overrides `listen` in the config file.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address to serve /metrics, /healthz and /readyz on instead of the API's address.
    /// Overrides `admin_listen` in the config file.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory for the journal, API-created streams and the local object store
    /// [default: ./spillway-data]. Overrides `data_dir` in the config file.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format: `text` (human-readable, the default) or `json`. Overrides `log_format`.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Where buckets live: `local` (directories under <data dir>/buckets, the default) or `s3`
    /// (endpoint, region and credentials from the AWS_* environment variables or the file).
    /// Overrides `object_store.kind`.
    #[arg(long, value_name = "KIND", env = "SPILLWAY_OBJECT_STORE")]
    pub object_store: Option<StoreKind>,
}

/// Tools next to the daemon; without one, spillway runs the daemon.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a configuration file without starting: prints what it declares and exits 0,
    /// or prints every problem (file, field, what is wrong) and exits 2.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// GET a URL of a running spillway and exit 0 on a 2xx answer, 1 otherwise: a health check
    /// for container images without curl.
    Probe {
        /// What to fetch: http:// or https://.
        #[arg(default_value = "http://127.0.0.1:4573/healthz")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
        /// https: trust the CA certificates in this PEM file (else the system's roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// https: accept any certificate. For a liveness probe of the daemon on its own
        /// host, whose certificate names the service, not 127.0.0.1.
        #[arg(long, conflicts_with = "ca_file")]
        insecure: bool,
    },
    /// Compile a transform component into a cache file. The daemon runs this in a child
    /// process, so the compiler's peak memory never becomes the daemon's.
    #[command(hide = true)]
    CompileTransform { input: PathBuf, output: PathBuf },
    /// Run `MetadataExtractionQuery` programs for the daemon, on stdin and stdout, with this
    /// many bytes of memory at most. The daemon starts these; a query over budget ends only
    /// its worker.
    #[command(hide = true)]
    JqWorker { memory_bytes: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Local,
    S3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

// ---------------------------------------------------------------------------------------------
// The file, as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    /// /metrics, /healthz and /readyz on an address of their own (the API's address then
    /// serves only the API).
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    /// tracing filter directive, e.g. "info" or "spillway=debug"; RUST_LOG wins when set.
    log_level: Option<String>,
    /// How long SIGTERM waits for uploads before leaving the rest to the journal. Seconds; 60.
    shutdown_timeout_seconds: Option<u64>,
    /// Delivery streams that may exist at once (API and config file together); 5000, like
    /// Firehose's default quota per region.
    max_delivery_streams: Option<u64>,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    buffer: RawBuffer,
    #[serde(default)]
    upload: RawUpload,
    #[serde(default)]
    object_store: RawObjectStore,
    #[serde(default)]
    transform: RawTransform,
    #[serde(default)]
    partitioning: RawPartitioning,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    auth: RawAuth,
    tls: Option<RawTls>,
    #[serde(default, rename = "stream")]
    streams: Vec<RawStream>,
    #[serde(default, rename = "table")]
    tables: Vec<RawTable>,
    #[serde(default)]
    iceberg: RawIceberg,
}

/// `[iceberg]`: the catalogs Iceberg destinations name (`CatalogARN` `...:catalog/NAME`; the
/// plain `...:catalog` is `default`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIceberg {
    #[serde(default)]
    catalogs: std::collections::BTreeMap<String, RawCatalog>,
    maintenance: Option<RawMaintenance>,
}

/// `[iceberg.maintenance]`: a background job that expires the old snapshots of the tables
/// this daemon's streams write to. Off unless `expire_snapshots_after_seconds` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    /// Snapshots older than this are expired (the newest `retain_snapshots` always stay).
    expire_snapshots_after_seconds: Option<u64>,
    /// Rewrite the small files of closed time partitions into larger ones.
    rewrite_small_files: Option<bool>,
    /// The size rewritten files aim at; files under half of it are small. 64; 1-1024.
    target_file_mib: Option<u64>,
    /// Small files a partition needs before it is rewritten. 4; at least 2.
    min_files: Option<u64>,
    /// How long after its period ends a time partition is closed. 3600.
    closed_after_seconds: Option<u64>,
    /// Snapshots always kept, however old. 100; at least 1.
    retain_snapshots: Option<u64>,
    /// Time between runs; the first runs one interval after the start. 3600; at least 1.
    interval_seconds: Option<u64>,
}

/// `[iceberg.catalogs.NAME]`: a SQL catalog.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    /// `sqlite:///path/catalog.db?mode=rwc` or `postgres://user:password@host:port/database`.
    /// `default`'s: a SQLite file `<data_dir>/iceberg/catalog.db`.
    uri: Option<String>,
    /// Where new tables go: `s3://bucket/path` (in the configured object store), or with the
    /// local store also `file:///path` under its root. Default: `file://<local_root>/iceberg/
    /// warehouse` with the local store, `s3://iceberg/warehouse` with S3.
    warehouse: Option<String>,
}

/// A table for `SchemaConfiguration` (spillway's stand-in for the Glue Data Catalog).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    /// Glue's `DatabaseName`; `default` when left out.
    database: Option<String>,
    name: String,
    columns: Vec<RawColumn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    /// `true` (default): a record is fsync'd (group commit) before its 200. `false`: written to
    /// the OS only; a machine crash may lose the last acknowledged records, a process crash not.
    fsync: Option<bool>,
    /// Segment file size before rolling to a new one. MiB; 64.
    segment_mib: Option<u64>,
    /// Cap on journal bytes across all streams; past it ingest is throttled. MiB; 4096.
    max_mib: Option<u64>,
    /// Write journal segments with O_DIRECT, bypassing the page cache: saves a kernel copy of
    /// every byte. Falls back to buffered writes where the filesystem refuses O_DIRECT. true.
    direct_io: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    /// Cap on record bytes held in memory across all streams; past it ingest is throttled. MiB; 32.
    max_memory_mib: Option<u64>,
    /// How long a request that does not fit under the cap waits for room before the records
    /// that do not fit are refused. Ms; 100; 0 refuses at once.
    max_memory_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    /// Uploads in flight at once per stream. 8.
    concurrency: Option<usize>,
    /// Objects at least this large are uploaded in parts. MiB; 16.
    multipart_threshold_mib: Option<u64>,
    /// Part size for multipart uploads (S3's minimum is 5). MiB; 8.
    part_size_mib: Option<u64>,
    /// First retry delay after a failed upload; doubles up to the maximum, with jitter. Ms; 200.
    retry_initial_ms: Option<u64>,
    /// Longest retry delay. Ms; 30000.
    retry_max_ms: Option<u64>,
    /// gzip level (1 fastest .. 9 smallest) for GZIP streams. 1.
    gzip_level: Option<u32>,
    /// Per-stream gzip levels, by stream name, over `gzip_level` (Firehose's API has none).
    gzip_levels: Option<std::collections::BTreeMap<String, u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectStore {
    /// `local` (default): bucket B is the directory `<local_root>/B`. `s3`: bucket B is the S3
    /// bucket B at `endpoint` (or AWS), credentials from below or the AWS_* environment.
    kind: Option<String>,
    local_root: Option<PathBuf>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    allow_http: Option<bool>,
    /// Put each object's SHA-256 in the request signature. Costs a hash of every byte; TLS
    /// already protects integrity on the wire. false.
    sign_payload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    /// Memory cap of one transform instance. MiB; 256.
    memory_mib: Option<u64>,
    /// Time budget of one call (and of instantiating a component). Seconds; 10.
    timeout_seconds: Option<u64>,
    /// Where compiled components are cached. `<data_dir>/transform-cache`.
    cache_dir: Option<PathBuf>,
    /// Directories local components must be in; unset: any regular file.
    component_dirs: Option<Vec<PathBuf>>,
}

/// `[auth]`: the access keys that may call the API (none: anyone who reaches the port may).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    keys: Vec<RawKey>,
}

/// `[[auth.keys]]`: one access key, its secret from exactly one of `secret`, `secret_file`
/// or `secret_env`, and what it may do. Its `Debug` never shows the secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    access_key_id: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    /// Stream names or `*` patterns; all streams when absent.
    streams: Option<Vec<String>>,
    /// `put`, `read`, `manage`; all three when absent.
    operations: Option<Vec<String>>,
}

/// `[tls]`: HTTPS on the API listener. PEM files; paths relative to the working directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// The server certificate, then its intermediates.
    cert_file: PathBuf,
    /// The certificate's private key.
    key_file: PathBuf,
    /// CA certificates for client certificates; set: clients must present one it signed.
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// A client must send a request's headers within this, or its connection is closed
    /// (idle keep-alive connections included). Seconds; 30.
    header_read_timeout_seconds: Option<u64>,
    /// A client must send a request's body within this. Seconds; 60.
    body_read_timeout_seconds: Option<u64>,
    /// Connections open at once; more are closed as soon as they are accepted. 1024.
    max_connections: Option<u64>,
    /// Request bodies held in memory while they are read, across connections. MiB; 64.
    max_body_memory_mib: Option<u64>,
    /// Size of a request's line and headers together. KiB; 16 (at least 8).
    max_header_kib: Option<u64>,
    /// Headers one request may carry. 100.
    max_headers: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartitioning {
    /// Partitions one batch of a stream may fill; records for further partitions go to the
    /// error output as activePartitionExceeded. 500 (Firehose's default).
    max_active_partitions: Option<u64>,
    /// Time budget of a `MetadataExtractionQuery` on one record. Milliseconds; 1000.
    query_timeout_ms: Option<u64>,
    /// Memory cap of each process that runs queries. MiB; 128.
    query_memory_mib: Option<u64>,
}

/// Firehose's `ProcessingConfiguration`, with parameters as a table:
/// `{ type = "Lambda", parameters = { LambdaArn = "...", NumberOfRetries = 3 } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessing {
    enabled: Option<bool>,
    #[serde(default)]
    processors: Vec<RawProcessor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessor {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDynamicPartitioning {
    enabled: Option<bool>,
    retry_duration_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    name: String,
    bucket_arn: Option<String>,
    role_arn: Option<String>,
    prefix: Option<String>,
    error_output_prefix: Option<String>,
    compression_format: Option<String>,
    buffering_hints: Option<RawBufferingHints>,
    processing_configuration: Option<RawProcessing>,
    dynamic_partitioning_configuration: Option<RawDynamicPartitioning>,
    data_format_conversion_configuration: Option<RawConversion>,
    /// `Tags`, as a table of key = value.
    tags: Option<std::collections::BTreeMap<String, String>>,
    /// `EncryptionConfiguration.KMSEncryptionConfig.AWSKMSKeyARN`: SSE-KMS for the objects.
    kms_key_arn: Option<String>,
    /// `CustomTimeZone`.
    custom_time_zone: Option<String>,
    /// `FileExtension`.
    file_extension: Option<String>,
    /// `S3BackupMode: Enabled` with this `S3BackupConfiguration`.
    s3_backup: Option<RawBackup>,
    /// `IcebergDestinationConfiguration`: records go into these tables; `bucket_arn` and
    /// `error_output_prefix` are where failed records go.
    iceberg: Option<RawIcebergStream>,
}

/// `[stream.iceberg]`: an Iceberg destination, snake_case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIcebergStream {
    /// A catalog of `[iceberg.catalogs]`; `default`.
    catalog: Option<String>,
    tables: Vec<RawIcebergTable>,
    /// `TableCreationConfiguration.Enabled`.
    create_tables: Option<bool>,
    /// `SchemaEvolutionConfiguration.Enabled`.
    schema_evolution: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIcebergTable {
    database: String,
    table: String,
    /// `PartitionSpec.Identity[].SourceName`: `col`, `day(col)`, ...
    partition: Option<Vec<String>>,
    /// `S3ErrorOutputPrefix`: where this table's failed records go.
    error_output_prefix: Option<String>,
}

impl RawIcebergStream {
    /// The Iceberg members the API would take, under the member spillway keeps them in.
    fn into_api(self) -> (String, serde_json::Value) {
        let catalog = match self.catalog.as_deref() {
            None | Some("default") => "catalog".to_owned(),
            Some(name) => format!("catalog/{name}"),
        };
        let tables: Vec<serde_json::Value> = self
            .tables
            .into_iter()
            .map(|t| {
                let mut v = serde_json::json!({
                    "DestinationDatabaseName": t.database,
                    "DestinationTableName": t.table,
                });
                if let Some(p) = t.error_output_prefix {
                    v["S3ErrorOutputPrefix"] = serde_json::json!(p);
                }
                if let Some(p) = t.partition {
                    v["PartitionSpec"] = serde_json::json!({
                        "Identity": p.into_iter().map(|s| serde_json::json!({"SourceName": s})).collect::<Vec<_>>()
                    });
                }
                v
            })
            .collect();
        (
            definition::iceberg::ICEBERG_MEMBER.to_owned(),
            serde_json::json!({
                "CatalogConfiguration": {
                    "CatalogARN": format!("arn:aws:glue:us-east-1:000000000000:{catalog}")
                },
                "DestinationTableConfigurationList": tables,
                "TableCreationConfiguration": {"Enabled": self.create_tables.unwrap_or(false)},
                "SchemaEvolutionConfiguration": {"Enabled": self.schema_evolution.unwrap_or(false)},
                "S3BackupMode": "FailedDataOnly",
            }),
        )
    }
}

/// `S3BackupConfiguration`, snake_case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    bucket_arn: Option<String>,
    prefix: Option<String>,
    error_output_prefix: Option<String>,
    compression_format: Option<String>,
    buffering_hints: Option<RawBufferingHints>,
    kms_key_arn: Option<String>,
}

impl RawBackup {
    /// The `S3BackupConfiguration` the API would take.
    fn into_api(self) -> serde_json::Value {
        let backup = S3Destination {
            bucket_arn: self.bucket_arn,
            prefix: self.prefix,
            error_output_prefix: self.error_output_prefix,
            compression_format: self.compression_format,
            buffering_hints: self.buffering_hints.map(BufferingHints::from),
            other: self.kms_key_arn.map(kms_encryption).into_iter().collect(),
            ..S3Destination::default()
        };
        // Serializing strings and numbers cannot fail.
        serde_json::to_value(backup).unwrap_or_default()
    }
}

/// `kms_key_arn = "..."` as the API's `EncryptionConfiguration` member.
fn kms_encryption(arn: String) -> (String, serde_json::Value) {
    (
        "EncryptionConfiguration".to_owned(),
        serde_json::json!({ "KMSEncryptionConfig": { "AWSKMSKeyARN": arn } }),
    )
}

impl From<RawBufferingHints> for BufferingHints {
    fn from(h: RawBufferingHints) -> Self {
        BufferingHints {
            size_in_mbs: h.size_in_mbs,
            interval_in_seconds: h.interval_in_seconds,
        }
    }
}

/// `DataFormatConversionConfiguration`, flattened: the deserializer by name, its options,
/// `[...parquet]` for `ParquetSerDe`, and the columns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConversion {
    enabled: Option<bool>,
    /// `OpenXJsonSerDe` (default) or `HiveJsonSerDe`.
    deserializer: Option<String>,
    case_insensitive: Option<bool>,
    convert_dots_in_json_keys_to_underscores: Option<bool>,
    column_to_json_key_mappings: Option<std::collections::BTreeMap<String, String>>,
    timestamp_formats: Option<Vec<String>>,
    parquet: Option<RawParquet>,
    /// A `[[table]]` of this file (`SchemaConfiguration`'s `DatabaseName` and `TableName`).
    table: Option<RawTableRef>,
    #[serde(default)]
    columns: Vec<RawColumn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableRef {
    database: Option<String>,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParquet {
    compression: Option<String>,
    block_size_bytes: Option<i64>,
    page_size_bytes: Option<i64>,
    enable_dictionary_compression: Option<bool>,
    max_padding_bytes: Option<i64>,
    writer_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

fn conversion_from_toml(
    c: RawConversion,
) -> Result<crate::definition::conversion::DataFormatConversionConfiguration, String> {
    use crate::definition::conversion as cv;
    let deserializer = match c.deserializer.as_deref().unwrap_or("OpenXJsonSerDe") {
        "OpenXJsonSerDe" => {
            if c.timestamp_formats.is_some() {
                return Err("timestamp_formats belongs to HiveJsonSerDe".into());
            }
            cv::DeserializerConfig {
                openx: Some(cv::OpenXJsonSerDe {
                    convert_dots_in_json_keys_to_underscores: c
                        .convert_dots_in_json_keys_to_underscores,
                    case_insensitive: c.case_insensitive,
                    column_to_json_key_mappings: c.column_to_json_key_mappings,
                }),
                hive: None,
            }
        }
        "HiveJsonSerDe" => {
            if c.case_insensitive.is_some()
                || c.convert_dots_in_json_keys_to_underscores.is_some()
                || c.column_to_json_key_mappings.is_some()
            {
                return Err("case_insensitive, convert_dots_in_json_keys_to_underscores and column_to_json_key_mappings belong to OpenXJsonSerDe".into());
            }
            cv::DeserializerConfig {
                openx: None,
                hive: Some(cv::HiveJsonSerDe {
                    timestamp_formats: c.timestamp_formats.unwrap_or_default(),
                }),
            }
        }
        other => {
            return Err(format!(
                "deserializer must be OpenXJsonSerDe or HiveJsonSerDe, got {other:?}"
            ));
        }
    };
    let p = c.parquet.unwrap_or_default();
    Ok(cv::DataFormatConversionConfiguration {
        enabled: c.enabled,
        schema_configuration: Some(cv::SchemaConfiguration {
            database_name: c.table.as_ref().and_then(|t| t.database.clone()),
            table_name: c.table.map(|t| t.name),
            columns: c
                .columns
                .into_iter()
                .map(|col| cv::Column {
                    name: col.name,
                    kind: col.kind,
                    comment: None,
                })
                .collect(),
            ..Default::default()
        }),
        input_format_configuration: Some(cv::InputFormatConfiguration {
            deserializer: Some(deserializer),
        }),
        output_format_configuration: Some(cv::OutputFormatConfiguration {
            serializer: Some(cv::SerializerConfig {
                parquet: Some(cv::ParquetSerDe {
                    block_size_bytes: p.block_size_bytes,
                    page_size_bytes: p.page_size_bytes,
                    compression: p.compression,
                    enable_dictionary_compression: p.enable_dictionary_compression,
                    max_padding_bytes: p.max_padding_bytes,
                    writer_version: p.writer_version,
                }),
                orc: None,
            }),
        }),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBufferingHints {
    size_in_mbs: Option<i64>,
    interval_in_seconds: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Validated settings.

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `admin_listen`: where /metrics, /healthz and /readyz are served, if not on `listen`.
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout: Duration,
    /// `max_delivery_streams`.
    pub max_streams: usize,
    pub journal: JournalSettings,
    pub max_memory_bytes: u64,
    /// `buffer.max_memory_wait_ms`.
    pub memory_wait: Duration,
    pub upload: UploadSettings,
    pub store: StoreSettings,
    pub transform: TransformSettings,
    pub max_active_partitions: usize,
    /// The budget of `MetadataExtractionQuery` programs.
    pub query_limits: crate::process::sandbox::QueryLimits,
    pub http: HttpSettings,
    /// `[auth]`'s keys; empty: no authentication.
    pub auth: Vec<crate::api::auth::Key>,
    /// `[tls]`: HTTPS on the API listener.
    pub tls: Option<crate::api::tls::TlsFiles>,
    /// Streams declared in the file: read-only over the API.
    pub streams: Vec<DeclaredStream>,
    /// Tables for `DataFormatConversionConfiguration.SchemaConfiguration`.
    pub tables: crate::definition::conversion::Tables,
    /// `[iceberg.catalogs]`, with `default` always present; `None`s are resolved at start
    /// (they depend on where the data directory and the local store are).
    pub iceberg_catalogs: std::collections::BTreeMap<String, IcebergCatalog>,
    /// `[iceberg.maintenance]`, if on.
    pub iceberg_maintenance: Option<crate::iceberg::Maintenance>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IcebergCatalog {
    pub uri: Option<String>,
    pub warehouse: Option<String>,
}

/// Limits of the HTTP listener against slow or piled-up clients.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_body_memory_bytes: u64,
    /// A request's line and headers, in bytes.
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

#[derive(Clone, Debug)]
pub struct TransformSettings {
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub cache_dir: PathBuf,
    /// `transform.component_dirs`, resolved; empty: any regular file.
    pub component_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct JournalSettings {
    pub fsync: bool,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub direct_io: bool,
}

#[derive(Clone, Debug)]
pub struct UploadSettings {
    pub concurrency: usize,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub gzip_level: u32,
    /// `upload.gzip_levels`: streams whose level is not `gzip_level`.
    pub gzip_levels: std::collections::BTreeMap<String, u32>,
}

impl UploadSettings {
    /// The gzip level of the stream called `stream`.
    pub fn gzip_level_for(&self, stream: &str) -> u32 {
        self.gzip_levels
            .get(stream)
            .copied()
            .unwrap_or(self.gzip_level)
    }
}

#[derive(Clone, Debug)]
pub enum StoreSettings {
    Local { root: PathBuf },
    S3(S3Settings),
}

/// Each `None` falls back to the standard AWS environment variables.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: Option<bool>,
    pub sign_payload: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}: {} problem(s):\n  {}", .path.display(), .problems.len(), .problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Settings {
    /// Reads the file named by `--config` (if any), then applies the flags on top.
    pub fn load(cli: &Cli) -> Result<Settings, ConfigError> {
        let (raw, path) = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                (raw, path.clone())
            }
            None => (RawConfig::default(), PathBuf::from("(command line)")),
        };
        validate(raw, cli).map_err(|problems| ConfigError::Invalid { path, problems })
    }

    /// Parses config text with no flags: for `check-config`-style validation and tests.
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        validate(raw, &Cli::default()).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

fn validate(raw: RawConfig, cli: &Cli) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();

    let listen = match (cli.listen, raw.listen.as_deref()) {
        (Some(addr), _) => Some(addr),
        (None, text) => {
            let text = text.unwrap_or(DEFAULT_LISTEN);
            text.parse::<SocketAddr>()
                .map_err(|e| problems.push(format!("listen: {text:?} is not an address: {e}")))
                .ok()
        }
    };
    let admin_listen = match (cli.admin_listen, raw.admin_listen.as_deref()) {
        (Some(addr), _) => Some(addr),
        (None, None) => None,
        (None, Some(text)) => text
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("admin_listen: {text:?} is not an address: {e}")))
            .ok(),
    };
    let data_dir = cli
        .data_dir
        .clone()
        .or(raw.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

    let mut positive = |path: &str, value: Option<u64>, default: u64| -> u64 {
        let v = value.unwrap_or(default);
        if v == 0 {
            problems.push(format!("{path}: must be greater than 0"));
        }
        v
    };
    let journal = JournalSettings {
        fsync: raw.journal.fsync.unwrap_or(true),
        segment_bytes: positive("journal.segment_mib", raw.journal.segment_mib, 64) * MIB,
        max_bytes: positive("journal.max_mib", raw.journal.max_mib, 4096) * MIB,
        direct_io: raw.journal.direct_io.unwrap_or(true),
    };
    let max_memory_bytes = positive("buffer.max_memory_mib", raw.buffer.max_memory_mib, 32) * MIB;
    let memory_wait_ms = raw.buffer.max_memory_wait_ms.unwrap_or(100);
    let upload = UploadSettings {
        concurrency: positive(
            "upload.concurrency",
            raw.upload.concurrency.map(|c| c as u64),
            8,
        ) as usize,
        multipart_threshold: positive(
            "upload.multipart_threshold_mib",
            raw.upload.multipart_threshold_mib,
            16,
        ) * MIB,
        part_size: raw.upload.part_size_mib.unwrap_or(8) * MIB,
        retry_initial: Duration::from_millis(positive(
            "upload.retry_initial_ms",
            raw.upload.retry_initial_ms,
            200,
        )),
        retry_max: Duration::from_millis(positive(
            "upload.retry_max_ms",
            raw.upload.retry_max_ms,
            30_000,
        )),
        gzip_level: raw.upload.gzip_level.unwrap_or(1),
        gzip_levels: raw.upload.gzip_levels.unwrap_or_default(),
    };
    let transform = TransformSettings {
        memory_bytes: positive("transform.memory_mib", raw.transform.memory_mib, 256) * MIB,
        timeout: Duration::from_secs(positive(
            "transform.timeout_seconds",
            raw.transform.timeout_seconds,
            10,
        )),
        cache_dir: raw
            .transform
            .cache_dir
            .unwrap_or_else(|| data_dir.join("transform-cache")),
        component_dirs: Vec::new(),
    };
    let max_active_partitions = positive(
        "partitioning.max_active_partitions",
        raw.partitioning.max_active_partitions,
        500,
    ) as usize;
    let query_limits = crate::process::sandbox::QueryLimits {
        timeout: Duration::from_millis(positive(
            "partitioning.query_timeout_ms",
            raw.partitioning.query_timeout_ms,
            1000,
        )),
        memory_bytes: positive(
            "partitioning.query_memory_mib",
            raw.partitioning.query_memory_mib,
            128,
        ) * MIB,
    };
    let http = HttpSettings {
        header_read_timeout: Duration::from_secs(positive(
            "http.header_read_timeout_seconds",
            raw.http.header_read_timeout_seconds,
            30,
        )),
        body_read_timeout: Duration::from_secs(positive(
            "http.body_read_timeout_seconds",
            raw.http.body_read_timeout_seconds,
            60,
        )),
        max_connections: positive("http.max_connections", raw.http.max_connections, 1024) as usize,
        max_body_memory_bytes: positive(
            "http.max_body_memory_mib",
            raw.http.max_body_memory_mib,
            64,
        ) * MIB,
        max_header_bytes: positive("http.max_header_kib", raw.http.max_header_kib, 16) as usize
            * 1024,
        max_headers: positive("http.max_headers", raw.http.max_headers, 100) as usize,
    };
    let shutdown_timeout = Duration::from_secs(raw.shutdown_timeout_seconds.unwrap_or(60));
    let max_streams = positive("max_delivery_streams", raw.max_delivery_streams, 5000) as usize;
    if !(8 * 1024..=1024 * 1024).contains(&http.max_header_bytes) {
        problems.push("http.max_header_kib: must be between 8 and 1024".into());
    }
    if memory_wait_ms > 10_000 {
        problems.push(format!(
            "buffer.max_memory_wait_ms: must be at most 10000, got {memory_wait_ms}"
        ));
    }
    if http.max_headers > 1000 {
        problems.push("http.max_headers: must be at most 1000".into());
    }
    let mut transform = transform;
    for dir in raw.transform.component_dirs.unwrap_or_default() {
        match dir.canonicalize() {
            Ok(resolved) if resolved.is_dir() => transform.component_dirs.push(resolved),
            Ok(_) => problems.push(format!(
                "transform.component_dirs: {} is not a directory",
                dir.display()
            )),
            Err(e) => problems.push(format!("transform.component_dirs: {}: {e}", dir.display())),
        }
    }
    if !(5 * MIB..=5 * 1024 * MIB).contains(&upload.part_size) {
        problems.push("upload.part_size_mib: must be between 5 and 5120 (S3's part limits)".into());
    }
    if !(1..=9).contains(&upload.gzip_level) {
        problems.push(format!(
            "upload.gzip_level: must be between 1 and 9, got {}",
            upload.gzip_level
        ));
    }
    for (stream, level) in &upload.gzip_levels {
        if let Err(m) = StreamName::parse(stream) {
            problems.push(format!("upload.gzip_levels: {stream:?}: {m}"));
        }
        if !(1..=9).contains(level) {
            problems.push(format!(
                "upload.gzip_levels.{stream}: must be between 1 and 9, got {level}"
            ));
        }
    }
    if upload.retry_max < upload.retry_initial {
        problems.push("upload.retry_max_ms: must be at least upload.retry_initial_ms".into());
    }

    let os = raw.object_store;
    let kind = match cli.object_store {
        Some(StoreKind::Local) => "local",
        Some(StoreKind::S3) => "s3",
        None => os.kind.as_deref().unwrap_or("local"),
    };
    let store = match kind {
        "local" => {
            for (set, key) in [
                (os.endpoint.is_some(), "endpoint"),
                (os.region.is_some(), "region"),
                (os.access_key_id.is_some(), "access_key_id"),
                (os.secret_access_key.is_some(), "secret_access_key"),
                (os.allow_http.is_some(), "allow_http"),
                (os.sign_payload.is_some(), "sign_payload"),
            ] {
                if set {
                    problems.push(format!(
                        "object_store.{key}: only applies with kind = \"s3\""
                    ));
                }
            }
            Some(StoreSettings::Local {
                root: os.local_root.unwrap_or_else(|| data_dir.join("buckets")),
            })
        }
        "s3" => {
            if os.local_root.is_some() {
                problems.push("object_store.local_root: only applies with kind = \"local\"".into());
            }
            Some(StoreSettings::S3(S3Settings {
                endpoint: os.endpoint,
                region: os.region,
                access_key_id: os.access_key_id,
                secret_access_key: os.secret_access_key,
                allow_http: os.allow_http,
                sign_payload: os.sign_payload.unwrap_or(false),
            }))
        }
        other => {
            problems.push(format!(
                "object_store.kind: must be \"local\" or \"s3\", got {other:?}"
            ));
            None
        }
    };

    let mut tables = crate::definition::conversion::Tables::default();
    for (i, t) in raw.tables.into_iter().enumerate() {
        let database = t.database.unwrap_or_else(|| "default".into());
        let columns = t
            .columns
            .into_iter()
            .map(|c| crate::definition::conversion::Column {
                name: c.name,
                kind: c.kind,
                comment: None,
            })
            .collect();
        if let Err(m) = tables.insert(&database, &t.name, columns) {
            problems.push(format!("table[{i}]: {m}"));
        }
    }

    let mut streams = Vec::new();
    for (i, s) in raw.streams.into_iter().enumerate() {
        let at = format!("stream[{i}]");
        let name = match StreamName::parse(&s.name) {
            Ok(n) => n,
            Err(m) => {
                problems.push(format!("{at}.name: {m}"));
                continue;
            }
        };
        if streams.iter().any(|d: &DeclaredStream| d.name == name) {
            problems.push(format!("{at}.name: stream {name} is declared twice"));
            continue;
        }
        let dest = S3Destination {
            role_arn: s.role_arn,
            bucket_arn: s.bucket_arn,
            prefix: s.prefix,
            error_output_prefix: s.error_output_prefix,
            buffering_hints: s.buffering_hints.map(BufferingHints::from),
            compression_format: s.compression_format,
            processing_configuration: match s.processing_configuration.map(processing_from_toml) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(m)) => {
                    problems.push(format!(
                        "{at}.processing_configuration (stream {name}): {m}"
                    ));
                    continue;
                }
            },
            dynamic_partitioning_configuration: s.dynamic_partitioning_configuration.map(|d| {
                definition::DynamicPartitioningConfiguration {
                    enabled: d.enabled,
                    retry_options: d.retry_duration_seconds.map(|s| definition::RetryOptions {
                        duration_in_seconds: Some(s),
                    }),
                }
            }),
            data_format_conversion_configuration: match s
                .data_format_conversion_configuration
                .map(conversion_from_toml)
            {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(m)) => {
                    problems.push(format!(
                        "{at}.data_format_conversion_configuration (stream {name}): {m}"
                    ));
                    continue;
                }
            },
            other: [
                s.kms_key_arn.map(kms_encryption),
                s.custom_time_zone
                    .map(|z| ("CustomTimeZone".to_owned(), serde_json::Value::String(z))),
                s.file_extension
                    .map(|e| ("FileExtension".to_owned(), serde_json::Value::String(e))),
            ]
            .into_iter()
            .flatten()
            .chain(s.iceberg.map(RawIcebergStream::into_api))
            .chain(s.s3_backup.into_iter().flat_map(|b| {
                [
                    (
                        "S3BackupMode".to_owned(),
                        serde_json::Value::from("Enabled"),
                    ),
                    ("S3BackupConfiguration".to_owned(), b.into_api()),
                ]
            }))
            .collect(),
        };
        let tags: Vec<Tag> = s
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| Tag {
                key,
                value: Some(value),
            })
            .collect();
        if let Err(m) = definition::tags::check_list(&tags, true) {
            problems.push(format!("{at}.tags (stream {name}): {m}"));
            continue;
        }
        match definition::validate(&dest, &tables, crate::process::jq::check) {
            Ok(_) => streams.push(DeclaredStream {
                name,
                destination: dest,
                tags,
            }),
            Err(errors) => {
                for e in errors {
                    problems.push(format!(
                        "{at}.{} (stream {name}): {}",
                        e.field.config_name(),
                        e.message
                    ));
                }
            }
        }
    }

    let mut iceberg_catalogs = std::collections::BTreeMap::new();
    iceberg_catalogs.insert("default".to_owned(), IcebergCatalog::default());
    for (name, c) in raw.iceberg.catalogs {
        let at = format!("iceberg.catalogs.{name}");
        if !definition::iceberg::valid_catalog_name(&name) {
            problems.push(format!(
                "{at}: a catalog name is 1-64 letters, digits, _ or -"
            ));
        }
        if let Some(uri) = &c.uri
            && !["sqlite://", "postgres://", "postgresql://"]
                .iter()
                .any(|p| uri.starts_with(p))
        {
            problems.push(format!(
                "{at}.uri: must start with sqlite://, postgres:// or postgresql://"
            ));
        }
        if let Some(w) = &c.warehouse
            && !(w.starts_with("s3://") || w.starts_with("file:///"))
        {
            problems.push(format!("{at}.warehouse: must start with s3:// or file:///"));
        }
        iceberg_catalogs.insert(
            name,
            IcebergCatalog {
                uri: c.uri,
                warehouse: c.warehouse,
            },
        );
    }

    let iceberg_maintenance = match raw.iceberg.maintenance {
        Some(m)
            if m.expire_snapshots_after_seconds.is_none()
                && m.rewrite_small_files != Some(true) =>
        {
            problems.push("iceberg.maintenance: set expire_snapshots_after_seconds or rewrite_small_files = true (or remove the table: maintenance is off without them)".into());
            None
        }
        Some(m) => {
            let retain = m.retain_snapshots.unwrap_or(100);
            let interval = m.interval_seconds.unwrap_or(3600);
            let target = m.target_file_mib.unwrap_or(64);
            let min_files = m.min_files.unwrap_or(4);
            for (key, v) in [("retain_snapshots", retain), ("interval_seconds", interval)] {
                if v == 0 {
                    problems.push(format!("iceberg.maintenance.{key}: must be greater than 0"));
                }
            }
            if !(1..=1024).contains(&target) {
                problems.push("iceberg.maintenance.target_file_mib: must be 1 to 1024".into());
            }
            if min_files < 2 {
                problems.push("iceberg.maintenance.min_files: must be at least 2".into());
            }
            Some(crate::iceberg::Maintenance {
                expire_after: m.expire_snapshots_after_seconds.map(Duration::from_secs),
                retain: retain.min(1 << 20) as usize,
                interval: Duration::from_secs(interval),
                rewrite: (m.rewrite_small_files == Some(true)).then(|| crate::iceberg::Rewrite {
                    target_bytes: target.clamp(1, 1024) * MIB,
                    min_files: min_files.clamp(2, 1 << 20) as usize,
                    closed_after: Duration::from_secs(m.closed_after_seconds.unwrap_or(3600)),
                }),
            })
        }
        None => None,
    };

    let auth = auth_keys(raw.auth, &mut problems);
    let tls = raw.tls.map(|t| crate::api::tls::TlsFiles {
        cert_file: t.cert_file,
        key_file: t.key_file,
        client_ca: t.client_ca,
    });
    if streams.len() > max_streams {
        problems.push(format!(
            "max_delivery_streams: the file declares {} streams, more than {max_streams}",
            streams.len()
        ));
    }
    match (listen, store) {
        (Some(listen), Some(store)) if problems.is_empty() => Ok(Settings {
            listen,
            admin_listen,
            data_dir,
            log_format: cli.log_format.or(raw.log_format).unwrap_or(LogFormat::Text),
            log_level: raw.log_level.unwrap_or_else(|| "info".into()),
            shutdown_timeout,
            max_streams,
            journal,
            max_memory_bytes,
            memory_wait: Duration::from_millis(memory_wait_ms),
            upload,
            store,
            transform,
            max_active_partitions,
            query_limits,
            http,
            auth,
            tls,
            streams,
            tables,
            iceberg_catalogs,
            iceberg_maintenance,
        }),
        _ => Err(problems),
    }
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("streams", &self.streams)
            .field("operations", &self.operations)
            .finish()
    }
}

/// Validates `[[auth.keys]]`, reading each secret from where it is kept.
fn auth_keys(raw: RawAuth, problems: &mut Vec<String>) -> Vec<crate::api::auth::Key> {
    use crate::api::auth::{Class, Key};
    let mut keys: Vec<Key> = Vec::new();
    for (i, k) in raw.keys.into_iter().enumerate() {
        let at = format!("auth.keys[{i}]");
        if k.access_key_id.is_empty() || k.access_key_id.len() > 128 {
            problems.push(format!("{at}.access_key_id: must be 1 to 128 characters"));
            continue;
        }
        if keys.iter().any(|o| o.access_key_id == k.access_key_id) {
            problems.push(format!(
                "{at}.access_key_id: {} appears twice",
                k.access_key_id
            ));
            continue;
        }
        let secret = match (k.secret, k.secret_file, k.secret_env) {
            (Some(s), None, None) => Some(s),
            (None, Some(path), None) => match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => {
                    problems.push(format!("{at}.secret_file: {}: {e}", path.display()));
                    None
                }
            },
            (None, None, Some(name)) => match std::env::var(&name) {
                Ok(value) => Some(value),
                Err(_) => {
                    problems.push(format!("{at}.secret_env: ${name} is not set"));
                    None
                }
            },
            _ => {
                problems.push(format!(
                    "{at}: give exactly one of secret, secret_file, secret_env"
                ));
                None
            }
        };
        let Some(secret) = secret else { continue };
        if secret.is_empty() {
            problems.push(format!("{at}: the secret is empty"));
            continue;
        }
        let mut classes = Vec::new();
        for op in k
            .operations
            .unwrap_or_else(|| vec!["put".into(), "read".into(), "manage".into()])
        {
            match Class::parse(&op) {
                Some(c) => classes.push(c),
                None => problems.push(format!(
                    "{at}.operations: {op:?} is not one of put, read, manage"
                )),
            }
        }
        let streams = k.streams.unwrap_or_else(|| vec!["*".into()]);
        if classes.is_empty() || streams.is_empty() {
            problems.push(format!(
                "{at}: a key with no operations or no streams can do nothing; remove it or grant something"
            ));
            continue;
        }
        keys.push(Key {
            access_key_id: k.access_key_id,
            secret,
            streams,
            classes,
        });
    }
    keys
}

fn processing_from_toml(raw: RawProcessing) -> Result<definition::ProcessingConfiguration, String> {
    let mut processors = Vec::new();
    for p in raw.processors {
        let mut parameters = Vec::new();
        for (name, value) in p.parameters {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "parameter {name} must be a string or a number, got {}",
                        other.type_str()
                    ));
                }
            };
            parameters.push(definition::ProcessorParameter {
                parameter_name: name,
                parameter_value: value,
            });
        }
        processors.push(definition::Processor {
            kind: p.kind,
            parameters,
        });
    }
    Ok(definition::ProcessingConfiguration {
        enabled: raw.enabled,
        processors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn processing_in_toml_uses_firehose_names_with_numbers_as_text() {
        let s = parse(
            r#"
[transform]
memory_mib = 64
timeout_seconds = 3
[partitioning]
max_active_partitions = 7
[[stream]]
name = "p"
bucket_arn = "arn:aws:s3:::bucket-a"
prefix = "k=!{partitionKeyFromLambda:k}/"
error_output_prefix = "e/!{firehose:error-output-type}/"
[stream.processing_configuration]
processors = [
  { type = "Lambda", parameters = { LambdaArn = "t.wasm", NumberOfRetries = 0, BufferSizeInMBs = 0.5 } },
  { type = "AppendDelimiterToRecord" },
]
[stream.dynamic_partitioning_configuration]
enabled = true
retry_duration_seconds = 300
"#,
        )
        .unwrap();
        assert_eq!(s.transform.memory_bytes, 64 * MIB);
        assert_eq!(s.transform.timeout, Duration::from_secs(3));
        assert_eq!(
            s.transform.cache_dir,
            PathBuf::from("spillway-data/transform-cache")
        );
        assert_eq!(s.max_active_partitions, 7);
        let d = definition::validate(
            &s.streams[0].destination,
            &s.tables,
            crate::process::jq::check,
        )
        .unwrap();
        assert!(d.dynamic_partitioning);
        let p = d.processing.unwrap();
        assert!(p.append_delimiter);
        let l = p.lambda.unwrap();
        assert_eq!((l.retries, l.call_bytes), (0, 500_000));
        assert_eq!(
            l.component,
            definition::ComponentSource::File(PathBuf::from("t.wasm"))
        );

        let err = parse(
            r#"
[partitioning]
max_active_partitions = 0
[[stream]]
name = "p"
bucket_arn = "arn:aws:s3:::bucket-a"
[stream.processing_configuration]
processors = [{ type = "Lambda", parameters = { LambdaArn = ["x"] } }]
[[stream]]
name = "q"
bucket_arn = "arn:aws:s3:::bucket-a"
[stream.processing_configuration]
processors = [{ type = "Bogus" }]
"#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "partitioning.max_active_partitions: must be greater than 0",
            "stream[0].processing_configuration (stream p): parameter LambdaArn must be a string or a number, got array",
            "stream[1].processing_configuration (stream q): Processors[0] (Bogus): unknown processor type",
        ] {
            assert!(err.contains(needle), "{needle} in {err}");
        }
    }

    #[test]
    fn an_iceberg_tables_error_prefix_is_checked_as_the_apis() {
        let stream = |prefix: &str| {
            format!(
                "[[stream]]\nname = \"p\"\nbucket_arn = \"arn:aws:s3:::failed\"\n[stream.iceberg]\ntables = [{{ database = \"g\", table = \"t\", error_output_prefix = \"{prefix}\" }}]\n"
            )
        };
        let s = parse(&stream("t-errors/!{firehose:error-output-type}/")).unwrap();
        let own = &s.streams[0].destination.other[crate::definition::iceberg::ICEBERG_MEMBER];
        let tables = crate::definition::iceberg::validate(own).unwrap().tables;
        assert_eq!(
            tables[0].error_prefix.as_deref(),
            Some("t-errors/!{firehose:error-output-type}/")
        );
        let err = parse(&stream("t/!{timestamp:yyyy}/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("S3ErrorOutputPrefix"), "{err}");
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(s.journal.fsync);
        assert_eq!(s.max_memory_bytes, 32 * MIB);
        assert_eq!(s.memory_wait, Duration::from_millis(100));
        assert_eq!(s.upload.gzip_level_for("any"), 1);
        assert!(
            matches!(s.store, StoreSettings::Local { ref root } if root == Path::new("spillway-data/buckets"))
        );
        let s = parse("[buffer]\nmax_memory_wait_ms = 0\n[upload]\ngzip_level = 2\ngzip_levels = { archive = 9 }\n").unwrap();
        assert_eq!(s.memory_wait, Duration::ZERO);
        assert_eq!(s.upload.gzip_level_for("archive"), 9);
        assert_eq!(s.upload.gzip_level_for("other"), 2);
    }

    #[test]
    fn all_problems_are_reported_together_with_paths() {
        let err = parse(
            r#"
listen = "nowhere"
[buffer]
max_memory_wait_ms = 10001
[upload]
gzip_level = 12
gzip_levels = { "game-events" = 0, "bad/name" = 3 }
[object_store]
kind = "local"
endpoint = "http://x"
[[stream]]
name = "a"
bucket_arn = "arn:aws:s3:::bucket-a"
buffering_hints = { size_in_mbs = 200 }
[[stream]]
name = "a/b"
"#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "listen:",
            "upload.gzip_level: must be between 1 and 9, got 12",
            "buffer.max_memory_wait_ms: must be at most 10000, got 10001",
            "upload.gzip_levels.game-events: must be between 1 and 9, got 0",
            "upload.gzip_levels: \"bad/name\"",
            "object_store.endpoint",
            "stream[0].buffering_hints.size_in_mbs (stream a)",
            "stream[1].name",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn auth_keys_take_their_secret_from_exactly_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let ok = parse(&format!(
            "[[auth.keys]]\naccess_key_id = \"A\"\nsecret = \"inline\"\n[[auth.keys]]\naccess_key_id = \"B\"\nsecret_file = {:?}\nstreams = [\"game-*\"]\noperations = [\"put\"]\n",
            file.display().to_string()
        ))
        .unwrap();
        assert_eq!(ok.auth.len(), 2);
        assert_eq!(
            ok.auth[1].secret, "from-a-file",
            "the file's newline is not part of it"
        );
        assert_eq!(ok.auth[1].classes, [crate::api::auth::Class::Put]);
        assert_eq!(ok.auth[0].streams, ["*"]);
        let err = parse(
            r#"
[[auth.keys]]
access_key_id = "A"
secret = "x"
secret_env = "Y"
[[auth.keys]]
access_key_id = "B"
secret_env = "SPILLWAY_SURELY_NOT_SET_ANYWHERE"
[[auth.keys]]
access_key_id = "C"
secret = "x"
operations = ["put", "write"]
[[auth.keys]]
access_key_id = "C"
secret = "y"
[[auth.keys]]
access_key_id = "D"
secret = "z"
operations = []
"#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "auth.keys[0]: give exactly one of secret, secret_file, secret_env",
            "auth.keys[1].secret_env: $SPILLWAY_SURELY_NOT_SET_ANYWHERE is not set",
            "auth.keys[2].operations: \"write\" is not one of put, read, manage",
            "auth.keys[3].access_key_id: C appears twice",
            "auth.keys[4]: a key with no operations or no streams can do nothing",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("[journal]\nfsynk = false\n").unwrap_err().to_string();
        assert!(err.contains("fsynk"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "spillway",
            "--listen",
            "127.0.0.1:9999",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        let s = validate(
            toml::from_str("listen = \"0.0.0.0:1\"\ndata_dir = \"/y\"").unwrap(),
            &cli,
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }
}
