#!/usr/bin/env bash
# Runs every rouse test: unit tests, openraft's storage conformance suite
# and end-to-end tests on real rouse-node processes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
# A private containerd and registry for the runtime tests, stopped on exit
# (instances the tests left are removed by the tests themselves).
eval "$(bash deploy/test-env.sh start)"
trap 'bash deploy/test-env.sh stop' EXIT
export CARGO_TERM_COLOR=never
# End-to-end tests run the binaries from the same target dir. The chaos
# suite's planted bug (stale reads) needs the `sabotage` feature; every
# step uses it so that no step rebuilds the node binary without it.
features=(--features rouse-node/sabotage)
cargo build --bins "${features[@]}"
# The SDK test runs the Rust SDK's example.
cargo build -p rouse-client --examples
rc=0
cargo test "${features[@]}" --no-fail-fast -p rouse-proto -p rouse-node -p rouse-client -p rouse-chaos -p rouse-testkit -- --test-threads=2 "$@" || rc=$?
# End-to-end tests print what they measure (failover time, ...).
cargo test "${features[@]}" --no-fail-fast -p rouse-e2e -- --test-threads=2 --nocapture "$@" || rc=$?
exit $rc
