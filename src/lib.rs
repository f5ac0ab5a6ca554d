//! spillway: a self-hosted, Firehose-compatible delivery daemon.
//!
//! Modules in the order a record travels through them:
//!
//! - [`config`]: TOML file + command line -> validated [`config::Settings`].
//! - [`api`]: the HTTP edge: routing, the Firehose JSON 1.1 protocol, limits, AWS error shapes.
//! - [`catalog`]: the streams that exist: control-plane operations, persistence, and each
//!   stream's running pipeline.
//! - [`journal`]: the per-stream write-ahead log: frames, segments, append, sync, replay,
//!   release. Knows nothing of streams.
//! - [`pipeline`]: one stream's run. Ingest under the memory budget (`budget`: owning
//!   reservations); the journal writer (`group_commit`: group commit, recovery); the batcher
//!   (`batcher`), which buffers and seals (`intake`), holds partitioned batches until their
//!   objects land (`holds`, `partitions`), names objects (`naming`) and starts deliveries
//!   (`delivery`: process, encode, upload, outcomes). Its journal entries have a versioned
//!   on-disk format of their own (`entries`).
//! - [`process`]: for streams with processing: transform, partition keys (jq, run in sandboxed
//!   worker processes by [`process::sandbox`]), delimiter, and error records; one sealed batch
//!   -> records per partition plus failures.
//! - [`transform`]: WebAssembly components (wasmtime): compile cache, sandbox, instance pool.
//! - [`encode`]: records -> object bytes (JSON lines, gzip, Parquet).
//! - [`sink`]: object bytes -> object store, under the keys the pipeline chose, retried until
//!   they land; it reports to the stream through an `Uploader`, never the pipeline itself.
//!
//! Beside the flow:
//!
//! - [`definition`]: what a delivery stream is (name, destination settings, prefixes, format
//!   conversion, Hive types) and their validation: the bottom layer every module may use.
//! - [`metrics`]: every metric, registered once; rendered for `/metrics`.
//! - [`durable`]: writing a file or directory entry so it survives a crash.
//! - [`app`]: wiring; the one place that knows startup and shutdown order.
//! - [`commands`]: the binary's subcommands besides the daemon (probes, config checks).

pub mod api;
pub mod app;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod definition;
pub mod durable;
pub mod encode;
#[doc(hidden)]
pub mod fuzzing;
pub mod iceberg;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod sink;
pub mod transform;
