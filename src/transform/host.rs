//! The host side of `wit/transform.wit`: generated bindings, and the per-instance state that
//! makes the sandbox (WASI with nothing granted but stdio to the log, and a memory limiter).

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::log_stream::LogStream;

wasmtime::component::bindgen!({
    path: "wit/transform.wit",
    world: "transformer",
    exports: { default: async },
});

pub use self::spillway::transform::types::Transformed;

/// Table elements an instance may have; far above what real components use.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    stdout: LogStream,
    stderr: LogStream,
}

impl HostState {
    pub fn new(component: &str, memory_bytes: usize) -> Self {
        let component: Arc<str> = component.into();
        let stdout = LogStream::new(component.clone(), "stdout");
        let stderr = LogStream::new(component, "stderr");
        // No preopened directories, no environment, no arguments, no sockets, no name lookup:
        // only stdio (into the log), clocks and random numbers.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes,
                used: 0,
                refused: false,
            },
            stdout,
            stderr,
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Whether the last call failed because memory growth hit the cap.
    pub fn memory_refused(&self) -> bool {
        self.limiter.refused
    }

    pub fn flush_logs(&mut self) {
        self.stdout.flush();
        self.stderr.flush();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past the cap with a trap (rather than a failed `memory.grow` the
/// guest might ignore), and remembers that it did so the failure is reported as out of memory.
/// The cap is on the sum of every linear memory of the instance.
struct Limiter {
    memory_bytes: usize,
    used: usize,
    refused: bool,
}

/// Linear memories and tables one instance may create; components built by the usual
/// toolchains have a handful of each.
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.memory_bytes {
            self.refused = true;
            wasmtime::bail!(
                "memory growth to {total} bytes in all refused: the cap is {} bytes",
                self.memory_bytes
            );
        }
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|m| desired <= m))
    }
}
