//! The durability promises end to end: acknowledged means durable, delivered exactly once
//! across `kill -9` and restart, and an unreachable destination loses nothing.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Counts how often each record id appears across every object in the bucket.
async fn delivered_counts(s3: &S3Server, bucket: &str) -> HashMap<u64, usize> {
    let bodies: Vec<Vec<u8>> = objects(&s3.client(bucket))
        .await
        .into_iter()
        .map(|(_, b)| b.to_vec())
        .collect();
    let mut counts = HashMap::new();
    for id in ids_in(&bodies) {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

fn assert_exactly_once(counts: &HashMap<u64, usize>, acked: &[u64]) {
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated records: {dups:?}");
    let lost: Vec<_> = acked.iter().filter(|id| !counts.contains_key(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_then_restart_delivers_every_ack_exactly_once() {
    let s3 = S3Server::start();
    s3.create_bucket("crash");
    let mut d = Daemon::start(&s3.config());
    let fh = d.firehose_with_retries(1);
    // Small objects (1 MiB or 1 s) so uploads and commits are in flight when the kill lands.
    create_stream(&fh, "crash", s3_destination("crash", 1, 1)).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let fh = fh.clone();
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            let mut next = p * 1_000_000;
            for _ in 0..400 {
                let ids = next..next + 200;
                next += 200;
                let records: Vec<_> = ids
                    .clone()
                    .map(|i| {
                        aws_sdk_firehose::types::Record::builder()
                            .data(aws_sdk_firehose::primitives::Blob::new(record(i, 512)))
                            .build()
                            .unwrap()
                    })
                    .collect();
                match fh
                    .put_record_batch()
                    .delivery_stream_name("crash")
                    .set_records(Some(records))
                    .send()
                    .await
                {
                    Ok(out) => {
                        let mut acked = acked.lock().unwrap();
                        for (id, r) in ids.zip(out.request_responses()) {
                            if r.record_id().is_some() {
                                acked.push(id);
                            }
                        }
                    }
                    // The daemon is gone: everything not acknowledged may or may not land.
                    Err(_) => break,
                }
            }
        }));
    }
    // Let objects land and commits happen, then kill mid-stream.
    let landed = wait_for(Duration::from_secs(30), || async {
        (d.metric("spillway_objects_written_total{stream=\"crash\"}") >= 3.0).then_some(())
    })
    .await;
    assert!(
        landed.is_some(),
        "objects were being written before the kill"
    );
    d.kill9();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "load ran: {} acked", acked.len());

    d.restart();
    let all_there = wait_for(Duration::from_secs(60), || async {
        let counts = delivered_counts(&s3, "crash").await;
        acked
            .iter()
            .all(|id| counts.contains_key(id))
            .then_some(counts)
    })
    .await;
    let counts = all_there
        .unwrap_or_else(|| panic!("not every acknowledged record was delivered after restart"));
    assert_exactly_once(&counts, &acked);
    assert!(d.terminate().success());
    assert_exactly_once(&delivered_counts(&s3, "crash").await, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_outage_then_crash_then_recovery_loses_nothing() {
    let mut s3 = S3Server::start();
    s3.create_bucket("outage");
    let config = format!(
        "{}\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 300\n",
        s3.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "outage", s3_destination("outage", 1, 1)).await;

    s3.stop();
    let mut acked = put_batches(&fh, "outage", 0..3000, 1024).await;
    assert_eq!(acked.len(), 3000, "the journal accepts while S3 is down");

    // The outage is visible: failed uploads, growing freshness, a backlog of buffered bytes.
    let seen = wait_for(Duration::from_secs(20), || async {
        let failures = d.metric("spillway_upload_failures_total{stream=\"outage\"}");
        let retries = d.metric("spillway_upload_retries_total{stream=\"outage\"}");
        let fresh = d.metric("spillway_data_freshness_seconds{stream=\"outage\"}");
        (failures >= 2.0 && retries >= 1.0 && fresh >= 2.0).then_some(())
    })
    .await;
    assert!(seen.is_some(), "outage metrics:\n{}", d.get("/metrics").1);
    assert!(d.metric("spillway_buffered_bytes{stream=\"outage\"}") >= 3000.0 * 1024.0);
    assert!(d.metric("spillway_memory_reserved_bytes") >= 3000.0 * 1024.0);
    assert!(d.log().contains("upload failed; will retry"));

    // Half the outage recovers while running, then the daemon dies with uploads pending.
    s3.resume();
    let some = wait_for(Duration::from_secs(20), || async {
        (d.metric("spillway_objects_written_total{stream=\"outage\"}") >= 1.0).then_some(())
    })
    .await;
    assert!(some.is_some());
    s3.stop();
    acked.extend(put_batch(&fh, "outage", 10_000..10_500, 1024).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.kill9();

    s3.resume();
    d.restart();
    let counts = wait_for(Duration::from_secs(60), || async {
        let counts = delivered_counts(&s3, "outage").await;
        acked
            .iter()
            .all(|id| counts.contains_key(id))
            .then_some(counts)
    })
    .await
    .expect("every acknowledged record delivered after recovery");
    assert_exactly_once(&counts, &acked);
    assert_eq!(counts.len(), acked.len());
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_a_dead_destination_but_keeps_the_data() {
    let mut s3 = S3Server::start();
    s3.create_bucket("late");
    let config = format!(
        "shutdown_timeout_seconds = 2\n{}\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        s3.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "late", s3_destination("late", 1, 900)).await;
    s3.stop();
    let acked = put_batch(&fh, "late", 0..300, 1024).await;
    assert_eq!(acked.len(), 300);
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(d.log().contains("shutdown timeout reached"));

    s3.resume();
    d.restart();
    let counts = wait_for(Duration::from_secs(30), || async {
        let counts = delivered_counts(&s3, "late").await;
        (counts.len() == 300).then_some(counts)
    })
    .await
    .expect("the journal delivered what shutdown could not");
    assert_exactly_once(&counts, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_an_unacknowledged_upload_overwrites_instead_of_duplicating() {
    let s3 = S3Server::start();
    s3.create_bucket("replay");
    let proxy = HoldingProxy::start(s3.port);
    let mut d = Daemon::start(&proxy.config());
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "replay", s3_destination("replay", 1, 1)).await;

    // The object reaches S3, but the daemon never hears back: no commit can be recorded.
    proxy.set_hold(true);
    let acked = put_batch(&fh, "replay", 0..100, 256).await;
    assert_eq!(acked.len(), 100);
    let landed = wait_for(Duration::from_secs(20), || async {
        let objs = objects(&s3.client("replay")).await;
        (!objs.is_empty()).then_some(objs)
    })
    .await
    .expect("the upload reached the server");
    assert_eq!(landed.len(), 1);
    assert_eq!(
        d.metric("spillway_objects_written_total{stream=\"replay\"}"),
        0.0
    );
    d.kill9();

    // The restarted daemon replays the sealed batch under the same key: one object, not two.
    proxy.set_hold(false);
    d.restart();
    let rewritten = wait_for(Duration::from_secs(20), || async {
        (d.metric("spillway_objects_written_total{stream=\"replay\"}") >= 1.0).then_some(())
    })
    .await;
    assert!(rewritten.is_some(), "replayed batch uploaded again");
    let objs = objects(&s3.client("replay")).await;
    assert_eq!(
        objs.len(),
        1,
        "{:?}",
        objs.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_eq!(objs[0].0, landed[0].0);
    assert_exactly_once(&delivered_counts(&s3, "replay").await, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_interrupted_by_kill_9_still_delivers_what_was_acknowledged() {
    let mut s3 = S3Server::start();
    s3.create_bucket("gone");
    let config = format!(
        "{}\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        s3.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "doomed", s3_destination("gone", 1, 900)).await;
    s3.stop();
    let acked = put_batch(&fh, "doomed", 0..200, 512).await;
    fh.delete_delivery_stream()
        .delivery_stream_name("doomed")
        .send()
        .await
        .unwrap();
    // The drain cannot finish while S3 is down; the daemon dies in the middle of it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.kill9();

    s3.resume();
    d.restart();
    let fh = d.firehose_with_retries(1);
    let counts = wait_for(Duration::from_secs(30), || async {
        let counts = delivered_counts(&s3, "gone").await;
        (counts.len() == acked.len()).then_some(counts)
    })
    .await
    .expect("the resumed drain delivered the deleted stream's records");
    assert_exactly_once(&counts, &acked);
    let names = fh.list_delivery_streams().send().await.unwrap();
    assert!(names.delivery_stream_names().is_empty());
    // Once drained, the name is free and the directory gone.
    let recreated = wait_for(Duration::from_secs(10), || {
        let fh = fh.clone();
        async move {
            fh.create_delivery_stream()
                .delivery_stream_name("doomed")
                .extended_s3_destination_configuration(
                    s3_destination("gone", 1, 60).build().unwrap(),
                )
                .send()
                .await
                .ok()
        }
    })
    .await;
    assert!(recreated.is_some());
}

/// A tmpfs mounted for the test (the tests run as root in CI), unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None when this process may not mount (not root): the test then says so and passes.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A full disk under the journal and the local store: ingest answers
/// ServiceUnavailableException (nothing acknowledged that is not on disk), uploads wait, and
/// once space is freed the same daemon takes records again and delivers every acknowledged
/// one exactly once. Before, one failed write left the journal refusing everything until a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_throttles_and_the_stream_resumes_when_space_returns() {
    // SAFETY: geteuid only reads this process's effective user id.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let disk = Tmpfs::mount("16m").expect("mount a tmpfs");
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![7u8; 12 << 20]).unwrap();
    let data_dir = disk.path().join("data");
    let mut d = Daemon::start_in(
        "[upload]\nretry_initial_ms = 50\nretry_max_ms = 500\n",
        &data_dir,
    );
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "full", s3_destination("full-disk", 1, 1)).await;

    let mut acked = Vec::new();
    let mut refused = 0;
    let mut next = 0u64;
    // One request of 100 new records: the acknowledged ids, and whether all were.
    let put = async |next: &mut u64| -> (Vec<u64>, bool) {
        let ids = *next..*next + 100;
        *next += 100;
        let acked = put_batch_or_throttled(&fh, "full", ids, 1024).await;
        let all = acked.len() == 100;
        (acked, all)
    };
    for _ in 0..200 {
        let (ok, all) = put(&mut next).await;
        acked.extend(ok);
        if !all {
            refused += 1;
            if refused >= 3 {
                break;
            }
        }
    }
    assert!(refused >= 3, "the disk never filled");
    assert!(d.metric("spillway_journal_write_failures_total{stream=\"full\"}") >= 1.0);
    assert!(d.get("/healthz").0 == 200);
    // Not ready while the journal refuses writes, and the reason is shown.
    let (status, body) = d.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("stalled: stream full: its journal refuses writes"),
        "{body}"
    );
    assert_eq!(
        d.metric("spillway_stream_stalled{reason=\"journal\",stream=\"full\"}"),
        1.0
    );

    std::fs::remove_file(&filler).unwrap();
    // With nothing sent, the journal recovers on its own and the replica is ready again (a
    // load balancer sends a replica that is not ready no traffic to wake it).
    let ready = wait_for(Duration::from_secs(20), || async {
        (d.get("/readyz").0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "{}", d.get("/readyz").1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut resumed = false;
    while !resumed && std::time::Instant::now() < deadline {
        let (ok, all) = put(&mut next).await;
        acked.extend(ok);
        resumed = all;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resumed, "the stream took records again without a restart");
    assert_eq!(d.get("/readyz").0, 200);
    assert_eq!(
        d.metric("spillway_stream_stalled{reason=\"journal\",stream=\"full\"}"),
        0.0
    );
    assert!(d.terminate().success());

    let bucket = data_dir.join("buckets/full-disk");
    let bodies: Vec<Vec<u8>> = walk(&bucket)
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let mut counts = HashMap::new();
    for id in ids_in(&bodies) {
        *counts.entry(id).or_default() += 1;
    }
    assert_exactly_once(&counts, &acked);
    // The journal the failures left behind opens cleanly and holds nothing more to deliver.
    d.restart();
    assert!(d.terminate().success());
    let again = walk(&bucket).len();
    assert_eq!(
        again,
        bodies.len(),
        "nothing delivered twice after a restart"
    );
}

/// S3 misbehaving in every way the proxy can make it: 500 InternalError, 503 SlowDown,
/// connections reset before and in the middle of an upload, 403 AccessDenied, an answer held
/// back, a multipart part failing, and NoSuchBucket for a bucket that appears later (s3s-fs
/// creates a missing bucket on the first put, so the proxy gives the answer S3 and MinIO
/// give). Every acknowledged record is delivered exactly once, and the failures show in the
/// metrics and the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_are_retried_and_nothing_is_lost_or_duplicated() {
    let s3 = S3Server::start();
    s3.create_bucket("faulty");
    s3.create_bucket("not-yet");
    let proxy = FaultProxy::start(s3.port);
    proxy.inject("PUT /not-yet/", Fault::Status(404, "NoSuchBucket"), 8);
    proxy.inject("PUT /faulty/small/", Fault::Status(500, "InternalError"), 2);
    proxy.inject("PUT /faulty/small/", Fault::Status(503, "SlowDown"), 2);
    proxy.inject("PUT /faulty/small/", Fault::Reset, 1);
    proxy.inject("PUT /faulty/small/", Fault::ResetMidBody(2000), 1);
    proxy.inject("PUT /faulty/small/", Fault::Status(403, "AccessDenied"), 1);
    proxy.inject(
        "PUT /faulty/small/",
        Fault::Delay(Duration::from_secs(3)),
        1,
    );
    proxy.inject("partNumber=2", Fault::Status(500, "InternalError"), 1);
    proxy.inject("partNumber=2", Fault::ResetMidBody(100_000), 1);
    let config = format!(
        "{}\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 300\nmultipart_threshold_mib = 5\npart_size_mib = 5\n",
        proxy.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose_with_retries(1);
    create_stream(
        &fh,
        "small",
        s3_destination("faulty", 1, 1).prefix("small/"),
    )
    .await;
    create_stream(
        &fh,
        "large",
        s3_destination("faulty", 12, 1).prefix("large/"),
    )
    .await;
    create_stream(&fh, "later", s3_destination("not-yet", 1, 1)).await;

    let small = put_batches(&fh, "small", 0..2000, 1024).await;
    let large = put_batches(&fh, "large", 100_000..112_500, 1024).await;
    let later = put_batches(&fh, "later", 200_000..200_500, 1024).await;
    assert_eq!(small.len() + large.len() + later.len(), 2000 + 12_500 + 500);

    // NoSuchBucket, retried until the bucket "appears" (the proxy stops answering it).
    let refused = wait_for(Duration::from_secs(30), || async {
        (d.metric("spillway_upload_failures_total{stream=\"later\"}") >= 2.0).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "uploads to a missing bucket fail and are retried"
    );
    // Three failures in a row mark the stream stalled on its destination, until one lands;
    // the replica stays ready (its journal still takes records).
    let stalled = wait_for(Duration::from_secs(30), || async {
        let (status, body) = d.get("/readyz");
        (status == 200 && body.contains("stalled: stream later: uploads are failing")).then_some(())
    })
    .await;
    assert!(stalled.is_some(), "{}", d.get("/readyz").1);

    let faulty: Vec<u64> = small.iter().chain(&large).copied().collect();
    let counts = wait_for(Duration::from_secs(90), || async {
        let counts = delivered_counts(&s3, "faulty").await;
        faulty
            .iter()
            .all(|id| counts.contains_key(id))
            .then_some(counts)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "every record in time; proxy log:\n{:#?}",
            proxy.log.lock().unwrap()
        )
    });
    assert_exactly_once(&counts, &faulty);
    assert_eq!(counts.len(), faulty.len());
    let later_counts = wait_for(Duration::from_secs(30), || async {
        let counts = delivered_counts(&s3, "not-yet").await;
        (counts.len() >= later.len()).then_some(counts)
    })
    .await
    .expect("the missing bucket's records once it exists");
    assert_exactly_once(&later_counts, &later);
    assert_eq!(
        d.metric("spillway_stream_stalled{reason=\"upload\",stream=\"later\"}"),
        0.0
    );
    assert_eq!(d.get("/readyz").0, 200);

    assert_eq!(
        proxy.pending(),
        0,
        "every fault was applied: {:#?}",
        proxy.log.lock().unwrap()
    );
    assert!(d.metric("spillway_upload_failures_total{stream=\"small\"}") >= 1.0);
    assert!(d.log().contains("upload failed; will retry"));
    let parts = proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("partNumber=") && l.ends_with("pass"))
        .count();
    assert!(parts >= 3, "the large object went up in parts");
    assert!(d.terminate().success());
}

/// A stream whose destination keeps failing (one CreateDeliveryStream naming a bucket that
/// does not exist is enough) used to fill the whole memory buffer with records it could not
/// deliver, after which every other stream was throttled. Once stalled it now takes new
/// records only within 1/8 of the memory cap: other streams keep the rest, and when the
/// destination works again everything it accepted lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_deliver_does_not_take_the_others_memory() {
    let s3 = S3Server::start();
    s3.create_bucket("stuck");
    s3.create_bucket("healthy");
    let proxy = FaultProxy::start(s3.port);
    proxy.inject("PUT /stuck/", Fault::Status(404, "NoSuchBucket"), 1_000_000);
    let config = format!(
        "{}\n[buffer]\nmax_memory_mib = 8\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        proxy.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "stuck", s3_destination("stuck", 1, 1)).await;
    create_stream(&fh, "healthy", s3_destination("healthy", 1, 1)).await;

    let mut stuck = put_batch(&fh, "stuck", 0..100, 1024).await;
    let stalled = wait_for(Duration::from_secs(30), || async {
        (d.metric("spillway_stream_stalled{reason=\"upload\",stream=\"stuck\"}") == 1.0)
            .then_some(())
    })
    .await;
    assert!(stalled.is_some(), "the stream is seen to stall");
    // The stuck stream's producer keeps sending: it is held to its share.
    let mut next = 100;
    for _ in 0..40 {
        let acked = put_batch_or_throttled(&fh, "stuck", next..next + 500, 1024).await;
        next += 500;
        stuck.extend(acked);
    }
    assert!(
        d.metric("spillway_buffered_bytes{stream=\"stuck\"}") <= (2 << 20) as f64,
        "the stuck stream holds about 1/8 of the 8 MiB cap"
    );
    assert!(d.metric("spillway_throttled_records_total{stream=\"stuck\"}") > 0.0);
    // The other stream takes 4 MiB without a refusal.
    let healthy = put_batches(&fh, "healthy", 1_000_000..1_004_000, 1024).await;
    assert_eq!(healthy.len(), 4000, "the healthy stream was not throttled");
    assert_eq!(
        d.metric("spillway_throttled_records_total{stream=\"healthy\"}"),
        0.0
    );

    proxy.clear();
    let counts = wait_for(Duration::from_secs(60), || async {
        let counts = delivered_counts(&s3, "stuck").await;
        stuck
            .iter()
            .all(|id| counts.contains_key(id))
            .then_some(counts)
    })
    .await
    .expect("the stuck stream's records once its destination works");
    assert_exactly_once(&counts, &stuck);
    assert!(d.terminate().success());
}

/// A flipped byte in the middle of a stream's journal (bit rot, a bad sector) used to stop the
/// stream from opening, and with it the daemon's start. Now the damaged stretch is passed
/// over, logged and counted, and every intact record is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_segment_is_passed_over_and_the_rest_delivered() {
    let s3 = S3Server::start();
    s3.create_bucket("rot");
    let config = format!(
        "{}\n[journal]\nsegment_mib = 1\nfsync = true\n",
        s3.config()
    );
    let mut d = Daemon::start(&config);
    let fh = d.firehose();
    // A 900 s interval: the records stay in the journal until the crash.
    create_stream(&fh, "rot", s3_destination("rot", 128, 900)).await;
    let acked = put_batches(&fh, "rot", 0..4000, 1024).await;
    assert_eq!(acked.len(), 4000);
    d.kill9();

    let journal = d.data_dir.join("streams/rot/journal");
    let mut segments: Vec<_> = walk(&journal)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = &segments[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(victim, &bytes).unwrap();

    d.restart();
    assert_eq!(
        d.metric("spillway_journal_damage_total{stream=\"rot\"}"),
        1.0
    );
    assert!(
        d.log().contains("journal damage passed over"),
        "{}",
        d.log()
    );
    assert!(d.terminate().success());
    let counts = delivered_counts(&s3, "rot").await;
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{dups:?}");
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    // Only records of the damaged segment (1 MiB, two requests of 500 records) from the
    // damaged frame to the segment's end are lost.
    assert!(
        !lost.is_empty() && lost.len() <= 1000,
        "{} lost",
        lost.len()
    );
    assert!(lost.len() <= acked.len() / 4);
    assert_eq!(
        lost.last().unwrap() - lost.first().unwrap() + 1,
        lost.len() as u64,
        "the lost records are one contiguous stretch"
    );
}

/// Faults a real disk rarely gives on demand, injected: a journal round that panics after its
/// writes and before its sync (a bug in the writer), then three fsyncs that fail with EIO. The
/// requests they hit are refused (ServiceUnavailable), the stream shows the failure, the
/// journal recovers on its own without a restart, every acknowledged record is delivered
/// exactly once, and the memory budget is whole again afterwards.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_journal_round_and_failing_fsyncs_are_survived() {
    let s3 = S3Server::start();
    s3.create_bucket("jfault");
    let config = format!(
        "{}\n[upload]\nretry_initial_ms = 50\nretry_max_ms = 300\n",
        s3.config()
    );
    let mut d = Daemon::start_with(
        &config,
        &[],
        &[("FAILPOINTS", "journal-round=1*panic;journal-fsync=3*return")],
    );
    let fh = d.firehose_with_retries(1);
    create_stream(&fh, "jfault", s3_destination("jfault", 1, 1)).await;

    let mut acked = Vec::new();
    let mut refused = 0;
    let mut next = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut in_a_row = 0;
    // Until the journal took 20 requests in a row after the faults.
    while in_a_row < 20 && std::time::Instant::now() < deadline {
        let ok = put_batch_or_throttled(&fh, "jfault", next..next + 50, 512).await;
        next += 50;
        if ok.len() == 50 {
            in_a_row += 1;
        } else {
            assert!(ok.is_empty(), "a refused request acknowledges nothing");
            refused += 1;
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked.extend(ok);
    }
    assert!(in_a_row >= 20, "the journal recovered without a restart");
    assert!(
        refused >= 4,
        "one panic and three failed fsyncs, {refused} refusals"
    );
    assert!(d.metric("spillway_journal_write_failures_total{stream=\"jfault\"}") >= 4.0);
    assert!(d.log().contains("a journal round failed"), "{}", d.log());
    assert_eq!(
        d.metric("spillway_stream_stalled{reason=\"journal\",stream=\"jfault\"}"),
        0.0
    );
    assert_eq!(d.get("/readyz").0, 200);

    let counts = wait_for(Duration::from_secs(30), || async {
        let counts = delivered_counts(&s3, "jfault").await;
        acked
            .iter()
            .all(|id| counts.contains_key(id))
            .then_some(counts)
    })
    .await
    .expect("every acknowledged record delivered");
    assert_exactly_once(&counts, &acked);
    // Only what was acknowledged was delivered: a refused request left nothing behind.
    assert_eq!(counts.len(), acked.len());
    let drained = wait_for(Duration::from_secs(10), || async {
        (d.metric("spillway_memory_reserved_bytes") == 0.0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "every reservation given back");
    assert!(d.terminate().success());
}

/// A sealed batch whose seal entry cannot be read (written here with the journal library, as
/// a future format or a bug might leave it): the batch is held in the journal, not delivered
/// and not released, the stream shows `stalled{reason="held"}` and `/readyz` names it (still
/// 200: the journal takes records), and every other record is delivered; a restart keeps it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_an_unreadable_seal_is_held_and_shown_not_dropped() {
    use spillway::journal::{Journal, JournalOptions, Position, RecordRef, Seal};

    let s3 = S3Server::start();
    s3.create_bucket("held");
    // Small segments: what comes after the held batch fills several, which the journal would
    // release if the hold did not keep them.
    let mut d = Daemon::start(&format!("{}\n[journal]\nsegment_mib = 1\n", s3.config()));
    let fh = d.firehose();
    create_stream(&fh, "held", s3_destination("held", 1, 1)).await;
    assert!(d.terminate().success());

    let dir = d.data_dir.join("streams/held/journal");
    let opts = JournalOptions {
        segment_bytes: 1 << 20,
        fsync: true,
        direct_io: false,
    };
    let (mut journal, _) = Journal::open(&dir, opts).unwrap();
    let first = journal.next_position();
    let lines: Vec<Vec<u8>> = (0..20).map(|i| record(i, 100)).collect();
    let refs: Vec<RecordRef<'_>> = lines
        .iter()
        .map(|data| RecordRef {
            arrival_ms: 1_800_000_000_000,
            data,
        })
        .collect();
    assert_eq!(journal.append_records(&refs[..10]).unwrap(), first);
    journal
        .append_seal(&Seal {
            start: first,
            end: Position(first.0 + 10),
            meta: b"{\"v\":99,\"from\":\"the future\"}".to_vec(),
        })
        .unwrap();
    journal.append_records(&refs[10..]).unwrap();
    journal.sync().unwrap();
    drop(journal);

    d.restart();
    let delivered = wait_for(Duration::from_secs(20), || async {
        let counts = delivered_counts(&s3, "held").await;
        (counts.len() >= 10).then_some(counts)
    })
    .await
    .expect("the unsealed records are delivered");
    assert_exactly_once(&delivered, &(10..20).collect::<Vec<_>>());
    assert_eq!(delivered.len(), 10, "the held batch is not delivered");
    assert_eq!(
        d.metric("spillway_stream_stalled{reason=\"held\",stream=\"held\"}"),
        1.0
    );
    let (status, body) = d.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("stalled: stream held: records this run cannot deliver"),
        "{body}"
    );
    assert!(
        d.log().contains("unreadable seal in the journal"),
        "{}",
        d.log()
    );
    // More records come and go; the held ones stay in the journal.
    let acked = put_batches(&d.firehose(), "held", 100..3100, 1024).await;
    assert_eq!(acked.len(), 3000);
    let more = wait_for(Duration::from_secs(30), || async {
        let counts = delivered_counts(&s3, "held").await;
        (counts.len() >= 3010).then_some(counts)
    })
    .await
    .expect("new records are delivered");
    assert!(!(0..10).any(|id| more.contains_key(&id)));
    let segments = walk(&dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .count();
    assert!(
        segments >= 3,
        "{segments} segments: everything after the held batch is kept too"
    );
    assert!(d.terminate().success());
    d.restart();
    assert_eq!(
        d.metric("spillway_stream_stalled{reason=\"held\",stream=\"held\"}"),
        1.0,
        "still held after a restart: the records were not released"
    );
    assert!(d.terminate().success());
}
