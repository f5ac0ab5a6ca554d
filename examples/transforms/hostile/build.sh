#!/usr/bin/env bash
# Builds hostile.wasm from app.py with componentize-py (from PyPI).
# Usage: build.sh OUT.wasm   (COMPONENTIZE_PY names the tool if it is not on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="$here/../../../wit/transform.wit"
out="${1:-$here/hostile.wasm}"
tool="${COMPONENTIZE_PY:-componentize-py}"
cd "$here"
"$tool" -d "$wit" -w transformer componentize app -o "$out"
