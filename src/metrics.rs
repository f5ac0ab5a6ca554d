//! Every metric spillway exports, registered once in one registry and rendered for `/metrics`.
//!
//! Names carry the `spillway_` prefix and their unit; labels are bounded (stream, operation,
//! outcome), never a record id or a partition value. Per-stream handles are resolved once in
//! [`StreamMetrics`] so the ingest hot path does no label hashing.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    connections_refused: prometheus::IntCounter,
    bodies_refused: prometheus::IntCounter,
    request_body_bytes: IntGauge,
    tls_reloads: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    api_request_seconds: HistogramVec,
    incoming_records: IntCounterVec,
    incoming_bytes: IntCounterVec,
    incoming_put_requests: IntCounterVec,
    throttled_records: IntCounterVec,
    delivered_records: IntCounterVec,
    backup_records: IntCounterVec,
    delivered_bytes: IntCounterVec,
    objects_written: IntCounterVec,
    object_bytes: IntCounterVec,
    upload_failures: IntCounterVec,
    upload_retries: IntCounterVec,
    upload_seconds: HistogramVec,
    buffered_bytes: IntGaugeVec,
    journal_bytes: IntGaugeVec,
    journal_sync_seconds: HistogramVec,
    freshness_seconds: IntGaugeVec,
    buffer_interval_seconds: IntGaugeVec,
    buffer_size_bytes: IntGaugeVec,
    processed_records: IntCounterVec,
    transform_call_seconds: HistogramVec,
    transform_failures: IntCounterVec,
    error_records: IntCounterVec,
    active_partitions: IntGaugeVec,
    partition_cap_exceeded: IntCounterVec,
    query_over_budget: IntCounterVec,
    delivery_failures: IntCounterVec,
    journal_write_failures: IntCounterVec,
    journal_damage: IntCounterVec,
    stalled: IntGaugeVec,
    memory_reserved_bytes: IntGauge,
    memory_limit_bytes: IntGauge,
    memory_wait_seconds: HistogramVec,
    journal_limit_bytes: IntGauge,
    ready: IntGauge,
    /// Iceberg destinations' commits, by stream and table.
    pub iceberg: IcebergMetrics,
}

/// What Iceberg destinations count; labelled by stream and table (`database.table`, from
/// the stream's settings, so bounded).
pub struct IcebergMetrics {
    pub commits: IntCounterVec,
    pub commit_conflicts: IntCounterVec,
    pub commit_failures: IntCounterVec,
    pub data_files: IntCounterVec,
    pub rows: IntCounterVec,
    pub skipped_replays: IntCounterVec,
    pub maintenance_runs: IntCounterVec,
    pub snapshots_expired: IntCounterVec,
    pub files_rewritten: IntCounterVec,
}

/// The handles one delivery stream updates, resolved once.
#[derive(Clone)]
pub struct StreamMetrics {
    pub incoming_records: IntCounter,
    pub incoming_bytes: IntCounter,
    pub incoming_put_requests: IntCounter,
    pub throttled_records: IntCounter,
    pub delivered_records: IntCounter,
    pub backup_records: IntCounter,
    pub delivered_bytes: IntCounter,
    pub objects_written: IntCounter,
    pub object_bytes: IntCounter,
    pub upload_failures: IntCounter,
    pub upload_retries: IntCounter,
    pub upload_seconds: Histogram,
    pub buffered_bytes: IntGauge,
    pub journal_bytes: IntGauge,
    pub journal_sync_seconds: Histogram,
    pub freshness_seconds: IntGauge,
    pub buffer_interval_seconds: IntGauge,
    pub buffer_size_bytes: IntGauge,
    pub processed_ok: IntCounter,
    pub processed_dropped: IntCounter,
    pub processed_failed: IntCounter,
    pub transform_call_seconds: Histogram,
    pub active_partitions: IntGauge,
    pub partition_cap_exceeded: IntCounter,
    pub query_over_budget: IntCounter,
    pub journal_write_failures: IntCounter,
    pub journal_damage: IntCounter,
    transform_failures: IntCounterVec,
    error_records: IntCounterVec,
    delivery_failures: IntCounterVec,
    stalled: IntGaugeVec,
    stream: String,
}

impl StreamMetrics {
    /// A failed transform call, by kind (trap, timeout, out_of_memory, wrong_count, instantiate).
    pub fn transform_failure(&self, kind: &str) {
        self.transform_failures
            .with_label_values(&[self.stream.as_str(), kind])
            .inc();
    }

    /// A delivery step that failed and is retried (or, for processing, replaced by delivering
    /// the batch unprocessed to processing-failed): `encode` or `process`.
    pub fn delivery_failure(&self, stage: &str) {
        self.delivery_failures
            .with_label_values(&[self.stream.as_str(), stage])
            .inc();
    }

    /// Whether the stream is stalled for `reason` (one of [`STALL_REASONS`]).
    pub fn set_stalled(&self, reason: &str, stalled: bool) {
        self.stalled
            .with_label_values(&[self.stream.as_str(), reason])
            .set(i64::from(stalled));
    }

    /// Records delivered to the error output, by error output type.
    pub fn error_records(&self, output_type: &str, n: u64) {
        self.error_records
            .with_label_values(&[self.stream.as_str(), output_type])
            .inc_by(n);
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn single_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric definitions are static and valid");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static and valid");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("metric definitions are static and valid");
    registry
        .register(Box::new(h.clone()))
        .expect("each metric is registered once");
    h
}

/// Why a stream is stalled: label values of `spillway_stream_stalled{reason}`. `journal`: its
/// journal refuses writes; `upload`: uploads keep failing; `held`: records this run cannot
/// deliver stay in the journal.
pub const STALL_REASONS: [&str; 3] = ["journal", "upload", "held"];

/// Label values of `spillway_delivery_failures_total{stage}`.
pub const DELIVERY_FAILURE_STAGES: [&str; 2] = ["encode", "process"];

/// Label values of `spillway_transform_failures_total{kind}`.
pub const TRANSFORM_FAILURE_KINDS: [&str; 5] = [
    "trap",
    "timeout",
    "out_of_memory",
    "wrong_count",
    "instantiate",
];
/// Label values of `spillway_error_records_total{type}`.
pub const ERROR_OUTPUT_TYPES: [&str; 3] = [
    "processing-failed",
    "partitioning-failed",
    "activePartitionExceeded",
];

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
        let memory_reserved_bytes = single_gauge(
            &r,
            "spillway_memory_reserved_bytes",
            "Bytes of record data held in memory across all streams (buffered or being uploaded).",
        );
        let memory_limit_bytes = single_gauge(
            &r,
            "spillway_memory_limit_bytes",
            "Cap on spillway_memory_reserved_bytes (buffer.max_memory_mib); ingest is throttled past it.",
        );
        let memory_wait_seconds = histogram(
            &r,
            "spillway_memory_wait_seconds",
            "Time a put request waited for room under buffer.max_memory_mib (at most buffer.max_memory_wait_ms); outcome=reserved: every record fitted in time, outcome=timed_out: the records that did not were refused.",
            &["outcome"],
            LATENCY_BUCKETS.to_vec(),
        );
        for outcome in ["reserved", "timed_out"] {
            memory_wait_seconds.with_label_values(&[outcome]);
        }
        let journal_limit_bytes = single_gauge(
            &r,
            "spillway_journal_limit_bytes",
            "Cap on the journal's bytes across all streams (journal.max_mib); ingest is throttled past it.",
        );
        let ready = single_gauge(
            &r,
            "spillway_ready",
            "1 while serving; 0 while the journal replays at startup and while draining at shutdown (as /readyz).",
        );
        let connections_refused = prometheus::IntCounter::new(
            "spillway_connections_refused_total",
            "Connections closed as soon as they were accepted because http.max_connections were open.",
        )
        .expect("metric definitions are static and valid");
        r.register(Box::new(connections_refused.clone()))
            .expect("each metric is registered once");
        let bodies_refused = prometheus::IntCounter::new(
            "spillway_request_bodies_refused_total",
            "Requests answered ServiceUnavailableException while their body was read, because request bodies being read held http.max_body_memory_mib already.",
        )
        .expect("metric definitions are static and valid");
        r.register(Box::new(bodies_refused.clone()))
            .expect("each metric is registered once");
        let request_body_bytes = single_gauge(
            &r,
            "spillway_request_body_bytes",
            "Bytes of request bodies read and not yet turned into records (capped by http.max_body_memory_mib).",
        );
        Metrics {
            connections_refused,
            bodies_refused,
            request_body_bytes,
            tls_reloads: counter(
                &r,
                "spillway_tls_reloads_total",
                "Reloads of the TLS certificate (SIGHUP or a changed file) by outcome: ok, or failed (the previous certificate stays in use).",
                &["outcome"],
            ),
            tls_handshake_failures: counter(
                &r,
                "spillway_tls_handshake_failures_total",
                "TLS connections closed before a request: failed (protocol, certificate or client certificate refused) or timeout (no handshake within http.header_read_timeout_seconds).",
                &["reason"],
            ),
            api_requests: counter(
                &r,
                "spillway_api_requests_total",
                "Firehose API requests by operation and outcome (ok or the AWS error type).",
                &["operation", "outcome"],
            ),
            api_request_seconds: histogram(
                &r,
                "spillway_api_request_duration_seconds",
                "Firehose API request latency, from body read to response.",
                &["operation"],
                LATENCY_BUCKETS.to_vec(),
            ),
            incoming_records: counter(
                &r,
                "spillway_incoming_records_total",
                "Records accepted (acknowledged) per stream.",
                &["stream"],
            ),
            incoming_bytes: counter(
                &r,
                "spillway_incoming_bytes_total",
                "Decoded payload bytes accepted per stream.",
                &["stream"],
            ),
            incoming_put_requests: counter(
                &r,
                "spillway_incoming_put_requests_total",
                "PutRecord and PutRecordBatch requests that accepted at least one record.",
                &["stream"],
            ),
            throttled_records: counter(
                &r,
                "spillway_throttled_records_total",
                "Records refused with ServiceUnavailableException (memory, journal or queue full).",
                &["stream"],
            ),
            delivered_records: counter(
                &r,
                "spillway_delivered_records_total",
                "Records delivered to the destination (their object was written).",
                &["stream"],
            ),
            backup_records: counter(
                &r,
                "spillway_backup_records_total",
                "Source records written to the backup destination (S3BackupMode Enabled).",
                &["stream"],
            ),
            delivered_bytes: counter(
                &r,
                "spillway_delivered_bytes_total",
                "Payload bytes delivered to the destination, before compression.",
                &["stream"],
            ),
            objects_written: counter(
                &r,
                "spillway_objects_written_total",
                "Objects written to the destination.",
                &["stream"],
            ),
            object_bytes: counter(
                &r,
                "spillway_object_bytes_total",
                "Bytes of objects written to the destination, after compression.",
                &["stream"],
            ),
            upload_failures: counter(
                &r,
                "spillway_upload_failures_total",
                "Failed object upload attempts.",
                &["stream"],
            ),
            upload_retries: counter(
                &r,
                "spillway_upload_retries_total",
                "Upload attempts that were retries of a failed attempt.",
                &["stream"],
            ),
            upload_seconds: histogram(
                &r,
                "spillway_upload_duration_seconds",
                "Latency of successful object uploads (the last attempt).",
                &["stream"],
                LATENCY_BUCKETS.to_vec(),
            ),
            buffered_bytes: gauge(
                &r,
                "spillway_buffered_bytes",
                "Record bytes accepted but not yet delivered (open buffer plus uploads in flight).",
                &["stream"],
            ),
            journal_bytes: gauge(
                &r,
                "spillway_journal_bytes",
                "Bytes of the stream's write-ahead log on disk.",
                &["stream"],
            ),
            journal_sync_seconds: histogram(
                &r,
                "spillway_journal_sync_duration_seconds",
                "Group commits: time to write and fsync one group of journal entries.",
                &["stream"],
                LATENCY_BUCKETS.to_vec(),
            ),
            freshness_seconds: gauge(
                &r,
                "spillway_data_freshness_seconds",
                "Age of the oldest record not yet delivered (0 when none is waiting).",
                &["stream"],
            ),
            buffer_interval_seconds: gauge(
                &r,
                "spillway_buffer_interval_seconds",
                "The stream's BufferingHints.IntervalInSeconds in force.",
                &["stream"],
            ),
            buffer_size_bytes: gauge(
                &r,
                "spillway_buffer_size_bytes",
                "The stream's BufferingHints.SizeInMBs in force, in bytes.",
                &["stream"],
            ),
            processed_records: counter(
                &r,
                "spillway_processed_records_total",
                "Records through the stream's processing, by result: ok (delivered), dropped (on purpose, by the transform) or failed (sent to the error output).",
                &["stream", "result"],
            ),
            transform_call_seconds: histogram(
                &r,
                "spillway_transform_call_duration_seconds",
                "Latency of one transform call (one batch of records), failed calls included.",
                &["stream"],
                LATENCY_BUCKETS.to_vec(),
            ),
            transform_failures: counter(
                &r,
                "spillway_transform_failures_total",
                "Failed transform calls by kind: trap, timeout, out_of_memory, wrong_count, instantiate.",
                &["stream", "kind"],
            ),
            error_records: counter(
                &r,
                "spillway_error_records_total",
                "Records written under the ErrorOutputPrefix, by error output type.",
                &["stream", "type"],
            ),
            active_partitions: gauge(
                &r,
                "spillway_active_partitions",
                "Partition buffers open (dynamic partitioning): partitions holding records not written yet.",
                &["stream"],
            ),
            partition_cap_exceeded: counter(
                &r,
                "spillway_partition_cap_exceeded_records_total",
                "Records sent to the error output because their intake batch had reached partitioning.max_active_partitions partitions.",
                &["stream"],
            ),
            delivery_failures: counter(
                &r,
                "spillway_delivery_failures_total",
                "Delivery steps that failed before the upload: encode (retried with backoff) or process (the batch then goes to processing-failed unprocessed).",
                &["stream", "stage"],
            ),
            stalled: gauge(
                &r,
                "spillway_stream_stalled",
                "1 while a stream cannot make progress, by reason: journal (its journal refuses writes after a failed write or fsync, so it takes no records) or upload (3 or more uploads failed in a row, so records wait in the journal) or held (records this run cannot deliver, such as those of an unreadable journal entry, stay in the journal until the next start).",
                &["stream", "reason"],
            ),
            journal_damage: counter(
                &r,
                "spillway_journal_damage_total",
                "Damaged stretches of a stream's journal passed over when it was opened (a flipped byte, a cut or zeroed stretch, a missing or foreign segment): the records in them are lost, every intact one is replayed. The log names the file and offset.",
                &["stream"],
            ),
            journal_write_failures: counter(
                &r,
                "spillway_journal_write_failures_total",
                "Journal writes or fsyncs that failed (a full or failing disk): the stream answers ServiceUnavailableException until the journal recovers, which it retries on its own.",
                &["stream"],
            ),
            query_over_budget: counter(
                &r,
                "spillway_query_over_budget_records_total",
                "Records sent to processing-failed because the MetadataExtractionQuery went over its time, memory or stack budget on them (or was not run after two such records in a batch).",
                &["stream"],
            ),
            memory_reserved_bytes,
            memory_limit_bytes,
            memory_wait_seconds,
            journal_limit_bytes,
            ready,
            iceberg: IcebergMetrics {
                commits: counter(
                    &r,
                    "spillway_iceberg_commits_total",
                    "Append snapshots committed to Iceberg tables (one per flushed batch and table).",
                    &["stream", "table"],
                ),
                commit_conflicts: counter(
                    &r,
                    "spillway_iceberg_commit_conflicts_total",
                    "Commits the catalog refused because another writer committed first; each is retried on the new table state.",
                    &["table"],
                ),
                commit_failures: counter(
                    &r,
                    "spillway_iceberg_commit_failures_total",
                    "Attempts to write or commit a batch to an Iceberg table that failed (catalog or store unreachable, table missing); each is retried with backoff.",
                    &["stream", "table"],
                ),
                data_files: counter(
                    &r,
                    "spillway_iceberg_data_files_total",
                    "Parquet data files added to Iceberg tables.",
                    &["stream", "table"],
                ),
                rows: counter(
                    &r,
                    "spillway_iceberg_rows_total",
                    "Rows added to Iceberg tables.",
                    &["stream", "table"],
                ),
                skipped_replays: counter(
                    &r,
                    "spillway_iceberg_replays_skipped_total",
                    "Replayed batches not appended again because the table already has their snapshot (exactly once across restarts).",
                    &["stream", "table"],
                ),
                maintenance_runs: counter(
                    &r,
                    "spillway_iceberg_maintenance_runs_total",
                    "Runs of the Iceberg maintenance job ([iceberg.maintenance]) per table, by outcome (ok, failed).",
                    &["table", "outcome"],
                ),
                snapshots_expired: counter(
                    &r,
                    "spillway_iceberg_snapshots_expired_total",
                    "Snapshots the Iceberg maintenance job expired.",
                    &["table"],
                ),
                files_rewritten: counter(
                    &r,
                    "spillway_iceberg_small_files_rewritten_total",
                    "Small data files the Iceberg maintenance job rewrote into larger ones (files removed from the table).",
                    &["table"],
                ),
            },
            registry: r,
        }
    }

    pub fn stream(&self, stream: &str) -> StreamMetrics {
        let l = &[stream];
        // Every labelled series exists from the start, at 0, so rates and dashboards read
        // 0 rather than "no data" until the first failure.
        for kind in TRANSFORM_FAILURE_KINDS {
            self.transform_failures.with_label_values(&[stream, kind]);
        }
        for t in ERROR_OUTPUT_TYPES {
            self.error_records.with_label_values(&[stream, t]);
        }
        for stage in DELIVERY_FAILURE_STAGES {
            self.delivery_failures.with_label_values(&[stream, stage]);
        }
        for reason in STALL_REASONS {
            self.stalled.with_label_values(&[stream, reason]);
        }
        StreamMetrics {
            incoming_records: self.incoming_records.with_label_values(l),
            incoming_bytes: self.incoming_bytes.with_label_values(l),
            incoming_put_requests: self.incoming_put_requests.with_label_values(l),
            throttled_records: self.throttled_records.with_label_values(l),
            delivered_records: self.delivered_records.with_label_values(l),
            backup_records: self.backup_records.with_label_values(l),
            delivered_bytes: self.delivered_bytes.with_label_values(l),
            objects_written: self.objects_written.with_label_values(l),
            object_bytes: self.object_bytes.with_label_values(l),
            upload_failures: self.upload_failures.with_label_values(l),
            upload_retries: self.upload_retries.with_label_values(l),
            upload_seconds: self.upload_seconds.with_label_values(l),
            buffered_bytes: self.buffered_bytes.with_label_values(l),
            journal_bytes: self.journal_bytes.with_label_values(l),
            journal_sync_seconds: self.journal_sync_seconds.with_label_values(l),
            freshness_seconds: self.freshness_seconds.with_label_values(l),
            buffer_interval_seconds: self.buffer_interval_seconds.with_label_values(l),
            buffer_size_bytes: self.buffer_size_bytes.with_label_values(l),
            processed_ok: self.processed_records.with_label_values(&[stream, "ok"]),
            processed_dropped: self
                .processed_records
                .with_label_values(&[stream, "dropped"]),
            processed_failed: self
                .processed_records
                .with_label_values(&[stream, "failed"]),
            transform_call_seconds: self.transform_call_seconds.with_label_values(l),
            active_partitions: self.active_partitions.with_label_values(l),
            partition_cap_exceeded: self.partition_cap_exceeded.with_label_values(l),
            query_over_budget: self.query_over_budget.with_label_values(l),
            journal_write_failures: self.journal_write_failures.with_label_values(l),
            journal_damage: self.journal_damage.with_label_values(l),
            transform_failures: self.transform_failures.clone(),
            error_records: self.error_records.clone(),
            delivery_failures: self.delivery_failures.clone(),
            stalled: self.stalled.clone(),
            stream: stream.to_owned(),
        }
    }

    /// Drops a deleted stream's series so they do not linger at their last value.
    pub fn forget_stream(&self, stream: &str) {
        let l = &[stream];
        for vec in [
            &self.incoming_records,
            &self.incoming_bytes,
            &self.incoming_put_requests,
            &self.throttled_records,
            &self.delivered_records,
            &self.backup_records,
            &self.delivered_bytes,
            &self.objects_written,
            &self.object_bytes,
            &self.upload_failures,
            &self.upload_retries,
            &self.partition_cap_exceeded,
            &self.query_over_budget,
            &self.journal_write_failures,
            &self.journal_damage,
        ] {
            let _ = vec.remove_label_values(l);
        }
        for (vec, values) in [
            (&self.processed_records, &["ok", "dropped", "failed"][..]),
            (&self.transform_failures, &TRANSFORM_FAILURE_KINDS[..]),
            (&self.error_records, &ERROR_OUTPUT_TYPES[..]),
            (&self.delivery_failures, &DELIVERY_FAILURE_STAGES[..]),
        ] {
            for v in values {
                let _ = vec.remove_label_values(&[stream, v]);
            }
        }
        for vec in [
            &self.buffered_bytes,
            &self.journal_bytes,
            &self.freshness_seconds,
            &self.buffer_interval_seconds,
            &self.buffer_size_bytes,
            &self.active_partitions,
        ] {
            let _ = vec.remove_label_values(l);
        }
        for reason in STALL_REASONS {
            let _ = self.stalled.remove_label_values(&[stream, reason]);
        }
        let _ = self.upload_seconds.remove_label_values(l);
        let _ = self.transform_call_seconds.remove_label_values(l);
        let _ = self.journal_sync_seconds.remove_label_values(l);
    }

    /// A connection closed at once: `http.max_connections` were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A TLS certificate reload, successful or not.
    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// A TLS connection that did not get through its handshake: `failed` or `timeout`.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// A request refused while its body was read: bodies in memory were at their cap.
    pub fn body_refused(&self) {
        self.bodies_refused.inc();
    }

    pub fn request_body_bytes(&self) -> &IntGauge {
        &self.request_body_bytes
    }

    pub fn api_request(&self, operation: &str, outcome: &str, seconds: f64) {
        self.api_requests
            .with_label_values(&[operation, outcome])
            .inc();
        self.api_request_seconds
            .with_label_values(&[operation])
            .observe(seconds);
    }

    /// A put request waited `seconds` for room in the memory budget; `reserved`: all of it fit.
    pub fn memory_waited(&self, reserved: bool, seconds: f64) {
        let outcome = if reserved { "reserved" } else { "timed_out" };
        self.memory_wait_seconds
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    pub fn memory_reserved(&self) -> &IntGauge {
        &self.memory_reserved_bytes
    }

    /// The configured caps, exported so dashboards and alerts can compare against them.
    pub fn set_limits(&self, memory_bytes: u64, journal_bytes: u64) {
        self.memory_limit_bytes.set(memory_bytes as i64);
        self.journal_limit_bytes.set(journal_bytes as i64);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
