#!/usr/bin/env bash
# Builds iceberg-router.wasm from app.py with componentize-py (from PyPI).
# Usage: build.sh OUT.wasm   (COMPONENTIZE_PY names the tool if it is not on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="$here/../../../wit/transform.wit"
out="$(realpath -m "${1:-$here/iceberg-router.wasm}")"
tool="${COMPONENTIZE_PY:-componentize-py}"
# Paths given relative to where the script was called from stay valid after the cd below.
case "$tool" in */*) tool="$(realpath -m "$tool")" ;; esac
mkdir -p "$(dirname "$out")"
cd "$here"
"$tool" -d "$wit" -w transformer componentize app -o "$out"
