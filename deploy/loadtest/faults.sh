#!/usr/bin/env bash
# The fault campaign: for each strategy, a cluster of real processes
# (redis-server, a router, a gateway, ws-nodes behind proxies) under load
# from clients that follow the protocol (the bench's own, and turnout-client
# on Node.js in many rooms at once), a seeded random schedule of faults, and
# a checker that reads only what every client recorded.
#
#   deploy/loadtest/faults.sh [--quick] [--seed N] [--strategies a,b] --out DIR
#
# --quick: a minute of faults per strategy (what CI runs); without it, 30
# minutes per strategy. A fresh seed is drawn and printed unless --seed
# gives one. Writes DIR/faults.json (and per strategy DIR/<strategy>/: the
# clients' records, history.json, and the processes' logs); exits non-zero
# when a run broke the delivery contract, printing the command that replays
# it. Every other option of `turnout-bench faults --help` passes through
# (--duration, --kinds, --nodes, --rooms, --members, --rate, --no-js).
#
# Needs redis-server, and Node.js >= 20 for the turnout-client members
# (clients/js/dist is in the repository).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --locked --quiet --bins -p turnout-gateway -p turnout-router -p turnout-ws-node -p turnout-loadtest
exec "$here/target/release/turnout-bench" faults "$@"
