#!/usr/bin/env bash
# Runs every rouse test: unit tests, openraft's storage conformance suite
# and end-to-end tests on real rouse-node processes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
export CARGO_TERM_COLOR=never
# End-to-end tests run the binaries from the same target dir.
cargo build --bins
rc=0
cargo test --no-fail-fast -p rouse-proto -p rouse-node -p rouse-client -p rouse-chaos -- --test-threads=2 "$@" || rc=$?
# End-to-end tests print what they measure (failover time, ...).
cargo test --no-fail-fast -p rouse-e2e -- --test-threads=2 --nocapture "$@" || rc=$?
exit $rc
