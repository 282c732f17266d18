#!/usr/bin/env bash
# Starts the local cluster with one strategy, runs one turnout-bench scenario
# against it, and stops the cluster.
#
#   deploy/loadtest/run.sh sticky|pubsub|relay|local OUT.json [turnout-bench run options]
#
# e.g. deploy/loadtest/run.sh sticky /tmp/f.json --scenario failover --rooms 1000
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
strategy=${1:?strategy: sticky, pubsub, relay or local}
out=${2:?results file}
shift 2
export RUN_DIR=${RUN_DIR:-$here/run}
export REDIS_PORT=${REDIS_PORT:-6390}
# The bench measures turnout, not the example backend's hooks.
export BACKEND=${BACKEND:-0}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
# REDIS_SHARDS=N (cluster.sh) runs on a Redis Cluster: sample every node.
redis_url=redis://127.0.0.1:$REDIS_PORT
if [ "${REDIS_SHARDS:-0}" -gt 0 ]; then
  redis_url=""
  for k in $(seq 0 $(( REDIS_SHARDS * (1 + ${REDIS_REPLICAS:-0}) - 1 ))); do
    redis_url="${redis_url:+$redis_url,}redis://127.0.0.1:$(( REDIS_PORT + k ))"
  done
fi
(cd "$here" && cargo build --release --quiet --bins)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$here/deploy/cluster.sh" down >/dev/null 2>&1 || true
"$here/deploy/cluster.sh" up --strategy "$strategy" >/dev/null
trap '"$here/deploy/cluster.sh" down >/dev/null' EXIT
"$here/target/release/turnout-bench" run --quiet \
  --gateway "http://127.0.0.1:$GATEWAY_PORT" --run-dir "$RUN_DIR" \
  --redis-url "$redis_url" --out "$out" "$@"
