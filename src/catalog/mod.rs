//! Delivery streams: their definitions, the control-plane operations on them, and persistence
//! of API-created streams under `<data dir>/streams/<name>/stream.json`.
//!
//! The catalog owns each stream's running pipeline. It speaks in domain errors
//! ([`CatalogError`]); turning those into HTTP answers is the api's job alone.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::definition;
use crate::definition::tags::Tag;
use crate::definition::{
    BucketName, ComponentSource, DeclaredStream, Destination, FieldError, S3Destination,
    StreamDefinition, StreamEncryption, StreamName,
};
use crate::pipeline::{Context, StartError, StreamRuntime};

/// Where a stream was declared. Config-file streams are read-only over the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Config,
    Api,
}

/// How the stream was created, echoed by Describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestinationShape {
    ExtendedS3,
    /// Created with the older `S3DestinationConfiguration`.
    S3,
    /// Created with `IcebergDestinationConfiguration`.
    Iceberg,
}

/// What Describe shows and what is persisted for API-created streams.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamRecord {
    pub name: String,
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub shape: DestinationShape,
    pub destination: S3Destination,
    /// Sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Set by `StartDeliveryStreamEncryption` (or at create), cleared by `Stop...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<StreamEncryption>,
}

pub struct StreamEntry {
    pub name: StreamName,
    pub origin: Origin,
    record: Mutex<StreamRecord>,
    pub runtime: StreamRuntime,
}

impl StreamEntry {
    pub fn record(&self) -> StreamRecord {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("Delivery stream {0} not found.")]
    NotFound(String),
    /// A name no stream can have: answered without echoing it (it may be megabytes).
    #[error(
        "1 validation error detected: Value at 'deliveryStreamName' failed to satisfy constraint: Member must have length between 1 and 64 and match [a-zA-Z0-9_.-]+"
    )]
    BadName,
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("Current delivery stream version {current} does not match {given}.")]
    VersionMismatch { current: u64, given: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl CatalogError {
    fn invalid(errors: Vec<FieldError>) -> Self {
        CatalogError::Invalid(
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field.api_name(), e.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {message}")]
    Persisted { path: PathBuf, message: String },
    #[error(
        "stream {name} is declared in the config file and was also created over the API ({path}); remove one"
    )]
    Conflict { name: String, path: PathBuf },
    #[error(transparent)]
    Start(#[from] StartError),
}

pub struct Catalog {
    ctx: Arc<Context>,
    streams_dir: PathBuf,
    streams: RwLock<BTreeMap<StreamName, Arc<StreamEntry>>>,
    /// Names whose deletion is still draining; they cannot be re-created until it ends.
    deleting: Arc<Mutex<HashSet<StreamName>>>,
    /// Serializes create, update and delete, so none of them can interleave on one name.
    control: tokio::sync::Mutex<()>,
    /// Set when shutdown begins: a stream created after that would never be closed.
    closing: std::sync::atomic::AtomicBool,
    region: String,
    /// Streams that may exist at once, those still draining after a delete included.
    max_streams: usize,
}

const STREAM_FILE: &str = "stream.json";

/// A destination validated and its transform loaded: what starting a stream needs.
struct Prepared {
    destination: Destination,
    transform: Option<Arc<crate::transform::Module>>,
}

/// A deleted stream's definition, kept until its buffered records are delivered, so a crash
/// during the drain resumes it instead of stranding acknowledged records.
const DELETING_FILE: &str = "deleting.json";

impl Catalog {
    /// Loads API-created streams from the data dir and the config file's streams, replaying
    /// each one's journal before returning.
    pub async fn open(
        ctx: Arc<Context>,
        data_dir: &Path,
        configured: &[DeclaredStream],
        max_streams: usize,
    ) -> Result<Catalog, OpenError> {
        let streams_dir = data_dir.join("streams");
        std::fs::create_dir_all(&streams_dir).map_err(|e| OpenError::Persisted {
            path: streams_dir.clone(),
            message: e.to_string(),
        })?;
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
        let catalog = Catalog {
            ctx,
            streams_dir,
            streams: RwLock::new(BTreeMap::new()),
            deleting: Arc::default(),
            control: tokio::sync::Mutex::new(()),
            closing: Default::default(),
            region,
            max_streams,
        };
        let now = crate::pipeline::now_ms();
        let mut persisted = Vec::new();
        let mut draining = Vec::new();
        let mut orphans = Vec::new();
        let entries =
            std::fs::read_dir(&catalog.streams_dir).map_err(|e| OpenError::Persisted {
                path: catalog.streams_dir.clone(),
                message: e.to_string(),
            })?;
        let read_record = |path: &Path| -> Result<Option<StreamRecord>, OpenError> {
            match std::fs::read(path) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes)
                        .map(Some)
                        .map_err(|e| OpenError::Persisted {
                            path: path.to_owned(),
                            message: e.to_string(),
                        })
                }
                Err(_) => Ok(None),
            }
        };
        for entry in entries.flatten() {
            let path = entry.path().join(STREAM_FILE);
            let marker = entry.path().join(DELETING_FILE);
            if let Some(record) = read_record(&path)? {
                persisted.push((path, record));
            } else if let Some(record) = read_record(&marker)? {
                draining.push(record);
            } else {
                orphans.push(entry.file_name());
            }
        }
        for DeclaredStream {
            name,
            destination: dest,
            tags,
        } in configured
        {
            if let Some((path, _)) = persisted.iter().find(|(_, r)| r.name == name.as_str()) {
                return Err(OpenError::Conflict {
                    name: name.to_string(),
                    path: path.clone(),
                });
            }
            let record = StreamRecord {
                name: name.to_string(),
                version: 1,
                created_ms: now,
                updated_ms: now,
                shape: match dest
                    .other
                    .contains_key(crate::definition::iceberg::ICEBERG_MEMBER)
                {
                    true => DestinationShape::Iceberg,
                    false => DestinationShape::ExtendedS3,
                },
                destination: dest.clone(),
                tags: tags.clone(),
                encryption: None,
            };
            catalog.start_stream(record, Origin::Config, None).await?;
        }
        for (path, record) in persisted {
            catalog
                .start_stream(record, Origin::Api, None)
                .await
                .map_err(|e| match e {
                    OpenError::Persisted { message, .. } => OpenError::Persisted { path, message },
                    other => other,
                })?;
        }
        for record in draining {
            let name = record.name.clone();
            tracing::info!(stream = %name, "resuming the drain of a deleted delivery stream");
            let entry = catalog.start_entry(record, Origin::Api, None).await?;
            catalog.drain_deleted(entry);
        }
        for name in orphans {
            let name = name.to_string_lossy();
            if !catalog
                .streams
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .any(|k| k.as_str() == name)
            {
                tracing::warn!(stream = %name, "a journal directory exists for a stream that is not defined; its undelivered records stay there until the stream is declared again");
            }
        }
        Ok(catalog)
    }

    async fn start_stream(
        &self,
        record: StreamRecord,
        origin: Origin,
        prepared: Option<Prepared>,
    ) -> Result<(), OpenError> {
        let entry = self.start_entry(record, origin, prepared).await?;
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.name.clone(), entry);
        Ok(())
    }

    /// Starts a stream from its record; `prepared` is the record's destination already
    /// validated and its transform loaded (by `create`), so neither is done twice.
    async fn start_entry(
        &self,
        record: StreamRecord,
        origin: Origin,
        prepared: Option<Prepared>,
    ) -> Result<Arc<StreamEntry>, OpenError> {
        let invalid = |message: String| OpenError::Persisted {
            path: self.streams_dir.join(&record.name),
            message,
        };
        let name = StreamName::parse(&record.name).map_err(invalid)?;
        let Prepared {
            destination,
            transform,
        } = match prepared {
            Some(p) => p,
            None => self
                .prepare(&record.destination)
                .await
                .map_err(|e| invalid(e.to_string()))?,
        };
        let runtime = StreamRuntime::start(
            self.ctx.clone(),
            &self.streams_dir.join(name.as_str()),
            Arc::new(StreamDefinition {
                name: name.clone(),
                version: record.version,
                destination,
                transform,
            }),
        )
        .await?;
        Ok(Arc::new(StreamEntry {
            name,
            origin,
            record: Mutex::new(record),
            runtime,
        }))
    }

    /// Validates a destination and loads its transform.
    async fn prepare(&self, raw: &S3Destination) -> Result<Prepared, CatalogError> {
        let destination = definition::validate(raw, &self.ctx.tables, crate::process::jq::check)
            .map_err(CatalogError::invalid)?;
        if let Some(target) = &destination.iceberg
            && !self.ctx.iceberg.is_configured(&target.catalog)
        {
            return Err(CatalogError::Invalid(format!(
                "IcebergDestinationConfiguration: CatalogConfiguration.CatalogARN names the catalog {:?}, which is not configured (configured: {}); declare it as [iceberg.catalogs.{}] in the config file",
                target.catalog,
                self.ctx.iceberg.names().join(", "),
                target.catalog
            )));
        }
        let transform = self
            .load_transform(&destination)
            .await
            .map_err(CatalogError::Invalid)?;
        Ok(Prepared {
            destination,
            transform,
        })
    }

    /// Loads (compiles, or reads from the compile cache) the stream's transform component.
    async fn load_transform(
        &self,
        destination: &Destination,
    ) -> Result<Option<Arc<crate::transform::Module>>, String> {
        let Some(lambda) = destination
            .processing
            .as_ref()
            .and_then(|p| p.lambda.as_ref())
        else {
            return Ok(None);
        };
        let host = self.ctx.transforms.clone();
        let path = match &lambda.component {
            ComponentSource::File(path) => path.clone(),
            ComponentSource::Object { bucket, key } => self.fetch_component(bucket, key).await?,
        };
        match tokio::task::spawn_blocking(move || host.load(&path)).await {
            Ok(Ok(module)) => Ok(Some(module)),
            Ok(Err(e)) => Err(format!("ProcessingConfiguration: {e}")),
            Err(e) => Err(format!("transform loader failed: {e}")),
        }
    }

    /// Copies a component from the object store to `<cache_dir>/fetched/`, one file per URL.
    /// When the store cannot be reached, the copy from an earlier fetch is used (so a restart
    /// during an S3 outage still starts the stream); without one, the stream cannot start.
    async fn fetch_component(&self, bucket: &BucketName, key: &str) -> Result<PathBuf, String> {
        let url = format!("s3://{}/{key}", bucket.as_str());
        let dir = self.ctx.transforms.cache_dir().join("fetched");
        let local = dir.join(format!(
            "{}.wasm",
            crate::transform::sha256_hex(url.as_bytes())
        ));
        let fetched = async {
            let store = self
                .ctx
                .stores
                .bucket(bucket.as_str())
                .map_err(|e| e.to_string())?;
            let got = store
                .get(&object_store::path::Path::from(key))
                .await
                .map_err(|e| e.to_string())?;
            let max = crate::transform::MAX_COMPONENT_BYTES;
            if got.meta.size > max {
                return Err(format!(
                    "{} bytes, more than a component may have ({max})",
                    got.meta.size
                ));
            }
            got.bytes().await.map_err(|e| e.to_string())
        }
        .await;
        match fetched {
            Ok(bytes) => {
                let write = std::fs::create_dir_all(&dir)
                    .and_then(|()| crate::durable::write_file(&local, &bytes));
                write.map_err(|e| {
                    format!("cannot keep a copy of {url} at {}: {e}", local.display())
                })?;
                Ok(local)
            }
            Err(e) if local.exists() => {
                tracing::warn!(component = %url, error = %e, copy = %local.display(), "cannot fetch the transform; using the copy fetched earlier");
                Ok(local)
            }
            Err(e) => Err(format!("ProcessingConfiguration: cannot fetch {url}: {e}")),
        }
    }

    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:firehose:{}:000000000000:deliverystream/{name}",
            self.region
        )
    }

    pub fn get(&self, name: &str) -> Result<Arc<StreamEntry>, CatalogError> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| match StreamName::parse(name) {
                Ok(_) => CatalogError::NotFound(name.to_owned()),
                Err(_) => CatalogError::BadName,
            })
    }

    pub fn list(&self) -> Vec<Arc<StreamEntry>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub async fn create(
        &self,
        name: &str,
        shape: DestinationShape,
        destination: S3Destination,
        tags: Vec<Tag>,
        encryption: Option<StreamEncryption>,
    ) -> Result<(), CatalogError> {
        let name = StreamName::parse(name).map_err(CatalogError::Invalid)?;
        definition::tags::check_list(&tags, true).map_err(CatalogError::Invalid)?;
        let tags = definition::tags::merge(&[], tags).map_err(CatalogError::Invalid)?;
        check_encryption(encryption.as_ref())?;
        // A component that does not load is the caller's mistake, reported before anything
        // is persisted.
        let prepared = self.prepare(&destination).await?;
        let _control = self.control.lock().await;
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(CatalogError::Unavailable(
                "spillway is shutting down; create the stream after it restarts.".into(),
            ));
        }
        if self.get(name.as_str()).is_ok()
            || self
                .deleting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&name)
        {
            return Err(CatalogError::InUse(format!(
                "Firehose {name} under account 000000000000 already exists."
            )));
        }
        let existing = self.streams.read().unwrap_or_else(|p| p.into_inner()).len()
            + self
                .deleting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len();
        if existing >= self.max_streams {
            return Err(CatalogError::LimitExceeded(format!(
                "This spillway already has {existing} delivery streams, its limit (max_delivery_streams = {}); delete one first.",
                self.max_streams
            )));
        }
        let now = crate::pipeline::now_ms();
        let record = StreamRecord {
            name: name.to_string(),
            version: 1,
            created_ms: now,
            updated_ms: now,
            shape,
            destination,
            tags,
            encryption,
        };
        // Persist first: a stream that was acknowledged must come back after a restart.
        self.persist(&record)?;
        self.start_stream(record, Origin::Api, Some(prepared))
            .await
            .map_err(|e| CatalogError::Internal(e.to_string()))
    }

    pub async fn update(
        &self,
        name: &str,
        current_version: &str,
        destination_id: &str,
        update: S3Destination,
    ) -> Result<(), CatalogError> {
        let _control = self.control.lock().await;
        let entry = self.get(name)?;
        if entry.origin == Origin::Config {
            return Err(CatalogError::Invalid(format!(
                "Delivery stream {name} is defined in the config file and cannot be changed over the API."
            )));
        }
        if destination_id != DESTINATION_ID {
            return Err(CatalogError::Invalid(format!(
                "DestinationId {destination_id} not found; this stream's destination is {DESTINATION_ID}."
            )));
        }
        // The control lock is held: nothing else changes the record until this returns.
        let current = entry
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current_version != current.version.to_string() {
            return Err(CatalogError::VersionMismatch {
                current: current.version,
                given: current_version.to_owned(),
            });
        }
        if current.shape == DestinationShape::Iceberg {
            return Err(CatalogError::Invalid(
                "UpdateDestination is not supported for Iceberg destinations yet; delete the stream and create it again".into(),
            ));
        }
        let mut merged = current.destination.clone();
        merged.apply_update(update);
        let Prepared {
            destination,
            transform,
        } = self.prepare(&merged).await?;
        let mut next = current;
        next.destination = merged;
        next.version += 1;
        next.updated_ms = crate::pipeline::now_ms();
        self.persist(&next)?;
        entry.runtime.update(Arc::new(StreamDefinition {
            name: entry.name.clone(),
            version: next.version,
            destination,
            transform,
        }));
        *entry.record.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Changes what an API-created stream's record holds besides its destination (tags,
    /// encryption): the change is persisted before it is seen. The version stays, as in
    /// Firehose, where only `UpdateDestination` moves it.
    fn change_record(
        &self,
        name: &str,
        operation: &str,
        change: impl FnOnce(&mut StreamRecord) -> Result<(), CatalogError>,
    ) -> Result<(), CatalogError> {
        let entry = self.get(name)?;
        if entry.origin == Origin::Config {
            return Err(CatalogError::Invalid(format!(
                "Delivery stream {name} is defined in the config file; {operation} cannot change it (edit the file)."
            )));
        }
        let mut next = entry.record();
        change(&mut next)?;
        self.persist(&next)?;
        *entry.record.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// `TagDeliveryStream`: adds tags, replacing the values of keys already there.
    pub async fn tag(&self, name: &str, tags: Vec<Tag>) -> Result<(), CatalogError> {
        definition::tags::check_list(&tags, false).map_err(CatalogError::Invalid)?;
        let _control = self.control.lock().await;
        self.change_record(name, "TagDeliveryStream", |r| {
            r.tags = definition::tags::merge(&r.tags, tags).map_err(CatalogError::LimitExceeded)?;
            Ok(())
        })
    }

    /// `UntagDeliveryStream`: removes the keys given; a key the stream does not have is no error.
    pub async fn untag(&self, name: &str, keys: Vec<String>) -> Result<(), CatalogError> {
        if keys.is_empty() || keys.len() > definition::tags::MAX_TAGS {
            return Err(CatalogError::Invalid(format!(
                "TagKeys must list 1 to {} keys, got {}",
                definition::tags::MAX_TAGS,
                keys.len()
            )));
        }
        for (i, key) in keys.iter().enumerate() {
            definition::tags::check_key(key, &format!("TagKeys[{i}]"))
                .map_err(CatalogError::Invalid)?;
        }
        let _control = self.control.lock().await;
        self.change_record(name, "UntagDeliveryStream", |r| {
            r.tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })
    }

    /// `StartDeliveryStreamEncryption` (`Some`) and `StopDeliveryStreamEncryption` (`None`).
    pub async fn set_encryption(
        &self,
        name: &str,
        encryption: Option<StreamEncryption>,
    ) -> Result<(), CatalogError> {
        check_encryption(encryption.as_ref())?;
        let operation = match encryption {
            Some(_) => "StartDeliveryStreamEncryption",
            None => "StopDeliveryStreamEncryption",
        };
        let _control = self.control.lock().await;
        self.change_record(name, operation, |r| {
            r.encryption = encryption;
            Ok(())
        })
    }

    /// Removes the stream from the API at once; its buffered records are still delivered in
    /// the background, after which its directory is removed.
    pub async fn delete(&self, name: &str) -> Result<(), CatalogError> {
        let _control = self.control.lock().await;
        let entry = self.get(name)?;
        if entry.origin == Origin::Config {
            return Err(CatalogError::Invalid(format!(
                "Delivery stream {name} is defined in the config file and cannot be deleted over the API."
            )));
        }
        let dir = self.streams_dir.join(entry.name.as_str());
        let marked = std::fs::rename(dir.join(STREAM_FILE), dir.join(DELETING_FILE))
            .and_then(|()| crate::durable::sync_dir(&dir));
        marked.map_err(|e| CatalogError::Internal(format!("cannot mark stream deleted: {e}")))?;
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&entry.name);
        self.drain_deleted(entry);
        Ok(())
    }

    /// Delivers what a deleted stream still holds, then removes its directory. The name stays
    /// taken until then.
    fn drain_deleted(&self, entry: Arc<StreamEntry>) {
        self.deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.name.clone());
        let dir = self.streams_dir.join(entry.name.as_str());
        let ctx = self.ctx.clone();
        let deleting = self.deleting.clone();
        self.ctx.tracker.spawn(async move {
            entry.runtime.close().await;
            if ctx.abandon.is_cancelled() {
                // Shutdown gave up on some uploads: the marker makes the next start finish.
                return;
            }
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                tracing::warn!(stream = %entry.name, error = %e, "cannot remove deleted stream's directory");
            }
            ctx.metrics.forget_stream(entry.name.as_str());
            deleting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry.name);
            tracing::info!(stream = %entry.name, "delivery stream deleted");
        });
    }

    fn persist(&self, record: &StreamRecord) -> Result<(), CatalogError> {
        let dir = self.streams_dir.join(&record.name);
        let io = |e: std::io::Error| {
            CatalogError::Internal(format!("cannot persist stream {}: {e}", record.name))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|e| CatalogError::Internal(e.to_string()))?;
        crate::durable::write_file(&dir.join(STREAM_FILE), &bytes).map_err(io)
    }

    /// Stops every stream: each delivers what it holds (or leaves it in its journal if
    /// shutdown gives up), in parallel.
    pub async fn close(&self) {
        {
            // Taking the control lock orders this after any create in progress.
            let _control = self.control.lock().await;
            self.closing
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let entries = self.list();
        futures::future::join_all(entries.iter().map(|e| e.runtime.close())).await;
    }

    /// Sets gauges that are computed rather than counted, just before a scrape.
    pub fn refresh_gauges(&self) {
        let now = crate::pipeline::now_ms();
        for entry in self.list() {
            let metrics = &entry.runtime.shared().metrics;
            metrics
                .freshness_seconds
                .set(entry.runtime.freshness_seconds(now) as i64);
            let destination = &entry.runtime.definition().destination;
            metrics
                .buffer_interval_seconds
                .set(destination.buffer_interval.as_secs() as i64);
            metrics
                .buffer_size_bytes
                .set(destination.buffer_bytes as i64);
        }
    }
}

pub const DESTINATION_ID: &str = "destinationId-000000000001";

/// A `DeliveryStreamEncryptionConfigurationInput`, at create or `StartDeliveryStreamEncryption`.
fn check_encryption(encryption: Option<&StreamEncryption>) -> Result<(), CatalogError> {
    match encryption.map(StreamEncryption::check) {
        Some(Err(m)) => Err(CatalogError::Invalid(format!(
            "DeliveryStreamEncryptionConfigurationInput: {m}"
        ))),
        _ => Ok(()),
    }
}
