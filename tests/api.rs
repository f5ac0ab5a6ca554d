//! The Firehose API surface against the running daemon: every error type, every limit at its
//! edge, throttling, control-plane persistence across restarts, and the operational endpoints.

mod common;

use std::time::Duration;

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{
    BufferingHints, CompressionFormat, ExtendedS3DestinationUpdate, Record,
    S3DestinationConfiguration,
};
use common::*;

const MAX_RECORD: usize = 1_024_000;
const MAX_REQUEST: usize = 4 * 1024 * 1024;

fn blob_records(sizes: &[usize]) -> Vec<Record> {
    sizes
        .iter()
        .map(|n| {
            Record::builder()
                .data(Blob::new(vec![b'a'; *n]))
                .build()
                .unwrap()
        })
        .collect()
}

async fn put_sizes(d: &Daemon, stream: &str, sizes: &[usize]) -> Result<i32, (String, String)> {
    d.firehose_with_retries(1)
        .put_record_batch()
        .delivery_stream_name(stream)
        .set_records(Some(blob_records(sizes)))
        .send()
        .await
        .map(|o| o.failed_put_count())
        .map_err(|e| {
            let e = e.into_service_error();
            (
                e.code().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_limits_at_their_edges() {
    let d = Daemon::start("");
    let fh = d.firehose();
    create_stream(&fh, "limits", s3_destination("limits-bucket", 128, 900)).await;

    // Records per request: 500 is fine, 501 is not; zero is not either.
    assert_eq!(put_sizes(&d, "limits", &[10; 500]).await, Ok(0));
    let (code, msg) = put_sizes(&d, "limits", &[10; 501]).await.unwrap_err();
    assert_eq!(code, "InvalidArgumentException");
    assert!(msg.contains("501"), "{msg}");
    let (code, _) = put_sizes(&d, "limits", &[]).await.unwrap_err();
    assert_eq!(code, "InvalidArgumentException");

    // Bytes per record, after base64 decoding: 1,000 KiB exactly.
    assert_eq!(put_sizes(&d, "limits", &[MAX_RECORD]).await, Ok(0));
    let (code, msg) = put_sizes(&d, "limits", &[1, MAX_RECORD + 1])
        .await
        .unwrap_err();
    assert_eq!(code, "InvalidArgumentException");
    assert!(msg.contains("Records[1].Data"), "{msg}");

    // Bytes per request: 4 MiB exactly.
    let rest = MAX_REQUEST - 4 * MAX_RECORD;
    let exact = [MAX_RECORD, MAX_RECORD, MAX_RECORD, MAX_RECORD, rest];
    assert_eq!(put_sizes(&d, "limits", &exact).await, Ok(0));
    let over = [MAX_RECORD, MAX_RECORD, MAX_RECORD, MAX_RECORD, rest + 1];
    let (code, msg) = put_sizes(&d, "limits", &over).await.unwrap_err();
    assert_eq!(code, "InvalidArgumentException");
    assert!(msg.contains("4 MiB"), "{msg}");

    // An empty record is accepted, as Firehose does.
    assert_eq!(put_sizes(&d, "limits", &[0]).await, Ok(0));

    // PutRecord shares the per-record limit.
    let big = fh
        .put_record()
        .delivery_stream_name("limits")
        .record(
            Record::builder()
                .data(Blob::new(vec![b'x'; MAX_RECORD + 1]))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(big.code(), Some("InvalidArgumentException"));

    // Every accepted record was counted, and the daemon is still serving.
    let accepted = 500 + 1 + 5 + 1;
    assert_eq!(
        d.metric("spillway_incoming_records_total{stream=\"limits\"}"),
        accepted as f64
    );
    assert_eq!(d.get("/healthz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_aws_errors() {
    let d = Daemon::start("");
    create_stream(&d.firehose(), "s", s3_destination("b-1", 1, 60)).await;
    let long_name = format!(r#"{{"DeliveryStreamName":"{}"}}"#, "n".repeat(100_000));
    let cases: &[(Option<&str>, &str, u16, &str)] = &[
        (None, "{}", 400, "UnknownOperationException"),
        (Some("Explode"), "{}", 400, "UnknownOperationException"),
        (
            Some("PutRecordBatch"),
            "{not json",
            400,
            "SerializationException",
        ),
        (Some("PutRecordBatch"), "", 400, "SerializationException"),
        (
            Some("PutRecordBatch"),
            r#"{"DeliveryStreamName":5,"Records":[]}"#,
            400,
            "SerializationException",
        ),
        (
            Some("PutRecordBatch"),
            r#"{"DeliveryStreamName":"s","Records":{"Data":"aGk="}}"#,
            400,
            "SerializationException",
        ),
        (
            Some("PutRecordBatch"),
            r#"{"DeliveryStreamName":"s"}"#,
            400,
            "ValidationException",
        ),
        (
            Some("PutRecordBatch"),
            r#"{"DeliveryStreamName":"s","Records":[{"Data":"aGk="},{"Data":"%%%"}]}"#,
            400,
            "InvalidArgumentException",
        ),
        (
            Some("PutRecord"),
            r#"{"DeliveryStreamName":"s","Record":{"Data":"not base64"}}"#,
            400,
            "InvalidArgumentException",
        ),
        (
            Some("PutRecord"),
            r#"{"DeliveryStreamName":"missing","Record":{"Data":"aGk="}}"#,
            400,
            "ResourceNotFoundException",
        ),
        // A name no stream can have is a validation error, answered without echoing it.
        (
            Some("DescribeDeliveryStream"),
            &long_name,
            400,
            "ValidationException",
        ),
        (
            Some("CreateDeliveryStream"),
            r#"{"DeliveryStreamName":"x","DeliveryStreamType":"KinesisStreamAsSource","ExtendedS3DestinationConfiguration":{"BucketARN":"arn:aws:s3:::b-1"}}"#,
            400,
            "InvalidArgumentException",
        ),
        (
            Some("CreateDeliveryStream"),
            r#"{"DeliveryStreamName":"x","RedshiftDestinationConfiguration":{}}"#,
            400,
            "InvalidArgumentException",
        ),
        (
            Some("CreateDeliveryStream"),
            r#"{"DeliveryStreamName":"bad/name","ExtendedS3DestinationConfiguration":{"BucketARN":"arn:aws:s3:::b-1"}}"#,
            400,
            "InvalidArgumentException",
        ),
        (
            Some("ListDeliveryStreams"),
            r#"{"Limit":0}"#,
            400,
            "InvalidArgumentException",
        ),
    ];
    for (target, body, status, kind) in cases {
        let (got_status, got_body) = d.raw(*target, body.as_bytes());
        let v: serde_json::Value = serde_json::from_str(&got_body)
            .unwrap_or_else(|e| panic!("{target:?} {body}: not JSON ({e}): {got_body}"));
        assert_eq!(
            (got_status, v["__type"].as_str().unwrap_or("")),
            (*status, *kind),
            "{target:?} {body}: {got_body}"
        );
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{got_body}"
        );
        // No answer echoes the request back at length.
        assert!(
            got_body.len() < 2048,
            "{target:?}: {} bytes",
            got_body.len()
        );
    }
    // A body over the read limit is refused without reading it all into memory.
    let huge = vec![b' '; 7 * 1024 * 1024];
    let (status, body) = d.raw(Some("PutRecordBatch"), &huge);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidArgumentException"), "{body}");
    // None of it wedged the daemon.
    assert_eq!(put_batch(&d.firehose(), "s", 0..3, 50).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_errors_name_the_field() {
    let d = Daemon::start("");
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "dup", s3_destination("b-1", 1, 60)).await;
    let again = fh
        .create_delivery_stream()
        .delivery_stream_name("dup")
        .extended_s3_destination_configuration(s3_destination("b-1", 1, 60).build().unwrap())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(again.is_resource_in_use_exception(), "{again:?}");

    let missing = fh
        .describe_delivery_stream()
        .delivery_stream_name("nope")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(missing.is_resource_not_found_exception(), "{missing:?}");

    let bad =
        |dest: aws_sdk_firehose::types::builders::ExtendedS3DestinationConfigurationBuilder,
         field: &'static str| {
            let fh = fh.clone();
            async move {
                let e = fh
                    .create_delivery_stream()
                    .delivery_stream_name("bad")
                    .extended_s3_destination_configuration(dest.build().unwrap())
                    .send()
                    .await
                    .unwrap_err()
                    .into_service_error();
                assert!(e.is_invalid_argument_exception(), "{field}: {e:?}");
                assert!(e.message().unwrap_or("").contains(field), "{field}: {e:?}");
            }
        };
    bad(s3_destination("b-1", 0, 60), "SizeInMBs").await;
    bad(s3_destination("b-1", 129, 60), "SizeInMBs").await;
    bad(s3_destination("b-1", 1, 901), "IntervalInSeconds").await;
    bad(s3_destination("b-1", 1, -1), "IntervalInSeconds").await;
    bad(s3_destination("Not_A_Bucket", 1, 60), "BucketARN").await;
    bad(
        s3_destination("b-1", 1, 60).compression_format(CompressionFormat::from("LZ4")),
        "CompressionFormat",
    )
    .await;
    bad(
        s3_destination("b-1", 1, 60).prefix("x/!{timestamp:yyyy-QQ}/"),
        "Prefix",
    )
    .await;
    bad(
        s3_destination("b-1", 1, 60).prefix("x/!{nope:1}/"),
        "Prefix",
    )
    .await;
    bad(
        s3_destination("b-1", 1, 60)
            .prefix("x/!{timestamp:yyyy}/")
            .error_output_prefix("err/!{timestamp:yyyy}/"),
        "ErrorOutputPrefix",
    )
    .await;
    bad(
        s3_destination("b-1", 1, 60).prefix("x/!{partitionKeyFromQuery:id}/"),
        "Prefix",
    )
    .await;
    // The edges themselves are accepted.
    create_stream(&fh, "edge-hi", s3_destination("b-1", 128, 900)).await;
    create_stream(&fh, "edge-lo", s3_destination("b-1", 1, 0)).await;

    // UpdateDestination: stale version, wrong destination id, invalid value.
    let update = |version: &str, dest_id: &str, size: i32| {
        fh.update_destination()
            .delivery_stream_name("dup")
            .current_delivery_stream_version_id(version)
            .destination_id(dest_id)
            .extended_s3_destination_update(
                ExtendedS3DestinationUpdate::builder()
                    .buffering_hints(BufferingHints::builder().size_in_mbs(size).build())
                    .build(),
            )
            .send()
    };
    let stale = update("7", "destinationId-000000000001", 2)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(stale.is_concurrent_modification_exception(), "{stale:?}");
    let wrong = update("1", "destinationId-000000000009", 2)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(wrong.is_invalid_argument_exception(), "{wrong:?}");
    let invalid = update("1", "destinationId-000000000001", 500)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(invalid.is_invalid_argument_exception(), "{invalid:?}");
    update("1", "destinationId-000000000001", 2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // S3DestinationConfiguration is deprecated in the SDK but still part of the API.
async fn streams_persist_and_config_streams_are_read_only() {
    let config = r#"
[[stream]]
name = "from-config"
bucket_arn = "arn:aws:s3:::cfg-bucket"
compression_format = "GZIP"
buffering_hints = { size_in_mbs = 5, interval_in_seconds = 30 }
"#;
    let mut d = Daemon::start(config);
    let fh = d.firehose_with_retries(1);
    create_stream(
        &fh,
        "from-api",
        s3_destination("api-bucket", 3, 45).prefix("api/"),
    )
    .await;
    fh.create_delivery_stream()
        .delivery_stream_name("legacy")
        .s3_destination_configuration(
            S3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::000000000000:role/r")
                .bucket_arn("arn:aws:s3:::legacy-bucket")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    fh.update_destination()
        .delivery_stream_name("from-api")
        .current_delivery_stream_version_id("1")
        .destination_id("destinationId-000000000001")
        .extended_s3_destination_update(
            ExtendedS3DestinationUpdate::builder()
                .error_output_prefix("failed/")
                .build(),
        )
        .send()
        .await
        .unwrap();

    for op in ["update", "delete"] {
        let e = if op == "update" {
            fh.update_destination()
                .delivery_stream_name("from-config")
                .current_delivery_stream_version_id("1")
                .destination_id("destinationId-000000000001")
                .extended_s3_destination_update(
                    ExtendedS3DestinationUpdate::builder().prefix("x/").build(),
                )
                .send()
                .await
                .map(|_| ())
                .unwrap_err()
                .into_service_error()
                .meta()
                .clone()
        } else {
            fh.delete_delivery_stream()
                .delivery_stream_name("from-config")
                .send()
                .await
                .map(|_| ())
                .unwrap_err()
                .into_service_error()
                .meta()
                .clone()
        };
        assert_eq!(e.code(), Some("InvalidArgumentException"), "{op}");
        assert!(e.message().unwrap().contains("config file"), "{op}");
    }

    assert!(d.terminate().success());
    d.restart();
    let fh = d.firehose_with_retries(1);
    let names = fh
        .list_delivery_streams()
        .send()
        .await
        .unwrap()
        .delivery_stream_names()
        .to_vec();
    assert_eq!(names, ["from-api", "from-config", "legacy"]);
    let desc = fh
        .describe_delivery_stream()
        .delivery_stream_name("from-api")
        .send()
        .await
        .unwrap();
    let desc = desc.delivery_stream_description().unwrap();
    assert_eq!(desc.version_id(), "2");
    assert_eq!(
        desc.delivery_stream_status(),
        &aws_sdk_firehose::types::DeliveryStreamStatus::Active
    );
    let ext = desc.destinations()[0]
        .extended_s3_destination_description()
        .unwrap();
    assert_eq!(ext.bucket_arn(), "arn:aws:s3:::api-bucket");
    assert_eq!(ext.prefix(), Some("api/"));
    assert_eq!(ext.error_output_prefix(), Some("failed/"));
    assert_eq!(ext.buffering_hints().unwrap().size_in_mbs(), Some(3));
    assert_eq!(
        ext.buffering_hints().unwrap().interval_in_seconds(),
        Some(45)
    );
    let legacy = fh
        .describe_delivery_stream()
        .delivery_stream_name("legacy")
        .send()
        .await
        .unwrap();
    let legacy = &legacy.delivery_stream_description().unwrap().destinations()[0];
    assert!(legacy.extended_s3_destination_description().is_none());
    assert_eq!(
        legacy.s3_destination_description().unwrap().bucket_arn(),
        "arn:aws:s3:::legacy-bucket"
    );
    let cfg = fh
        .describe_delivery_stream()
        .delivery_stream_name("from-config")
        .send()
        .await
        .unwrap();
    let cfg = cfg.delivery_stream_description().unwrap().destinations()[0]
        .extended_s3_destination_description()
        .unwrap()
        .clone();
    assert_eq!(cfg.compression_format(), &CompressionFormat::Gzip);

    // Pagination follows Firehose: Limit and ExclusiveStartDeliveryStreamName.
    let page = fh.list_delivery_streams().limit(2).send().await.unwrap();
    assert_eq!(page.delivery_stream_names(), ["from-api", "from-config"]);
    assert!(page.has_more_delivery_streams());
    let page = fh
        .list_delivery_streams()
        .exclusive_start_delivery_stream_name("from-config")
        .send()
        .await
        .unwrap();
    assert_eq!(page.delivery_stream_names(), ["legacy"]);
    assert!(!page.has_more_delivery_streams());

    // Delete: gone at once, and the name is free again once its data has drained.
    fh.delete_delivery_stream()
        .delivery_stream_name("from-api")
        .send()
        .await
        .unwrap();
    let gone = fh
        .describe_delivery_stream()
        .delivery_stream_name("from-api")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(gone.is_resource_not_found_exception());
    let recreated = wait_for(Duration::from_secs(10), || {
        let fh = fh.clone();
        async move {
            fh.create_delivery_stream()
                .delivery_stream_name("from-api")
                .extended_s3_destination_configuration(
                    s3_destination("api-bucket", 1, 60).build().unwrap(),
                )
                .send()
                .await
                .ok()
        }
    })
    .await;
    assert!(recreated.is_some());
    assert!(d.terminate().success());
    d.restart();
    let desc = d
        .firehose()
        .describe_delivery_stream()
        .delivery_stream_name("from-api")
        .send()
        .await
        .unwrap();
    assert_eq!(
        desc.delivery_stream_description().unwrap().version_id(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_journal_caps_throttle_instead_of_growing() {
    let mut s3 = S3Server::start();
    s3.create_bucket("capped");
    // 1 MiB of memory for records; the destination is down, so nothing is released.
    let d = Daemon::start(&format!(
        "{}\n[buffer]\nmax_memory_mib = 1\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        s3.config()
    ));
    s3.stop();
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "capped", s3_destination("capped", 1, 900)).await;
    assert_eq!(put_sizes(&d, "capped", &[1024; 500]).await, Ok(0));
    assert_eq!(put_sizes(&d, "capped", &[1024; 500]).await, Ok(0));
    // 24 KiB of room left: 24 records fit, the other 476 are refused one by one.
    let out = fh
        .put_record_batch()
        .delivery_stream_name("capped")
        .set_records(Some(blob_records(&[1024; 500])))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_put_count(), 476);
    let responses = out.request_responses();
    assert!(responses[..24].iter().all(|r| r.record_id().is_some()));
    assert!(
        responses[24..]
            .iter()
            .all(|r| r.error_code() == Some("ServiceUnavailableException"))
    );
    // Full: the whole request is refused with a retryable 503.
    let (code, _) = put_sizes(&d, "capped", &[1024]).await.unwrap_err();
    assert_eq!(code, "ServiceUnavailableException");
    assert_eq!(
        d.metric("spillway_throttled_records_total{stream=\"capped\"}"),
        477.0
    );
    // The partial one waited its 100 ms (the default buffer.max_memory_wait_ms) for room
    // first; the last one too, unless the stream counted as stalled by then (three failed
    // uploads), which refuses at once since waiting cannot help.
    let timed_out = d.metric("spillway_memory_wait_seconds_count{outcome=\"timed_out\"}");
    assert!((1.0..=2.0).contains(&timed_out), "{timed_out}");
    assert_eq!(
        d.metric("spillway_memory_wait_seconds_count{outcome=\"reserved\"}"),
        0.0
    );
    // Failing uploads show in the metrics while the data waits.
    let failures = wait_for(Duration::from_secs(10), || async {
        let f = d.metric("spillway_upload_failures_total{stream=\"capped\"}");
        (f > 0.0).then_some(f)
    })
    .await;
    assert!(failures.is_some());

    // The destination comes back: everything acknowledged lands, ingest flows again.
    s3.resume();
    let accepted = wait_for(Duration::from_secs(20), || async {
        put_sizes(&d, "capped", &[1024]).await.ok()
    })
    .await;
    assert_eq!(accepted, Some(0));
    let delivered = wait_for(Duration::from_secs(20), || async {
        let n = d.metric("spillway_delivered_records_total{stream=\"capped\"}");
        (n >= 1000.0).then_some(n)
    })
    .await;
    assert!(
        delivered.is_some(),
        "sealed batches landed once S3 came back"
    );
    // The rest waits for its 900 s interval; SIGTERM flushes it.
    let mut d = d;
    assert!(d.terminate().success());
    let landed: usize = objects(&s3.client("capped"))
        .await
        .iter()
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(landed, 1025 * 1024, "every acknowledged byte, once");

    // Journal cap: with the destination down again, ingest stops once the journal is full.
    s3.stop();
    let d2 = Daemon::start(&format!(
        "{}\n[journal]\nmax_mib = 1\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        s3.config()
    ));
    create_stream(&d2.firehose(), "j", s3_destination("capped", 1, 900)).await;
    let mut refused = None;
    for _ in 0..10 {
        if let Err((code, msg)) = put_sizes(&d2, "j", &[1024; 500]).await {
            refused = Some((code, msg));
            break;
        }
    }
    let (code, msg) = refused.expect("journal cap reached");
    assert_eq!(code, "ServiceUnavailableException");
    assert!(msg.contains("journal"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_at_the_memory_cap_waits_for_room_instead_of_being_refused() {
    let mut s3 = S3Server::start();
    s3.create_bucket("waits");
    // 1 MiB of memory, the destination down: what is buffered cannot land and give room back.
    let d = Daemon::start(&format!(
        "{}\n[buffer]\nmax_memory_mib = 1\nmax_memory_wait_ms = 10000\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        s3.config()
    ));
    s3.stop();
    create_stream(&d.firehose(), "waits", s3_destination("waits", 1, 900)).await;
    assert_eq!(put_sizes(&d, "waits", &[1024; 500]).await, Ok(0));
    assert_eq!(put_sizes(&d, "waits", &[1024; 500]).await, Ok(0));
    // This one does not fit: it waits, answered neither way while nothing lands.
    let waiting = {
        let fh = d.firehose_with_retries(1);
        tokio::spawn(async move {
            fh.put_record_batch()
                .delivery_stream_name("waits")
                .set_records(Some(blob_records(&[1024; 100])))
                .send()
                .await
                .map(|o| o.failed_put_count())
                .map_err(|e| format!("{e:?}"))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "held while the memory is full");
    assert_eq!(
        d.metric("spillway_throttled_records_total{stream=\"waits\"}"),
        0.0
    );
    // The destination comes back, the early-sealed batches land, and the held request is
    // accepted whole: no refusal, no retry.
    s3.resume();
    assert_eq!(waiting.await.unwrap(), Ok(0));
    assert_eq!(
        d.metric("spillway_memory_wait_seconds_count{outcome=\"reserved\"}"),
        1.0
    );
    assert_eq!(
        d.metric("spillway_throttled_records_total{stream=\"waits\"}"),
        0.0
    );
    let mut d = d;
    assert!(d.terminate().success());
    let landed: usize = objects(&s3.client("waits"))
        .await
        .iter()
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(landed, 1100 * 1024, "every acknowledged byte, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_endpoints() {
    let d = Daemon::start("");
    assert_eq!(d.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(d.get("/readyz").0, 200);
    assert_eq!(d.get("/nope").0, 404);
    create_stream(&d.firehose(), "m", s3_destination("b-1", 1, 1)).await;
    put_batch(&d.firehose(), "m", 0..10, 100).await;
    let (status, text) = d.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "spillway_incoming_records_total{stream=\"m\"} 10",
        "spillway_incoming_bytes_total{stream=\"m\"} 1000",
        "spillway_api_requests_total{operation=\"PutRecordBatch\",outcome=\"ok\"} 1",
        "spillway_api_request_duration_seconds_bucket{operation=\"PutRecordBatch\"",
        "spillway_journal_bytes{stream=\"m\"}",
        "spillway_buffered_bytes{stream=\"m\"}",
        "spillway_data_freshness_seconds{stream=\"m\"}",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let delivered = wait_for(Duration::from_secs(10), || async {
        let n = d.metric("spillway_delivered_records_total{stream=\"m\"}");
        (n == 10.0).then_some(n)
    })
    .await;
    assert!(delivered.is_some());
    assert_eq!(
        d.metric("spillway_delivered_bytes_total{stream=\"m\"}"),
        1000.0
    );
    assert_eq!(
        d.metric("spillway_objects_written_total{stream=\"m\"}"),
        1.0
    );
    assert_eq!(d.metric("spillway_buffered_bytes{stream=\"m\"}"), 0.0);
    assert_eq!(d.metric("spillway_memory_reserved_bytes"), 0.0);
    assert!(
        d.get("/metrics")
            .1
            .contains("spillway_memory_reserved_bytes 0")
    );
}

/// `max_delivery_streams` at its edge: the streams up to it are created, one more is refused
/// with `LimitExceededException` (nothing left behind), and deleting one makes room again. A
/// config file declaring more streams than the limit is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_count_limit_is_enforced_at_its_edge() {
    let d = Daemon::start("max_delivery_streams = 2\n");
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "one", s3_destination("lim", 1, 60)).await;
    create_stream(&fh, "two", s3_destination("lim", 1, 60)).await;
    let create_three = || {
        fh.create_delivery_stream()
            .delivery_stream_name("three")
            .extended_s3_destination_configuration(s3_destination("lim", 1, 60).build().unwrap())
            .send()
    };
    let e = create_three().await.unwrap_err().into_service_error();
    assert!(e.is_limit_exceeded_exception(), "{e:?}");
    assert!(
        e.message()
            .unwrap_or("")
            .contains("max_delivery_streams = 2"),
        "{e:?}"
    );
    assert!(
        !d.data_dir.join("streams/three").exists(),
        "nothing left behind"
    );
    fh.delete_delivery_stream()
        .delivery_stream_name("one")
        .send()
        .await
        .unwrap();
    let made = wait_for(Duration::from_secs(20), || async {
        create_three().await.ok()
    })
    .await;
    assert!(made.is_some(), "room again once the deleted stream drained");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spillway.toml");
    let stream =
        |name: &str| format!("[[stream]]\nname = \"{name}\"\nbucket_arn = \"arn:aws:s3:::lim\"\n");
    let check = |limit: u32, names: &[&str]| {
        let text: String = names.iter().map(|n| stream(n)).collect();
        std::fs::write(&config, format!("max_delivery_streams = {limit}\n{text}")).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap()
    };
    assert!(check(2, &["a", "b"]).status.success());
    let over = check(1, &["a", "b"]);
    assert!(!over.status.success());
    let said =
        String::from_utf8_lossy(&over.stderr).to_string() + &String::from_utf8_lossy(&over.stdout);
    assert!(
        said.contains("max_delivery_streams: the file declares 2 streams, more than 1"),
        "{said}"
    );
}
