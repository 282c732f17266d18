#!/usr/bin/env bash
# Chaos runs, each strategy (STRATEGIES, default "sticky pubsub relay"),
# under chat load with publishers on every node.
# Every client must end with every seq exactly once.
#
#   deploy/loadtest/chaos.sh [OUT_DIR] [extra turnout-bench options]
#
# - crash:     one ws-node SIGKILLed, then Redis SIGKILLed and restarted
#              (with its append-only file);
# - stall:     node-2 SIGSTOPped for 5 s (a long pause) and resumed;
# - partition: node-2 cut off from Redis for 6 s (its clients stay
#              connected), then healed.
# The report shows, per run: lost, each member's longest silence, and for
# every fault how many members were told to move and how soon.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/bench-results}
shift || true
mkdir -p "$out"
cluster=$here/deploy/cluster.sh
load=(--scenario chat --rooms 100 --members 10 --rate 2 --warmup 3 --duration 25)
runs=()
for s in ${STRATEGIES:-sticky pubsub relay}; do
  rm -rf "${RUN_DIR:-$here/run}/appendonlydir"
  REDIS_PERSIST=1 "$here/deploy/loadtest/run.sh" "$s" "$out/chaos-$s.json" \
    --scenario failover --rooms 100 --members 10 --rate 2 --warmup 3 --duration 25 --kill-after 5 \
    --chaos "12=$cluster restart-redis" "$@"
  "$here/deploy/loadtest/run.sh" "$s" "$out/stall-$s.json" "${load[@]}" \
    --chaos "8=$cluster pause node-2" --chaos "13=$cluster resume node-2" "$@"
  CUTTABLE=1 "$here/deploy/loadtest/run.sh" "$s" "$out/partition-$s.json" "${load[@]}" \
    --chaos "8=$cluster cut node-2" --chaos "14=$cluster heal node-2" "$@"
  runs+=("$out/chaos-$s.json" "$out/stall-$s.json" "$out/partition-$s.json")
done
"$here/target/release/turnout-bench" report --out "$out/chaos.html" "${runs[@]}"
