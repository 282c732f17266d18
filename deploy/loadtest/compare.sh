#!/usr/bin/env bash
# Runs the same workload on the floor, a local, a sticky, a pubsub and a relay
# cluster and writes DIR/floor.json, DIR/local.json, DIR/sticky.json,
# DIR/pubsub.json, DIR/relay.json and DIR/report.html.
# The floor (`turnout-bench floor`) is a bare one-process WebSocket fan-out
# with no Redis and no history: the report gives each strategy's server
# deliveries per CPU-second as a share of it. local is the baseline cluster:
# servers that share nothing, so the report shows what it fails to deliver
# to members on other servers. The example backend is not started
# (BACKEND=0): the runs measure turnout, not the hooks.
#
#   deploy/loadtest/compare.sh [--quick] [--out DIR] [-- turnout-bench run options]
#
# --quick: a small chat workload that finishes the four runs within about 3 minutes.
# STRATEGIES="floor sticky pubsub" (the environment) picks fewer.
# Default: the design's chat workload (1,000 rooms x 10 members x 1 msg/s).
# Options after -- go to `turnout-bench run` (e.g. -- --scenario broadcast --members 2000).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=$here/bench-results
quick=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "compare.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
export RUN_DIR=${RUN_DIR:-$here/run}
export REDIS_PORT=${REDIS_PORT:-6390}
export BACKEND=${BACKEND:-0}
GATEWAY_PORT=${GATEWAY_PORT:-8080}

if [ $quick = 1 ]; then
  workload=(--scenario chat --rooms 200 --members 10 --rate 1 --warmup 3 --duration 15 --drain 2)
else
  workload=(--scenario chat --rooms 1000 --members 10 --rate 1 --warmup 10 --duration 60)
fi

(cd "$here" && cargo build --release --quiet --bins)
bench=$here/target/release/turnout-bench
# Each client costs a file; allow as many as the hard limit permits.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
strategies=${STRATEGIES:-floor local sticky pubsub relay}
for strategy in $strategies; do
  echo "== $strategy"
  if [ "$strategy" = floor ]; then
    # Its own run directory: the run samples every process with a pid file there.
    floor_dir=$(mktemp -d)
    "$bench" floor --listen "127.0.0.1:$GATEWAY_PORT" --pid-file "$floor_dir/floor.pid" 2>/dev/null &
    floor_pid=$!
    for _ in $(seq 100); do "$bench" probe --timeout 1 "http://127.0.0.1:$GATEWAY_PORT/readyz" 2>/dev/null && break; sleep 0.1; done
    "$bench" run "${workload[@]}" "${extra[@]}" --quiet \
      --gateway "http://127.0.0.1:$GATEWAY_PORT" --run-dir "$floor_dir" --out "$out/floor.json"
    kill "$floor_pid"; wait "$floor_pid" 2>/dev/null || true
    rm -rf "$floor_dir"
    continue
  fi
  "$here/deploy/cluster.sh" up --strategy "$strategy" >/dev/null
  "$bench" run "${workload[@]}" "${extra[@]}" --quiet \
    --gateway "http://127.0.0.1:$GATEWAY_PORT" --run-dir "$RUN_DIR" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --out "$out/$strategy.json"
  "$here/deploy/cluster.sh" down >/dev/null
done
results=()
for strategy in $strategies; do results+=("$out/$strategy.json"); done
"$bench" report --svg --out "$out/report.html" "${results[@]}"
echo "report: $out/report.html"
