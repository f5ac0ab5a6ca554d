//! spillway: a self-hosted, Firehose-compatible delivery daemon.
//!
//! Modules in the order a record travels through them:
//!
//! - [`config`]: TOML file + command line -> validated [`config::Settings`].
//! - [`api`]: the HTTP edge: routing, the Firehose JSON 1.1 protocol, limits, AWS error shapes.
//! - [`catalog`]: delivery streams: definitions, control-plane operations, persistence.
//! - [`journal`]: the per-stream write-ahead log: append, group commit, replay, release.
//! - [`pipeline`]: per stream: buffer, seal by size or age, hand sealed batches to the sink;
//!   its journal entries (seals, flushes) have a versioned on-disk format of their own.
//! - [`process`]: for streams with processing: transform, partition keys (jq, run in sandboxed
//!   worker processes by [`process::sandbox`]), delimiter, and error records; one sealed batch
//!   -> records per partition plus failures.
//! - [`transform`]: WebAssembly components (wasmtime): compile cache, sandbox, instance pool.
//! - [`encode`]: sealed batch -> object bytes (JSON lines, gzip).
//! - [`sink`]: object bytes -> object store, under deterministic keys, retried until they land.
//! - [`metrics`]: every metric, registered once; rendered for `/metrics`.
//! - [`app`]: wiring; the one place that knows startup and shutdown order.

pub mod api;
pub mod app;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod durable;
pub mod encode;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod sink;
pub mod transform;
