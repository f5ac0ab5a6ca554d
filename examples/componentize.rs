//! Wraps a core WebAssembly module that implements `wit/transform.wit` by hand (exports
//! `process`, `cabi_post_process`, `cabi_realloc` and `memory`) into a component the daemon
//! can load: `cargo run --example componentize -- CORE.wasm OUT.wasm`.
//!
//! Toolchains with component support (componentize-py, componentize-js, cargo component) do
//! this themselves; this is for the freestanding C example, built with Debian's clang alone.

use anyhow::{Context, bail};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [core, out] = args.as_slice() else {
        bail!("usage: componentize CORE.wasm OUT.wasm");
    };
    let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/wit/transform.wit");
    let mut resolve = Resolve::default();
    let package = resolve
        .push_file(wit)
        .context("reading wit/transform.wit")?;
    let world = resolve.select_world(&[package], Some("transformer"))?;
    let mut module = std::fs::read(core).with_context(|| format!("reading {core}"))?;
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    let component = ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
        .context("building the component")?;
    std::fs::write(out, component).with_context(|| format!("writing {out}"))?;
    Ok(())
}
