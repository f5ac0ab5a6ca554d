#!/usr/bin/env bash
# Builds passthrough.wasm: clang and wasm-ld (Debian's clang and lld) compile the freestanding
# C to a core module; the repo's `componentize` example wraps it into a component.
# Usage: build.sh OUT.wasm   (CLANG names the compiler; COMPONENTIZE an already built
# `componentize` example, e.g. target/debug/examples/componentize, instead of `cargo run`)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/passthrough.wasm}")"
mkdir -p "$(dirname "$out")"
core="$(mktemp --suffix .wasm)"
trap 'rm -f "$core"' EXIT
"${CLANG:-clang}" --target=wasm32 -O2 -nostdlib -Wl,--no-entry -o "$core" "$here/passthrough.c"
if [ -n "${COMPONENTIZE:-}" ]; then
  "$COMPONENTIZE" "$core" "$out"
else
  cargo run --quiet --manifest-path "$here/../../../Cargo.toml" --example componentize -- "$core" "$out"
fi
