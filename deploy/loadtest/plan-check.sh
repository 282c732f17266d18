#!/usr/bin/env bash
# The capacity planner against fresh measurements: runs workloads the sweep
# did not measure (3 nodes, rooms of 5, 50 and 300, other rates) on the local
# cluster as deploy/loadtest/sweep.sh runs its points, then sets each beside
# what `turnout-bench plan` predicts for it from a sweep:
#
#   deploy/loadtest/plan-check.sh [--sweep FILE] [--out DIR]
#
#   DIR/runs/*.json   one turnout-bench result per workload (emptied first)
#   DIR/check.json    per run: the workload, measured, predicted, error
#   DIR/check.txt     the same as a table
#
# --sweep: the model to check (default docs/bench/sweep/sweep.json).
# Environment: STRATEGIES (default "sticky pubsub relay"), DURATION (20 s a
# run; 9 runs take about 6 minutes here), WORKLOADS to replace the list
# (lines of "NODES ROOM_SIZE ROOMS PUBLISHERS RATE"); the ports of
# deploy/cluster.sh (REDIS_PORT, GATEWAY_PORT, NODE_PORT_BASE, RUN_DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
sweep=$here/docs/bench/sweep/sweep.json
out=$here/plan-check
while [ $# -gt 0 ]; do
  case $1 in
    --sweep) sweep=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "plan-check.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[ -f "$sweep" ] || { echo "plan-check.sh: no sweep at $sweep" >&2; exit 2; }
strategies=${STRATEGIES:-sticky pubsub relay}
DURATION=${DURATION:-20}
# Off the sweep's grid (nodes 1, 2, 4; rooms of 2, 10, 100, 1,000;
# 10,000 and 40,000 deliveries/s offered): 3 nodes, rooms of 50 at 18,000
# deliveries/s; rooms of 300 at 15,000; rooms of 5 at 15,000.
WORKLOADS=${WORKLOADS:-"3 50 60 10 0.6
2 300 5 10 1.0
4 5 400 5 1.5"}
mkdir -p "$out/runs"
out=$(cd "$out" && pwd)
rm -f "$out"/runs/*.json
export RUN_DIR=${RUN_DIR:-$here/run}
export REDIS_PORT=${REDIS_PORT:-6390}
export BACKEND=${BACKEND:-0}
GATEWAY_PORT=${GATEWAY_PORT:-8080}

(cd "$here" && cargo build --release --quiet --bins)
bench=$here/target/release/turnout-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
trap '"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true' EXIT

while read -r nodes size rooms publishers rate; do
  [ -n "$nodes" ] || continue
  for strategy in $strategies; do
    echo "$strategy, $nodes nodes, $rooms rooms of $size, $publishers publishers x $rate msg/s"
    "$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
    "$here/deploy/cluster.sh" up --strategy "$strategy" --nodes "$nodes" >/dev/null
    "$bench" run --scenario chat --rooms "$rooms" --members "$size" --publishers "$publishers" \
      --rate "$rate" --warmup 3 --duration "$DURATION" --drain 2 \
      --gateway "http://127.0.0.1:$GATEWAY_PORT" --run-dir "$RUN_DIR" \
      --redis-url "redis://127.0.0.1:$REDIS_PORT" \
      --out "$out/runs/$strategy-n$nodes-m$size-r$rooms.json" >/dev/null
  done
done <<<"$WORKLOADS"
"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
"$bench" plan --sweep "$sweep" --json --against "$out"/runs/*.json >"$out/check.json"
"$bench" plan --sweep "$sweep" --against "$out"/runs/*.json | tee "$out/check.txt"
