//! The Iceberg library's file access, on spillway's own object store: the user states the
//! endpoint and credentials once (`[object_store]`), and table files are written as durably
//! as every other object (the local store syncs them).
//!
//! Locations are `s3://bucket/key` (any store; with the local store the bucket is the
//! directory `<local_root>/bucket`) or `file:///path` under the local store's root (what the
//! default warehouse uses there, so that readers on the same machine open the files directly).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::sink::Stores;

/// Storage over [`Stores`]. The library wants its storages serializable (to hand them to other
/// processes); spillway never does, so a deserialized one has no stores and fails every call.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct StoreStorage {
    #[serde(skip)]
    stores: Option<Arc<Stores>>,
    #[serde(skip)]
    cache: MetadataCache,
}

/// Table metadata files (`.../metadata/...`: table metadata, manifest lists, manifests) as
/// written or last read, up to [`CACHE_BYTES`]. Iceberg never rewrites such a file (each
/// version has a new name), so a copy stays right; each commit reads the table's metadata
/// three times, and an S3 round trip for each is most of a commit's time.
#[derive(Clone, Default)]
struct MetadataCache(Arc<std::sync::Mutex<CacheInner>>);

#[derive(Default)]
struct CacheInner {
    files: std::collections::HashMap<String, Bytes>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
}

/// The cache's cap: metadata of the few tables a daemon writes.
const CACHE_BYTES: usize = 4 << 20;

impl MetadataCache {
    fn cacheable(path: &str) -> bool {
        path.contains("/metadata/")
    }

    fn get(&self, path: &str) -> Option<Bytes> {
        if !Self::cacheable(path) {
            return None;
        }
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.files.get(path).cloned()
    }

    fn put(&self, path: &str, bytes: &Bytes) {
        if !Self::cacheable(path) || bytes.len() > CACHE_BYTES / 4 {
            return;
        }
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if inner.files.contains_key(path) {
            return;
        }
        // Owned copy: a slice of a larger buffer would keep the whole buffer alive.
        inner
            .files
            .insert(path.to_owned(), Bytes::copy_from_slice(bytes));
        inner.order.push_back(path.to_owned());
        inner.bytes += bytes.len();
        while inner.bytes > CACHE_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.files.remove(&old) {
                inner.bytes -= b.len();
            }
        }
    }
}

impl std::fmt::Debug for StoreStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreStorage")
    }
}

impl StoreStorage {
    pub fn new(stores: Arc<Stores>) -> Self {
        StoreStorage {
            stores: Some(stores),
            cache: MetadataCache::default(),
        }
    }

    fn stores(&self) -> Result<&Stores> {
        self.stores.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                "spillway's storage was deserialized without its object stores",
            )
        })
    }

    /// The bucket and key a location names.
    fn locate(&self, location: &str) -> Result<(String, String)> {
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("table file location {location:?}: {why}"),
            )
        };
        if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| invalid("no key"))?;
            return Ok((bucket.to_owned(), key.to_owned()));
        }
        if let Some(path) = location.strip_prefix("file://") {
            let root = self
                .stores()?
                .local_root()
                .ok_or_else(|| invalid("file locations need the local object store"))?;
            let rel = Path::new(path)
                .strip_prefix(root)
                .map_err(|_| invalid("not under the local store's root"))?;
            let rel = rel.to_str().ok_or_else(|| invalid("not UTF-8"))?;
            if rel.split('/').any(|c| c == ".." || c == ".") {
                return Err(invalid("has . or .. components"));
            }
            let (bucket, key) = rel.split_once('/').ok_or_else(|| invalid("no key"))?;
            return Ok((bucket.to_owned(), key.to_owned()));
        }
        Err(invalid(
            "spillway reads and writes s3:// and file:// locations",
        ))
    }

    fn store(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let (bucket, key) = self.locate(location)?;
        let store = self.stores()?.bucket(&bucket).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "object store unavailable").with_source(e)
        })?;
        let path = ObjectPath::parse(&key).map_err(|e| {
            Error::new(ErrorKind::DataInvalid, format!("bad key {key:?}")).with_source(e)
        })?;
        Ok((store, path))
    }
}

fn store_error(e: object_store::Error, location: &str) -> Error {
    Error::new(ErrorKind::Unexpected, format!("object store: {location}")).with_source(e)
}

#[async_trait]
#[typetag::serde(name = "spillway")]
impl Storage for StoreStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, key) = self.store(path)?;
        match store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(e, path)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, key) = self.store(path)?;
        let meta = store.head(&key).await.map_err(|e| store_error(e, path))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        if let Some(hit) = self.cache.get(path) {
            return Ok(hit);
        }
        let (store, key) = self.store(path)?;
        let got = store.get(&key).await.map_err(|e| store_error(e, path))?;
        let bytes = got.bytes().await.map_err(|e| store_error(e, path))?;
        self.cache.put(path, &bytes);
        Ok(bytes)
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, key) = self.store(path)?;
        Ok(Box::new(Reader {
            store,
            key,
            location: path.to_owned(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (bucket, key) = self.locate(path)?;
        self.stores()?
            .put_durable(&bucket, &key, PutPayload::from(bs.clone()))
            .await
            .map_err(|e| store_error(e, path))?;
        self.cache.put(path, &bs);
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        self.locate(path)?;
        Ok(Box::new(Writer {
            storage: self.clone(),
            location: path.to_owned(),
            chunks: Vec::new(),
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, key) = self.store(path)?;
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e, path)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, prefix) = self.store(path.trim_end_matches('/'))?;
        let mut listed = store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| store_error(e, path))?;
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(e, path)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_owned()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_owned()))
    }
}

struct Reader {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    location: String,
}

#[async_trait]
impl FileRead for Reader {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.key, range)
            .await
            .map_err(|e| store_error(e, &self.location))
    }
}

/// Collects a file's bytes and puts it whole on close: a table file either exists complete
/// or not at all (a data file is at most a buffer's worth of records).
struct Writer {
    storage: StoreStorage,
    location: String,
    chunks: Vec<Bytes>,
    closed: bool,
}

#[async_trait]
impl FileWrite for Writer {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.chunks.push(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::new(ErrorKind::Unexpected, "file already closed"));
        }
        self.closed = true;
        let (bucket, key) = self.storage.locate(&self.location)?;
        let chunks = std::mem::take(&mut self.chunks);
        let whole = match MetadataCache::cacheable(&self.location) {
            true => Some(Bytes::from(chunks.concat())),
            false => None,
        };
        let payload: PutPayload = match &whole {
            Some(b) => PutPayload::from(b.clone()),
            None => chunks.into_iter().collect(),
        };
        self.storage
            .stores()?
            .put_durable(&bucket, &key, payload)
            .await
            .map_err(|e| store_error(e, &self.location))?;
        if let Some(b) = whole {
            self.storage.cache.put(&self.location, &b);
        }
        Ok(())
    }
}

/// Builds [`StoreStorage`] whatever the configuration says: spillway's stores are already
/// configured.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct StoreStorageFactory {
    #[serde(skip)]
    storage: StoreStorage,
}

impl std::fmt::Debug for StoreStorageFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreStorageFactory")
    }
}

impl StoreStorageFactory {
    pub fn new(stores: Arc<Stores>) -> Self {
        StoreStorageFactory {
            storage: StoreStorage::new(stores),
        }
    }
}

#[typetag::serde(name = "spillway")]
impl StorageFactory for StoreStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage.clone()))
    }
}
