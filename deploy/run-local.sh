#!/usr/bin/env bash
# Runs a local 3-node rouse cluster on loopback and deploys a demo
# namespace and container spec. Ctrl-C stops the cluster; its data stays
# in .rouse-local/ (delete it to start afresh).
#
#   node 1: API 127.0.0.1:7071  mesh 127.0.0.1:8081  (bootstraps)
#   node 2: API 127.0.0.1:7072  mesh 127.0.0.1:8082
#   node 3: API 127.0.0.1:7073  mesh 127.0.0.1:8083
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/.rouse-local"

bash deploy/install-deps.sh
export CARGO_TERM_COLOR=never
cargo build --bins
BIN="$ROOT/target/debug"
mkdir -p "$STATE"

pids=()
stop() {
  echo "stopping rouse nodes" >&2
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

for id in 1 2 3; do
  flags=(--id "$id" --data-dir "$STATE/node$id" --listen "127.0.0.1:707$id" --http "127.0.0.1:808$id" --zone "zone-$id")
  if [ ! -d "$STATE/node$id" ]; then
    if [ "$id" = 1 ]; then flags+=(--bootstrap); else flags+=(--join 127.0.0.1:7071); fi
  fi
  "$BIN/rouse-node" "${flags[@]}" 2>>"$STATE/node$id.log" &
  pids+=($!)
  if [ "$id" = 1 ]; then sleep 1; fi
done

export ROUSE_ENDPOINT=http://127.0.0.1:7071
for _ in $(seq 1 100); do
  if "$BIN/rouse" cluster status -o json 2>/dev/null | grep -q '"healthy": true' \
     && [ "$("$BIN/rouse" cluster status -o json | grep -c '"role": "voter"')" = 3 ]; then break; fi
  sleep 0.2
done
"$BIN/rouse" cluster status
"$BIN/rouse" namespace get demo >/dev/null 2>&1 || "$BIN/rouse" namespace create demo --env GREETING=hello >/dev/null
"$BIN/rouse" --endpoint http://127.0.0.1:7072 container deploy demo/hello \
  --image 127.0.0.1:5000/rouse/hello:latest --port 8080 --min-scale 1 --max-scale 3 >/dev/null
"$BIN/rouse" --endpoint http://127.0.0.1:7073 container list

cat <<MSG

rouse is running (logs in $STATE/node*.log). Try:
  export ROUSE_ENDPOINT=http://127.0.0.1:7072
  $BIN/rouse cluster status
  $BIN/rouse container get demo/hello -o yaml
Press Ctrl-C to stop.
MSG
wait
