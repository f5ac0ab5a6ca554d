#!/usr/bin/env bash
# Sends mobile-game events to spillway with the AWS CLI (v1 or v2): batches of BATCH records,
# one batch every PAUSE seconds, BATCHES times (0 = until stopped). Each record is one JSON
# line: {"user_id", "age", "location", "play_time_s", "premium", "ts"}.
#
#   SPILLWAY_ENDPOINT=http://localhost:4573 STREAM=game-events bash deploy/producer/produce.sh
#
# Against a daemon with TLS and keys: SPILLWAY_ENDPOINT=https://..., AWS_CA_BUNDLE=ca.crt,
# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_SECRET_ACCESS_KEY_FILE).
set -euo pipefail
endpoint=${SPILLWAY_ENDPOINT:-http://localhost:4573}
stream=${STREAM:-game-events}
batch=${BATCH:-50}
pause=${PAUSE:-1}
batches=${BATCHES:-0}
# With [[auth.keys]] on, the secret may come from a file (a compose or Kubernetes secret).
if [ -n "${AWS_SECRET_ACCESS_KEY_FILE:-}" ]; then
  AWS_SECRET_ACCESS_KEY=$(cat "$AWS_SECRET_ACCESS_KEY_FILE")
fi
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-local}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}

# CLI v2 reads blobs as base64 unless told otherwise; v1 takes them raw and has no such flag.
binary_format=()
if aws --version 2>&1 | grep -q '^aws-cli/2'; then
  binary_format=(--cli-binary-format raw-in-base64-out)
fi

locations=(KR BR DE US JP FR IN MX GB ID)
file=$(mktemp)
trap 'rm -f "$file"' EXIT
# As a container's PID 1, bash ignores SIGTERM unless told otherwise.
trap 'exit 0' TERM INT
sent=0 failed=0 n=0
while [ "$batches" -eq 0 ] || [ "$n" -lt "$batches" ]; do
  {
    printf '['
    for i in $(seq 1 "$batch"); do
      [ "$i" -gt 1 ] && printf ','
      premium=false; [ $((RANDOM % 4)) -eq 0 ] && premium=true
      printf '{"Data": "{\\"user_id\\": %d, \\"age\\": %d, \\"location\\": \\"%s\\", \\"play_time_s\\": %d, \\"premium\\": %s, \\"ts\\": %d}\\n"}' \
        $((RANDOM * 32768 + RANDOM)) $((13 + RANDOM % 60)) "${locations[RANDOM % ${#locations[@]}]}" \
        $((RANDOM % 20000)) "$premium" "$(date +%s)"
    done
    printf ']'
  } >"$file"
  out=$(aws --endpoint-url "$endpoint" firehose put-record-batch "${binary_format[@]}" \
    --delivery-stream-name "$stream" --records "file://$file" --output json) || {
    echo "put-record-batch failed; retrying in 5 s" >&2; sleep 5; continue
  }
  f=$(echo "$out" | grep -o '"FailedPutCount": *[0-9]*' | grep -o '[0-9]*$')
  sent=$((sent + batch - f)) failed=$((failed + f)) n=$((n + 1))
  echo "batch $n: $((batch - f)) accepted, $f failed (total accepted $sent)"
  sleep "$pause"
done
echo "accepted $sent records, $failed failed"
