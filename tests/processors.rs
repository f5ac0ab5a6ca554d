//! The processors Firehose runs before the transform, over HTTP with real producers' formats:
//! CloudWatch Logs subscription records (gzip'd envelopes, control messages), records
//! aggregated by the Kinesis Producer Library (`aws-kinesis-agg` from PyPI), concatenated JSON
//! and delimited records, as boto3 and the AWS SDK for Rust send them.

mod common;

use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{
    ProcessingConfiguration, Processor, ProcessorParameterName, ProcessorType, Record,
};
use base64::Engine as _;
use common::*;
use serde_json::Value;

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_decompressed_extracted_and_deaggregated_before_the_transform() {
    let s3 = S3Server::start();
    s3.create_bucket("pre");
    let d = Daemon::start(&s3.config());
    let fh = d.firehose();

    // CloudWatch Logs: created and fed with the Rust SDK.
    create_stream(
        &fh,
        "cwlogs",
        s3_destination("pre", 1, 1)
            .prefix("cw/")
            .error_output_prefix("cw-errors/!{firehose:error-output-type}/")
            .processing_configuration(
                ProcessingConfiguration::builder()
                    .enabled(true)
                    .processors(processor(
                        ProcessorType::Decompression,
                        &[(ProcessorParameterName::from("CompressionFormat"), "GZIP")],
                    ))
                    .processors(processor(
                        ProcessorType::CloudWatchLogProcessing,
                        &[(
                            ProcessorParameterName::from("DataMessageExtraction"),
                            "true",
                        )],
                    ))
                    .build(),
            ),
    )
    .await;
    let envelope = serde_json::json!({
        "messageType": "DATA_MESSAGE", "owner": "000000000000", "logGroup": "/game/api",
        "logStream": "i-1", "subscriptionFilters": ["all"],
        "logEvents": [
            {"id": "1", "timestamp": 1, "message": "{\"level\":\"info\",\"n\":1}"},
            {"id": "2", "timestamp": 2, "message": "plain text, two"},
            {"id": "3", "timestamp": 3, "message": "três"},
        ],
    });
    let control = serde_json::json!({
        "messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "",
        "logStream": "", "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}],
    });
    let records = [
        gzip(envelope.to_string().as_bytes()),
        gzip(control.to_string().as_bytes()),
        b"this one was never gzip'd".to_vec(),
    ];
    let out = fh
        .put_record_batch()
        .delivery_stream_name("cwlogs")
        .set_records(Some(
            records
                .iter()
                .map(|r| {
                    Record::builder()
                        .data(Blob::new(r.clone()))
                        .build()
                        .unwrap()
                })
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_put_count(), 0);

    // KPL aggregated records, concatenated JSON and delimited records: boto3 creates and sends.
    let script = r#"
import base64, json, sys, boto3, botocore
from aws_kinesis_agg.aggregator import RecordAggregator
fh = boto3.client("firehose", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id="x", aws_secret_access_key="y",
    config=botocore.config.Config(retries={"max_attempts": 1}))
def dest(prefix, processors):
    return {"RoleARN": "arn:aws:iam::000000000000:role/firehose", "BucketARN": "arn:aws:s3:::pre",
            "Prefix": prefix, "ErrorOutputPrefix": prefix.rstrip("/") + "-errors/!{firehose:error-output-type}/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "ProcessingConfiguration": {"Enabled": True, "Processors": processors + [
                {"Type": "AppendDelimiterToRecord", "Parameters": []}]}}
fh.create_delivery_stream(DeliveryStreamName="kpl", ExtendedS3DestinationConfiguration=dest("kpl/", [
    {"Type": "RecordDeAggregation", "Parameters": [{"ParameterName": "SubRecordType", "ParameterValue": "JSON"}]}]))
fh.create_delivery_stream(DeliveryStreamName="delim", ExtendedS3DestinationConfiguration=dest("delim/", [
    {"Type": "RecordDeAggregation", "Parameters": [
        {"ParameterName": "SubRecordType", "ParameterValue": "DELIMITED"},
        {"ParameterName": "Delimiter", "ParameterValue": base64.b64encode(b"||").decode()}]}]))
agg = RecordAggregator()
for i in range(200):
    full = agg.add_user_record("player-%d" % (i % 7), json.dumps({"n": i}).encode())
    assert full is None, "the aggregate fits in one record"
_, _, aggregated = agg.clear_and_get().get_contents()
records = [aggregated, b'{"n":1000}{"n":1001}\n{"n":1002}', b'{"n":2000} {broken']
print("kpl", fh.put_record_batch(DeliveryStreamName="kpl", Records=[{"Data": r} for r in records])["FailedPutCount"])
print("delim", fh.put_record(DeliveryStreamName="delim", Record={"Data": b"alpha||beta||||gamma||"})["RecordId"] != "")
"#;
    let printed = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(d.endpoint()),
    );
    let printed = String::from_utf8(printed).unwrap();
    assert!(
        printed.contains("kpl 0\n") && printed.contains("delim True\n"),
        "{printed}"
    );

    let store = s3.client("pre");
    let objs = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&store).await;
        (objs.len() == 5).then_some(objs)
    })
    .await;
    let Some(objs) = objs else {
        let keys: Vec<String> = objects(&store).await.into_iter().map(|(k, _)| k).collect();
        panic!("5 objects, found {keys:?}");
    };
    let body = |prefix: &str| -> String {
        let found: Vec<_> = objs.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
        assert_eq!(found.len(), 1, "one object under {prefix}");
        String::from_utf8(found[0].1.to_vec()).unwrap()
    };
    // The control message is dropped; each log event is a line.
    assert_eq!(
        body("cw/"),
        "{\"level\":\"info\",\"n\":1}\nplain text, two\ntrês\n"
    );
    // The record that was not gzip'd goes to decompression-failed as it came.
    let failed: Value =
        serde_json::from_str(body("cw-errors/decompression-failed/").trim_end()).unwrap();
    assert_eq!(failed["errorCode"], "Decompression.Failed");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(failed["rawData"].as_str().unwrap())
            .unwrap(),
        b"this one was never gzip'd"
    );
    // 200 user records out of one KPL record, then three concatenated JSON values.
    let kpl = body("kpl/");
    let mut expected: Vec<String> = (0..200).map(|i| format!("{{\"n\": {i}}}")).collect();
    expected.extend(["{\"n\":1000}", "{\"n\":1001}", "{\"n\":1002}"].map(String::from));
    assert_eq!(kpl.lines().collect::<Vec<_>>(), expected);
    let broken: Value =
        serde_json::from_str(body("kpl-errors/processing-failed/").trim_end()).unwrap();
    assert_eq!(broken["errorCode"], "RecordDeAggregation.InvalidRecord");
    // Empty pieces between delimiters are not records.
    assert_eq!(body("delim/"), "alpha\nbeta\ngamma\n");
}

/// Settings the processors refuse, at create time, naming the processor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_settings_are_checked() {
    let d = Daemon::start("");
    let fh = d.firehose();
    let cases: Vec<(Vec<Processor>, &str)> = vec![
        (
            vec![processor(
                ProcessorType::CloudWatchLogProcessing,
                &[(
                    ProcessorParameterName::from("DataMessageExtraction"),
                    "true",
                )],
            )],
            "needs the Decompression processor",
        ),
        (
            vec![processor(
                ProcessorType::Decompression,
                &[(ProcessorParameterName::from("CompressionFormat"), "ZSTD")],
            )],
            "CompressionFormat must be GZIP",
        ),
        (
            vec![processor(
                ProcessorType::RecordDeAggregation,
                &[(ProcessorParameterName::from("SubRecordType"), "DELIMITED")],
            )],
            "needs a Delimiter",
        ),
        (
            vec![processor(
                ProcessorType::RecordDeAggregation,
                &[
                    (ProcessorParameterName::from("SubRecordType"), "DELIMITED"),
                    (ProcessorParameterName::from("Delimiter"), "not base64!"),
                ],
            )],
            "Delimiter must be 1 to 64 bytes",
        ),
        (
            vec![processor(
                ProcessorType::RecordDeAggregation,
                &[(ProcessorParameterName::from("SubRecordType"), "CSV")],
            )],
            "SubRecordType must be JSON or DELIMITED",
        ),
    ];
    for (processors, says) in cases {
        let dest = s3_destination("pre", 1, 1).processing_configuration(
            ProcessingConfiguration::builder()
                .enabled(true)
                .set_processors(Some(processors))
                .build(),
        );
        let msg = create_refused(&fh, "refused", dest).await;
        assert!(msg.contains(says), "{says}: {msg}");
    }
}
