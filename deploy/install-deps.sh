#!/usr/bin/env bash
# Installs what building and running rouse needs on a Debian machine:
# protoc for the API, and the parts later tests use (containerd, runc, the
# CNI plugins, an OCI registry and image tools, etcd for the control-plane
# benchmark, nats-server for NATS triggers).
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have protoc || need+=(protobuf-compiler)
# The well-known .proto files, which the benchmark's etcd client compiles.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
have containerd || need+=(containerd)
have runc || need+=(runc)
have docker-registry || need+=(docker-registry)
have skopeo || need+=(skopeo)
have umoci || need+=(umoci)
# The test images need the static busybox (a dynamic one cannot run in them).
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
have etcd || need+=(etcd-server)
have etcdctl || need+=(etcd-client)
have iptables || need+=(iptables)
# Instance networks: the standard CNI plugins (bridge, host-local).
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
have ip || need+=(iproute2)
have bc || need+=(bc)
have curl || need+=(curl)
have htpasswd || need+=(apache2-utils)
have tar || need+=(tar)
# Triggers: NATS JetStream subjects (tests and the benchmark run their own).
have nats-server || need+=(nats-server)
# Observability: the metrics test scrapes a node with a real Prometheus.
have prometheus || need+=(prometheus)
# rouse apply builds images from Dockerfiles (daemonless).
have buildah || need+=(buildah)
# The Python SDK: pip builds it, generating its gRPC stubs with grpc_tools.
python3 -c 'import grpc, grpc_tools' 2>/dev/null || need+=(python3-grpcio python3-grpc-tools)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)

if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! python3 -c "import grpc, grpc_tools" 2>/dev/null; then
  echo "installing grpcio-tools (Python client test)" >&2
  python3 -m pip install --quiet grpcio grpcio-tools 2>&1 | grep -v "Running pip as the .root. user" || true
fi

if ! have cargo; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
