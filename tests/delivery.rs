//! Delivery end to end: the daemon, driven by the AWS SDK, writes objects to a real S3 server
//! (s3s-fs over HTTP) or to a local directory. Flush triggers, prefixes, object names, gzip,
//! UpdateDestination versions and graceful shutdown.

mod common;

use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{
    BufferingHints, CompressionFormat, ExtendedS3DestinationUpdate, Record,
};
use common::*;

const MIB: usize = 1024 * 1024;

fn daemon_for(s3: &S3Server) -> Daemon {
    Daemon::start(&s3.config())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_hint_seals_objects_and_sigterm_flushes_the_rest() {
    let s3 = S3Server::start();
    s3.create_bucket("size-bucket");
    let mut d = daemon_for(&s3);
    let fh = d.firehose();
    // A 900 s interval: only the size hint (1 MiB) can seal before shutdown.
    create_stream(&fh, "sized", s3_destination("size-bucket", 1, 900)).await;

    let acked = put_batches(&fh, "sized", 0..2500, 1024).await;
    assert_eq!(acked.len(), 2500);
    let store = s3.client("size-bucket");
    let sealed = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&store).await;
        (objs.len() == 2).then_some(objs)
    })
    .await
    .expect("two objects sealed by size");
    for (key, body) in &sealed {
        // Sealed as soon as the buffer reaches 1 MiB: one record past it at most.
        assert!(
            body.len() >= MIB && body.len() < MIB + 1024,
            "{key}: {} bytes",
            body.len()
        );
    }
    // The remaining ~0.4 MiB waits for the interval: nothing more arrives on its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(objects(&store).await.len(), 2);

    let status = d.terminate();
    assert!(status.success(), "exit status {status:?}");
    let all = objects(&store).await;
    assert_eq!(all.len(), 3, "SIGTERM flushed the open buffer");
    let bodies: Vec<Vec<u8>> = all.iter().map(|(_, b)| b.to_vec()).collect();
    let mut ids = ids_in(&bodies);
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..2500).collect::<Vec<_>>(),
        "every record exactly once"
    );
    assert!(d.log().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_hint_delivers_small_buffers() {
    let s3 = S3Server::start();
    s3.create_bucket("interval-bucket");
    let d = daemon_for(&s3);
    let fh = d.firehose();
    create_stream(&fh, "slow", s3_destination("interval-bucket", 128, 2)).await;
    create_stream(&fh, "zero", s3_destination("interval-bucket", 128, 0)).await;

    put_batch(&fh, "slow", 0..3, 100).await;
    put_batch(&fh, "zero", 10..13, 100).await;
    let store = s3.client("interval-bucket");
    let started = std::time::Instant::now();
    let objs = wait_for(Duration::from_secs(15), || async {
        let objs = objects(&store).await;
        (objs.len() == 2).then_some(objs)
    })
    .await
    .expect("both streams delivered by their interval");
    let elapsed = started.elapsed();
    // Not a timing assertion on speed: the 2 s interval must not fire early.
    let slow = objs.iter().find(|(k, _)| k.contains("/slow-1-")).unwrap();
    assert_eq!(ids_in(&[slow.1.to_vec()]), [0, 1, 2]);
    let zero = objs.iter().find(|(k, _)| k.contains("/zero-1-")).unwrap();
    assert_eq!(ids_in(&[zero.1.to_vec()]), [10, 11, 12]);
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(
        d.metric("spillway_delivered_records_total{stream=\"slow\"}"),
        3.0
    );
    assert_eq!(
        d.metric("spillway_objects_written_total{stream=\"zero\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_names_gzip_and_versions() {
    let s3 = S3Server::start();
    s3.create_bucket("named");
    let d = daemon_for(&s3);
    let fh = d.firehose();
    create_stream(
        &fh,
        "custom",
        s3_destination("named", 1, 1)
            .prefix("events/!{timestamp:yyyy}/m=!{timestamp:MM}/!{firehose:random-string}/")
            .error_output_prefix("errors/!{firehose:error-output-type}/")
            .compression_format(CompressionFormat::Gzip),
    )
    .await;
    create_stream(&fh, "plain", s3_destination("named", 1, 1).prefix("plain-")).await;
    create_stream(&fh, "default", s3_destination("named", 1, 1)).await;

    put_batch(&fh, "custom", 0..50, 200).await;
    put_batch(&fh, "plain", 100..101, 200).await;
    put_batch(&fh, "default", 200..201, 200).await;
    let store = s3.client("named");
    let objs = wait_for(Duration::from_secs(15), || async {
        let objs = objects(&store).await;
        (objs.len() == 3).then_some(objs)
    })
    .await
    .expect("three objects");

    let now = chrono::Utc::now();
    let (y, m, dd, h) = (
        now.format("%Y").to_string(),
        now.format("%m").to_string(),
        now.format("%d").to_string(),
        now.format("%H").to_string(),
    );
    let custom = objs.iter().find(|(k, _)| k.starts_with("events/")).unwrap();
    let parts: Vec<&str> = custom.0.split('/').collect();
    assert_eq!(parts[1], y);
    assert_eq!(parts[2], format!("m={m}"));
    assert_eq!(parts[3].len(), 11, "random string: {}", custom.0);
    assert!(parts[3].chars().all(|c| c.is_ascii_alphanumeric()));
    let name = parts[4];
    // <stream>-<version>-<yyyy-MM-dd-HH-mm-ss>-<uuid>.gz
    assert!(name.starts_with(&format!("custom-1-{y}-{m}-")), "{name}");
    assert!(name.ends_with(".gz"), "{name}");
    let uuid = &name["custom-1-yyyy-MM-dd-HH-mm-ss-".len()..name.len() - 3];
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(uuid.matches('-').count(), 4, "{uuid}");
    let body = gunzip(&custom.1);
    assert_eq!(ids_in(&[body]), (0..50).collect::<Vec<_>>());

    // A prefix with no timestamp expression gets the date path appended; no prefix is the date path.
    assert!(
        objs.iter()
            .any(|(k, _)| k.starts_with(&format!("plain-{y}/{m}/{dd}/{h}/plain-1-")))
    );
    assert!(
        objs.iter()
            .any(|(k, _)| k.starts_with(&format!("{y}/{m}/{dd}/{h}/default-1-")))
    );

    // UpdateDestination: version 2 in later names; settings echoed by Describe.
    fh.update_destination()
        .delivery_stream_name("plain")
        .current_delivery_stream_version_id("1")
        .destination_id("destinationId-000000000001")
        .extended_s3_destination_update(
            ExtendedS3DestinationUpdate::builder()
                .prefix("v2/")
                .compression_format(CompressionFormat::Gzip)
                .buffering_hints(
                    BufferingHints::builder()
                        .size_in_mbs(2)
                        .interval_in_seconds(1)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let desc = fh
        .describe_delivery_stream()
        .delivery_stream_name("plain")
        .send()
        .await
        .unwrap();
    let desc = desc.delivery_stream_description().unwrap();
    assert_eq!(desc.version_id(), "2");
    let ext = desc.destinations()[0]
        .extended_s3_destination_description()
        .unwrap();
    assert_eq!(ext.prefix(), Some("v2/"));
    assert_eq!(ext.compression_format(), &CompressionFormat::Gzip);
    assert_eq!(ext.buffering_hints().unwrap().size_in_mbs(), Some(2));

    fh.put_record()
        .delivery_stream_name("plain")
        .record(
            Record::builder()
                .data(Blob::new(record(300, 100)))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let v2 = wait_for(Duration::from_secs(15), || async {
        objects(&store)
            .await
            .into_iter()
            .find(|(k, _)| k.starts_with("v2/"))
    })
    .await
    .expect("object under the updated prefix");
    assert!(v2.0.contains("/plain-2-"), "{}", v2.0);
    assert!(v2.0.ends_with(".gz"), "{}", v2.0);
    assert_eq!(ids_in(&[gunzip(&v2.1)]), [300]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_store_with_no_config() {
    // The README's first command: no config file at all.
    let mut d = Daemon::start("");
    let fh = d.firehose();
    create_stream(&fh, "local", s3_destination("my-bucket", 1, 1)).await;
    let acked = put_batch(&fh, "local", 0..20, 300).await;
    assert_eq!(acked.len(), 20);
    let bucket_dir = d.data_dir.join("buckets/my-bucket");
    let files = wait_for(Duration::from_secs(15), || async {
        let files: Vec<_> = walk(&bucket_dir);
        (!files.is_empty()).then_some(files)
    })
    .await
    .expect("an object file in the local bucket directory");
    assert_eq!(files.len(), 1);
    let bodies: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(ids_in(&bodies), (0..20).collect::<Vec<_>>());
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_use_multipart_upload() {
    let s3 = S3Server::start();
    s3.create_bucket("big");
    // A 6 MiB buffer with a 5 MiB multipart threshold and 5 MiB parts: two parts.
    let d = Daemon::start(&format!(
        "{}\n[upload]\nmultipart_threshold_mib = 5\npart_size_mib = 5\n",
        s3.config()
    ));
    let fh = d.firehose();
    create_stream(&fh, "big", s3_destination("big", 6, 900)).await;
    put_batches(&fh, "big", 0..6500, 1024).await;
    let store = s3.client("big");
    let objs = wait_for(Duration::from_secs(30), || async {
        let objs = objects(&store).await;
        (!objs.is_empty()).then_some(objs)
    })
    .await
    .expect("a sealed 6 MiB object");
    assert_eq!(objs.len(), 1);
    assert!(objs[0].1.len() >= 6 * MIB);
    let ids = ids_in(&[objs[0].1.to_vec()]);
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_from_the_environment_alone_and_json_logs() {
    let s3 = S3Server::start();
    s3.create_bucket("env-bucket");
    // No config file: the store kind from a flag, everything else from AWS_* variables.
    let d = Daemon::start_with(
        "",
        &["--object-store", "s3", "--log-format", "json"],
        &[
            ("AWS_ENDPOINT_URL_S3", &s3.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let fh = d.firehose();
    create_stream(&fh, "env", s3_destination("env-bucket", 1, 1)).await;
    put_batch(&fh, "env", 0..5, 100).await;
    let objs = wait_for(Duration::from_secs(15), || async {
        let objs = objects(&s3.client("env-bucket")).await;
        (!objs.is_empty()).then_some(objs)
    })
    .await
    .expect("delivered to the S3 server named by AWS_ENDPOINT_URL_S3");
    assert_eq!(ids_in(&[objs[0].1.to_vec()]), [0, 1, 2, 3, 4]);
    let log = d.log();
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{log}");
    assert!(
        log.contains("\"stream\":\"env\""),
        "stream name on stream log lines: {log}"
    );
}

/// Non-ASCII letters and punctuation that URLs and file systems treat specially are the same
/// bytes in the key an S3 server stores and in the local store's file path. Before, the local
/// store wrote `caf%C3%A9/...`, then looked for `café/...` to fsync it, and retried for good;
/// S3 got the percent-encoded text as the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_prefixes_are_the_same_keys_in_s3_and_in_the_local_store() {
    let prefix = "café/日本/~[a] %20 *?#\"\\ $x/";
    let s3 = S3Server::start();
    s3.create_bucket("awkward");
    let mut remote = daemon_for(&s3);
    let mut local = Daemon::start("");
    for d in [&remote, &local] {
        let fh = d.firehose();
        create_stream(&fh, "awk", s3_destination("awkward", 1, 1).prefix(prefix)).await;
        assert_eq!(put_batch(&fh, "awk", 0..3, 100).await.len(), 3);
    }

    let store = s3.client("awkward");
    let in_s3 = wait_for(Duration::from_secs(20), || async {
        let found = objects(&store).await;
        (!found.is_empty()).then_some(found)
    })
    .await
    .expect("an object in S3");
    assert_eq!(in_s3.len(), 1);
    let (key, body) = &in_s3[0];
    // The prefix as given, then the date path Firehose appends to a prefix without one.
    assert!(key.starts_with(prefix), "{key}");
    let name_at = key.find("awk-1-").expect("the object name");
    assert_eq!(name_at, prefix.len() + "yyyy/MM/dd/HH/".len(), "{key}");
    assert_eq!(ids_in(std::slice::from_ref(&body.to_vec())), [0, 1, 2]);

    let bucket_dir = local.data_dir.join("buckets/awkward");
    let files = wait_for(Duration::from_secs(20), || async {
        let files = walk(&bucket_dir);
        (!files.is_empty()).then_some(files)
    })
    .await
    .expect("an object file in the local store");
    assert_eq!(files.len(), 1);
    let relative = files[0].strip_prefix(&bucket_dir).unwrap();
    let relative = relative.to_str().unwrap();
    // The same prefix and name as in S3, byte for byte (the name's time and id differ).
    assert!(relative.starts_with(prefix), "{relative}");
    assert_eq!(relative.find("awk-1-"), Some(name_at), "{relative}");
    assert_eq!(ids_in(&[std::fs::read(&files[0]).unwrap()]), [0, 1, 2]);
    for d in [&local, &remote] {
        assert_eq!(
            d.metric("spillway_upload_failures_total{stream=\"awk\"}"),
            0.0
        );
    }
    assert!(remote.terminate().success());
    assert!(local.terminate().success());
}

/// Prefixes that object stores cannot keep as given are refused when the stream is defined,
/// with the reason, instead of being written under another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_no_store_can_keep_are_refused() {
    let d = Daemon::start("");
    let fh = d.firehose();
    for (prefix, says) in [
        ("/leading/", "cannot start with '/'"),
        ("a//b/", "'//'"),
        ("a/./b/", "'.' or '..'"),
        ("../up/", "'.' or '..'"),
        (&format!("{}/", "s".repeat(256)), "longer than a file name"),
    ] {
        let err = fh
            .create_delivery_stream()
            .delivery_stream_name("refused")
            .extended_s3_destination_configuration(
                s3_destination("bkt", 1, 1).prefix(prefix).build().unwrap(),
            )
            .send()
            .await
            .expect_err(prefix);
        let text = format!("{:?}", err.into_service_error());
        assert!(
            text.contains("InvalidArgumentException"),
            "{prefix}: {text}"
        );
        assert!(text.contains(says), "{prefix}: {text}");
    }
    create_stream(
        &fh,
        "fine",
        s3_destination("bkt", 1, 1).prefix("a..b/.x/é/"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_level_is_global_with_per_stream_overrides() {
    let s3 = S3Server::start();
    s3.create_bucket("levels");
    let d = Daemon::start(&format!(
        "{}\n[upload]\ngzip_level = 1\ngzip_levels = {{ smallest = 9 }}\n",
        s3.config()
    ));
    let fh = d.firehose();
    for name in ["fastest", "smallest"] {
        create_stream(
            &fh,
            name,
            s3_destination("levels", 1, 1)
                .prefix(format!("{name}/"))
                .compression_format(CompressionFormat::Gzip),
        )
        .await;
        put_batch(&fh, name, 0..400, 300).await;
    }
    let store = s3.client("levels");
    let objs = wait_for(Duration::from_secs(15), || async {
        let objs = objects(&store).await;
        (objs.len() == 2).then_some(objs)
    })
    .await
    .expect("one object per stream");
    let size = |prefix: &str| {
        let (_, body) = objs.iter().find(|(k, _)| k.starts_with(prefix)).unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .unwrap();
        let expected: Vec<u8> = (0..400).flat_map(|i| record(i, 300)).collect();
        assert_eq!(plain, expected, "{prefix}: the records as sent, in order");
        body.len()
    };
    let (fastest, smallest) = (size("fastest/"), size("smallest/"));
    assert!(
        smallest < fastest,
        "level 9 {smallest} bytes, level 1 {fastest} bytes"
    );
}

/// `EncryptionConfiguration.KMSEncryptionConfig`: every object of the stream goes to S3 with
/// SSE-KMS headers naming the key; a stream without it, on the same bucket, sends none; an
/// `UpdateDestination` that turns it off applies to the next objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_encryption_configuration_sets_sse_kms_on_every_object() {
    use aws_sdk_firehose::types::{
        EncryptionConfiguration, KmsEncryptionConfig, NoEncryptionConfig,
    };
    let key = "arn:aws:kms:us-east-1:000000000000:key/0a1b2c3d-1111-2222-3333-444455556666";
    let s3 = S3Server::start();
    s3.create_bucket("sealed");
    let proxy = HoldingProxy::start(s3.port);
    let d = Daemon::start(&proxy.config());
    let fh = d.firehose();
    let kms = EncryptionConfiguration::builder()
        .kms_encryption_config(
            KmsEncryptionConfig::builder()
                .awskms_key_arn(key)
                .build()
                .unwrap(),
        )
        .build();
    create_stream(
        &fh,
        "kms",
        s3_destination("sealed", 1, 1)
            .prefix("kms/")
            .encryption_configuration(kms),
    )
    .await;
    create_stream(
        &fh,
        "plain",
        s3_destination("sealed", 1, 1).prefix("plain/"),
    )
    .await;
    put_batch(&fh, "kms", 0..10, 100).await;
    put_batch(&fh, "plain", 0..10, 100).await;
    let store = s3.client("sealed");
    wait_for(Duration::from_secs(15), || async {
        (objects(&store).await.len() == 2).then_some(())
    })
    .await
    .expect("both objects land");
    let puts = |prefix: &str| -> Vec<String> {
        proxy
            .heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with(&format!("put /sealed/{prefix}")))
            .cloned()
            .collect()
    };
    let sealed = puts("kms/");
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    assert!(
        sealed[0].contains("\r\nx-amz-server-side-encryption: aws:kms\r\n"),
        "{}",
        sealed[0]
    );
    assert!(
        sealed[0].contains(&format!(
            "\r\nx-amz-server-side-encryption-aws-kms-key-id: {key}"
        )),
        "{}",
        sealed[0]
    );
    let plain = puts("plain/");
    assert_eq!(plain.len(), 1);
    assert!(
        !plain[0].contains("x-amz-server-side-encryption"),
        "{}",
        plain[0]
    );

    // Turned off by an update: the next object goes without.
    fh.update_destination()
        .delivery_stream_name("kms")
        .current_delivery_stream_version_id("1")
        .destination_id("destinationId-000000000001")
        .extended_s3_destination_update(
            ExtendedS3DestinationUpdate::builder()
                .encryption_configuration(
                    EncryptionConfiguration::builder()
                        .no_encryption_config(NoEncryptionConfig::NoEncryption)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    put_batch(&fh, "kms", 10..20, 100).await;
    wait_for(Duration::from_secs(15), || async {
        (objects(&store).await.len() == 3).then_some(())
    })
    .await
    .expect("the third object lands");
    let after = puts("kms/");
    assert_eq!(after.len(), 2);
    assert!(
        after
            .iter()
            .filter(|h| h.contains("x-amz-server-side-encryption"))
            .count()
            == 1,
        "{after:?}"
    );

    // A malformed key is refused, naming the field.
    let bad = s3_destination("sealed", 1, 1).encryption_configuration(
        EncryptionConfiguration::builder()
            .kms_encryption_config(
                KmsEncryptionConfig::builder()
                    .awskms_key_arn("arn:aws:s3:::not-a-key")
                    .build()
                    .unwrap(),
            )
            .build(),
    );
    let msg = create_refused(&fh, "bad-key", bad).await;
    assert!(msg.contains("AWSKMSKeyARN"), "{msg}");
}

/// `CustomTimeZone` sets the zone of the default prefix, `!{timestamp:...}` and the object
/// name's time; `FileExtension` replaces the default extension of data objects (not of error
/// objects). Plain streams over the API, partitioned ones from the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_time_zone_and_file_extension_name_the_objects() {
    let s3 = S3Server::start();
    s3.create_bucket("zones");
    let d = Daemon::start(&format!(
        r#"{}
[[stream]]
name = "parted"
bucket_arn = "arn:aws:s3:::zones"
prefix = "parted/p=!{{partitionKeyFromQuery:p}}/!{{timestamp:yyyy-MM-dd'T'HH}}/"
error_output_prefix = "parted-errors/"
compression_format = "GZIP"
custom_time_zone = "Asia/Kolkata"
file_extension = ".jsonl.gz"
buffering_hints = {{ interval_in_seconds = 1 }}
dynamic_partitioning_configuration = {{ enabled = true }}
processing_configuration = {{ enabled = true, processors = [{{ type = "MetadataExtraction", parameters = {{ MetadataExtractionQuery = '{{p: (.id % 2 | tostring)}}', JsonParsingEngine = "JQ-1.6" }} }}] }}
"#,
        s3.config()
    ));
    let fh = d.firehose();
    create_stream(
        &fh,
        "tokyo",
        s3_destination("zones", 1, 1)
            .custom_time_zone("Asia/Tokyo")
            .file_extension(".ndjson"),
    )
    .await;
    let before = chrono::Utc::now();
    put_batch(&fh, "tokyo", 0..10, 100).await;
    put_batch(&fh, "parted", 0..10, 100).await;
    // A record the query cannot read goes to the error prefix, with the default extension.
    put_all(&fh, "parted", &[b"not json\n".to_vec()]).await;
    let store = s3.client("zones");
    let objs = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&store).await;
        (objs.len() == 4).then_some(objs)
    })
    .await
    .unwrap_or_else(|| panic!("4 objects"));
    let after = chrono::Utc::now();
    let keys: Vec<&str> = objs.iter().map(|(k, _)| k.as_str()).collect();

    // Tokyo is UTC+9 all year: the default prefix and the name carry its wall clock.
    let local = |t: chrono::DateTime<chrono::Utc>, h: i64, m: i64| {
        t + chrono::Duration::hours(h) + chrono::Duration::minutes(m)
    };
    let tokyo = keys
        .iter()
        .find(|k| k.contains("tokyo-1-"))
        .expect("tokyo object");
    assert!(tokyo.ends_with(".ndjson"), "{tokyo}");
    let ok_tokyo = [before, after].iter().any(|t| {
        let l = local(*t, 9, 0);
        tokyo.starts_with(&l.format("%Y/%m/%d/%H/tokyo-1-%Y-%m-%d-%H-").to_string())
    });
    assert!(
        ok_tokyo,
        "{tokyo} is not in Tokyo time ({before} .. {after} UTC)"
    );

    // Kolkata is UTC+5:30: the half hour shows in the hour of the prefix and the name.
    for p in ["0", "1"] {
        let key = keys
            .iter()
            .find(|k| k.starts_with(&format!("parted/p={p}/")))
            .unwrap_or_else(|| panic!("partition {p} in {keys:?}"));
        assert!(key.ends_with(".jsonl.gz"), "{key}");
        let ok = [before, after].iter().any(|t| {
            let l = local(*t, 5, 30);
            key.starts_with(
                &l.format(&format!("parted/p={p}/%Y-%m-%dT%H/parted-1-%Y-%m-%d-%H-"))
                    .to_string(),
            )
        });
        assert!(ok, "{key} is not in Kolkata time ({before} .. {after} UTC)");
    }
    let error = keys
        .iter()
        .find(|k| k.starts_with("parted-errors/"))
        .expect("error object");
    assert!(
        error.ends_with(".gz") && !error.ends_with(".jsonl.gz"),
        "{error}"
    );

    // Zones and extensions Firehose refuses are refused, naming the setting.
    for (zone, ext) in [
        ("Mars/Olympus", ""),
        ("Asia/Tokyo", "json"),
        ("Asia/Tokyo", ".JSON"),
    ] {
        let dest = s3_destination("zones", 1, 1)
            .custom_time_zone(zone)
            .file_extension(ext);
        let msg = create_refused(&fh, "refused", dest).await;
        assert!(
            msg.contains("CustomTimeZone") || msg.contains("FileExtension"),
            "{zone} {ext}: {msg}"
        );
    }
}

/// `CompressionFormat` ZIP, Snappy and HADOOP_SNAPPY: each object is read back by a standard
/// reader (Python's zipfile; python-snappy and cramjam for snappy's framing format;
/// python-snappy's Hadoop stream reader) and holds the records as sent, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_snappy_and_hadoop_snappy_objects_read_back_with_standard_tools() {
    let s3 = S3Server::start();
    s3.create_bucket("codecs");
    let d = daemon_for(&s3);
    let fh = d.firehose();
    // 1,200 records of 400 bytes: 480 KB, two of Hadoop's 256 KiB blocks and several of
    // snappy's 64 KiB frames.
    let expected: Vec<u8> = (0..1200).flat_map(|i| record(i, 400)).collect();
    for (name, format) in [
        ("zip", CompressionFormat::Zip),
        ("snappy", CompressionFormat::Snappy),
        ("hsnappy", CompressionFormat::HadoopSnappy),
    ] {
        create_stream(
            &fh,
            name,
            s3_destination("codecs", 1, 1)
                .prefix(format!("{name}/"))
                .compression_format(format),
        )
        .await;
        put_batches(&fh, name, 0..1200, 400).await;
    }
    let store = s3.client("codecs");
    let objs = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&store).await;
        (objs.len() == 3).then_some(objs)
    })
    .await
    .expect("one object per stream");
    let dir = tempfile::tempdir().unwrap();
    for (key, body) in &objs {
        let name = key.split('/').next().unwrap();
        let ext = if name == "zip" { ".zip" } else { ".snappy" };
        assert!(key.ends_with(ext), "{key}");
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let script = r#"
import hashlib, sys, zipfile, cramjam, snappy
d = sys.argv[1]
def show(tool, data):
    print(tool, len(data), hashlib.sha256(data).hexdigest())
with zipfile.ZipFile(d + "/zip") as z:
    names = z.namelist()
    print("entries", len(names), names[0].endswith(".zip"))
    show("zipfile", z.read(names[0]))
framed = open(d + "/snappy", "rb").read()
show("python-snappy", snappy.StreamDecompressor().decompress(framed))
show("cramjam", bytes(cramjam.snappy.decompress(framed)))
show("hadoop", snappy.HadoopStreamDecompressor().decompress(open(d + "/hsnappy", "rb").read()))
"#;
    let out = stdout_of(
        std::process::Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(dir.path()),
    );
    let out = String::from_utf8(out).unwrap();
    let want = format!(
        "{} {}",
        expected.len(),
        spillway::transform::sha256_hex(&expected)
    );
    assert!(out.lines().any(|l| l == "entries 1 False"), "{out}");
    for tool in ["zipfile", "python-snappy", "cramjam", "hadoop"] {
        assert!(
            out.lines().any(|l| l == format!("{tool} {want}")),
            "{tool}: {out}\nwanted {want}"
        );
    }
}

/// `S3BackupMode: Enabled`: every source record, as received and before processing, goes to
/// the backup bucket and prefix with the backup's compression. A crash after the backup object
/// landed (its answer held back by a proxy) replays the batch onto the same backup key: one
/// object, each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_record_backup_is_written_once_even_across_a_crash() {
    use aws_sdk_firehose::types::{
        ProcessingConfiguration, Processor, ProcessorType, S3BackupMode, S3DestinationConfiguration,
    };
    let s3 = S3Server::start();
    s3.create_bucket("main");
    s3.create_bucket("source");
    let proxy = HoldingProxy::start(s3.port);
    let mut d = Daemon::start(&proxy.config());
    let fh = d.firehose_with_retries(1);
    let backup = S3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::000000000000:role/firehose")
        .bucket_arn("arn:aws:s3:::source")
        .prefix("raw/")
        .compression_format(CompressionFormat::Gzip)
        .buffering_hints(
            BufferingHints::builder()
                .size_in_mbs(1)
                .interval_in_seconds(1)
                .build(),
        )
        .build()
        .unwrap();
    create_stream(
        &fh,
        "backed",
        s3_destination("main", 64, 60)
            .prefix("out/")
            .processing_configuration(
                ProcessingConfiguration::builder()
                    .enabled(true)
                    .processors(
                        Processor::builder()
                            .r#type(ProcessorType::AppendDelimiterToRecord)
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .s3_backup_mode(S3BackupMode::Enabled)
            .s3_backup_configuration(backup),
    )
    .await;

    // The backup's 1 s hint seals the batch, though the stream's own is 60 s. Its backup
    // object reaches S3, but the daemon never hears back.
    proxy.set_hold(true);
    let acked = put_batch(&fh, "backed", 0..300, 200).await;
    let landed = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&s3.client("source")).await;
        (!objs.is_empty()).then_some(objs)
    })
    .await
    .expect("the backup upload reached the server");
    assert_eq!(landed.len(), 1);
    assert!(landed[0].0.starts_with("raw/") && landed[0].0.ends_with(".gz"));
    d.kill9();

    proxy.set_hold(false);
    d.restart();
    let main = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&s3.client("main")).await;
        (!objs.is_empty()).then_some(objs)
    })
    .await
    .expect("the replayed batch delivered");
    let sent: Vec<Vec<u8>> = (0..300).map(|i| record(i, 200)).collect();
    // Processed: each record with the delimiter appended.
    let expected_main: Vec<u8> = sent
        .iter()
        .flat_map(|r| r.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(main.len(), 1);
    assert_eq!(main[0].1.to_vec(), expected_main);
    // The backup: the same key as before the crash, the records as sent, once.
    assert_eq!(
        d.metric("spillway_backup_records_total{stream=\"backed\"}"),
        300.0
    );
    let backups = objects(&s3.client("source")).await;
    assert_eq!(
        backups.len(),
        1,
        "{:?}",
        backups.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_eq!(backups[0].0, landed[0].0);
    assert_eq!(gunzip(&backups[0].1), sent.concat());
    assert_eq!(acked.len(), 300);

    // Describe echoes the backup settings; a backup without a bucket is refused.
    let described = fh
        .describe_delivery_stream()
        .delivery_stream_name("backed")
        .send()
        .await
        .unwrap();
    let ext = described
        .delivery_stream_description()
        .unwrap()
        .destinations()[0]
        .extended_s3_destination_description()
        .unwrap()
        .clone();
    assert_eq!(ext.s3_backup_mode(), Some(&S3BackupMode::Enabled));
    assert_eq!(
        ext.s3_backup_description().map(|b| b.bucket_arn()),
        Some("arn:aws:s3:::source")
    );
    let no_bucket = s3_destination("main", 1, 1).s3_backup_mode(S3BackupMode::Enabled);
    let msg = create_refused(&fh, "no-backup-bucket", no_bucket).await;
    assert!(msg.contains("S3BackupConfiguration"), "{msg}");
}
