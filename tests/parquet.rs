//! Record format conversion end to end: streams converting JSON to Parquet, configured over the
//! API (AWS SDK, schema from a config-file table) and in TOML (schema inferred, with dynamic
//! partitioning), objects read back from a real S3 server (s3s-fs) with the `parquet` crate and
//! with pyarrow. Records that do not fit go to `format-conversion-failed`.

mod common;

use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use aws_sdk_firehose::types::{
    DataFormatConversionConfiguration, Deserializer, InputFormatConfiguration, OpenXJsonSerDe,
    OutputFormatConfiguration, ParquetCompression, ParquetSerDe, SchemaConfiguration, Serializer,
};
use base64::Engine as _;
use bytes::Bytes;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

const TABLE: &str = r#"
[[table]]
database = "game"
name = "players"
columns = [
  { name = "user_id", type = "bigint" },
  { name = "age", type = "int" },
  { name = "location", type = "string" },
  { name = "premium", type = "boolean" },
  { name = "ts", type = "timestamp" },
  { name = "day", type = "date" },
  { name = "price", type = "decimal(10,2)" },
  { name = "tags", type = "array<string>" },
  { name = "profile", type = "struct<level:int,guild:string>" },
  { name = "scores", type = "map<string,double>" },
  { name = "geo_city", type = "string" },
]
"#;

fn conversion(compression: &str, table: &str) -> DataFormatConversionConfiguration {
    DataFormatConversionConfiguration::builder()
        .enabled(true)
        .schema_configuration(
            SchemaConfiguration::builder()
                .database_name("game")
                .table_name(table)
                .role_arn("arn:aws:iam::000000000000:role/firehose")
                .build(),
        )
        .input_format_configuration(
            InputFormatConfiguration::builder()
                .deserializer(
                    Deserializer::builder()
                        .open_x_json_ser_de(
                            OpenXJsonSerDe::builder()
                                .convert_dots_in_json_keys_to_underscores(true)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .output_format_configuration(
            OutputFormatConfiguration::builder()
                .serializer(
                    Serializer::builder()
                        .parquet_ser_de(
                            ParquetSerDe::builder()
                                .compression(ParquetCompression::from(compression))
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build()
}

/// Waits until the bucket holds objects under `prefix` with `rows` rows in all.
async fn parquet_under(
    s3: &S3Server,
    bucket: &str,
    prefix: &str,
    rows: usize,
) -> Vec<(String, Bytes)> {
    let store = s3.client(bucket);
    wait_for(Duration::from_secs(60), || async {
        let found: Vec<(String, Bytes)> = objects(&store)
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        let n: usize = found
            .iter()
            .map(|(_, b)| {
                ParquetRecordBatchReaderBuilder::try_new(b.clone())
                    .map(|r| r.metadata().file_metadata().num_rows() as usize)
                    .unwrap_or(0)
            })
            .sum();
        (n >= rows).then_some(found)
    })
    .await
    .unwrap_or_else(|| panic!("{rows} rows under {bucket}/{prefix} in time"))
}

fn read(body: &Bytes) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(body.clone()).unwrap();
    let schema = reader.schema().clone();
    let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 1, "a small object reads as one batch");
    assert_eq!(batches[0].schema(), schema);
    batches[0].clone()
}

/// pyarrow's view of a Parquet file: its schema as text and its rows as JSON.
fn pyarrow_read(body: &Bytes) -> (Vec<String>, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object.parquet");
    std::fs::write(&path, body).unwrap();
    let script = r#"
import json, sys, decimal, datetime
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
def plain(v):
    if isinstance(v, decimal.Decimal): return str(v)
    if isinstance(v, (datetime.datetime, datetime.date)): return v.isoformat()
    if isinstance(v, list): return [plain(x) for x in v]
    if isinstance(v, tuple): return [plain(x) for x in v]
    if isinstance(v, dict): return {k: plain(x) for k, x in v.items()}
    return v
print(json.dumps({"schema": [f"{f.name}: {f.type}" for f in t.schema],
                  "rows": [plain(r) for r in t.to_pylist()]}))
"#;
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(&path),
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    let schema = v["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (schema, v["rows"].as_array().unwrap().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_becomes_parquet_with_the_table_schema() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let d = Daemon::start(&format!("{}{TABLE}", s3.config()));
    let fh = d.firehose();
    let dest = s3_destination("lake", 1, 1)
        .prefix("players/")
        .error_output_prefix("errors/!{firehose:error-output-type}/")
        .data_format_conversion_configuration(conversion("ZSTD", "players"));
    create_stream(&fh, "players", dest).await;

    let good = [
        r#"{"user_id":7,"Age":31,"location":"KR","premium":false,"ts":"2026-11-29T10:00:00Z","day":"2026-11-29","price":"19.99","tags":["a","b"],"profile":{"Level":3,"guild":"x"},"scores":{"m1":1.5},"geo.city":"Seoul","ignored":1}"#,
        r#"{"USER_ID":8,"ts":1795946400,"tags":[],"profile":null}"#,
        r#"{"user_id":9,"ts":1795946400123,"price":1.005,"scores":{"a":2,"b":null}}"#,
    ];
    let bad = [
        "not json",
        r#"{"user_id":"seven"}"#,
        r#"{"user_id":10,"age":3000000000}"#,
        r#"{"user_id":11,"price":123456789012}"#,
    ];
    let mut all: Vec<&str> = good.to_vec();
    all.extend(bad);
    put_all(&fh, "players", &all).await;

    let objs = parquet_under(&s3, "lake", "players/", 3).await;
    assert_eq!(objs.len(), 1);
    let (key, body) = &objs[0];
    assert!(key.ends_with(".parquet"), "{key}");
    let b = read(body);
    assert_eq!(b.num_rows(), 3);
    let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
    let types: Vec<String> = b
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    assert_eq!(types[0], "user_id: Int64");
    assert_eq!(
        b.schema().field_with_name("ts").unwrap().data_type(),
        &DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None)
    );
    assert_eq!(
        b.schema().field_with_name("price").unwrap().data_type(),
        &DataType::Decimal128(10, 2)
    );
    let ids = col("user_id");
    let ids = ids.as_primitive::<Int64Type>();
    assert_eq!(ids.values().to_vec(), [7, 8, 9]);
    let age = col("age");
    let age = age.as_primitive::<Int32Type>();
    assert_eq!(
        (age.value(0), age.is_null(1), age.is_null(2)),
        (31, true, true)
    );
    let ts = col("ts");
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    // ISO text, epoch seconds and epoch milliseconds.
    assert_eq!(
        ts.values().to_vec(),
        [
            1_795_946_400_000_000,
            1_795_946_400_000_000,
            1_795_946_400_123_000
        ]
    );
    let day = col("day");
    assert_eq!(day.as_primitive::<Date32Type>().value(0), 20_786);
    let price = col("price");
    let price = price.as_primitive::<arrow_array::types::Decimal128Type>();
    assert_eq!(
        (price.value(0), price.is_null(1), price.value(2)),
        (1999, true, 101)
    );
    assert_eq!(col("geo_city").as_string::<i32>().value(0), "Seoul");
    let tags = col("tags");
    let tags = tags.as_list::<i32>();
    assert_eq!(
        (tags.value(0).len(), tags.value(1).len(), tags.is_null(2)),
        (2, 0, true)
    );
    let profile = col("profile");
    let profile = profile.as_struct();
    assert_eq!(profile.column(0).as_primitive::<Int32Type>().value(0), 3);
    assert!(profile.is_null(1));
    let scores = col("scores");
    let scores = scores.as_map();
    assert_eq!(
        scores
            .value(2)
            .column(1)
            .as_primitive::<Float64Type>()
            .value(0),
        2.0
    );
    assert!(scores.value(2).column(1).is_null(1));

    // An independent reader agrees.
    let (schema, rows) = pyarrow_read(body);
    assert_eq!(
        schema,
        [
            "user_id: int64",
            "age: int32",
            "location: string",
            "premium: bool",
            "ts: timestamp[us]",
            "day: date32[day]",
            "price: decimal128(10, 2)",
            "tags: list<item: string>",
            "profile: struct<level: int32, guild: string>",
            // pyarrow names the map's entries after the column.
            "scores: map<string, double ('scores')>",
            "geo_city: string",
        ]
    );
    assert_eq!(rows[0]["ts"], "2026-11-29T10:00:00");
    assert_eq!(rows[0]["price"], "19.99");
    assert_eq!(
        rows[0]["profile"],
        serde_json::json!({"level": 3, "guild": "x"})
    );
    assert_eq!(rows[0]["scores"], serde_json::json!([["m1", 1.5]]));
    assert_eq!(rows[1]["age"], Value::Null);
    assert_eq!(rows[2]["ts"], "2026-11-29T10:00:00.123000");
    assert_eq!(rows[2]["price"], "1.01");

    // The records that do not fit, in the error output with the reason.
    let store = s3.client("lake");
    let errors = wait_for(Duration::from_secs(30), || async {
        let e: Vec<Value> = objects(&store)
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with("errors/format-conversion-failed/"))
            .flat_map(|(_, b)| {
                b.split(|c| *c == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice::<Value>(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        (e.len() == bad.len()).then_some(e)
    })
    .await
    .expect("four error records");
    for (e, raw) in errors.iter().zip(bad) {
        let data = base64::engine::general_purpose::STANDARD
            .decode(e["rawData"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, raw.as_bytes());
        assert_eq!(e["errorCode"], "DataFormatConversion.MalformedData");
    }
    let messages: Vec<&str> = errors
        .iter()
        .map(|e| e["errorMessage"].as_str().unwrap())
        .collect();
    assert!(messages[0].starts_with("not valid JSON"), "{messages:?}");
    assert!(
        messages[1].contains("user_id: expected an integer (bigint)"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("age: out of range for int"),
        "{messages:?}"
    );
    assert!(
        messages[3].contains("price: does not fit decimal(10,2)"),
        "{messages:?}"
    );
    assert_eq!(
        d.metric(
            "spillway_error_records_total{stream=\"players\",type=\"format-conversion-failed\"}"
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversion_settings_are_checked() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let d = Daemon::start(&format!("{}{TABLE}", s3.config()));
    let fh = d.firehose();
    let refused =
        |dest: aws_sdk_firehose::types::builders::ExtendedS3DestinationConfigurationBuilder| {
            let fh = fh.clone();
            async move {
                let err = fh
                    .create_delivery_stream()
                    .delivery_stream_name("bad")
                    .extended_s3_destination_configuration(dest.build().unwrap())
                    .send()
                    .await
                    .expect_err("refused");
                let svc = err.into_service_error();
                assert!(svc.is_invalid_argument_exception(), "{svc:?}");
                svc.meta().message().unwrap_or_default().to_owned()
            }
        };
    let m = refused(
        s3_destination("lake", 1, 1)
            .compression_format(aws_sdk_firehose::types::CompressionFormat::Gzip)
            .data_format_conversion_configuration(conversion("SNAPPY", "players")),
    )
    .await;
    assert!(m.contains("CompressionFormat: must be UNCOMPRESSED"), "{m}");
    let m = refused(
        s3_destination("lake", 1, 1)
            .data_format_conversion_configuration(conversion("SNAPPY", "nope")),
    )
    .await;
    assert!(
        m.contains("table game.nope is not declared in the config file"),
        "{m}"
    );
    let m = refused(
        s3_destination("lake", 1, 1)
            .data_format_conversion_configuration(conversion("LZO", "players")),
    )
    .await;
    assert!(
        m.contains("ParquetSerDe.Compression must be SNAPPY, GZIP, ZSTD or UNCOMPRESSED"),
        "{m}"
    );
}

/// A stream named after its bucket, partitioned by the jq query `{loc: .location}` under
/// `loc=`, with `conversion` as the body of its `data_format_conversion_configuration`.
fn by_location(bucket: &str, conversion: &str) -> String {
    format!(
        r#"
[[stream]]
name = "{bucket}"
bucket_arn = "arn:aws:s3:::{bucket}"
prefix = "loc=!{{partitionKeyFromQuery:loc}}/"
error_output_prefix = "errors/!{{firehose:error-output-type}}/"
buffering_hints = {{ size_in_mbs = 1, interval_in_seconds = 1 }}
[stream.processing_configuration]
processors = [{{ type = "MetadataExtraction", parameters = {{ MetadataExtractionQuery = '{{loc: .location}}' }} }}]
[stream.dynamic_partitioning_configuration]
enabled = true
[stream.data_format_conversion_configuration]
{conversion}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_schemas_with_partitions_from_toml() {
    let s3 = S3Server::start();
    s3.create_bucket("events");
    let config = format!(
        "{}{}",
        s3.config(),
        by_location(
            "events",
            "enabled = true\n[stream.data_format_conversion_configuration.parquet]\ncompression = \"SNAPPY\""
        )
    );
    let d = Daemon::start(&config);
    let fh = d.firehose();
    put_all(
        &fh,
        "events",
        &[
            r#"{"location":"KR","n":1,"x":1.5,"ok":true,"nested":{"a":1}}"#,
            r#"{"location":"US","n":2}"#,
            r#"{"location":"KR","n":3,"x":2,"nested":[1,2]}"#,
        ],
    )
    .await;
    // Nested past the converter's depth limit (64), within jq's (128): not convertible.
    let deep = format!(
        r#"{{"location":"KR","d":{}1{}}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    put_all(&fh, "events", &[deep.as_str()]).await;
    let kr = parquet_under(&s3, "events", "loc=KR/", 2).await;
    let us = parquet_under(&s3, "events", "loc=US/", 1).await;
    assert!(kr[0].0.ends_with(".parquet") && us[0].0.ends_with(".parquet"));
    let (schema, rows) = pyarrow_read(&kr[0].1);
    // Each object's schema is inferred from its own records: ints and floats widen to double,
    // and a key that is an object in one record and a list in another is JSON text.
    assert_eq!(
        schema,
        [
            "location: string",
            "n: int64",
            "nested: string",
            "ok: bool",
            "x: double",
        ]
    );
    assert_eq!(rows[0]["nested"], r#"{"a":1}"#);
    assert_eq!(rows[1]["x"], 2.0);
    assert_eq!(rows[1]["ok"], Value::Null);
    let (schema, _) = pyarrow_read(&us[0].1);
    assert_eq!(schema, ["location: string", "n: int64"]);
    assert_eq!(
        d.metric(
            "spillway_error_records_total{stream=\"events\",type=\"format-conversion-failed\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_conversion_rewrites_the_same_parquet_objects() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let proxy = HoldingProxy::start(s3.port);
    let config = format!(
        "{}{}",
        proxy.config(),
        by_location(
            "lake",
            r#"columns = [{ name = "user_id", type = "bigint" }, { name = "location", type = "string" }]"#
        )
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose_with_retries(1);
    let records: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"user_id":{i},"location":"{}"}}"#, ["KR", "US"][i % 2]))
        .chain([r#"{"user_id":"x","location":"KR"}"#.to_string()])
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();

    // The objects reach S3, but the daemon never hears back.
    proxy.set_hold(true);
    put_all(&fh, "lake", &refs).await;
    let store = s3.client("lake");
    let landed = wait_for(Duration::from_secs(30), || async {
        let objs = objects(&store).await;
        (objs.len() == 3).then_some(objs)
    })
    .await
    .expect("two Parquet objects and one error object reached the server");
    d.kill9();
    proxy.set_hold(false);
    d.restart();
    wait_for(Duration::from_secs(30), || async {
        (d.metric("spillway_objects_written_total{stream=\"lake\"}") >= 3.0).then_some(())
    })
    .await
    .expect("the replayed batch was delivered");
    let after = objects(&store).await;
    let keys = |o: &[(String, Bytes)]| o.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&after), keys(&landed));
    let mut ids: Vec<i64> = after
        .iter()
        .filter(|(k, _)| k.ends_with(".parquet"))
        .flat_map(|(_, b)| {
            let batch = read(b);
            let col = batch.column(0).as_primitive::<Int64Type>().clone();
            col.values().to_vec()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..40).collect::<Vec<_>>(), "every row exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_game_transform_output_becomes_parquet_per_location() {
    let wasm = component("mobile-game");
    let s3 = S3Server::start();
    s3.create_bucket("game");
    let config = format!(
        r#"{}
[[table]]
database = "game"
name = "model_input"
columns = [
  {{ name = "user_id", type = "bigint" }},
  {{ name = "age", type = "int" }},
  {{ name = "location", type = "string" }},
  {{ name = "play_time", type = "string" }},
]

[[stream]]
name = "game"
bucket_arn = "arn:aws:s3:::game"
prefix = "location=!{{partitionKeyFromLambda:location}}/"
error_output_prefix = "errors/!{{firehose:error-output-type}}/"
buffering_hints = {{ size_in_mbs = 1, interval_in_seconds = 1 }}
[stream.processing_configuration]
processors = [{{ type = "Lambda", parameters = {{ LambdaArn = "{}" }} }}]
[stream.dynamic_partitioning_configuration]
enabled = true
[stream.data_format_conversion_configuration]
table = {{ database = "game", name = "model_input" }}
[stream.data_format_conversion_configuration.parquet]
compression = "ZSTD"
"#,
        s3.config(),
        wasm.display()
    );
    let d = Daemon::start(&config);
    let fh = d.firehose();
    let players: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"user_id":{i},"age":{},"location":"{}","play_time_s":{},"premium":{}}}"#,
                20 + i,
                ["KR", "BR"][i % 2],
                i * 61,
                i % 4 == 0
            )
        })
        .collect();
    let refs: Vec<&str> = players.iter().map(String::as_str).collect();
    put_all(&fh, "game", &refs).await;
    // 12 players, 3 premium (dropped): 9 rows, by location.
    let kr = parquet_under(&s3, "game", "location=KR/", 3).await;
    let br = parquet_under(&s3, "game", "location=BR/", 6).await;
    let (schema, rows) = pyarrow_read(&kr[0].1);
    assert_eq!(
        schema,
        [
            "user_id: int64",
            "age: int32",
            "location: string",
            "play_time: string"
        ]
    );
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["location"] == "KR"));
    // KR players are the even ones; 0, 4 and 8 are premium.
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 6, 10]);
    assert_eq!(rows[0]["play_time"], "122");
    assert_eq!(pyarrow_read(&br[0].1).1.len(), 6);
    drop(d);
}

#[test]
fn check_config_shows_the_parquet_output_and_its_table() {
    let text = check_config("examples/parquet.toml");
    assert!(
        text.contains(
            "      parquet (Zstd), 7 columns of table game.players\n  tables         1\n"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_parquet_object_goes_up_in_parts() {
    let s3 = S3Server::start();
    s3.create_bucket("big");
    let proxy = HoldingProxy::start(s3.port);
    // 5 MiB parts from 5 MiB on (S3's smallest part), one 12 MB batch, no compression: the
    // object is streamed to the server as a multipart upload of three parts.
    let config = format!(
        r#"{}
[upload]
multipart_threshold_mib = 5
part_size_mib = 5

[[stream]]
name = "big"
bucket_arn = "arn:aws:s3:::big"
prefix = "big/"
buffering_hints = {{ size_in_mbs = 64, interval_in_seconds = 10 }}
[stream.data_format_conversion_configuration]
columns = [{{ name = "n", type = "int" }}, {{ name = "pad", type = "string" }}]
[stream.data_format_conversion_configuration.parquet]
compression = "UNCOMPRESSED"
"#,
        proxy.config()
    );
    let d = Daemon::start(&config);
    let fh = d.firehose();
    // Pseudo-random text, so the file is about as large as the JSON.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut pad = |len: usize| -> String {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect()
    };
    let mut n = 0;
    for _ in 0..4 {
        let records: Vec<String> = (0..30)
            .map(|_| {
                n += 1;
                format!(r#"{{"n":{n},"pad":"{}"}}"#, pad(100_000))
            })
            .collect();
        put_all(&fh, "big", &records).await;
    }
    let objs = parquet_under(&s3, "big", "big/", 120).await;
    assert_eq!(objs.len(), 1);
    let body = &objs[0].1;
    assert!(body.len() > 11_000_000, "{} bytes", body.len());
    assert_eq!(
        d.metric("spillway_object_bytes_total{stream=\"big\"}"),
        body.len() as f64
    );
    let reader = ParquetRecordBatchReaderBuilder::try_new(body.clone()).unwrap();
    let ns: Vec<i32> = reader
        .build()
        .unwrap()
        .flat_map(|b| {
            b.unwrap()
                .column(0)
                .as_primitive::<Int32Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ns, (1..=120).collect::<Vec<_>>());
    let (_, rows) = pyarrow_read(body);
    assert_eq!(rows.len(), 120);
    // One multipart upload of 5 + 5 MiB and the rest.
    let requests = proxy.requests.lock().unwrap().clone();
    let count = |what: &str| requests.iter().filter(|r| r.contains(what)).count();
    assert_eq!(count("?uploads"), 1, "{requests:?}");
    assert_eq!(count("partNumber="), 3, "{requests:?}");
    assert_eq!(count("uploadId="), 4, "{requests:?}");
}

/// An encoder that panics between row groups (injected) used to end its channel, which the
/// upload read as the end of the object: a Parquet file without its footer was uploaded and
/// committed, and its records released. Now the attempt fails, no object is written, and the
/// retry writes the whole object: every row exactly once, every object readable.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_panic_writes_no_object_and_the_retry_delivers_once() {
    let s3 = S3Server::start();
    s3.create_bucket("crash");
    let config = format!(
        "{}{}",
        s3.config(),
        by_location(
            "crash",
            r#"columns = [{ name = "user_id", type = "bigint" }, { name = "location", type = "string" }]"#
        )
    );
    let mut d = Daemon::start_with(&config, &[], &[("FAILPOINTS", "parquet-row-group=1*panic")]);
    let fh = d.firehose();
    let records: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"user_id":{i},"location":"{}"}}"#, ["KR", "US"][i % 2]))
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    put_all(&fh, "crash", &refs).await;

    let objs = parquet_under(&s3, "crash", "loc=", 40).await;
    assert_eq!(objs.len(), 2, "one object per location, no partial one");
    let mut ids: Vec<i64> = objs
        .iter()
        .flat_map(|(_, b)| {
            read(b)
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..40).collect::<Vec<_>>(), "every row exactly once");
    assert!(
        d.metric("spillway_upload_failures_total{stream=\"crash\"}") >= 1.0,
        "the injected panic failed an attempt"
    );
    assert!(
        d.log().contains("stopped before the end of the object"),
        "{}",
        d.log()
    );
    assert!(d.terminate().success());
}

/// Without a table, nested objects are inferred as structs and arrays as lists: pyarrow and
/// DuckDB read `geo.lat` and `tags[1]` from the object spillway wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_records_are_inferred_as_structs_and_lists_for_pyarrow_and_duckdb() {
    let s3 = S3Server::start();
    s3.create_bucket("nested");
    let config = format!("{}{}", s3.config(), by_location("nested", "enabled = true"));
    let d = Daemon::start(&config);
    let fh = d.firehose();
    put_all(
        &fh,
        "nested",
        &[
            r#"{"location":"KR","geo":{"lat":37.5,"lon":127},"tags":["new","pvp"],"stats":{"kills":[1,2]}}"#,
            r#"{"location":"KR","geo":{"lat":35,"lon":129.1,"city":"Busan"},"tags":[],"stats":{"kills":[]}}"#,
        ],
    )
    .await;
    let kr = parquet_under(&s3, "nested", "loc=KR/", 2).await;
    let (schema, rows) = pyarrow_read(&kr[0].1);
    assert_eq!(
        schema,
        [
            "geo: struct<city: string, lat: double, lon: double>",
            "location: string",
            "stats: struct<kills: list<item: int64>>",
            "tags: list<item: string>",
        ]
    );
    assert_eq!(rows[0]["geo"]["lat"], 37.5);
    assert_eq!(rows[1]["geo"]["city"], "Busan");
    assert_eq!(rows[0]["tags"][1], "pvp");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object.parquet");
    std::fs::write(&path, &kr[0].1).unwrap();
    let script = r#"
import sys, duckdb
rows = duckdb.sql(f"SELECT geo.lat, tags[1], len(stats.kills) FROM read_parquet('{sys.argv[1]}')").fetchall()
for r in rows:
    print(r)
"#;
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(&path),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "(37.5, 'new', 2)\n(35.0, None, 0)\n"
    );
}
