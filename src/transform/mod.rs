//! WebAssembly transform hooks: components implementing `wit/transform.wit`, run by wasmtime
//! in a sandbox with no files, sockets or environment, a memory cap and a time budget per call.
//!
//! A component is compiled once; the compiled artifact is cached on disk under the hash of its
//! bytes, so a restart loads it instead of compiling again. Instances are pooled and reused
//! across batches; one that trapped is thrown away. Knows nothing of streams or journals.

mod host;
mod log_stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

use host::{HostState, Transformer, TransformerPre};
pub use host::{InputRecord, Outcome, Transformed};

/// How often the engine's epoch advances: the granularity of the time budget.
const EPOCH_TICK: Duration = Duration::from_millis(50);
/// Idle instances kept per component: calls run at most one per core at a time.
const MAX_IDLE_INSTANCES: usize = 4;
/// The compiler child gets this long before it is killed.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// Sandbox limits for every call, from the `[transform]` config section.
/// The largest component file loaded or fetched (a Python component is about 40 MB).
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

#[derive(Clone, Debug)]

pub struct Limits {
    pub memory_bytes: usize,
    pub timeout: Duration,
}

/// Why a call produced no usable outcomes. Each kind has its own error code in the error
/// output and its own label on `spillway_transform_failures_total`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the transform trapped: {0}")]
    Trap(String),
    #[error("the transform ran past its time budget of {0:?}")]
    Timeout(Duration),
    #[error("the transform tried to grow its memory past the cap of {0} bytes")]
    OutOfMemory(usize),
    #[error("the transform returned {got} outcomes for {expected} records")]
    WrongCount { expected: usize, got: usize },
    #[error("the transform could not be instantiated: {0}")]
    Instantiate(String),
}

impl CallError {
    /// The `errorCode` of records this failure sends to the error output.
    pub fn error_code(&self) -> &'static str {
        match self {
            CallError::Trap(_) => "Lambda.FunctionError",
            CallError::Timeout(_) => "Lambda.FunctionTimedOut",
            CallError::OutOfMemory(_) => "Lambda.OutOfMemory",
            CallError::WrongCount { .. } => "Lambda.InvalidOutput",
            CallError::Instantiate(_) => "Lambda.InvokeFailed",
        }
    }

    /// The `kind` label of `spillway_transform_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
            CallError::OutOfMemory(_) => "out_of_memory",
            CallError::WrongCount { .. } => "wrong_count",
            CallError::Instantiate(_) => "instantiate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load transform {path}: {message}")]
pub struct LoadError {
    pub path: String,
    pub message: String,
}

/// The daemon's one wasmtime engine, its compile cache and the loaded components.
pub struct Host {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    limits: Limits,
    /// `transform.component_dirs`, resolved: local components must be inside one (none: any
    /// regular file may be named).
    component_dirs: Vec<PathBuf>,
    /// Weak: a component no stream uses any more is freed with its instances.
    loaded: Mutex<HashMap<PathBuf, std::sync::Weak<Module>>>,
    /// One compilation at a time: two streams loading the same new component compile it once,
    /// and compiler peaks do not add up.
    compiling: Mutex<()>,
}

/// The engine settings: one place, because a compiled artifact loads only into an engine
/// configured the same way.
fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    Engine::new(&config)
}

/// Compiles the component at `input` and writes the artifact to `output` (the
/// `compile-transform` subcommand, run by the daemon in a child process).
pub fn compile_to_file(input: &Path, output: &Path) -> wasmtime::Result<()> {
    let engine = engine()?;
    let component = Component::from_file(&engine, input)?;
    crate::durable::write_file(output, &component.serialize()?)?;
    Ok(())
}

impl Host {
    pub fn new(
        cache_dir: PathBuf,
        limits: Limits,
        component_dirs: Vec<PathBuf>,
    ) -> wasmtime::Result<Arc<Host>> {
        let engine = engine()?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // The epoch ticker holds only a weak handle: it ends with the last engine clone.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(Host {
            engine,
            linker,
            cache_dir,
            limits,
            component_dirs,
            loaded: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
        }))
    }

    /// Where compiled components (and fetched copies of remote ones) are kept.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Loads the component at `path` (compiling it, or reading the cached compilation), and
    /// checks it implements the `transformer` world. Blocking: can take seconds on a cache miss.
    pub fn load(&self, path: &Path) -> Result<Arc<Module>, LoadError> {
        let err = |message: String| LoadError {
            path: path.display().to_string(),
            message,
        };
        let bytes = self.read_component(path).map_err(err)?;
        let digest = sha256_hex(&bytes);
        {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = loaded.get(path).and_then(std::sync::Weak::upgrade)
                && m.digest == digest
            {
                return Ok(m);
            }
        }
        let component = self
            .compile_cached(&bytes, &digest)
            .map_err(|e| err(format!("{e:#}")))?;
        let module = self
            .module(&path.display().to_string(), &digest, &component)
            .map_err(|e| {
                err(format!(
                    "not a spillway:transform@0.1.0 transformer component: {e:#}"
                ))
            })?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.retain(|_, m| m.strong_count() > 0);
        loaded.insert(path.to_path_buf(), Arc::downgrade(&module));
        Ok(module)
    }

    /// A component file's bytes, if it may be one: a regular file (not a device, a pipe or a
    /// directory, which could block or never end), inside `transform.component_dirs` when set,
    /// at most [`MAX_COMPONENT_BYTES`], starting with WebAssembly's magic number. A stream's
    /// settings come over the API, so nothing of a file that is not a component (its first
    /// bytes, say) goes into the answer.
    fn read_component(&self, path: &Path) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let resolved = path.canonicalize().map_err(|e| e.to_string())?;
        if !self.component_dirs.is_empty()
            && !self
                .component_dirs
                .iter()
                .any(|dir| resolved.starts_with(dir))
        {
            return Err("not inside transform.component_dirs".into());
        }
        let meta = std::fs::metadata(&resolved).map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > MAX_COMPONENT_BYTES {
            return Err(format!(
                "{} bytes, more than a component may have ({MAX_COMPONENT_BYTES})",
                meta.len()
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(&resolved)
            .and_then(|f| f.take(MAX_COMPONENT_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(format!(
                "more than a component may have ({MAX_COMPONENT_BYTES} bytes)"
            ));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err("not a WebAssembly component (no \\0asm header)".into());
        }
        Ok(bytes)
    }

    /// A component by the SHA-256 of its bytes: loaded already, or from the compile cache.
    /// For replays of batches sealed under a component the stream no longer uses. Blocking.
    pub fn load_compiled(&self, digest: &str, name: &str) -> Option<Arc<Module>> {
        {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = loaded
                .values()
                .filter_map(std::sync::Weak::upgrade)
                .find(|m| m.digest == digest)
            {
                return Some(m);
            }
        }
        let cached = self.cache_dir.join(format!("{digest}.cwasm"));
        // SAFETY: as in `compile_cached`: our own artifact, checked by wasmtime on load.
        let component = unsafe { Component::deserialize_file(&self.engine, &cached) }.ok()?;
        self.module(name, digest, &component).ok()
    }

    /// A compiled component linked against the sandbox's imports, with an empty pool.
    fn module(
        &self,
        name: &str,
        digest: &str,
        component: &Component,
    ) -> wasmtime::Result<Arc<Module>> {
        let pre = TransformerPre::new(self.linker.instantiate_pre(component)?)?;
        Ok(Arc::new(Module {
            name: name.to_owned(),
            digest: digest.to_owned(),
            engine: self.engine.clone(),
            pre,
            limits: self.limits.clone(),
            pool: Mutex::new(Vec::new()),
        }))
    }

    fn compile_cached(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<Component> {
        let _one_at_a_time = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let cached = self.cache_dir.join(format!("{digest}.cwasm"));
        if cached.exists() {
            // SAFETY: the file was written by `Component::serialize` of this daemon into its own
            // data directory; wasmtime checks the engine version and settings on load and
            // refuses an incompatible artifact, which is then compiled again below.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => {
                    tracing::debug!(cache = %cached.display(), "transform loaded from the compile cache");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(cache = %cached.display(), error = %e, "cached compilation unusable; compiling again")
                }
            }
        }
        let started = Instant::now();
        std::fs::create_dir_all(&self.cache_dir)?;
        let component = match compile_in_child(bytes, &cached) {
            Ok(()) => {
                // SAFETY: as above; the child is this same binary with the same engine settings.
                unsafe { Component::deserialize_file(&self.engine, &cached) }?
            }
            Err(why) => {
                tracing::debug!(reason = %why, "compiling the transform in-process");
                let component = Component::new(&self.engine, bytes)?;
                if let Err(e) = crate::durable::write_file(&cached, &component.serialize()?) {
                    tracing::warn!(cache = %cached.display(), error = %e, "cannot write the compile cache; the next start compiles again");
                }
                component
            }
        };
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "transform compiled"
        );
        Ok(component)
    }
}

/// A loaded component and its pool of idle instances.
pub struct Module {
    name: String,
    digest: String,
    engine: Engine,
    pre: TransformerPre<HostState>,
    limits: Limits,
    pool: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("sha256", &self.digest)
            .finish()
    }
}

struct Instance {
    store: Store<HostState>,
    bindings: Transformer,
}

impl Module {
    /// The name error records carry as `lambdaArn`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn sha256(&self) -> &str {
        &self.digest
    }

    /// Runs `process` on one batch. Blocking (it drives the call on the current thread):
    /// call it from a blocking thread of the daemon's tokio runtime.
    pub fn call(&self, batch: &[InputRecord]) -> Result<Vec<Outcome>, CallError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| CallError::Instantiate(format!("no runtime to run the call on: {e}")))?;
        handle.block_on(self.call_async(batch))
    }

    async fn call_async(&self, batch: &[InputRecord]) -> Result<Vec<Outcome>, CallError> {
        let mut instance = match self.take() {
            Some(i) => i,
            None => self.instantiate().await?,
        };
        instance.store.set_epoch_deadline(self.deadline_ticks());
        // The epoch deadline stops a guest that computes too long; this timeout stops one
        // that waits in the host (a sleep through wasi:io/poll), where epochs are not checked.
        // Dropping the call's future cancels it; the instance is dropped with it.
        let call = instance.bindings.call_process(&mut instance.store, batch);
        let result = tokio::time::timeout(self.limits.timeout + EPOCH_TICK * 2, call).await;
        instance.store.data_mut().flush_logs();
        match result {
            Err(_) => Err(CallError::Timeout(self.limits.timeout)),
            Ok(Ok(outcomes)) if outcomes.len() == batch.len() => {
                self.give_back(instance);
                Ok(outcomes)
            }
            Ok(Ok(outcomes)) => {
                // The instance is healthy; only its answer is wrong.
                self.give_back(instance);
                Err(CallError::WrongCount {
                    expected: batch.len(),
                    got: outcomes.len(),
                })
            }
            // A trapped instance may be in any state: it is dropped, not pooled.
            Ok(Err(e)) => Err(self.classify(&instance.store, e)),
        }
    }

    fn deadline_ticks(&self) -> u64 {
        let ticks = self
            .limits
            .timeout
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis()) as u64;
        ticks.max(1) + 1
    }

    fn classify(&self, store: &Store<HostState>, e: wasmtime::Error) -> CallError {
        if store.data().memory_refused() {
            return CallError::OutOfMemory(self.limits.memory_bytes);
        }
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return CallError::Timeout(self.limits.timeout);
        }
        CallError::Trap(format!("{e:#}"))
    }

    async fn instantiate(&self) -> Result<Instance, CallError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(&self.name, self.limits.memory_bytes),
        );
        store.limiter(|s| s.limiter());
        // Instantiation runs the component's start code (Python's interpreter set-up):
        // it gets the same budget as a call.
        store.set_epoch_deadline(self.deadline_ticks());
        let started = self.pre.instantiate_async(&mut store);
        let result = tokio::time::timeout(self.limits.timeout + EPOCH_TICK * 2, started).await;
        match result {
            Ok(Ok(bindings)) => Ok(Instance { store, bindings }),
            Err(_) => Err(CallError::Timeout(self.limits.timeout)),
            Ok(Err(e)) => {
                store.data_mut().flush_logs();
                match self.classify(&store, e) {
                    CallError::Trap(m) => Err(CallError::Instantiate(m)),
                    other => Err(other),
                }
            }
        }
    }

    fn take(&self) -> Option<Instance> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, instance: Instance) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE_INSTANCES {
            pool.push(instance);
        }
    }
}

/// Why a component was not compiled in a child process (it is then compiled in-process).
#[derive(Debug, thiserror::Error)]
enum ChildCompileError {
    #[error("{0} is not the spillway binary")]
    NotSpillway(PathBuf),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the compiler process ran over {0:?}")]
    TimedOut(Duration),
    #[error("the compiler process failed ({status}): {stderr}")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ChildCompileError {
    move |source| ChildCompileError::Io { what, source }
}

/// Compiles in a child `spillway compile-transform` process: compiling a large component takes
/// hundreds of MiB that the allocator would otherwise keep in the daemon for good. Only when this
/// binary is `spillway` (not a test harness embedding the library).
fn compile_in_child(bytes: &[u8], output: &Path) -> Result<(), ChildCompileError> {
    let exe = std::env::current_exe().map_err(io("find this executable"))?;
    if exe.file_stem().and_then(|s| s.to_str()) != Some("spillway") {
        return Err(ChildCompileError::NotSpillway(exe));
    }
    // Compilations are serialized by the caller; the input is removed whatever happens.
    let input = output.with_extension("input.wasm");
    std::fs::write(&input, bytes).map_err(io("write the compiler's input"))?;
    let result = run_compiler(&exe, &input, output);
    let _ = std::fs::remove_file(&input);
    result
}

fn run_compiler(exe: &Path, input: &Path, output: &Path) -> Result<(), ChildCompileError> {
    let mut child = std::process::Command::new(exe)
        .arg("compile-transform")
        .arg(input)
        .arg(output)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io("start the compiler process"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > COMPILE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChildCompileError::TimedOut(COMPILE_TIMEOUT));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(io("wait for the compiler process")(e)),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    Err(ChildCompileError::Failed {
        status,
        stderr: stderr.trim().to_owned(),
    })
}

/// SHA-256 of `bytes`, as lowercase hex: names compiled components and fetched copies.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
