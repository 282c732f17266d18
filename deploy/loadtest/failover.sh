#!/usr/bin/env bash
# Failover under chat load, each strategy that has one: SIGKILL the busiest
# ws-node partway through and measure time to recovery and loss.
#
#   deploy/loadtest/failover.sh [OUT_DIR] [extra turnout-bench options]
#
# STRATEGIES (the environment; default "sticky pubsub relay") picks fewer.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/bench-results}
shift || true
mkdir -p "$out"
results=()
for s in ${STRATEGIES:-sticky pubsub relay}; do
  "$here/deploy/loadtest/run.sh" "$s" "$out/failover-$s.json" \
    --scenario failover --rooms 100 --members 10 --rate 1 --warmup 3 --duration 20 --kill-after 5 "$@"
  results+=("$out/failover-$s.json")
done
"$here/target/release/turnout-bench" report --svg --out "$out/failover.html" "${results[@]}"
