//! Iceberg destinations end to end: records sent with the Rust SDK land in Iceberg tables
//! that pyiceberg (from PyPI) reads through the same SQLite catalog, against s3s-fs over the
//! network and against the local store (where DuckDB also reads the files pyiceberg lists);
//! exactly once across kill -9 before and after the commit.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

fn create_body(stream: &str, bucket: &str, table: &Value, extra: Value) -> Vec<u8> {
    let mut config = json!({
        "RoleARN": "arn:aws:iam::000000000000:role/firehose",
        "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog"},
        "DestinationTableConfigurationList": [table],
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
        "TableCreationConfiguration": {"Enabled": true},
        "S3Configuration": {
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "BucketARN": format!("arn:aws:s3:::{bucket}"),
            "ErrorOutputPrefix": "errors/",
        },
    });
    if let (Some(c), Value::Object(e)) = (config.as_object_mut(), extra) {
        c.extend(e);
    }
    json!({
        "DeliveryStreamName": stream,
        "DeliveryStreamType": "DirectPut",
        "IcebergDestinationConfiguration": config,
    })
    .to_string()
    .into_bytes()
}

/// The stream's destination as the Rust SDK reads `IcebergDestinationDescription`.
async fn iceberg_description(
    client: &aws_sdk_firehose::Client,
    stream: &str,
) -> aws_sdk_firehose::types::IcebergDestinationDescription {
    let described = client
        .describe_delivery_stream()
        .delivery_stream_name(stream)
        .send()
        .await
        .unwrap();
    let dest = &described
        .delivery_stream_description()
        .unwrap()
        .destinations()[0];
    dest.iceberg_destination_description()
        .cloned()
        .unwrap_or_else(|| panic!("no Iceberg description: {dest:?}"))
}

/// Creates a stream from a `CreateDeliveryStream` body; it must be accepted.
fn create(d: &Daemon, body: &[u8]) {
    let (status, answer) = d.raw(Some("CreateDeliveryStream"), body);
    assert_eq!(status, 200, "{answer}");
}

/// The default catalog's warehouse with the local store, as a `file://` location.
fn local_warehouse(d: &Daemon) -> String {
    format!(
        "file://{}/buckets/iceberg/warehouse",
        d.data_dir.canonicalize().unwrap().display()
    )
}

/// Every error record under the local store's `errors` bucket.
fn error_records(d: &Daemon) -> Vec<Value> {
    error_objects(d).into_iter().flat_map(|(_, r)| r).collect()
}

/// The error objects under the local store's `errors` bucket: key and records.
fn error_objects(d: &Daemon) -> Vec<(String, Vec<Value>)> {
    let bucket = d.data_dir.join("buckets/errors");
    walk(&bucket)
        .iter()
        .map(|f| {
            let key = f
                .strip_prefix(&bucket)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let records = std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect();
            (key, records)
        })
        .collect()
}

fn read_table(d: &Daemon, warehouse: &str, table: &str, s3: Option<&str>) -> Value {
    let uri = format!(
        "sqlite:///{}/iceberg/catalog.db",
        d.data_dir.canonicalize().unwrap().display()
    );
    read_catalog(&uri, warehouse, table, s3)
}

fn read_catalog(uri: &str, warehouse: &str, table: &str, s3: Option<&str>) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iceberg_read.py");
    let mut cmd = std::process::Command::new(venv_python());
    cmd.arg(script).arg(uri).arg(warehouse).arg(table);
    if let Some(endpoint) = s3 {
        cmd.arg(endpoint);
    }
    serde_json::from_slice(&stdout_of(&mut cmd)).unwrap()
}

fn ids(read: &Value) -> Vec<i64> {
    read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// Waits until the stream has added at least `rows` rows to the table.
async fn wait_rows(d: &Daemon, stream: &str, table: &str, rows: f64) {
    let series = format!("spillway_iceberg_rows_total{{stream=\"{stream}\",table=\"{table}\"}}");
    wait_metric(d, &series, rows).await;
}

async fn wait_metric(d: &Daemon, series: &str, at_least: f64) {
    let found = wait_for(Duration::from_secs(60), || async {
        (d.metric_if_any(series).unwrap_or(0.0) >= at_least).then_some(())
    })
    .await;
    assert!(found.is_some(), "{series} did not reach {at_least}");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_land_in_an_iceberg_table_on_s3_that_pyiceberg_reads() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    s3.create_bucket("failed");
    let config = format!(
        "{}\n[iceberg.catalogs.default]\nwarehouse = \"s3://lake/warehouse\"\n",
        s3.config()
    );
    let d = Daemon::start(&config);
    let table = json!({"DestinationDatabaseName": "game", "DestinationTableName": "players"});
    create(&d, &create_body("players", "failed", &table, json!({})));

    // Described as Firehose describes an Iceberg destination, read by the Rust SDK's types.
    let client = d.firehose();
    let iceberg = iceberg_description(&client, "players").await;
    assert_eq!(
        iceberg.destination_table_configuration_list()[0].destination_table_name(),
        "players"
    );
    assert_eq!(
        iceberg.s3_destination_description().unwrap().bucket_arn(),
        "arn:aws:s3:::failed"
    );

    let mut records: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            json!({"id": i, "age": 20 + i % 30, "city": format!("c{}", i % 7), "premium": i % 2 == 0})
                .to_string()
                .into_bytes()
        })
        .collect();
    // Not an object: it cannot become a row, so it goes to the error output.
    records.push(b"[1, 2, 3]".to_vec());
    put_all(&client, "players", &records).await;
    wait_rows(&d, "players", "game.players", 200.0).await;

    let read = read_table(
        &d,
        "s3://lake/warehouse",
        "game.players",
        Some(&s3.endpoint()),
    );
    assert_eq!(ids(&read), (0..200).collect::<Vec<_>>(), "{read}");
    assert_eq!(read["rows"][7]["city"], "c0");
    assert_eq!(read["rows"][7]["premium"], false);
    assert!(
        read["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f.as_str().unwrap().starts_with("s3://lake/warehouse/"))
    );
    assert!(
        read["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.is_string()),
        "{read}"
    );

    let failed = objects(&s3.client("failed")).await;
    assert_eq!(failed.len(), 1, "one error object");
    assert!(failed[0].0.starts_with("errors/"), "{}", failed[0].0);
    let envelope: Value =
        serde_json::from_slice(failed[0].1.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        envelope["errorCode"], "DataFormatConversion.MalformedData",
        "{envelope}"
    );
}

/// A table with a day partition and schema evolution on the local store, killed with
/// kill -9 after its data files were written but before the commit, and after the commit but
/// before the journal knew: every record is in the table once.
#[tokio::test(flavor = "multi_thread")]
async fn iceberg_appends_are_exactly_once_across_kill_9_around_the_commit() {
    for (failpoint, done_metric) in [
        ("iceberg-before-commit", "spillway_iceberg_commits_total"),
        (
            "iceberg-after-commit",
            "spillway_iceberg_replays_skipped_total",
        ),
    ] {
        let mut d = Daemon::start_with(
            "",
            &[],
            &[("FAILPOINTS", &format!("{failpoint}=1*sleep(120000)"))],
        );
        let table = json!({
            "DestinationDatabaseName": "iot",
            "DestinationTableName": "readings",
            "PartitionSpec": {"Identity": [{"SourceName": "day(ts)"}]},
        });
        create(
            &d,
            &create_body(
                "readings",
                "errors",
                &table,
                json!({"SchemaEvolutionConfiguration": {"Enabled": true}}),
            ),
        );
        let client = d.firehose();
        let records: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                json!({"id": i, "ts": format!("2026-12-0{}T10:00:00Z", 1 + i % 3), "v": i as f64 / 2.0})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        put_all(&client, "readings", &records).await;
        let root = d.data_dir.join("buckets/iceberg/warehouse/iot/readings");
        // Wait until the daemon sits in the failpoint: data files written (and, after the
        // commit, a second metadata file), then kill it there.
        let reached = wait_for(Duration::from_secs(60), || {
            let root = root.clone();
            async move {
                let files = walk(&root);
                let data = files
                    .iter()
                    .filter(|f| {
                        f.extension().is_some_and(|e| e == "parquet")
                            && f.to_string_lossy().contains("/data/")
                    })
                    .count();
                let metadata = files
                    .iter()
                    .filter(|f| f.to_string_lossy().ends_with(".metadata.json"))
                    .count();
                let there = match failpoint {
                    "iceberg-before-commit" => data >= 3,
                    _ => metadata >= 2,
                };
                there.then_some(())
            }
        })
        .await;
        assert!(reached.is_some(), "{failpoint} not reached:\n{}", d.log());
        d.kill9();
        d.extra_env.clear();
        d.restart();
        wait_metric(
            &d,
            &format!("{done_metric}{{stream=\"readings\",table=\"iot.readings\"}}"),
            1.0,
        )
        .await;
        let warehouse = format!(
            "file://{}/buckets/iceberg/warehouse",
            d.data_dir.canonicalize().unwrap().display()
        );
        let read = read_table(&d, &warehouse, "iot.readings", None);
        assert_eq!(
            ids(&read),
            (0..50).collect::<Vec<_>>(),
            "{failpoint}: {read}"
        );
        assert_eq!(read["duckdb_rows"], 50, "{read}");
        assert_eq!(read["partition_fields"], json!(["day:ts_day"]), "{read}");
        assert_eq!(
            read["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s.is_string())
                .count(),
            1,
            "{read}"
        );
    }
}

/// Two daemons append to one table through one catalog: commits that lose the race (and two
/// conflicts injected into the first daemon's catalog) are retried on the new table state,
/// counted, and every record of both is in the table once. Each batch also brings a column
/// of its own (schema evolution), added in the commit of its rows: both daemons evolve the
/// table at once, so a batch whose new columns' ids were taken by the other daemon's commit
/// is written again, and every value lands in its own column.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_append_to_one_table_and_retry_their_conflicts() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    s3.create_bucket("failed");
    let shared = tempfile::tempdir().unwrap();
    let uri = format!("sqlite://{}/catalog.db", shared.path().display());
    let config = format!(
        "{}\n[iceberg.catalogs.default]\nuri = \"{uri}?mode=rwc\"\nwarehouse = \"s3://lake/warehouse\"\n",
        s3.config()
    );
    let d1 = Daemon::start_with(
        &config,
        &[],
        &[("FAILPOINTS", "iceberg-update-table=2*return")],
    );
    let d2 = Daemon::start(&config);
    let table = json!({"DestinationDatabaseName": "game", "DestinationTableName": "events"});
    for d in [&d1, &d2] {
        let evolving = json!({"SchemaEvolutionConfiguration": {"Enabled": true}});
        create(d, &create_body("events", "failed", &table, evolving));
    }
    let send = |d: &Daemon, from: i64| {
        let client = d.firehose();
        async move {
            for chunk in 0..6 {
                let records: Vec<Vec<u8>> = (0..50)
                    .map(|i| {
                        let id = from + chunk * 50 + i;
                        let mut r = json!({"id": id, "k": "v"});
                        r[column_of(id)] = json!(id);
                        r.to_string().into_bytes()
                    })
                    .collect();
                put_all(&client, "events", &records).await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
    };
    tokio::join!(send(&d1, 0), send(&d2, 300));
    for d in [&d1, &d2] {
        wait_rows(d, "events", "game.events", 300.0).await;
    }
    let read = read_catalog(
        &format!("sqlite:///{}/catalog.db", shared.path().display()),
        "s3://lake/warehouse",
        "game.events",
        Some(&s3.endpoint()),
    );
    assert_eq!(ids(&read), (0..600).collect::<Vec<_>>(), "{read}");
    for row in read["rows"].as_array().unwrap() {
        let id = row["id"].as_i64().unwrap();
        assert_eq!(row[column_of(id)], id, "{row}");
    }
    // A batch written again (its schema moved) was processed once.
    for d in [&d1, &d2] {
        let ok = d.metric("spillway_processed_records_total{result=\"ok\",stream=\"events\"}");
        assert_eq!(ok, 300.0, "records processed once");
    }
    // Evolution made no commits of its own: creation, then one metadata file per snapshot.
    assert_eq!(
        read["metadata_versions"].as_u64().unwrap(),
        1 + read["snapshots"].as_array().unwrap().len() as u64,
        "{read}"
    );
    let conflicts = d1.metric("spillway_iceberg_commit_conflicts_total{table=\"game.events\"}");
    assert!(conflicts >= 2.0, "conflicts counted: {conflicts}");
    let commits: f64 = [&d1, &d2]
        .iter()
        .map(|d| {
            d.metric("spillway_iceberg_commits_total{stream=\"events\",table=\"game.events\"}")
        })
        .sum();
    assert_eq!(
        read["snapshots"].as_array().unwrap().len() as f64,
        commits,
        "one snapshot per commit: {read}"
    );
}

/// The column of its own a record of the two-daemon test carries: one per daemon and batch.
fn column_of(id: i64) -> String {
    format!("{}{}", if id < 300 { "a" } else { "b" }, (id % 300) / 50)
}

/// Records routed by their metadata (a MetadataExtraction query) to the stream's two tables;
/// a record naming an unlisted table and one asking for `delete` go to the error output with
/// their codes. Records that do not fit `players` go under its own `S3ErrorOutputPrefix`,
/// those that do not fit `sessions` under the stream's `ErrorOutputPrefix`.
#[tokio::test(flavor = "multi_thread")]
async fn records_are_routed_to_tables_by_their_metadata() {
    let d = Daemon::start("");
    let tables = json!([
        {"DestinationDatabaseName": "game", "DestinationTableName": "players",
         "S3ErrorOutputPrefix": "players-failed/!{firehose:error-output-type}/!{firehose:random-string}/"},
        {"DestinationDatabaseName": "game", "DestinationTableName": "sessions"},
    ]);
    let mut body: Value = serde_json::from_slice(&create_body(
        "routed",
        "errors",
        &json!({}),
        json!({
            "ProcessingConfiguration": {"Enabled": true, "Processors": [{
                "Type": "MetadataExtraction",
                "Parameters": [
                    {"ParameterName": "MetadataExtractionQuery",
                     "ParameterValue": "{destinationTableName: .kind, operation: (.op // \"insert\")}"},
                    {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
                ],
            }]},
        }),
    ))
    .unwrap();
    body["IcebergDestinationConfiguration"]["DestinationTableConfigurationList"] = tables;
    let (status, resp) = d.raw(Some("CreateDeliveryStream"), body.to_string().as_bytes());
    assert_eq!(status, 200, "{resp}");
    let mut records: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let kind = if i % 4 == 0 { "sessions" } else { "players" };
            json!({"id": i, "kind": kind}).to_string().into_bytes()
        })
        .collect();
    records.push(
        json!({"id": 100, "kind": "secrets"})
            .to_string()
            .into_bytes(),
    );
    records.push(
        json!({"id": 101, "kind": "players", "op": "delete"})
            .to_string()
            .into_bytes(),
    );
    put_all(&d.firehose(), "routed", &records).await;
    wait_rows(&d, "routed", "game.players", 30.0).await;
    wait_rows(&d, "routed", "game.sessions", 10.0).await;
    let warehouse = local_warehouse(&d);
    let players = read_table(&d, &warehouse, "game.players", None);
    let sessions = read_table(&d, &warehouse, "game.sessions", None);
    assert_eq!(
        ids(&players),
        (0..40).filter(|i| i % 4 != 0).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&sessions),
        (0..40).filter(|i| i % 4 == 0).collect::<Vec<_>>()
    );
    assert_routing_errors(&error_records(&d));

    // The tables exist now: an id that is not a number fits neither.
    let misfits: Vec<Vec<u8>> = ["players", "sessions"]
        .iter()
        .map(|kind| {
            json!({"id": format!("not-{kind}"), "kind": kind})
                .to_string()
                .into_bytes()
        })
        .collect();
    put_all(&d.firehose(), "routed", &misfits).await;
    let objects = wait_for(Duration::from_secs(60), || async {
        let objects = error_objects(&d);
        (objects.len() == 3).then_some(objects)
    })
    .await
    .unwrap_or_else(|| panic!("{:?}", error_objects(&d)));
    let under = |id: &str| {
        objects
            .iter()
            .find(|(_, records)| {
                records.iter().any(|r| {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(r["rawData"].as_str().unwrap())
                        .unwrap();
                    serde_json::from_slice::<Value>(&data).unwrap()["id"] == id
                })
            })
            .map(|(key, records)| (key.clone(), records.len()))
            .unwrap()
    };
    let (key, count) = under("not-players");
    assert_eq!(count, 1, "{objects:?}");
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(
        parts[..2],
        ["players-failed", "format-conversion-failed"],
        "{key}"
    );
    assert!(
        parts[2].len() == 11 && parts[2].bytes().all(|b| b.is_ascii_alphanumeric()),
        "a random string: {key}"
    );
    let (key, count) = under("not-sessions");
    assert_eq!(count, 1, "{objects:?}");
    assert!(key.starts_with("errors/format-conversion-failed/"), "{key}");

    // A table's error prefix is checked as an ErrorOutputPrefix is.
    let mut bad = body.clone();
    bad["DeliveryStreamName"] = json!("bad-prefix");
    bad["IcebergDestinationConfiguration"]["DestinationTableConfigurationList"][0]["S3ErrorOutputPrefix"] =
        json!("p/!{timestamp:yyyy}/");
    let (status, resp) = d.raw(Some("CreateDeliveryStream"), bad.to_string().as_bytes());
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("S3ErrorOutputPrefix"), "{resp}");
}

/// Records routed by a WebAssembly transform's metadata (`examples/transforms/iceberg-router`):
/// its keys win over the MetadataExtraction query's, which names the table of the records the
/// transform gives no table; an unlisted table and `delete` fail with their codes.
#[tokio::test(flavor = "multi_thread")]
async fn a_transform_routes_records_to_tables_before_the_query() {
    let wasm = component("iceberg-router");
    let d = Daemon::start("");
    let mut body: Value = serde_json::from_slice(&create_body(
        "events",
        "errors",
        &json!({}),
        json!({
            "ProcessingConfiguration": {"Enabled": true, "Processors": [
                {"Type": "Lambda", "Parameters": [
                    {"ParameterName": "LambdaArn",
                     "ParameterValue": format!("file://{}", wasm.display())},
                ]},
                {"Type": "MetadataExtraction", "Parameters": [
                    {"ParameterName": "MetadataExtractionQuery",
                     "ParameterValue": "{destinationTableName: \"sessions\"}"},
                    {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"},
                ]},
            ]},
        }),
    ))
    .unwrap();
    body["IcebergDestinationConfiguration"]["DestinationTableConfigurationList"] = json!([
        {"DestinationDatabaseName": "game", "DestinationTableName": "players"},
        {"DestinationDatabaseName": "game", "DestinationTableName": "sessions"},
    ]);
    create(&d, body.to_string().as_bytes());
    let mut records: Vec<Value> = (0..30)
        .map(|i| match i % 3 {
            // The transform names the table.
            0 => json!({"id": i, "event": "players"}),
            // The transform names none: the query's.
            1 => json!({"id": i}),
            _ => json!({"id": i, "event": "sessions", "op": "insert"}),
        })
        .collect();
    records.push(json!({"id": 100, "event": "secrets"}));
    records.push(json!({"id": 101, "event": "players", "op": "delete"}));
    let records: Vec<Vec<u8>> = records.iter().map(|r| r.to_string().into_bytes()).collect();
    put_all(&d.firehose(), "events", &records).await;
    wait_rows(&d, "events", "game.players", 10.0).await;
    wait_rows(&d, "events", "game.sessions", 20.0).await;
    let warehouse = local_warehouse(&d);
    let players = read_table(&d, &warehouse, "game.players", None);
    let sessions = read_table(&d, &warehouse, "game.sessions", None);
    assert_eq!(
        ids(&players),
        (0..30).step_by(3).collect::<Vec<_>>(),
        "{players}"
    );
    assert_eq!(
        ids(&sessions),
        (0..30).filter(|i| i % 3 != 0).collect::<Vec<_>>(),
        "{sessions}"
    );
    let failed = wait_for(Duration::from_secs(60), || async {
        let failed = error_records(&d);
        (failed.len() == 2).then_some(failed)
    })
    .await
    .unwrap_or_else(|| panic!("{:?}", error_records(&d)));
    assert_routing_errors(&failed);
}

/// The error records of the routing tests: one record naming an unlisted table, one asking
/// for `delete`.
fn assert_routing_errors(failed: &[Value]) {
    let mut codes: Vec<&str> = failed
        .iter()
        .map(|e| e["errorCode"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        ["Iceberg.OperationNotSupported", "Iceberg.TableNotListed"],
        "{failed:?}"
    );
}

/// A private PostgreSQL cluster from Debian's package (tests/run.sh installs it), on a free
/// port, stopped when dropped. As root, it runs as the package's `postgres` user.
struct Postgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: run the test command (bash tests/run.sh)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .expect("no initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
        };
        if unsafe { libc::geteuid() } == 0 {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:", pg.dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "spillway",
            ],
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            pg.dir.path().display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-l",
                pg.dir.path().join("log").to_str().unwrap(),
                "start",
            ],
        );
        pg
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let tool = self.bin.join(tool);
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            std::process::Command::new(&tool)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            tool.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn uri(&self) -> String {
        format!("postgres://spillway@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let tool = self.bin.join("pg_ctl");
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            std::process::Command::new(&tool)
        };
        let _ = cmd
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// A PostgreSQL catalog (`[iceberg.catalogs.pg]`, `CatalogARN ...:catalog/pg`): the table's
/// rows through pyiceberg's SQL catalog on the same database.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_catalog_holds_the_table() {
    let pg = Postgres::start();
    let d = Daemon::start(&format!("[iceberg.catalogs.pg]\nuri = \"{}\"\n", pg.uri()));
    let mut body: Value = serde_json::from_slice(&create_body(
        "pg-events",
        "errors",
        &json!({"DestinationDatabaseName": "iot", "DestinationTableName": "events"}),
        json!({}),
    ))
    .unwrap();
    body["IcebergDestinationConfiguration"]["CatalogConfiguration"]["CatalogARN"] =
        json!("arn:aws:glue:us-east-1:000000000000:catalog/pg");
    let (status, resp) = d.raw(Some("CreateDeliveryStream"), body.to_string().as_bytes());
    assert_eq!(status, 200, "{resp}");
    // A catalog that is not configured is refused when the stream is created.
    body["DeliveryStreamName"] = json!("nowhere");
    body["IcebergDestinationConfiguration"]["CatalogConfiguration"]["CatalogARN"] =
        json!("arn:aws:glue:us-east-1:000000000000:catalog/nope");
    let (status, resp) = d.raw(Some("CreateDeliveryStream"), body.to_string().as_bytes());
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("not configured"), "{resp}");

    let records: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            json!({"id": i, "temp": 20.5 + i as f64})
                .to_string()
                .into_bytes()
        })
        .collect();
    put_all(&d.firehose(), "pg-events", &records).await;
    wait_rows(&d, "pg-events", "iot.events", 30.0).await;
    let warehouse = local_warehouse(&d);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iceberg_read.py");
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .env("CATALOG_NAME", "pg")
            .arg(script)
            .arg(format!(
                "postgresql+psycopg2://spillway@127.0.0.1:{}/postgres",
                pg.port
            ))
            .arg(warehouse)
            .arg("iot.events"),
    );
    let read: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(ids(&read), (0..30).collect::<Vec<_>>(), "{read}");
}

/// An Iceberg stream declared in the config file (`[stream.iceberg]`): described as an Iceberg
/// destination, its records in the table.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_declares_an_iceberg_stream() {
    let d = Daemon::start(
        r#"
[[stream]]
name = "declared"
bucket_arn = "arn:aws:s3:::errors"
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }

[stream.iceberg]
create_tables = true
tables = [{ database = "game", table = "declared", partition = ["day(arrival)"] }]
"#,
    );
    let client = d.firehose();
    let iceberg = iceberg_description(&client, "declared").await;
    assert_eq!(
        iceberg.destination_table_configuration_list()[0].destination_table_name(),
        "declared"
    );
    let records: Vec<Vec<u8>> = (0..20)
        .map(|i| match i {
            0 => json!({"id": i, "arrival": "2026-11-30T08:00:00Z"}),
            _ => json!({"id": i}),
        })
        .map(|r| r.to_string().into_bytes())
        .collect();
    put_all(&client, "declared", &records).await;
    wait_rows(&d, "declared", "game.declared", 20.0).await;
    let warehouse = local_warehouse(&d);
    let read = read_table(&d, &warehouse, "game.declared", None);
    assert_eq!(ids(&read), (0..20).collect::<Vec<_>>(), "{read}");
    // Partitioned by the day the records arrived: spillway fills `arrival`, which they lack
    // (record 0 sets its own).
    assert_eq!(
        read["partition_fields"],
        json!(["day:arrival_day"]),
        "{read}"
    );
    assert_eq!(
        read["rows"][0]["arrival"], "2026-11-30T08:00:00+00:00",
        "{read}"
    );
    let today = chrono::Utc::now().date_naive().to_string();
    for row in &read["rows"].as_array().unwrap()[1..] {
        let at = row["arrival"].as_str().unwrap_or_default();
        let day = chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| t.date_naive().to_string())
            .unwrap_or_default();
        // Arrived today (or yesterday, if the test ran across midnight).
        let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
            .date_naive()
            .to_string();
        assert!(day == today || day == yesterday, "{row}");
    }
    assert!(
        read["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("/arrival_day=2026-11-30/")),
        "{read}"
    );
}

/// `[iceberg.maintenance]` expires all but the newest snapshots; the table keeps every row.
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_expires_old_snapshots_and_keeps_the_rows() {
    let d = Daemon::start(
        "[iceberg.maintenance]\nexpire_snapshots_after_seconds = 0\nretain_snapshots = 2\ninterval_seconds = 1\n",
    );
    create(
        &d,
        &create_body(
            "kept",
            "errors",
            &json!({"DestinationDatabaseName": "game", "DestinationTableName": "kept"}),
            json!({}),
        ),
    );
    let client = d.firehose();
    for round in 0..5 {
        let records: Vec<Vec<u8>> = (0..10)
            .map(|i| json!({"id": round * 10 + i}).to_string().into_bytes())
            .collect();
        put_all(&client, "kept", &records).await;
        wait_metric(
            &d,
            "spillway_iceberg_commits_total{stream=\"kept\",table=\"game.kept\"}",
            (round + 1) as f64,
        )
        .await;
    }
    wait_metric(
        &d,
        "spillway_iceberg_snapshots_expired_total{table=\"game.kept\"}",
        3.0,
    )
    .await;
    let warehouse = local_warehouse(&d);
    let read = read_table(&d, &warehouse, "game.kept", None);
    assert_eq!(ids(&read), (0..50).collect::<Vec<_>>(), "{read}");
    assert_eq!(read["snapshots"].as_array().unwrap().len(), 2, "{read}");
}

/// The maintenance job rewrites each closed day's small files (one per flush, two days per
/// flush) into one file, a `replace` snapshot per day; the open day's files stay; every row is read once before and after,
/// by pyiceberg and DuckDB; appends go on after the rewrite.
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_rewrites_a_closed_days_small_files() {
    let d = Daemon::start(
        "[iceberg.maintenance]\nrewrite_small_files = true\nmin_files = 5\nclosed_after_seconds = 0\ninterval_seconds = 1\n",
    );
    let table = json!({
        "DestinationDatabaseName": "iot",
        "DestinationTableName": "small",
        "PartitionSpec": {"Identity": [{"SourceName": "day(ts)"}]},
    });
    create(&d, &create_body("small", "errors", &table, json!({})));
    let client = d.firehose();
    let today = chrono::Utc::now().format("%Y-%m-%dT%H:00:00Z").to_string();
    let send = |round: i64| {
        // Two closed days and today, in every flush (the flush's files share a manifest).
        let records: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let ts = match i % 4 {
                    0 => "2026-12-01T10:00:00Z",
                    2 => "2026-12-02T10:00:00Z",
                    _ => today.as_str(),
                };
                json!({"id": round * 20 + i, "ts": ts})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        let client = client.clone();
        async move { put_all(&client, "small", &records).await }
    };
    let commits = "spillway_iceberg_commits_total{stream=\"small\",table=\"iot.small\"}";
    for round in 0..5 {
        send(round).await;
        wait_metric(&d, commits, (round + 1) as f64).await;
    }
    wait_metric(
        &d,
        "spillway_iceberg_small_files_rewritten_total{table=\"iot.small\"}",
        10.0,
    )
    .await;
    let warehouse = local_warehouse(&d);
    let files_of = |read: &Value, day: &str| {
        read["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f.as_str().unwrap().contains(&format!("ts_day={day}")))
            .count()
    };
    let read = read_table(&d, &warehouse, "iot.small", None);
    assert_eq!(ids(&read), (0..100).collect::<Vec<_>>(), "{read}");
    assert_eq!(read["duckdb_rows"], 100, "{read}");
    assert_eq!(files_of(&read, "2026-12-01"), 1, "{read}");
    assert_eq!(files_of(&read, "2026-12-02"), 1, "{read}");
    // The second day's rewrite commits after the first moved their shared manifests.
    assert!(!d.log().contains("the rewrite is dropped"), "{}", d.log());
    assert_eq!(files_of(&read, &today[..10]), 5, "{read}");
    // Snapshots are listed in no particular order.
    let operations = read["operations"].as_array().unwrap();
    assert_eq!(
        operations.iter().filter(|o| *o == "replace").count(),
        2,
        "one per day: {read}"
    );

    // Appends go on on top of the rewrite.
    send(5).await;
    wait_metric(&d, commits, 6.0).await;
    let read = read_table(&d, &warehouse, "iot.small", None);
    assert_eq!(ids(&read), (0..120).collect::<Vec<_>>(), "{read}");
    assert_eq!(read["duckdb_rows"], 120, "{read}");
    assert_eq!(files_of(&read, "2026-12-01"), 2, "{read}");
}

/// Records built to break a table, from the attacker review of this destination: a first
/// batch with nothing to make a column of, nesting deep enough to overflow the Parquet
/// writer's stack, a timestamp past year 9999 on a day-partitioned column, partition values
/// that are not path segments, more partitions than may be open at once, and nested fields
/// that schema evolution must add. The daemon stays up, every valid record is in the table,
/// every other is in the error output.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_records_neither_crash_nor_wedge_nor_lose() {
    let d = Daemon::start("[partitioning]\nmax_active_partitions = 3\n");
    let table = json!({
        "DestinationDatabaseName": "game",
        "DestinationTableName": "hostile",
        "PartitionSpec": {"Identity": [{"SourceName": "region"}, {"SourceName": "day(ts)"}]},
    });
    create(
        &d,
        &create_body(
            "hostile",
            "errors",
            &table,
            json!({"SchemaEvolutionConfiguration": {"Enabled": true}}),
        ),
    );
    let client = d.firehose();
    // Nothing to make a column of: both fail, no table yet.
    put_all(&client, "hostile", &[b"\"hello\"".to_vec(), b"{}".to_vec()]).await;
    let failed = wait_for(Duration::from_secs(60), || async {
        (error_records(&d).len() == 2).then_some(())
    })
    .await;
    assert!(failed.is_some(), "{:?}", error_records(&d));

    let mut deep = json!(1);
    for _ in 0..48 {
        deep = json!([deep]);
    }
    let ts = "2026-12-06T10:00:00Z";
    let mut records = vec![
        json!({"id": 0, "region": "kr", "ts": ts, "deep": deep}),
        json!({"id": 1, "region": "a/../../b", "ts": ts}),
        json!({"id": 2, "region": "line\nbreak#frag?q", "ts": ts}),
        json!({"id": 3, "region": "x".repeat(300), "ts": ts}),
        // Year 290,000: refused for this record only.
        json!({"id": 99, "region": "kr", "ts": 9.1e15}),
    ];
    records.extend((4..12).map(|i| json!({"id": i, "region": format!("r{i}"), "ts": ts})));
    let records: Vec<Vec<u8>> = records.iter().map(|r| r.to_string().into_bytes()).collect();
    put_all(&client, "hostile", &records).await;
    wait_rows(&d, "hostile", "game.hostile", 12.0).await;
    // Evolution: nested fields become columns of their own types; keys no engine takes as a
    // column name (empty, control characters, over 255 bytes) do not.
    let mut nested =
        json!({"id": 12, "region": "kr", "ts": ts, "o": {"a": 1}, "l": [1, 2], "lo": [{"x": 1}]});
    for bad in [
        String::new(),
        "\u{0}".into(),
        "a\nb".into(),
        "k".repeat(300),
    ] {
        nested[bad] = json!(1);
    }
    put_all(&client, "hostile", &[nested.to_string().into_bytes()]).await;
    wait_rows(&d, "hostile", "game.hostile", 13.0).await;

    let warehouse = local_warehouse(&d);
    let read = read_table(&d, &warehouse, "game.hostile", None);
    assert_eq!(ids(&read), (0..13).collect::<Vec<_>>(), "{read}");
    for column in ["o", "l", "lo", "deep"] {
        assert!(
            read["columns"].as_array().unwrap().contains(&json!(column)),
            "{column}: {read}"
        );
    }
    for column in read["columns"].as_array().unwrap() {
        let column = column.as_str().unwrap();
        assert!(
            !column.is_empty() && column.len() <= 255 && !column.contains(['\0', '\n']),
            "{column:?}: {read}"
        );
    }
    assert_eq!(read["rows"][12]["o"]["a"], 1, "{read}");
    assert_eq!(read["rows"][2]["region"], "line\nbreak#frag?q", "{read}");
    assert_eq!(read["duckdb_rows"], 13, "{read}");
    for f in read["files"].as_array().unwrap() {
        let path = f.as_str().unwrap();
        assert!(
            !path.split('/').any(|seg| seg == "..") && !path.contains('\n') && !path.contains('#'),
            "{path}"
        );
    }
    let codes: Vec<String> = error_records(&d)
        .iter()
        .map(|e| e["errorCode"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 3, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| c == "DataFormatConversion.MalformedData"),
        "{codes:?}"
    );
}

/// A SQLite catalog pyiceberg created (its tables lack a column iceberg-catalog-sql reads):
/// spillway adds the column and appends to pyiceberg's table.
#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_pyiceberg_created_takes_appends() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = format!(
        "file://{}/buckets/iceberg/warehouse",
        dir.path().join("data").display()
    );
    std::fs::create_dir_all(dir.path().join("data/buckets/iceberg/warehouse")).unwrap();
    let db = dir.path().join("catalog.db");
    let made = std::process::Command::new(venv_python())
        .arg("-c")
        .arg(format!(
            r#"
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
c = SqlCatalog("default", uri="sqlite:///{db}", warehouse="{warehouse}")
c.create_namespace("game")
c.create_table("game.made", schema=pa.schema([("id", pa.int64()), ("name", pa.string())]))
"#,
            db = db.display()
        ))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = format!(
        "[iceberg.catalogs.default]\nuri = \"sqlite://{}?mode=rwc\"\nwarehouse = \"{warehouse}\"\n",
        db.display()
    );
    let d = Daemon::start_in(&config, &dir.path().join("data"));
    create(
        &d,
        &create_body(
            "made",
            "errors",
            &json!({"DestinationDatabaseName": "game", "DestinationTableName": "made"}),
            json!({"TableCreationConfiguration": {"Enabled": false}}),
        ),
    );
    let records: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            json!({"id": i, "name": format!("n{i}")})
                .to_string()
                .into_bytes()
        })
        .collect();
    put_all(&d.firehose(), "made", &records).await;
    wait_rows(&d, "made", "game.made", 5.0).await;
    let read = read_catalog(
        &format!("sqlite:///{}", db.display()),
        &warehouse,
        "game.made",
        None,
    );
    assert_eq!(ids(&read), (0..5).collect::<Vec<_>>(), "{read}");
}

/// A panic while a batch is written to its table (injected) fails that batch to
/// processing-failed, as received; the stream goes on, and the daemon shuts down cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_iceberg_path_fails_the_batch_and_the_stream_goes_on() {
    let mut d = Daemon::start_with("", &[], &[("FAILPOINTS", "iceberg-write=1*panic")]);
    create(
        &d,
        &create_body(
            "panicky",
            "errors",
            &json!({"DestinationDatabaseName": "game", "DestinationTableName": "panicky"}),
            json!({}),
        ),
    );
    let client = d.firehose();
    put_all(
        &client,
        "panicky",
        &[json!({"id": 0}).to_string().into_bytes()],
    )
    .await;
    wait_metric(
        &d,
        "spillway_error_records_total{stream=\"panicky\",type=\"processing-failed\"}",
        1.0,
    )
    .await;
    put_all(
        &client,
        "panicky",
        &[json!({"id": 1}).to_string().into_bytes()],
    )
    .await;
    wait_rows(&d, "panicky", "game.panicky", 1.0).await;
    assert!(d.terminate().success(), "clean shutdown");
}
