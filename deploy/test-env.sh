#!/usr/bin/env bash
# Starts the real parts the tests need, privately: a containerd daemon with
# its own root, state and socket, and a CNCF distribution registry on
# loopback. Prints `export` lines for the tests; `stop` ends both.
#
#   eval "$(bash deploy/test-env.sh start)"   # sets ROUSE_TEST_* variables
#   bash deploy/test-env.sh stop
set -euo pipefail

BASE=${ROUSE_TEST_BASE:-/tmp/rouse-test-env}
REGISTRY_ADDR=${ROUSE_TEST_REGISTRY:-127.0.0.1:5055}
# A second registry that demands basic auth (user rouse, password rouse-pass).
AUTH_REGISTRY_ADDR=${ROUSE_TEST_AUTH_REGISTRY:-127.0.0.1:5057}
# nats-server -js, for NATS triggers.
NATS_ADDR=127.0.0.1:4225
nats_up() { (exec 3<>"/dev/tcp/${NATS_ADDR%%:*}/${NATS_ADDR##*:}") 2>/dev/null; }
SOCK="$BASE/containerd/containerd.sock"

start() {
  mkdir -p "$BASE/containerd/root" "$BASE/containerd/state" "$BASE/registry"
  if ! ctr --address "$SOCK" version >/dev/null 2>&1; then
    cat > "$BASE/containerd/config.toml" <<TOML
version = 2
root = "$BASE/containerd/root"
state = "$BASE/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
    containerd --config "$BASE/containerd/config.toml" >"$BASE/containerd/log" 2>&1 &
    echo $! > "$BASE/containerd/pid"
    for _ in $(seq 1 100); do
      ctr --address "$SOCK" version >/dev/null 2>&1 && break
      sleep 0.1
    done
    ctr --address "$SOCK" version >/dev/null || { echo "containerd did not start; see $BASE/containerd/log" >&2; exit 1; }
  fi
  if ! curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
    cat > "$BASE/registry/config.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $BASE/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YML
    docker-registry serve "$BASE/registry/config.yml" >"$BASE/registry/log" 2>&1 &
    echo $! > "$BASE/registry/pid"
    for _ in $(seq 1 100); do
      curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null || { echo "registry did not start; see $BASE/registry/log" >&2; exit 1; }
  fi
  if ! curl -sS -o /dev/null "http://$AUTH_REGISTRY_ADDR/v2/" 2>/dev/null; then
    mkdir -p "$BASE/auth-registry"
    htpasswd -Bbn rouse rouse-pass > "$BASE/auth-registry/htpasswd"
    cat > "$BASE/auth-registry/config.yml" <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $BASE/auth-registry/data
http:
  addr: $AUTH_REGISTRY_ADDR
auth:
  htpasswd:
    realm: rouse-test
    path: $BASE/auth-registry/htpasswd
YML
    docker-registry serve "$BASE/auth-registry/config.yml" >"$BASE/auth-registry/log" 2>&1 &
    echo $! > "$BASE/auth-registry/pid"
    for _ in $(seq 1 100); do
      curl -sS -o /dev/null "http://$AUTH_REGISTRY_ADDR/v2/" 2>/dev/null && break
      sleep 0.1
    done
  fi
  # NATS with JetStream, for NATS triggers.
  if ! nats_up; then
    mkdir -p "$BASE/nats"
    nats-server -js -a 127.0.0.1 -p "${NATS_ADDR##*:}" -sd "$BASE/nats/store" >"$BASE/nats/log" 2>&1 &
    echo $! > "$BASE/nats/pid"
    for _ in $(seq 1 100); do nats_up && break; sleep 0.1; done
    nats_up || { echo "nats-server did not start; see $BASE/nats/log" >&2; exit 1; }
  fi
  echo "export ROUSE_TEST_NATS=nats://$NATS_ADDR"
  echo "export ROUSE_TEST_CONTAINERD=$SOCK"
  echo "export ROUSE_TEST_REGISTRY=$REGISTRY_ADDR"
  echo "export ROUSE_TEST_AUTH_REGISTRY=$AUTH_REGISTRY_ADDR"
}

stop() {
  for p in "$BASE/registry/pid" "$BASE/auth-registry/pid" "$BASE/containerd/pid" "$BASE/nats/pid"; do
    if [ -f "$p" ]; then kill "$(cat "$p")" 2>/dev/null || true; rm -f "$p"; fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
