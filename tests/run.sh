#!/usr/bin/env bash
# The whole test suite, installing what it needs: bash tests/run.sh
#   1. installs the S3 test server (s3s-fs from crates.io), Prometheus, clang and lld (Debian;
#      they build the C example transform), and the AWS CLI, boto3, PyYAML,
#      kubernetes-validate, componentize-py (PyPI; it builds the Python example transforms) and
#      pyarrow (an independent Parquet reader for the format conversion tests), and the AWS SDK
#      for JavaScript (npm; Node.js from Debian if missing) for the signature tests
#   2. checks formatting and lints
#   3. runs unit, property and black-box tests (cargo test), then builds the fuzz targets with
#      nightly and cargo-fuzz (installed if missing) and runs each for 15 s (docs/fuzzing.md)
#   4. builds the release binaries, with no time limit: a fresh build takes 8-28 minutes on a
#      2-core machine, and no later step may depend on how fast this machine compiles
#   5. runs every example in the README against a real daemon (tests/readme_examples.sh), with
#      the README's own commands; their `cargo run --release` finds the build up to date
#   6. checks deploy/ and grafana/ and runs the stack's configurations natively, with a real
#      Prometheus scraping spillway under load (tests/stack.py)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
s3s_install=""
if ! "$cargo_bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then
  # Built in the background while fmt and clippy run: both compile, but each leaves a core
  # idle part of the time.
  step "installing s3s-fs 0.14.1 (S3 test server) in the background"
  s3s_log=$(mktemp)
  cargo install --locked s3s-fs@0.14.1 --features binary >"$s3s_log" 2>&1 &
  s3s_install=$!
fi
export S3S_FS="$cargo_bin/s3s-fs"

debian_deps=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || debian_deps+=(prometheus)
command -v clang >/dev/null || debian_deps+=(clang)
command -v wasm-ld >/dev/null || debian_deps+=(lld)
command -v npm >/dev/null || debian_deps+=(nodejs npm)
# PostgreSQL for the Iceberg catalog test (tests/iceberg.rs starts a private cluster).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || debian_deps+=(postgresql)
if [ ${#debian_deps[@]} -gt 0 ]; then
  step "installing ${debian_deps[*]} (Debian packages)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends "${debian_deps[@]}" >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${debian_deps[@]}" >/dev/null; }
fi

venv=target/test-venv
python_deps=('awscli==1.46.3' 'boto3==1.44.5' 'PyYAML==6.0.3' 'kubernetes-validate==1.37.0' 'componentize-py==0.25.0' 'pyarrow==26.0.1' 'python-snappy==0.7.3' 'aws-kinesis-agg==1.2.3' 'duckdb==1.4.2' 'pyiceberg[sql-sqlite,sql-postgres,pyarrow]==0.10.0')
if [ ! -x "$venv/bin/aws" ] || [ ! -x "$venv/bin/componentize-py" ] \
  || ! "$venv/bin/python" -c 'import boto3, yaml, kubernetes_validate, pyarrow, snappy, aws_kinesis_agg, duckdb, pyiceberg.catalog.sql, psycopg2' 2>/dev/null; then
  step "installing the AWS CLI, boto3, PyYAML, kubernetes-validate, componentize-py, pyarrow, python-snappy, aws-kinesis-agg, DuckDB and pyiceberg (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_deps[@]}"
fi

node_dir=target/test-node
if [ ! -d "$node_dir/node_modules/@aws-sdk/client-firehose" ]; then
  step "installing the AWS SDK for JavaScript (@aws-sdk/client-firehose, npm) into $node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent @aws-sdk/client-firehose@3.1178.0
fi

step "cargo fmt --check"
cargo fmt --check
step "cargo clippy"
cargo clippy --locked --all-targets --features failpoints -- -D warnings
if [ -n "$s3s_install" ]; then
  step "waiting for the s3s-fs install"
  wait "$s3s_install" || { cat "$s3s_log"; echo "installing s3s-fs failed"; exit 1; }
fi
step "cargo test"
cargo test --locked --features failpoints
# Every fuzz target (fuzz/, docs/fuzzing.md) built once and run briefly from its seeds and kept
# regressions; a crash, hang or out-of-memory fails the run. Same build flags as the documented
# long runs, so those reuse this build.
fuzz_version=0.13.1
if ! "$cargo_bin/cargo-fuzz" --version 2>/dev/null | grep -q "$fuzz_version"; then
  step "installing cargo-fuzz $fuzz_version"
  cargo install --locked "cargo-fuzz@$fuzz_version"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
fuzz_flags=(--sanitizer none --codegen-units 16)
step "cargo fuzz build (nightly, libFuzzer)"
(cd fuzz && cargo +nightly fuzz build "${fuzz_flags[@]}")
mkdir -p fuzz/artifacts
for target in $(cd fuzz && cargo +nightly fuzz list); do
  step "fuzzing $target for 15 s"
  corpora=("corpus/$target" "seeds/$target")
  [ -d "fuzz/regressions/$target" ] && corpora+=("regressions/$target")
  mkdir -p "fuzz/corpus/$target"
  log="fuzz/artifacts/$target.log"
  if ! (cd fuzz && cargo +nightly fuzz run "${fuzz_flags[@]}" "$target" "${corpora[@]}" \
    -- -max_total_time=15 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: the input is in fuzz/artifacts/$target/ (docs/fuzzing.md)"
    exit 1
  fi
  grep -E '^(Done|stat::peak_rss_mb)' "$log" || true
done
step "cargo build --release (what the README's commands and the stack check run)"
cargo build --release --locked --bins --timings
# The benchmark behind the README's performance section, briefly, so that it cannot rot: it
# fails if anything accepted is not delivered; its numbers are not checked (no timing
# assertions), only printed.
step "benchmark smoke run (tests/bench.py, 3 s per case)"
python3 tests/bench.py --seconds 3 --cases plain,gzip
step "README examples"
PATH="$PWD/$venv/bin:$PATH" bash tests/readme_examples.sh
step "local stack: compose, Kubernetes, Prometheus and the Grafana dashboard"
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" tests/stack.py
step "all passed"
