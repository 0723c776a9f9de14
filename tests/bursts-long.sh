#!/usr/bin/env bash
# The long burst run: the burst matrix five times over (every case of
# concurrency × entry × start × size, each repeated 5 times on one
# cluster), then a 10-minute soak of random bursts and idle gaps against
# two containers (no 5xx, no flap; prints scale-ups, scale-downs, flaps).
#
#   bash tests/bursts-long.sh            # about 16 minutes
#   ROUSE_SOAK_SECS=120 ROUSE_BURST_REPEAT=2 bash tests/bursts-long.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash deploy/test-env.sh start)"
export ROUSE_BURST_REPEAT=${ROUSE_BURST_REPEAT:-5}
export ROUSE_SOAK_SECS=${ROUSE_SOAK_SECS:-600}
cargo build --bins --features rouse-node/sabotage
cargo test -p rouse-e2e --features rouse-node/sabotage --test bursts -- \
  --include-ignored --test-threads=1 --nocapture 2>&1 |
  grep -E '^(test |soak|c[14]-)|codes|panicked|assert|FAILED|test result'
