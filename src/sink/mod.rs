//! Object bytes -> object store. Resolves a bucket to a store (a local directory or S3), uploads
//! under the key the pipeline sealed (multipart when large), and retries with capped
//! exponential backoff and jitter until the object lands or shutdown gives up. Never drops data:
//! an abandoned batch stays in the journal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::{S3Settings, StoreSettings, UploadSettings};
use crate::definition::Compression;
use crate::encode::Body;
use crate::metrics::StreamMetrics;

/// Where one sealed batch goes. Recorded in the journal's seal entry (as
/// `pipeline::entries` encodes it), so a replay writes the same object (same bucket, same key,
/// same encoding) rather than a second copy.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectPlan {
    pub bucket: String,
    pub key: String,
    pub compression: Compression,
    /// Set for streams with processing or dynamic partitioning: a batch becomes several
    /// objects (one per partition, one per error output type), named from this layout. `key`
    /// then holds only the object name's common tail, for logs.
    pub layout: Option<Layout>,
    /// Record format conversion: the object is Parquet, written from normalized records.
    pub format: Option<crate::definition::conversion::Conversion>,
    /// `S3BackupMode: Enabled`: the batch's records as received also go to this object
    /// (named when the batch is sealed, so a replay writes the same one).
    pub backup: Option<Box<ObjectPlan>>,
}

/// The parts of a processed batch's object keys fixed when it is sealed; the partition keys
/// and error output types fill the holes when its objects are written.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub prefix: Vec<crate::definition::prefix::Piece>,
    pub error_prefix: Vec<crate::definition::prefix::Piece>,
    /// The instant in the object names (the oldest record's arrival), ms since the epoch.
    pub at_ms: u64,
    /// The stream version in the object names.
    pub version: u64,
    /// Dynamic partitioning with partition buffers: the batch's records join buffers that
    /// outlive it (`prefix` then keeps random strings as holes).
    pub buffered: bool,
    /// The processing settings in force when the batch was sealed: a replay after a crash
    /// processes the batch exactly as the first attempt did, whatever changed since.
    pub settings: SealedSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SealedSettings {
    pub processing: Option<crate::definition::Processing>,
    pub dynamic_partitioning: bool,
    /// SHA-256 of the transform component; a replay loads that compilation from the cache.
    pub transform_sha256: Option<String>,
    pub conversion: Option<crate::definition::conversion::Conversion>,
    /// Time zone and file extension of the batch's object names.
    pub naming: crate::definition::ObjectNaming,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the local bucket directory {dir}: {source}")]
    LocalDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open bucket {bucket}: {source}")]
    Store {
        bucket: String,
        source: object_store::Error,
    },
}

/// A bucket and the SSE-KMS key its objects are written with.
type StoreKey = (String, Option<Arc<str>>);

/// Buckets resolved to object stores, built once each.
pub struct Stores {
    settings: StoreSettings,
    /// By bucket and SSE-KMS key: the key is a setting of the S3 client.
    cache: Mutex<HashMap<StoreKey, Arc<dyn ObjectStore>>>,
    /// The local store's buckets again, for the file an object was written to.
    local: Mutex<HashMap<String, Arc<LocalFileSystem>>>,
    /// Local directories whose own entry is already durable: synced once, not per object.
    synced_dirs: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
}

impl Stores {
    pub fn new(settings: StoreSettings) -> Self {
        Stores {
            settings,
            cache: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            synced_dirs: Arc::default(),
        }
    }

    pub fn describe(&self) -> String {
        match &self.settings {
            StoreSettings::Local { root } => format!("local directory {}", root.display()),
            StoreSettings::S3(s3) => format!(
                "S3 at {}",
                s3.endpoint
                    .clone()
                    .or_else(s3_endpoint_from_env)
                    .unwrap_or_else(|| "AWS".into())
            ),
        }
    }

    /// For the local store: the file the object at `path` is written to (as the store itself
    /// maps it) and the bucket directory it lives under.
    fn local_file(
        &self,
        bucket: &str,
        path: &ObjectPath,
    ) -> Option<object_store::Result<(PathBuf, PathBuf)>> {
        let StoreSettings::Local { root } = &self.settings else {
            return None;
        };
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let store = local.get(bucket)?;
        Some(
            store
                .path_to_filesystem(path)
                .map(|file| (file, root.join(bucket))),
        )
    }

    pub fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
        self.bucket_encrypted(bucket, None)
    }

    /// The store for `bucket`, writing objects with SSE-KMS under `kms_key` where the store is
    /// S3 (the local store has no server-side encryption; the key is ignored there).
    pub fn bucket_encrypted(
        &self,
        bucket: &str,
        kms_key: Option<&Arc<str>>,
    ) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let kms_key = match &self.settings {
            StoreSettings::Local { .. } => None,
            StoreSettings::S3(_) => kms_key.cloned(),
        };
        let cache_key = (bucket.to_owned(), kms_key);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = cache.get(&cache_key) {
            return Ok(store.clone());
        }
        let err = |source| StoreError::Store {
            bucket: bucket.to_owned(),
            source,
        };
        let store: Arc<dyn ObjectStore> = match &self.settings {
            StoreSettings::Local { root } => {
                let dir = root.join(bucket);
                std::fs::create_dir_all(&dir).map_err(|source| StoreError::LocalDir {
                    dir: dir.clone(),
                    source,
                })?;
                let local = Arc::new(
                    LocalFileSystem::new_with_prefix(&dir)
                        .map_err(err)?
                        .with_automatic_cleanup(true),
                );
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(bucket.to_owned(), local.clone());
                local
            }
            StoreSettings::S3(s3) => {
                Arc::new(s3_store(s3, bucket, cache_key.1.as_deref()).map_err(err)?)
            }
        };
        cache.insert(cache_key, store.clone());
        Ok(store)
    }
}

impl Stores {
    /// Whether buckets are directories under a local root: that root.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.settings {
            StoreSettings::Local { root } => Some(root),
            StoreSettings::S3(_) => None,
        }
    }

    /// One put, durable on return as an upload's objects are (the local store syncs the file
    /// and its directories). No retries: callers retry whole operations.
    pub async fn put_durable(
        &self,
        bucket: &str,
        key: &str,
        payload: PutPayload,
    ) -> object_store::Result<()> {
        let err = |e: StoreError| object_store::Error::Generic {
            store: "spillway",
            source: Box::new(e),
        };
        let store = self.bucket(bucket).map_err(err)?;
        let path = object_path(key);
        store.put(&path, payload).await?;
        if let Some(file) = self.local_file(bucket, &path) {
            let (file, bucket_dir) = file?;
            make_durable(file, bucket_dir, self.synced_dirs.clone()).await?;
        }
        Ok(())
    }
}

fn s3_endpoint_from_env() -> Option<String> {
    std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok()
        .filter(|s| !s.is_empty())
}

fn s3_store(
    s3: &S3Settings,
    bucket: &str,
    kms_key: Option<&str>,
) -> object_store::Result<object_store::aws::AmazonS3> {
    // The environment first (AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ALLOW_HTTP, ...), then the
    // config file's values on top.
    // Client options first: setting them later would replace allow_http set below.
    let mut b = AmazonS3Builder::from_env()
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(120)),
        )
        .with_bucket_name(bucket);
    let endpoint = s3.endpoint.clone().or_else(s3_endpoint_from_env);
    if let Some(endpoint) = &endpoint {
        b = b.with_endpoint(endpoint);
        // Plain-http endpoints (a local MinIO) are what the user asked for by writing http://.
        if endpoint.starts_with("http://") && s3.allow_http != Some(false) {
            b = b.with_allow_http(true);
        }
    }
    if std::env::var("AWS_REGION").is_err()
        && std::env::var("AWS_DEFAULT_REGION").is_err()
        && s3.region.is_none()
    {
        b = b.with_region("us-east-1");
    }
    if let Some(region) = &s3.region {
        b = b.with_region(region);
    }
    if let Some(key) = &s3.access_key_id {
        b = b.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        b = b.with_secret_access_key(secret);
    }
    if let Some(allow) = s3.allow_http {
        b = b.with_allow_http(allow);
    }
    b = b.with_unsigned_payload(!s3.sign_payload);
    if let Some(key) = kms_key {
        b = b.with_sse_kms_encryption(key);
    }
    b.with_retry(RetryConfig {
        // spillway's own loop retries forever with metrics; the client's retries only
        // smooth over a single dropped connection.
        max_retries: 1,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .build()
}

/// Failed uploads in a row after which a stream counts as stalled on its destination.
pub const UPLOAD_STALL_AFTER: u32 = 3;

/// Whether a stream's uploads are landing: failures since one last landed.
#[derive(Default)]
pub struct UploadHealth {
    failure_streak: AtomicU32,
}

impl UploadHealth {
    /// [`UPLOAD_STALL_AFTER`] or more uploads failed in a row.
    pub fn stalled(&self) -> bool {
        self.failure_streak.load(Ordering::Acquire) >= UPLOAD_STALL_AFTER
    }

    pub fn failed(&self, metrics: &StreamMetrics) {
        metrics.upload_failures.inc();
        if self.failure_streak.fetch_add(1, Ordering::AcqRel) + 1 == UPLOAD_STALL_AFTER {
            metrics.set_stalled("upload", true);
        }
    }

    pub fn landed(&self, metrics: &StreamMetrics) {
        if self.failure_streak.swap(0, Ordering::AcqRel) >= UPLOAD_STALL_AFTER {
            metrics.set_stalled("upload", false);
        }
    }
}

/// What an upload needs from its stream: where to write, how to retry, when to give up, and
/// where to count and log what happened.
pub struct Uploader<'a> {
    pub stores: &'a Stores,
    pub settings: &'a UploadSettings,
    /// Cancelled when shutdown gives up on uploads.
    pub abandon: &'a CancellationToken,
    pub stream: &'a str,
    pub metrics: &'a StreamMetrics,
    pub health: &'a UploadHealth,
    /// SSE-KMS key for the objects, if the stream sets one.
    pub kms_key: Option<Arc<str>>,
}

pub enum UploadOutcome {
    /// With the object's size.
    Landed { bytes: u64 },
    /// Shutdown gave up waiting; the batch stays in the journal.
    Abandoned,
}

/// Uploads until the object lands (or shutdown abandons it), counting failures and retries.
pub async fn upload(up: &Uploader<'_>, plan: &ObjectPlan, body: Body) -> UploadOutcome {
    upload_streamed(up, plan, || {
        let (tx, rx) = tokio::sync::mpsc::channel(body.len() + 1);
        for chunk in &body {
            // The channel holds every chunk and the end: sending cannot fail.
            let _ = tx.try_send(Ok(Chunk::Data(chunk.clone())));
        }
        let _ = tx.try_send(Ok(Chunk::End));
        rx
    })
    .await
}

/// What an encoder sends an upload.
pub enum Chunk {
    Data(Bytes),
    /// The object is complete. A channel that closes without it means the encoder died (a
    /// panic, a dropped task): the upload fails and no object is written, never a truncated one.
    End,
}

/// Chunks of an object as its encoder produces them, then [`Chunk::End`].
pub type Chunks = tokio::sync::mpsc::Receiver<std::io::Result<Chunk>>;

/// Uploads an object whose bytes come from an encoder while it runs: `start` begins one
/// encoding per attempt (a failed attempt is encoded again), and the object goes up in parts
/// as they fill, so only about one part of it is ever held in memory.
pub async fn upload_streamed(
    up: &Uploader<'_>,
    plan: &ObjectPlan,
    start: impl Fn() -> Chunks,
) -> UploadOutcome {
    let settings = up.settings;
    upload_attempts(up, plan, |store, path| {
        let chunks = start();
        async move { put_streamed(store.as_ref(), &path, chunks, settings).await }
    })
    .await
}

/// Runs attempts (each returns the bytes written) until one lands or shutdown gives up.
async fn upload_attempts<F, Fut>(
    up: &Uploader<'_>,
    plan: &ObjectPlan,
    mut attempt_once: F,
) -> UploadOutcome
where
    F: FnMut(Arc<dyn ObjectStore>, ObjectPath) -> Fut,
    Fut: std::future::Future<Output = object_store::Result<u64>>,
{
    let settings = up.settings;
    let path = object_path(&plan.key);
    let mut delay = settings.retry_initial;
    let mut attempt = 0u32;
    loop {
        let store = match up
            .stores
            .bucket_encrypted(&plan.bucket, up.kms_key.as_ref())
        {
            Ok(store) => store,
            Err(e) => {
                up.health.failed(up.metrics);
                tracing::warn!(stream = %up.stream, error = %e, "object store unavailable; will retry");
                if !backoff(&mut delay, settings, up.abandon).await {
                    return UploadOutcome::Abandoned;
                }
                continue;
            }
        };
        if attempt > 0 {
            up.metrics.upload_retries.inc();
        }
        attempt += 1;
        let started = Instant::now();
        let local = up.stores.local_file(&plan.bucket, &path);
        let result = tokio::select! {
            r = async {
                let bytes = attempt_once(store, path.clone()).await?;
                if let Some(file) = local {
                    let (file, bucket_dir) = file?;
                    make_durable(file, bucket_dir, up.stores.synced_dirs.clone()).await?;
                }
                Ok::<u64, object_store::Error>(bytes)
            } => r,
            _ = up.abandon.cancelled() => return UploadOutcome::Abandoned,
        };
        match result {
            Ok(bytes) => {
                up.metrics
                    .upload_seconds
                    .observe(started.elapsed().as_secs_f64());
                up.health.landed(up.metrics);
                return UploadOutcome::Landed { bytes };
            }
            Err(e) => {
                up.health.failed(up.metrics);
                tracing::warn!(
                    stream = %up.stream,
                    bucket = %plan.bucket,
                    key = %plan.key,
                    attempt,
                    error = %chain(&e),
                    "upload failed; will retry"
                );
                if !backoff(&mut delay, settings, up.abandon).await {
                    return UploadOutcome::Abandoned;
                }
            }
        }
    }
}

/// The key as the object's path, byte for byte: `é`, `%` or `#` in a key are the same
/// characters in S3 and in the local store's file names (object_store's `Path::from` would
/// percent-encode them instead). Prefixes and partition values are checked when a stream is
/// defined and when a record is partitioned, so parsing fails only for a key that escaped both
/// checks; that one is written percent-encoded rather than not at all.
fn object_path(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap_or_else(|e| {
        tracing::error!(key, error = %e, "object key is not a valid path; writing it percent-encoded");
        ObjectPath::from(key)
    })
}

/// A local object counts as landed only once it is on disk: the journal releases its records
/// after the commit. object_store's local store writes and renames without fsync, so sync the
/// file and the directory it was renamed into, and once per process each directory above it
/// up to the bucket's (they only change when a new prefix directory appears). Syncing each
/// object as it lands also keeps dirty pages from piling up behind the journal's fsyncs, which
/// on ext4 would otherwise wait for them.
async fn make_durable(
    file: PathBuf,
    bucket_dir: PathBuf,
    synced_dirs: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
) -> object_store::Result<()> {
    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_data()?;
        let Some(parent) = file.parent() else {
            return Ok(());
        };
        crate::durable::sync_dir(parent)?;
        // A directory's own entry lives in its parent: sync each parent once.
        let mut dir = parent;
        while dir != bucket_dir.as_path() {
            let Some(up) = dir.parent().filter(|p| p.starts_with(&bucket_dir)) else {
                break;
            };
            let known = synced_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(dir);
            if !known {
                crate::durable::sync_dir(up)?;
                synced_dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(dir.to_path_buf());
            }
            dir = up;
        }
        Ok(())
    })
    .await;
    let err = |e: String| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: e.into(),
    };
    match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(err(format!("fsync after write: {e}"))),
        Err(e) => Err(err(format!("fsync task failed: {e}"))),
    }
}

/// Uploads chunks as they come: one `put` if they end below the multipart threshold, else a
/// multipart upload fed `part_size` bytes at a time (the last part may be smaller). Returns
/// the object's size.
async fn put_streamed(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    mut chunks: Chunks,
    settings: &UploadSettings,
) -> object_store::Result<u64> {
    let part_size = settings.part_size.max(1) as usize;
    let threshold = settings.multipart_threshold as usize;
    let mut pending: std::collections::VecDeque<Bytes> = Default::default();
    let mut pending_len = 0usize;
    let mut total = 0u64;
    let mut upload: Option<Box<dyn object_store::MultipartUpload>> = None;
    let result = async {
        let mut ended = false;
        while let Some(chunk) = chunks.recv().await {
            let chunk = match chunk {
                Ok(Chunk::Data(chunk)) => chunk,
                Ok(Chunk::End) => {
                    ended = true;
                    break;
                }
                Err(e) => {
                    return Err(object_store::Error::Generic {
                        store: "encoder",
                        source: Box::new(e),
                    });
                }
            };
            total += chunk.len() as u64;
            pending_len += chunk.len();
            pending.push_back(chunk);
            if upload.is_none() && pending_len < threshold {
                continue;
            }
            let up = match &mut upload {
                Some(up) => up,
                None => upload.insert(store.put_multipart(path).await?),
            };
            while pending_len >= part_size {
                let part = take_front(&mut pending, part_size);
                pending_len -= part_size;
                up.put_part(part).await?;
            }
        }
        if !ended {
            return Err(object_store::Error::Generic {
                store: "encoder",
                source: "the encoder stopped before the end of the object".into(),
            });
        }
        let rest: PutPayload = pending.drain(..).collect();
        match &mut upload {
            None => {
                store.put(path, rest).await?;
            }
            Some(up) => {
                if pending_len > 0 {
                    up.put_part(rest).await?;
                }
                up.complete().await?;
            }
        }
        Ok(total)
    }
    .await;
    if result.is_err()
        && let Some(mut up) = upload
    {
        let _ = up.abort().await;
    }
    result
}

/// The first `len` bytes of `chunks` (which holds at least that many) as one part.
fn take_front(chunks: &mut std::collections::VecDeque<Bytes>, len: usize) -> PutPayload {
    let mut part = Vec::new();
    let mut need = len;
    while need > 0 {
        let Some(mut chunk) = chunks.pop_front() else {
            break;
        };
        if chunk.len() > need {
            let rest = chunk.split_off(need);
            chunks.push_front(rest);
        }
        need -= chunk.len();
        part.push(chunk);
    }
    part.into_iter().collect()
}

/// An error with its causes, which object_store keeps in `source()`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Sleeps the current delay with jitter, then doubles it up to the cap. False if shutdown
/// abandoned the wait.
pub async fn backoff(
    delay: &mut Duration,
    settings: &UploadSettings,
    abandon: &CancellationToken,
) -> bool {
    // Full jitter over the upper half keeps retries from many streams from marching in step.
    let jittered = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
    *delay = (*delay * 2).min(settings.retry_max);
    tokio::select! {
        _ = tokio::time::sleep(jittered) => true,
        _ = abandon.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threshold: u64, part: u64) -> UploadSettings {
        UploadSettings {
            concurrency: 1,
            multipart_threshold: threshold,
            part_size: part,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(1),
            gzip_level: 1,
            gzip_levels: Default::default(),
        }
    }

    /// The chunks, then the end marker if `end`.
    fn feed_with(chunks: Vec<std::io::Result<Bytes>>, end: bool) -> Chunks {
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len() + 1);
        for c in chunks {
            tx.try_send(c.map(Chunk::Data)).unwrap();
        }
        if end {
            tx.try_send(Ok(Chunk::End)).unwrap();
        }
        rx
    }

    fn feed(chunks: Vec<std::io::Result<Bytes>>) -> Chunks {
        feed_with(chunks, true)
    }

    #[tokio::test]
    async fn streamed_objects_go_up_in_parts_or_whole() {
        let store = object_store::memory::InMemory::new();
        let chunk = |b: u8, n: usize| Ok(Bytes::from(vec![b; n]));
        let big = ObjectPath::from("big");
        let n = put_streamed(
            &store,
            &big,
            feed(vec![chunk(1, 7), chunk(2, 3), chunk(3, 6)]),
            &settings(5, 5),
        )
        .await
        .unwrap();
        assert_eq!(n, 16);
        let got = store.get(&big).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.len(), 16);
        assert_eq!((got[6], got[7], got[10]), (1, 2, 3));

        let small = ObjectPath::from("small");
        put_streamed(&store, &small, feed(vec![chunk(9, 3)]), &settings(5, 5))
            .await
            .unwrap();
        assert_eq!(
            store
                .get(&small)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            3
        );

        // An encoder error fails the attempt and leaves no object behind.
        let failed = ObjectPath::from("failed");
        let err = put_streamed(
            &store,
            &failed,
            feed(vec![chunk(1, 12), Err(std::io::Error::other("boom"))]),
            &settings(5, 5),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(store.get(&failed).await.is_err());

        // An encoder that dies (its channel closes without the end marker) is not the end of
        // the object: whole or in parts, nothing is written. Before, a Parquet file without its
        // footer went up as if complete.
        for (name, size) in [("died-small", 3), ("died-in-parts", 12)] {
            let path = ObjectPath::from(name);
            let err = put_streamed(
                &store,
                &path,
                feed_with(vec![chunk(1, size)], false),
                &settings(5, 5),
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("stopped before the end"), "{err}");
            assert!(store.get(&path).await.is_err(), "{name}");
        }
    }

    #[test]
    fn parts_split_exactly() {
        let mut chunks: std::collections::VecDeque<Bytes> = [
            Bytes::from(vec![1u8; 7]),
            Bytes::from(vec![2u8; 3]),
            Bytes::from(vec![3u8; 6]),
        ]
        .into();
        let parts: Vec<PutPayload> = (0..3).map(|_| take_front(&mut chunks, 5)).collect();
        let sizes: Vec<usize> = parts.iter().map(|p| p.content_length()).collect();
        assert_eq!(sizes, [5, 5, 5]);
        let rest: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(rest, [3u8]);
        let all: Vec<u8> = parts
            .iter()
            .flat_map(|p| p.iter().flat_map(|b| b.to_vec()).collect::<Vec<_>>())
            .collect();
        assert_eq!(&all[..7], &[1u8; 7]);
    }
}
