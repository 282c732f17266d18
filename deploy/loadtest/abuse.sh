#!/usr/bin/env bash
# Hostile load, both strategies: a victim chat measured alone, then again
# while attackers flood joins and publishes, hold thousands of silent
# sockets and hoard room streams (turnout-bench `--scenario abuse`).
#
#   deploy/loadtest/abuse.sh [OUT_DIR] [extra turnout-bench options]
#
# The victims' p99 under attack should stay within 2x of the run without
# attackers, with nothing lost and Redis memory bounded; the script prints
# the ratio and exits non-zero when a run loses a message.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/bench-results}
shift || true
mkdir -p "$out"
load=(--rooms 100 --members 10 --rate 1 --warmup 3 --duration 20)
strategies=${STRATEGIES:-sticky pubsub}
for s in $strategies; do
  "$here/deploy/loadtest/run.sh" "$s" "$out/abuse-baseline-$s.json" --scenario chat "${load[@]}" "$@"
  "$here/deploy/loadtest/run.sh" "$s" "$out/abuse-$s.json" --scenario abuse "${load[@]}" "$@"
done
status=0
for s in $strategies; do
  python3 - "$out/abuse-baseline-$s.json" "$out/abuse-$s.json" "$s" <<'PY' || status=1
import json, sys
base, hit, s = (json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3])
p = lambda r: r["latency_ms"]["p99"]
a = hit.get("attackers") or {}
r = hit["redis"]
print(f"{s}: victim p99 {p(base):.2f} ms alone, {p(hit):.2f} ms under attack "
      f"({p(hit) / p(base):.2f}x); lost {base['lost']} / {hit['lost']}; "
      f"Redis used_memory {r['memory_before']:,} -> {r['memory_after']:,} bytes "
      f"(alone: -> {base['redis']['memory_after']:,}); attackers closed "
      f"{a.get('closed', 0)} times, {a.get('refused', 0)} frames refused, "
      f"streams {a.get('streams_opened', 0)} opened / {a.get('streams_refused', 0)} refused")
sys.exit(1 if base["lost"] or hit["lost"] else 0)
PY
done
"$here/target/release/turnout-bench" report --out "$out/abuse.html" "$out"/abuse-*.json
exit $status
