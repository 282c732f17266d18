#!/usr/bin/env bash
# The strategy map: runs local, sticky, pubsub and relay over a grid of workloads
# (room size, rooms, publish rate, nodes, membership churn, one hot room) on
# the local cluster, then fits per-operation costs to the runs, predicts
# larger clusters and writes the verdict:
#
#   deploy/loadtest/sweep.sh [--quick] [--out DIR]
#
#   DIR/runs/*.json   one turnout-bench result per grid point (emptied first)
#   DIR/sweep.json    points, model (costs, held-out error, predictions), verdict
#   DIR/report.html   crossover charts, predicted cost curves with the measured
#                     points on them, the verdict table
#
# --quick: 4 strategies x nodes {1,3} x room sizes {2,50} at 10,000
#   deliveries/s, one run at 30,000 (3 nodes, rooms of 50), and 200 joins/s
#   of churn at 3 nodes: 24 runs of 6 s (about 6 minutes here after the
#   release build). A check that the tooling works: too few points per
#   strategy for the model, which the report says.
# Default (full): 4 strategies x nodes {1,2,4} x room sizes {2,10,100,1000}
#   x two loads (10,000 and 40,000 deliveries/s offered), plus membership
#   churn (100 and 400 joins/s) at 2 and 4 nodes and a crowd of 4,000
#   connections at the same 10,000 deliveries/s, and an idle run (15,000
#   connections in rooms of 10, nothing sent) on the most nodes: 128 runs of
#   10 s (about 38 minutes here). The room of 1,000 is the hot room: one
#   room, ten publishers.
# Environment: STRATEGIES (default "local sticky pubsub relay"), NODE_COUNTS,
# ROOM_SIZES, LOADS, CHURN, CROWD, IDLE, DURATION to change the grid; the ports of
# deploy/cluster.sh (REDIS_PORT, GATEWAY_PORT, NODE_PORT_BASE, RUN_DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=$here/sweep-results
grid=full
while [ $# -gt 0 ]; do
  case $1 in
    --quick) grid=quick; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "sweep.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
if [ $grid = quick ]; then
  NODE_COUNTS=${NODE_COUNTS:-"1 3"}
  ROOM_SIZES=${ROOM_SIZES:-"2 50"}
  LOADS=${LOADS:-"10000"}
  CHURN=${CHURN:-"200"}
  CROWD=${CROWD-}
  IDLE=${IDLE-}
  EXTRA_LOAD=${EXTRA_LOAD:-30000}
  DURATION=${DURATION:-6}
  warmup=2
  drain=1
else
  NODE_COUNTS=${NODE_COUNTS:-"1 2 4"}
  ROOM_SIZES=${ROOM_SIZES:-"2 10 100 1000"}
  LOADS=${LOADS:-"10000 40000"}
  CHURN=${CHURN:-"100 400"}
  CROWD=${CROWD-4000}
  IDLE=${IDLE-15000}
  EXTRA_LOAD=${EXTRA_LOAD:-}
  DURATION=${DURATION:-10}
  warmup=3
  drain=2
fi
strategies=${STRATEGIES:-local sticky pubsub relay}
mkdir -p "$out/runs"
out=$(cd "$out" && pwd)
rm -f "$out"/runs/*.json
export RUN_DIR=${RUN_DIR:-$here/run}
export REDIS_PORT=${REDIS_PORT:-6390}
# The bench measures turnout, not the example backend's hooks.
export BACKEND=${BACKEND:-0}
GATEWAY_PORT=${GATEWAY_PORT:-8080}

# The workload of one point: about CONNS connections, the offered
# deliveries per second fixed by LOAD whatever the room size.
#   point SIZE LOAD CONNS -> "ROOMS PUBLISHERS RATE"
point() {
  local size=$1 load=$2 conns=$3 rooms publishers
  rooms=$(( conns / size )); [ "$rooms" -lt 1 ] && rooms=1
  publishers=$(( size < 10 ? size : 10 ))
  echo "$rooms $publishers $(awk -v d="$load" -v r="$rooms" -v p="$publishers" -v m="$size" \
    'BEGIN { printf "%.3f", d / (r * p * m) }')"
}

# Every run of the grid, as "STRATEGY NODES SIZE LOAD CHURN CONNS". Beside
# the grid proper: churn runs (rooms of 10); a crowd run (4,000 connections,
# the same deliveries/s) so the cost of a held connection can be told apart;
# with EXTRA_LOAD, one run at that load on the most nodes and the largest
# rooms, so the cost of a delivery can be told from the fixed costs; with
# IDLE, that many connections held with nothing sent (load 0), so what
# holding a connection costs is measured, not left to the fit to split
# from the costs of messages.
max_nodes=0; for n in $NODE_COUNTS; do [ "$n" -gt "$max_nodes" ] && max_nodes=$n; done
last_size=0; for m in $ROOM_SIZES; do last_size=$m; done
plan=()
for strategy in $strategies; do
  for nodes in $NODE_COUNTS; do
    for size in $ROOM_SIZES; do
      for load in $LOADS; do plan+=("$strategy $nodes $size $load 0 1000"); done
    done
    if [ "$nodes" -gt 1 ]; then
      for churn in $CHURN; do plan+=("$strategy $nodes 10 10000 $churn 1000"); done
    fi
    [ -n "$CROWD" ] && plan+=("$strategy $nodes 10 10000 0 $CROWD")
    if [ -n "$EXTRA_LOAD" ] && [ "$nodes" = "$max_nodes" ]; then
      plan+=("$strategy $nodes $last_size $EXTRA_LOAD 0 1000")
    fi
    if [ -n "$IDLE" ] && [ "$nodes" = "$max_nodes" ]; then
      plan+=("$strategy $nodes 10 0 0 $IDLE")
    fi
  done
done
total=${#plan[@]}
[ "$total" -gt 0 ] || { echo "sweep.sh: the grid is empty (STRATEGIES, NODE_COUNTS, ROOM_SIZES, LOADS)" >&2; exit 2; }

(cd "$here" && cargo build --release --quiet --bins)
bench=$here/target/release/turnout-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
trap '"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true' EXIT

fmt() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }
started=$(date +%s)
# Before the first run, a run is guessed at its measured time plus ramp,
# warm-up, drain and the cluster's start; then the mean so far is used.
guess=$(( DURATION + warmup + drain + 6 ))
done_runs=0
up=""
for entry in "${plan[@]}"; do
  read -r strategy nodes size load churn conns <<<"$entry"
  if [ "$up" != "$strategy $nodes" ]; then
    "$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
    "$here/deploy/cluster.sh" up --strategy "$strategy" --nodes "$nodes" >/dev/null
    up="$strategy $nodes"
  fi
  read -r rooms publishers rate <<<"$(point "$size" "$load" "$conns")"
  now=$(date +%s)
  elapsed=$(( now - started ))
  per=$guess
  [ $done_runs -gt 0 ] && per=$(( elapsed / done_runs ))
  left=$(( per * (total - done_runs) ))
  width=30 filled=$(( 30 * done_runs / total ))
  bar=$(printf '%*s' "$filled" '' | tr ' ' '#')$(printf '%*s' $(( width - filled )) '' | tr ' ' '.')
  what="rooms of $size ($rooms rooms, $rate msg/s x $publishers publishers)"
  [ "$load" = 0 ] && what="idle ($conns connections, nothing sent)"
  printf '[%s] %d/%d  %s, %d nodes, %s%s  elapsed %s, about %s left\n' \
    "$bar" $(( done_runs + 1 )) "$total" "$strategy" "$nodes" "$what" \
    "$( [ "$churn" != 0 ] && echo ", $churn joins/s")" "$(fmt $elapsed)" "$(fmt $left)"
  file=$out/runs/$strategy-n$nodes-m$size-d$load-c$churn-k$conns.json
  if [ "$load" = 0 ]; then
    workload=(--scenario idle --connections "$conns" --ramp 3000 --duration "$DURATION")
  else
    workload=(--scenario chat --rooms "$rooms" --members "$size" --publishers "$publishers"
      --rate "$rate" --churn "$churn" --warmup $warmup --duration "$DURATION" --drain $drain)
  fi
  "$bench" run "${workload[@]}" \
    --gateway "http://127.0.0.1:$GATEWAY_PORT" --run-dir "$RUN_DIR" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --out "$file" || {
      echo "sweep.sh: the run failed: $entry" >&2
      exit 1
    }
  done_runs=$(( done_runs + 1 ))
done
"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
echo "$total runs in $(fmt $(( $(date +%s) - started )))"
"$bench" map --grid "$grid" --out "$out" "$out"/runs/*.json
