#!/usr/bin/env bash
# Runs a local 3-node rouse cluster on loopback with its own containerd and
# registry, and deploys a demo container. Ctrl-C stops the cluster (and the
# demo's instances); its data stays in .rouse-local/ (delete it to start
# afresh).
#
#   node 1: API 127.0.0.1:7071  mesh 127.0.0.1:8081  hops :9091  metrics :9191  instances 10.88.1.0/24 (bootstraps)
#   node 2: API 127.0.0.1:7072  mesh 127.0.0.1:8082  hops :9092  metrics :9192  instances 10.88.2.0/24
#   node 3: API 127.0.0.1:7073  mesh 127.0.0.1:8083  hops :9093  metrics :9193  instances 10.88.3.0/24
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE="$ROOT/.rouse-local"

bash deploy/install-deps.sh
export CARGO_TERM_COLOR=never
cargo build --bins
BIN="$ROOT/target/debug"
mkdir -p "$STATE"

# containerd and an OCI registry of the cluster's own.
export ROUSE_TEST_BASE="$STATE/env" ROUSE_TEST_REGISTRY=127.0.0.1:5056
eval "$(bash deploy/test-env.sh start)"
SOCK=$ROUSE_TEST_CONTAINERD REG=$ROUSE_TEST_REGISTRY
if ! curl -fsS "http://$REG/v2/rouse/hello/tags/list" 2>/dev/null | grep -q latest; then
  echo "building the demo image" >&2
  bash deploy/images/build-hello.sh push "$REG" rouse/hello:latest
fi

pids=()
stopped=0
stop() {
  [ "$stopped" = 1 ] && return
  stopped=1
  echo "stopping rouse nodes" >&2
  "$BIN/rouse" --endpoint http://127.0.0.1:7071 container delete demo/hello >/dev/null 2>&1 || true
  sleep 3
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Instances outlive rouse-node by design; this demo removes them.
  for t in $(ctr --address "$SOCK" -n rouse-local tasks ls -q 2>/dev/null); do
    ctr --address "$SOCK" -n rouse-local tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for t in $(ctr --address "$SOCK" -n rouse-local tasks ls -q 2>/dev/null); do
    ctr --address "$SOCK" -n rouse-local tasks rm -f "$t" >/dev/null 2>&1 || true
  done
  for c in $(ctr --address "$SOCK" -n rouse-local containers ls -q 2>/dev/null); do
    ctr --address "$SOCK" -n rouse-local containers rm "$c" >/dev/null 2>&1 || true
  done
  # Each node's instance bridge and firewall chains.
  for id in 1 2 3; do
    "$BIN/rouse-node" --id "$id" --data-dir "$STATE/node$id" --remove-instance-network 2>/dev/null || true
  done
  bash deploy/test-env.sh stop
}
trap stop EXIT INT TERM

export ROUSE_ENDPOINT=http://127.0.0.1:7071
for id in 1 2 3; do
  # Each node keeps its master key and cluster certificate in its data dir;
  # node 1 creates the cluster CA, the others join with a one-time token.
  flags=(--id "$id" --data-dir "$STATE/node$id" --listen "127.0.0.1:707$id" --http "127.0.0.1:808$id"
         --hop "127.0.0.1:909$id" --metrics "127.0.0.1:919$id" --zone "zone-$id" --containerd "$SOCK" --containerd-namespace rouse-local
         --insecure-registry "$REG")
  if [ ! -d "$STATE/node$id" ]; then
    if [ "$id" = 1 ]; then
      flags+=(--bootstrap)
    elif [ "$id" = 2 ]; then
      flags+=(--join 127.0.0.1:7071 --join-token "$(cat "$STATE/node1/join-token")")
    else
      flags+=(--join 127.0.0.1:7071 --join-token "$("$BIN/rouse" cluster join-token | tail -1)")
    fi
  fi
  "$BIN/rouse-node" "${flags[@]}" 2>>"$STATE/node$id.log" &
  pids+=($!)
  if [ "$id" = 1 ]; then
    for _ in $(seq 1 150); do
      [ -s "$STATE/node1/admin-token" ] && [ -s "$STATE/node1/join-token" ] && break
      sleep 0.1
    done
    export ROUSE_TOKEN=$(cat "$STATE/node1/admin-token")
  fi
done

for _ in $(seq 1 100); do
  if [ "$("$BIN/rouse" cluster status -o json 2>/dev/null | grep -c '"healthy": true')" = 3 ]; then break; fi
  sleep 0.2
done
"$BIN/rouse" cluster status
"$BIN/rouse" namespace get demo >/dev/null 2>&1 || "$BIN/rouse" namespace create demo --env GREETING=hello >/dev/null
"$BIN/rouse" --endpoint http://127.0.0.1:7072 container deploy demo/hello \
  --image "$REG/rouse/hello:latest" --min-scale 1 --max-scale 3 --cpu 250 --memory 64 >/dev/null
port=""
for _ in $(seq 1 150); do
  port=$("$BIN/rouse" container get demo/hello -o json | python3 -c '
import json, sys
c = json.load(sys.stdin)
print(next((str(i["port"]) for i in c["instances"] if i["state"] == "ready"), ""))')
  [ -n "$port" ] && break
  sleep 0.2
done
"$BIN/rouse" --endpoint http://127.0.0.1:7073 container get demo/hello
echo
echo "through the mesh of each node:"
for id in 1 2 3; do
  echo "  curl -H 'Host: hello.demo.rouse.localhost' http://127.0.0.1:808$id/  →  $(curl -fsS -m 30 -H 'Host: hello.demo.rouse.localhost' "http://127.0.0.1:808$id/")"
done

cat <<MSG

rouse is running (logs in $STATE/node*.log). Try:
  export ROUSE_ENDPOINT=http://127.0.0.1:7072 ROUSE_TOKEN=\$(cat $STATE/node1/admin-token)
  $BIN/rouse cluster status
  $BIN/rouse container get demo/hello -o yaml
  $BIN/rouse container logs demo/hello -f
  curl -H 'Host: hello.demo.rouse.localhost' http://127.0.0.1:8082/
Press Ctrl-C to stop.
MSG
wait
