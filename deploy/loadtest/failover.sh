#!/usr/bin/env bash
# Failover under chat load, both strategies: SIGKILL the busiest ws-node
# partway through and measure time to recovery and loss.
#
#   deploy/loadtest/failover.sh [OUT_DIR] [extra turnout-bench options]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/bench-results}
shift || true
mkdir -p "$out"
for s in sticky pubsub; do
  "$here/deploy/loadtest/run.sh" "$s" "$out/failover-$s.json" \
    --scenario failover --rooms 100 --members 10 --rate 1 --warmup 3 --duration 20 --kill-after 5 "$@"
done
"$here/target/release/turnout-bench" report --svg --out "$out/failover.html" "$out/failover-sticky.json" "$out/failover-pubsub.json"
