//! The control plane as infrastructure tools use it: tags (Terraform reads them after every
//! apply), the stream encryption switch, and a description that echoes every accepted setting
//! so a tool comparing desired and described settings sees no drift.

mod common;

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::types::{DeliveryStreamEncryptionConfigurationInput, KeyType, Tag};
use common::*;

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().unwrap()
}

fn code<T, E: ProvideErrorMetadata>(r: Result<T, aws_sdk_firehose::error::SdkError<E>>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().unwrap_or("?").to_string(),
    }
}

async fn tags_of(d: &Daemon, stream: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = d
            .firehose()
            .list_tags_for_delivery_stream()
            .delivery_stream_name(stream)
            .set_exclusive_start_tag_key(start.clone())
            .limit(7)
            .send()
            .await
            .expect("list tags");
        for t in page.tags() {
            all.push((t.key().to_string(), t.value().unwrap_or("").to_string()));
        }
        if !page.has_more_tags() {
            return all;
        }
        start = all.last().map(|(k, _)| k.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_persist_with_firehose_limits_at_their_edges() {
    let mut d = Daemon::start("");
    let fh = d.firehose();
    fh.create_delivery_stream()
        .delivery_stream_name("tagged")
        .extended_s3_destination_configuration(s3_destination("tags", 1, 60).build().unwrap())
        .tags(tag("team", "games"))
        .tags(tag("env", "prod"))
        .send()
        .await
        .expect("create with tags");
    assert_eq!(
        tags_of(&d, "tagged").await,
        [
            ("env".into(), "prod".into()),
            ("team".into(), "games".into())
        ]
    );

    // 48 more make 50, the limit; a 51st is refused, replacing a value at 50 is not.
    let mut req = fh.tag_delivery_stream().delivery_stream_name("tagged");
    for i in 0..48 {
        req = req.tags(tag(&format!("k{i:02}"), "v"));
    }
    req.send().await.expect("tag up to 50");
    assert_eq!(tags_of(&d, "tagged").await.len(), 50);
    let over = fh
        .tag_delivery_stream()
        .delivery_stream_name("tagged")
        .tags(tag("one-more", "x"))
        .send()
        .await;
    assert_eq!(code(over), "LimitExceededException");
    let replace = fh
        .tag_delivery_stream()
        .delivery_stream_name("tagged")
        .tags(tag("env", "staging"))
        .send()
        .await;
    assert_eq!(code(replace), "ok");

    // Pages of at most Limit (1-50), in key order.
    let page = fh
        .list_tags_for_delivery_stream()
        .delivery_stream_name("tagged")
        .limit(50)
        .send()
        .await
        .unwrap();
    assert_eq!(page.tags().len(), 50);
    assert!(!page.has_more_tags());
    assert_eq!(page.tags()[0].key(), "env");
    assert_eq!(page.tags()[0].value(), Some("staging"));
    for limit in [0, 51] {
        let r = fh
            .list_tags_for_delivery_stream()
            .delivery_stream_name("tagged")
            .limit(limit)
            .send()
            .await;
        assert_eq!(code(r), "InvalidArgumentException", "Limit {limit}");
    }

    // Keys and values at their edges, on a second stream.
    create_stream(&fh, "edges", s3_destination("tags", 1, 60)).await;
    let try_tag = |key: String, value: String| {
        let fh = fh.clone();
        async move {
            code(
                fh.tag_delivery_stream()
                    .delivery_stream_name("edges")
                    .tags(tag(&key, &value))
                    .send()
                    .await,
            )
        }
    };
    assert_eq!(try_tag("k".repeat(128), "v".repeat(256)).await, "ok");
    assert_eq!(try_tag("é".repeat(128), String::new()).await, "ok");
    for (key, value) in [
        ("k".repeat(129), "v".to_string()),
        ("k".into(), "v".repeat(257)),
        ("aws:owner".into(), "v".into()),
        ("semi;colon".into(), "v".into()),
        ("k".into(), "new\nline".into()),
    ] {
        assert_eq!(
            try_tag(key.clone(), value.clone()).await,
            "InvalidArgumentException",
            "{key:?} = {value:?}"
        );
    }
    assert_eq!(tags_of(&d, "edges").await.len(), 2);

    // Untag: keys it does not have are no error; 1-50 keys per call.
    fh.untag_delivery_stream()
        .delivery_stream_name("tagged")
        .tag_keys("k00")
        .tag_keys("k01")
        .tag_keys("not-there")
        .send()
        .await
        .expect("untag");
    assert_eq!(tags_of(&d, "tagged").await.len(), 48);
    let none = fh
        .untag_delivery_stream()
        .delivery_stream_name("tagged")
        .send()
        .await;
    assert_ne!(code(none), "ok");

    // A stream that does not exist; a create whose tags are refused creates nothing.
    let missing = fh
        .tag_delivery_stream()
        .delivery_stream_name("nope")
        .tags(tag("a", "b"))
        .send()
        .await;
    assert_eq!(code(missing), "ResourceNotFoundException");
    let mut bad_create = fh
        .create_delivery_stream()
        .delivery_stream_name("too-many")
        .extended_s3_destination_configuration(s3_destination("tags", 1, 60).build().unwrap());
    for i in 0..51 {
        bad_create = bad_create.tags(tag(&format!("k{i}"), "v"));
    }
    assert_eq!(code(bad_create.send().await), "InvalidArgumentException");
    let described = fh
        .describe_delivery_stream()
        .delivery_stream_name("too-many")
        .send()
        .await;
    assert_eq!(code(described), "ResourceNotFoundException");

    // Tags are persisted with the stream, before their call is answered.
    d.kill9();
    d.restart();
    let after = tags_of(&d, "tagged").await;
    assert_eq!(after.len(), 48);
    assert_eq!(after[0], ("env".into(), "staging".into()));
}

/// Tags of a stream declared in the config file come from the file; the API cannot change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_streams_carry_their_tags_from_the_file() {
    let d = Daemon::start(
        r#"
[[stream]]
name = "declared"
bucket_arn = "arn:aws:s3:::declared"
tags = { team = "games", "cost center" = "42" }
"#,
    );
    assert_eq!(
        tags_of(&d, "declared").await,
        [
            ("cost center".into(), "42".into()),
            ("team".into(), "games".into())
        ]
    );
    let r = d
        .firehose()
        .tag_delivery_stream()
        .delivery_stream_name("declared")
        .tags(tag("a", "b"))
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgumentException");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_encryption_is_switched_persisted_and_described() {
    let mut d = Daemon::start("");
    let fh = d.firehose();
    let key = "arn:aws:kms:us-east-1:000000000000:key/0a1b2c3d-1111-2222-3333-444455556666";
    fh.create_delivery_stream()
        .delivery_stream_name("sealed")
        .extended_s3_destination_configuration(s3_destination("enc", 1, 60).build().unwrap())
        .delivery_stream_encryption_configuration_input(
            DeliveryStreamEncryptionConfigurationInput::builder()
                .key_type(KeyType::CustomerManagedCmk)
                .key_arn(key)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create with encryption");
    let described = |fh: aws_sdk_firehose::Client| async move {
        let d = fh
            .describe_delivery_stream()
            .delivery_stream_name("sealed")
            .send()
            .await
            .unwrap();
        let e = d
            .delivery_stream_description()
            .unwrap()
            .delivery_stream_encryption_configuration()
            .unwrap()
            .clone();
        (
            e.status().map(|s| s.as_str().to_string()),
            e.key_type().map(|k| k.as_str().to_string()),
            e.key_arn().map(str::to_string),
        )
    };
    assert_eq!(
        described(fh.clone()).await,
        (
            Some("ENABLED".into()),
            Some("CUSTOMER_MANAGED_CMK".into()),
            Some(key.into())
        )
    );
    fh.stop_delivery_stream_encryption()
        .delivery_stream_name("sealed")
        .send()
        .await
        .unwrap();
    assert_eq!(
        described(fh.clone()).await,
        (Some("DISABLED".into()), None, None)
    );
    // Without a configuration: an AWS-owned key, as in Firehose.
    fh.start_delivery_stream_encryption()
        .delivery_stream_name("sealed")
        .send()
        .await
        .unwrap();
    assert_eq!(
        described(fh.clone()).await,
        (Some("ENABLED".into()), Some("AWS_OWNED_CMK".into()), None)
    );
    for (key_type, arn) in [
        (KeyType::CustomerManagedCmk, None),
        (KeyType::AwsOwnedCmk, Some(key)),
        (KeyType::CustomerManagedCmk, Some("arn:aws:s3:::not-a-key")),
        (KeyType::from("SOME_OTHER_KEY"), None),
    ] {
        let r = fh
            .start_delivery_stream_encryption()
            .delivery_stream_name("sealed")
            .delivery_stream_encryption_configuration_input(
                DeliveryStreamEncryptionConfigurationInput::builder()
                    .key_type(key_type.clone())
                    .set_key_arn(arn.map(str::to_string))
                    .build()
                    .unwrap(),
            )
            .send()
            .await;
        assert_eq!(code(r), "InvalidArgumentException", "{key_type:?} {arn:?}");
    }
    d.kill9();
    d.restart();
    assert_eq!(
        described(d.firehose()).await,
        (Some("ENABLED".into()), Some("AWS_OWNED_CMK".into()), None)
    );
}

/// boto3 creates streams with every setting spillway accepts and deep-compares each setting
/// with what Describe returns; the Rust SDK then reads the same descriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_echoes_every_accepted_setting() {
    let wasm = component("passthrough-c");
    let d = Daemon::start(
        r#"
[[table]]
database = "game"
name = "players"
columns = [
  { name = "user_id", type = "bigint" },
  { name = "location", type = "string" },
]
"#,
    );
    let script = r#"
import json, sys, boto3, botocore
endpoint, wasm = sys.argv[1], sys.argv[2]
fh = boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1",
    aws_access_key_id="x", aws_secret_access_key="y",
    config=botocore.config.Config(retries={"max_attempts": 1}))
role = "arn:aws:iam::000000000000:role/firehose"
key = "arn:aws:kms:us-east-1:000000000000:key/0a1b2c3d-1111-2222-3333-444455556666"
common = {
    "RoleARN": role,
    "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 120},
    "EncryptionConfiguration": {"KMSEncryptionConfig": {"AWSKMSKeyARN": key}},
    "CloudWatchLoggingOptions": {"Enabled": True, "LogGroupName": "/aws/kinesisfirehose/x",
                                 "LogStreamName": "DestinationDelivery"},
    "S3BackupMode": "Disabled",
}
streams = {
    "everything": dict(common,
        BucketARN="arn:aws:s3:::echo",
        Prefix="events/game=!{partitionKeyFromQuery:game}/!{timestamp:yyyy/MM/dd}/",
        ErrorOutputPrefix="errors/!{firehose:error-output-type}/!{timestamp:yyyy}/",
        CompressionFormat="GZIP",
        ProcessingConfiguration={"Enabled": True, "Processors": [
            {"Type": "Lambda", "Parameters": [
                {"ParameterName": "LambdaArn", "ParameterValue": "file://" + wasm},
                {"ParameterName": "NumberOfRetries", "ParameterValue": "2"},
                {"ParameterName": "BufferSizeInMBs", "ParameterValue": "0.5"},
                {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "30"}]},
            {"Type": "MetadataExtraction", "Parameters": [
                {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{game: .game}"},
                {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]},
            {"Type": "AppendDelimiterToRecord", "Parameters": [
                {"ParameterName": "Delimiter", "ParameterValue": "\\n"}]}]},
        DynamicPartitioningConfiguration={"Enabled": True,
                                          "RetryOptions": {"DurationInSeconds": 600}}),
    "parquet": dict(common,
        BucketARN="arn:aws:s3:::echo",
        Prefix="parquet/",
        ErrorOutputPrefix="parquet-errors/",
        CompressionFormat="UNCOMPRESSED",
        DataFormatConversionConfiguration={
            "Enabled": True,
            "SchemaConfiguration": {"RoleARN": role, "DatabaseName": "game",
                                    "TableName": "players", "Region": "us-east-1",
                                    "VersionId": "LATEST", "CatalogId": "000000000000"},
            "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {
                "ConvertDotsInJsonKeysToUnderscores": True, "CaseInsensitive": True,
                "ColumnToJsonKeyMappings": {"location": "geo.city"}}}},
            "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {
                "Compression": "ZSTD", "BlockSizeBytes": 134217728,
                "PageSizeBytes": 1048576, "EnableDictionaryCompression": True,
                "MaxPaddingBytes": 0, "WriterVersion": "V1"}}}}),
    # The destination settings that name and encode objects, and the source backup.
    "naming": dict(common,
        BucketARN="arn:aws:s3:::echo",
        Prefix="named/!{timestamp:yyyy/MM/dd}/",
        ErrorOutputPrefix="named-errors/!{firehose:error-output-type}/",
        CompressionFormat="HADOOP_SNAPPY",
        CustomTimeZone="Asia/Tokyo",
        FileExtension=".ndjson.snappy",
        S3BackupMode="Enabled",
        S3BackupConfiguration={"RoleARN": role, "BucketARN": "arn:aws:s3:::echo-source",
                               "Prefix": "raw/", "CompressionFormat": "ZIP",
                               "BufferingHints": {"SizeInMBs": 2, "IntervalInSeconds": 60},
                               "EncryptionConfiguration": {"KMSEncryptionConfig": {"AWSKMSKeyARN": key}}}),
}
def drift(given, got, path):
    if isinstance(given, dict):
        if not isinstance(got, dict):
            return [path + " is not an object: " + repr(got)]
        out = []
        for k, v in given.items():
            out += drift(v, got.get(k), path + "." + k) if k in got else [path + "." + k + " missing"]
        return out
    if isinstance(given, list):
        if not isinstance(got, list) or len(got) != len(given):
            return [path + " differs: " + repr(got)]
        return [x for i, (a, b) in enumerate(zip(given, got)) for x in drift(a, b, "%s[%d]" % (path, i))]
    return [] if given == got else ["%s: gave %r, described %r" % (path, given, got)]
for name, dest in streams.items():
    fh.create_delivery_stream(DeliveryStreamName=name, DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration=dest, Tags=[{"Key": "owner", "Value": "echo"}])
    desc = fh.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    ext = desc["Destinations"][0]["ExtendedS3DestinationDescription"]
    # Firehose describes the backup it was given as S3BackupDescription.
    dest = dict(dest)
    if "S3BackupConfiguration" in dest:
        dest["S3BackupDescription"] = dest.pop("S3BackupConfiguration")
    for line in drift(dest, ext, name):
        print("DRIFT", line)
    print("described", name, desc["VersionId"], desc["DeliveryStreamStatus"],
          type(desc["CreateTimestamp"]).__name__, type(desc["LastUpdateTimestamp"]).__name__)
    print("tags", name, json.dumps(fh.list_tags_for_delivery_stream(DeliveryStreamName=name)["Tags"]))
# The stream encryption switch, through boto3.
fh.start_delivery_stream_encryption(DeliveryStreamName="naming",
    DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": key})
enc = fh.describe_delivery_stream(DeliveryStreamName="naming")["DeliveryStreamDescription"]["DeliveryStreamEncryptionConfiguration"]
print("encryption", enc["Status"], enc["KeyType"], enc["KeyARN"] == key)
fh.stop_delivery_stream_encryption(DeliveryStreamName="naming")
enc = fh.describe_delivery_stream(DeliveryStreamName="naming")["DeliveryStreamDescription"]["DeliveryStreamEncryptionConfiguration"]
print("encryption", enc["Status"])
fh.untag_delivery_stream(DeliveryStreamName="naming", TagKeys=["owner"])
print("untagged", len(fh.list_tags_for_delivery_stream(DeliveryStreamName="naming")["Tags"]))
"#;
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(d.endpoint())
            .arg(&wasm),
    );
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("DRIFT"), "{out}");
    for line in [
        "encryption ENABLED CUSTOMER_MANAGED_CMK True",
        "encryption DISABLED",
        "untagged 0",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
    for name in ["everything", "parquet", "naming"] {
        assert!(
            out.lines()
                .any(|l| l == format!("described {name} 1 ACTIVE datetime datetime")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l == format!(r#"tags {name} [{{"Key": "owner", "Value": "echo"}}]"#)),
            "{out}"
        );
    }

    // The Rust SDK reads the same descriptions into its types.
    let fh = d.firehose();
    let desc = fh
        .describe_delivery_stream()
        .delivery_stream_name("everything")
        .send()
        .await
        .unwrap();
    let ext = desc.delivery_stream_description().unwrap().destinations()[0]
        .extended_s3_destination_description()
        .unwrap()
        .clone();
    assert_eq!(
        ext.processing_configuration().unwrap().processors().len(),
        3
    );
    assert_eq!(
        ext.dynamic_partitioning_configuration()
            .unwrap()
            .retry_options()
            .unwrap()
            .duration_in_seconds(),
        Some(600)
    );
    assert!(
        ext.encryption_configuration()
            .unwrap()
            .kms_encryption_config()
            .is_some()
    );
    assert_eq!(
        ext.cloud_watch_logging_options().unwrap().enabled(),
        Some(true)
    );
    let parquet = fh
        .describe_delivery_stream()
        .delivery_stream_name("parquet")
        .send()
        .await
        .unwrap();
    let conversion = parquet
        .delivery_stream_description()
        .unwrap()
        .destinations()[0]
        .extended_s3_destination_description()
        .unwrap()
        .data_format_conversion_configuration()
        .unwrap()
        .clone();
    assert_eq!(
        conversion.schema_configuration().unwrap().table_name(),
        Some("players")
    );
}

/// Every operation of Firehose's API (2015-08-04) is in the README's API table, and the daemon
/// answers each one (with a validation error for an empty body, not an unknown operation).
#[test]
fn the_api_reference_lists_every_firehose_operation_and_the_daemon_answers_it() {
    const FIREHOSE: [&str; 12] = [
        "CreateDeliveryStream",
        "DeleteDeliveryStream",
        "DescribeDeliveryStream",
        "ListDeliveryStreams",
        "ListTagsForDeliveryStream",
        "PutRecord",
        "PutRecordBatch",
        "StartDeliveryStreamEncryption",
        "StopDeliveryStreamEncryption",
        "TagDeliveryStream",
        "UntagDeliveryStream",
        "UpdateDestination",
    ];
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = readme
        .split("\n## Firehose API\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Firehose API section");
    let d = Daemon::start("");
    for op in FIREHOSE {
        let row = section.lines().find(|l| {
            l.starts_with("| `") && l.split(" | ").next().unwrap().contains(&format!("`{op}`"))
        });
        assert!(row.is_some(), "{op} is not in the README's API table");
        let (status, body) = d.raw(Some(op), b"{}");
        assert!(!body.contains("UnknownOperation"), "{op}: {status} {body}");
    }
    let (_, body) = d.raw(Some("DescribeDeliveryStreamz"), b"{}");
    assert!(body.contains("UnknownOperationException"), "{body}");
}

/// The README's table of `CreateDeliveryStream` members: each member it lists is sent in a
/// create, and the daemon does what its status says (supported or ignored: created, and the
/// member described; refused: `InvalidArgumentException` naming it). The test knows a sample of
/// every member, so the table cannot list one the daemon was not asked about, nor leave one out.
#[test]
fn the_readme_table_of_create_members_is_what_the_daemon_does() {
    use serde_json::{Value, json};
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = readme
        .split("\n## Firehose API\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let table: Vec<(String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| member | status |"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let status = cells[1].split([':', ' ']).next().unwrap().to_string();
            cells[0]
                .trim_start_matches("| ")
                .split(", ")
                .map(|m| m.trim_matches('`').to_string())
                .map(move |m| (m, status.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(table.len() > 20, "{table:?}");

    let role = "arn:aws:iam::000000000000:role/firehose";
    let key = "arn:aws:kms:us-east-1:000000000000:key/0a1b2c3d-1111-2222-3333-444455556666";
    let destination = |patch: Value| {
        let mut d = json!({"RoleARN": role, "BucketARN": "arn:aws:s3:::members"});
        d.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        d
    };
    // A create request with the member; for destination members, the member in the
    // destination (what Describe should then echo).
    let sample = |member: &str| -> Option<(Value, Option<&'static str>)> {
        let base = |extra: Value| {
            let mut r = json!({"ExtendedS3DestinationConfiguration": destination(json!({}))});
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            r
        };
        let dest = |patch: Value| json!({"ExtendedS3DestinationConfiguration": destination(patch)});
        Some(match member {
            "DeliveryStreamName" => (base(json!({})), None),
            "DeliveryStreamType" => (base(json!({"DeliveryStreamType": "DirectPut"})), None),
            "Tags" => (
                base(json!({"Tags": [{"Key": "team", "Value": "games"}]})),
                None,
            ),
            "DeliveryStreamEncryptionConfigurationInput" => (
                base(
                    json!({"DeliveryStreamEncryptionConfigurationInput": {"KeyType": "AWS_OWNED_CMK"}}),
                ),
                None,
            ),
            "ExtendedS3DestinationConfiguration" => (base(json!({})), None),
            "S3DestinationConfiguration" => (
                json!({"S3DestinationConfiguration": destination(json!({}))}),
                None,
            ),
            "KinesisStreamSourceConfiguration" => (
                base(
                    json!({member: {"KinesisStreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/s", "RoleARN": role}}),
                ),
                None,
            ),
            "MSKSourceConfiguration"
            | "DatabaseSourceConfiguration"
            | "RedshiftDestinationConfiguration"
            | "ElasticsearchDestinationConfiguration"
            | "AmazonopensearchserviceDestinationConfiguration"
            | "AmazonOpenSearchServerlessDestinationConfiguration"
            | "SplunkDestinationConfiguration"
            | "HttpEndpointDestinationConfiguration"
            | "SnowflakeDestinationConfiguration" => {
                (base(json!({member: {"RoleARN": role}})), None)
            }
            "IcebergDestinationConfiguration" => (
                json!({member: {
                    "RoleARN": role,
                    "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog"},
                    "DestinationTableConfigurationList": [
                        {"DestinationDatabaseName": "game", "DestinationTableName": "players"}
                    ],
                    "S3Configuration": {"RoleARN": role, "BucketARN": "arn:aws:s3:::members"},
                }}),
                None,
            ),
            "RoleARN" => (dest(json!({})), Some("RoleARN")),
            "BucketARN" => (dest(json!({})), Some("BucketARN")),
            "Prefix" => (dest(json!({"Prefix": "p/"})), Some("Prefix")),
            "ErrorOutputPrefix" => (
                dest(
                    json!({"Prefix": "p/!{timestamp:yyyy}/", "ErrorOutputPrefix": "e/!{firehose:error-output-type}/"}),
                ),
                Some("ErrorOutputPrefix"),
            ),
            "BufferingHints" => (
                dest(json!({"BufferingHints": {"SizeInMBs": 2, "IntervalInSeconds": 30}})),
                Some("BufferingHints"),
            ),
            "CompressionFormat" => (
                dest(json!({"CompressionFormat": "ZIP"})),
                Some("CompressionFormat"),
            ),
            "EncryptionConfiguration" => (
                dest(
                    json!({"EncryptionConfiguration": {"KMSEncryptionConfig": {"AWSKMSKeyARN": key}}}),
                ),
                Some("EncryptionConfiguration"),
            ),
            "CloudWatchLoggingOptions" => (
                dest(
                    json!({"CloudWatchLoggingOptions": {"Enabled": true, "LogGroupName": "g", "LogStreamName": "s"}}),
                ),
                Some("CloudWatchLoggingOptions"),
            ),
            "ProcessingConfiguration" => (
                dest(
                    json!({"ProcessingConfiguration": {"Enabled": true, "Processors": [{"Type": "AppendDelimiterToRecord"}]}}),
                ),
                Some("ProcessingConfiguration"),
            ),
            "DynamicPartitioningConfiguration" => (
                dest(json!({
                    "Prefix": "p/k=!{partitionKeyFromQuery:k}/",
                    "ErrorOutputPrefix": "e/!{firehose:error-output-type}/",
                    "DynamicPartitioningConfiguration": {"Enabled": true},
                    "ProcessingConfiguration": {"Enabled": true, "Processors": [{"Type": "MetadataExtraction", "Parameters": [
                        {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{k: .k}"},
                        {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]},
                })),
                Some("DynamicPartitioningConfiguration"),
            ),
            "DataFormatConversionConfiguration" => (
                dest(json!({"DataFormatConversionConfiguration": {
                    "Enabled": true,
                    "SchemaConfiguration": {"DatabaseName": "game", "TableName": "players", "RoleARN": role},
                    "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                    "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {}}}}})),
                Some("DataFormatConversionConfiguration"),
            ),
            "S3BackupMode" | "S3BackupConfiguration" => (
                dest(json!({"S3BackupMode": "Enabled", "S3BackupConfiguration": {
                    "RoleARN": role, "BucketARN": "arn:aws:s3:::members-source", "Prefix": "raw/",
                    "BufferingHints": {"SizeInMBs": 10}}})),
                Some(if member == "S3BackupMode" {
                    "S3BackupMode"
                } else {
                    "S3BackupDescription"
                }),
            ),
            "FileExtension" => (
                dest(json!({"FileExtension": ".json"})),
                Some("FileExtension"),
            ),
            "CustomTimeZone" => (
                dest(json!({"CustomTimeZone": "Asia/Tokyo"})),
                Some("CustomTimeZone"),
            ),
            _ => return None,
        })
    };

    let d = Daemon::start(
        r#"
[[table]]
database = "game"
name = "players"
columns = [{ name = "k", type = "string" }]
"#,
    );
    for (i, (member, status)) in table.iter().enumerate() {
        let (mut request, described) =
            sample(member).unwrap_or_else(|| panic!("the test has no sample of {member}"));
        let name = format!("member-{i}");
        request["DeliveryStreamName"] = json!(name);
        let (code, body) = d.raw(Some("CreateDeliveryStream"), request.to_string().as_bytes());
        match status.as_str() {
            "supported" | "ignored" => {
                assert_eq!(code, 200, "{member} ({status}): {body}");
                let (_, desc) = d.raw(
                    Some("DescribeDeliveryStream"),
                    json!({"DeliveryStreamName": name}).to_string().as_bytes(),
                );
                let desc: Value = serde_json::from_str(&desc).unwrap();
                if let Some(field) = described {
                    let ext = &desc["DeliveryStreamDescription"]["Destinations"][0]["ExtendedS3DestinationDescription"];
                    let given = &request["ExtendedS3DestinationConfiguration"];
                    let expected = match field {
                        "S3BackupDescription" => &given["S3BackupConfiguration"]["BucketARN"],
                        _ => &given[field],
                    };
                    let got = match field {
                        "S3BackupDescription" => &ext[field]["BucketARN"],
                        _ => &ext[field],
                    };
                    assert_eq!(got, expected, "{member}: described {ext}");
                    if field == "S3BackupDescription" {
                        // A hint left out is described with its default.
                        assert_eq!(
                            ext[field]["BufferingHints"],
                            json!({"SizeInMBs": 10, "IntervalInSeconds": 300}),
                            "{ext}"
                        );
                    }
                }
            }
            "refused" => {
                assert_eq!(code, 400, "{member}: {body}");
                assert!(
                    body.contains("InvalidArgumentException") && body.contains(member.as_str()),
                    "{member}: {body}"
                );
            }
            other => panic!("{member}: unknown status {other:?} in the README"),
        }
    }
}
