#!/usr/bin/env bash
# Runs the README's examples as a newcomer would: the run command (in the repo root, default
# data dir), then the AWS CLI and boto3 blocks against it, then checks what landed and that
# SIGTERM exits 0. Expects `aws` and boto3 on PATH (tests/run.sh installs them).
#
# The examples' commands work in the checkout (that is where a reader runs them), so this
# refuses to start if their directories exist already rather than deleting someone's data,
# and removes only what it made. Each example runs in a process group of its own; cleanup
# stops those groups (a daemon an example left behind when it failed included), nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

# The fenced block that follows `<!-- example: NAME -->` in README.md.
example() {
  awk -v name="$1" '
    $0 ~ "<!-- example: " name " -->" { armed = 1; next }
    armed && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' README.md
}

for name in run cli boto3 config check-config stack stack-secure transform parquet bench; do
  [ -n "$(example "$name")" ] || { echo "README has no '$name' example"; exit 1; }
done

# Every example runs the release binaries; build them first, with no time limit (a fresh
# build takes 8-28 minutes on 2 cores). After tests/run.sh's build step this finds them fresh.
echo "== cargo build --release --bins (the binaries the README's commands run)"
cargo build --release --locked --bins

if curl -s -o /dev/null http://localhost:4573/healthz; then
  echo "something already listens on localhost:4573; stop it first"; exit 1
fi
for made in spillway-data .venv; do
  [ ! -e "$made" ] || { echo "$made exists: the README's examples would overwrite it; move it away first"; exit 1; }
done
groups=()
work=$(mktemp -d)
cleanup() {
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  rm -rf spillway-data .venv /tmp/spillway-bench "$work"
}
trap cleanup EXIT

# Runs the README example NAME (the block's text as given, or $2) in a process group of its
# own, output to $work/NAME.out; returns its exit status.
run_example() {
  local name=$1 text=${2:-$(example "$1")}
  setsid bash -euo pipefail -c "$text" >"$work/$name.out" 2>&1 &
  local pid=$!
  groups+=("$pid")
  wait "$pid"
}

log=$work/run.out
setsid bash -c "$(example run)" >"$log" 2>&1 &
launcher=$!
groups+=("$launcher")

# The binaries were built before this point, so the wait is for the daemon's start alone,
# however slowly this machine compiles. A `cargo run` that compiles anyway means the README's
# command builds something the build step does not: fail and say so, rather than time out.
echo "== waiting for the daemon"
for _ in $(seq 1 120); do
  curl -sf -o /dev/null http://localhost:4573/healthz && break
  kill -0 "$launcher" 2>/dev/null || { cat "$log"; echo "the run command exited"; exit 1; }
  if grep -q '^ *Compiling ' "$log"; then
    cat "$log"; echo "the README's run command compiled: it is not what 'cargo build --release --bins' built"; exit 1
  fi
  sleep 0.5
done
curl -sf -o /dev/null http://localhost:4573/healthz || { cat "$log"; echo "daemon not up after 60 s"; exit 1; }

echo "== README: AWS CLI example"
run_example cli || { cat "$work/cli.out"; echo "the cli example failed"; exit 1; }
cli_out=$(cat "$work/cli.out")
echo "$cli_out" | tail -5
for id in 7 8 9; do
  echo "$cli_out" | grep -q "\"user_id\": $id," || { echo "record $id not delivered"; exit 1; }
done

echo "== README: boto3 example"
py_out=$(python3 -c "$(example boto3)")
echo "$py_out"
[ "$py_out" = "failed records: 0" ] || { echo "unexpected boto3 output"; exit 1; }

echo "== SIGTERM flushes and exits 0"
pid=$(pgrep -g "$launcher" -x spillway)
kill -TERM "$pid"
wait "$launcher" || { cat "$log"; echo "daemon did not exit 0"; exit 1; }
grep -q "stopped" "$log" || { cat "$log"; echo "no clean stop in the log"; exit 1; }
lines=$(find spillway-data/buckets/game-data -name '*.gz' -print0 | xargs -0 zcat | wc -l)
[ "$lines" -eq 103 ] || { echo "expected 103 delivered records, found $lines"; exit 1; }
rm -rf spillway-data

echo "== README: check-config"
run_example check-config || { cat "$work/check-config.out"; echo "the check-config example failed"; exit 1; }
checked=$(cat "$work/check-config.out")
echo "$checked" | tail -8
echo "$checked" | grep -q "examples/minio.toml: ok" || { echo "check-config did not accept the example"; exit 1; }
echo "$checked" | grep -q "game-events: s3://game-data/" || { echo "check-config did not list the stream"; exit 1; }

# Runs the README example NAME from a clean state (no data dir, no .venv), shows the last
# SHOWN lines of its output (without indented CLI JSON), and fails unless the output contains
# every further argument. The output is left in $out.
run_expecting() {
  local name=$1 shown=$2
  shift 2
  rm -rf spillway-data .venv
  run_example "$name" || { tail -40 "$work/$name.out"; echo "the $name example failed"; exit 1; }
  out=$(cat "$work/$name.out")
  echo "$out" | grep -v '^ ' | tail -"$shown"
  for expected in "$@"; do
    echo "$out" | grep -qF "$expected" || { echo "$name example: missing $expected"; exit 1; }
  done
}

echo "== README: transform and partition"
run_expecting transform 12 \
  'players/location=KR/' '{"user_id":7,"age":31,"location":"KR","play_time":"3725"}' \
  'players/location=DE/' '{"user_id":9,"age":44,"location":"DE","play_time":"980"}' \
  'errors/processing-failed/' '"rawData":"bm90IGEgcGxheWVy"'
if echo "$out" | grep -q '"user_id":8'; then echo "a premium player was delivered"; exit 1; fi
ls spillway-data/transform-cache/*.cwasm >/dev/null || { echo "no compiled component cached"; exit 1; }
rm -rf spillway-data .venv

echo "== README: Parquet output"
run_expecting parquet 14 \
  'user_id: int64' 'ts: timestamp[us]' 'price: decimal128(10, 2)' 'geo_city: string' \
  "'user_id': 7, 'age': 31, 'location': 'KR', 'ts': datetime.datetime(2026, 11, 29, 10, 0), 'price': Decimal('19.99')" \
  "'geo_city': 'Seoul'" \
  "'user_id': 8, 'age': 19, 'location': None, 'ts': datetime.datetime(2026, 11, 29, 10, 0, 0, 123000), 'price': None, 'tags': ['new']" \
  '"errorCode":"DataFormatConversion.MalformedData"' 'user_id: expected an integer (bigint), got \"nine\"'
rm -rf spillway-data .venv

echo "== README: local stack command (Docker is not here: the compose file is checked by tests/stack.py)"
[ "$(example stack)" = "docker compose -f deploy/docker-compose.yml up --build" ] \
  || { echo "the README's stack command changed; update this check and tests/stack.py"; exit 1; }

echo "== README: secure stack (the certificates and secrets are made here; compose is checked by tests/stack.py)"
[ "$(example stack-secure | tail -1)" = "docker compose -f deploy/docker-compose.yml -f deploy/docker-compose.secure.yml up --build" ] \
  || { echo "the README's secure stack command changed; update this check and tests/stack.py"; exit 1; }
make_certs=$(example stack-secure | head -1)
[ "$make_certs" = "bash deploy/secure/make-certs.sh" ] || { echo "unexpected: $make_certs"; exit 1; }
$make_certs
for f in ca.crt tls.crt tls.key producer.secret operator.secret; do
  [ -s "deploy/secure/$f" ] || { echo "make-certs.sh did not write deploy/secure/$f"; exit 1; }
done
openssl verify -CAfile deploy/secure/ca.crt deploy/secure/tls.crt
[ -z "$(git status --porcelain deploy/secure 2>/dev/null)" ] || { echo "deploy/secure's files are not ignored"; exit 1; }
rm -f deploy/secure/{ca.crt,ca.key,tls.crt,tls.key,producer.secret,operator.secret}

echo "== README: benchmark command (load generator against a fresh daemon)"
# As written, except for a shorter run: 15 s at full speed writes about 3 GiB, which a CI
# machine's disk may not have to spare. BENCH_SECONDS=15 runs it exactly as in the README.
bench=$(example bench | sed "s/--duration 15/--duration ${BENCH_SECONDS:-3}/")
echo "disk before the benchmark: $(df -h --output=avail /tmp | tail -1)"
run_example bench "$bench" || {
  tail -40 "$work/bench.out"; echo "--- daemon log"; tail -40 /tmp/spillway-bench.log
  echo "the benchmark command failed"; exit 1
}
bench_out=$(cat "$work/bench.out")
echo "$bench_out" | tail -14
echo "$bench_out" | grep -q "payload MiB/s" || { echo "no benchmark result"; exit 1; }
echo "$bench_out" | grep -Eq "delivered after +[0-9.]+ s" || { echo "not everything was delivered"; exit 1; }
rm -rf /tmp/spillway-bench
echo "README examples: 9 passed, 0 failed"
