#!/usr/bin/env bash
# The whole test suite, installing what it needs: bash tests/run.sh
#   1. installs the S3 test server (s3s-fs from crates.io) and the AWS CLI + boto3 (PyPI)
#   2. checks formatting and lints
#   3. runs unit, property and black-box tests (cargo test)
#   4. runs every example in the README against a real daemon (tests/readme_examples.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! "$cargo_bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then
  step "installing s3s-fs 0.14.1 (S3 test server)"
  cargo install --locked s3s-fs@0.14.1 --features binary
fi
export S3S_FS="$cargo_bin/s3s-fs"

venv=target/test-venv
if [ ! -x "$venv/bin/aws" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
  step "installing the AWS CLI and boto3 (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'awscli==1.46.3' 'boto3==1.44.5' \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check awscli boto3
fi

step "cargo fmt --check"
cargo fmt --check
step "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
step "cargo test"
cargo test --locked
step "README examples"
PATH="$PWD/$venv/bin:$PATH" bash tests/readme_examples.sh
step "all passed"
