#!/usr/bin/env bash
# Chaos run, both strategies: chat load with publishers on every node, one
# ws-node SIGKILLed and Redis SIGKILLed and restarted (with its append-only
# file) during the run. Every client must end with every seq exactly once.
#
#   deploy/loadtest/chaos.sh [OUT_DIR] [extra turnout-bench options]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/bench-results}
shift || true
mkdir -p "$out"
export REDIS_PERSIST=1
for s in sticky pubsub; do
  rm -rf "${RUN_DIR:-$here/run}/appendonlydir"
  "$here/deploy/loadtest/run.sh" "$s" "$out/chaos-$s.json" \
    --scenario failover --rooms 100 --members 10 --rate 2 --warmup 3 --duration 25 --kill-after 5 \
    --chaos "12=$here/deploy/cluster.sh restart-redis" "$@"
done
"$here/target/release/turnout-bench" report --out "$out/chaos.html" "$out/chaos-sticky.json" "$out/chaos-pubsub.json"
