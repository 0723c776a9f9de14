#!/usr/bin/env bash
# Runs a set of chaos runs one after another and prints one Markdown table
# row per run (the columns of CHAOS.md's results table), keeping every
# run's report, timeline, history and log.
#
#   bash chaos/matrix.sh SET [OUT_DIR]
#
# SET: small  3 nodes, 120 s, 6 and 8 clients, each seed
#      large  5 nodes, 300 s, 6 and 8 clients, each seed (needs the mesh)
#      long   5 nodes, 30 min, 8 clients, first seed
#      stale  --sabotage stale-reads at every size: 3 nodes 120 s and
#             5 nodes 300 s (6 and 8 clients), and the long run's settings
#             for 2 min; each must be caught (linearizable false)
# SEEDS="1 2 3" by default. ROUSE_TEST_CONTAINERD and ROUSE_TEST_REGISTRY
# (deploy/test-env.sh) add the mesh workload; `large` and `long` refuse to
# run without them. Runs go under `nice -n 10`.
set -uo pipefail

SET=${1:?usage: bash chaos/matrix.sh small|large|long|stale [OUT_DIR]}
OUT=${2:-chaos-$SET-$(date +%Y%m%d-%H%M%S)}
SEEDS=${SEEDS:-1 2 3}
BIN=${ROUSE_CHAOS:-$(dirname "$0")/../target/debug/rouse-chaos}
[ -x "$BIN" ] || { echo "no rouse-chaos at $BIN (cargo build --bins, or set ROUSE_CHAOS)" >&2; exit 2; }
mkdir -p "$OUT"

need_mesh() {
  if [ -z "${ROUSE_TEST_CONTAINERD:-}" ] || [ -z "${ROUSE_TEST_REGISTRY:-}" ]; then
    echo "the $SET set runs with the mesh workload: eval \"\$(bash deploy/test-env.sh start)\" first" >&2
    exit 2
  fi
}

case "$SET" in
  small|stale) ;;
  large|long) need_mesh ;;
  *) echo "unknown set $SET: small, large, long or stale" >&2; exit 2 ;;
esac

echo "| run | nodes | clients | duration | seed | operations | unknown | faults | registers | check | search memory | harness peak RSS | linearizable | lost | converged | mesh after heal | result |" | tee "$OUT/table.md"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" | tee -a "$OUT/table.md"

# one NAME EXPECT ARGS...: EXPECT is pass (exit 0) or caught (linearizable false).
one() {
  local name=$1 expect=$2
  shift 2
  local started=$SECONDS
  nice -n 10 "$BIN" run "$@" --report "$OUT/$name.json" --history "$OUT/$name.jsonl" \
    >"$OUT/$name.log" 2>&1
  local code=$?
  if [ ! -s "$OUT/$name.json" ]; then
    echo "| $name | no report (exit $code): see $OUT/$name.log |" | tee -a "$OUT/table.md"
    return
  fi
  local lin result
  lin=$(jq -r '.linearizable' "$OUT/$name.json")
  if [ "$expect" = pass ]; then
    result=$([ "$code" = 0 ] && echo PASS || echo FAIL)
  else
    result=$([ "$lin" = false ] && echo caught || echo "NOT CAUGHT")
  fi
  jq -r --arg name "$name" --arg result "$result" --arg wall "$((SECONDS - started))" '
    def mib: . / 1048576 * 10 | round / 10 | tostring + " MiB";
    [ $name, .nodes, .clients, (.duration_s | tostring + " s"), .seed,
      .operations, .unknown, (.faults | length), .check.registers,
      ((.check.time_s * 100 | round / 100 | tostring) + " s"),
      (.check.peak_memory_bytes | mib), ((.process_peak_rss_bytes // 0) | mib),
      (.linearizable | tostring), .lost_acknowledged_writes, .converged,
      (if .mesh then (.mesh.ok_after_heal | tostring) else "-" end), $result ]
    | "| " + (map(tostring) | join(" | ")) + " |"' "$OUT/$name.json" | tee -a "$OUT/table.md"
}

case "$SET" in
  small)
    for seed in $SEEDS; do for c in 6 8; do
      one "n3-c$c-120s-s$seed" pass --nodes 3 --clients "$c" --duration 120s --seed "$seed"
    done; done ;;
  large)
    for seed in $SEEDS; do for c in 6 8; do
      one "n5-c$c-300s-s$seed" pass --nodes 5 --clients "$c" --duration 300s --seed "$seed"
    done; done ;;
  long)
    seed=${SEEDS%% *}
    one "n5-c8-30m-s$seed" pass --nodes 5 --clients 8 --duration 30m --seed "$seed" --progress 30s ;;
  stale)
    seed=${SEEDS%% *}
    for c in 6 8; do
      one "stale-n3-c$c-120s-s$seed" caught --nodes 3 --clients "$c" --duration 120s --seed "$seed" --sabotage stale-reads
      one "stale-n5-c$c-300s-s$seed" caught --nodes 5 --clients "$c" --duration 300s --seed "$seed" --sabotage stale-reads
    done
    one "stale-n5-c8-2m-s$seed" caught --nodes 5 --clients 8 --duration 2m --seed "$seed" --sabotage stale-reads ;;
esac
echo "rows: $OUT/table.md"
