#!/usr/bin/env bash
# Runs every rouse test: unit tests, openraft's storage conformance suite
# and end-to-end tests on real rouse-node processes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
export CARGO_TERM_COLOR=never
# End-to-end tests run the binaries from the same target dir.
cargo build --bins
cargo test --no-fail-fast -- --test-threads=2 "$@"
