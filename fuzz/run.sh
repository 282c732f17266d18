#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 15) with libFuzzer,
# starting from the committed seeds (fuzz/seeds/<target>: real frames, bus
# payloads and script replies) and whatever fuzz/corpus/<target> gathered
# before (not committed).
#
#   fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The toolchain is
# stable: RUSTC_BOOTSTRAP lets it take the coverage flags libFuzzer needs,
# and `-s none` builds without a sanitizer (its runtime ships with nightly
# only); Rust's own checks (bounds, overflow in debug assertions) still
# turn any bug into a crash the fuzzer reports.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-15}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none --debug-assertions
log=$(mktemp)
for t in client_frame bus_payload redis_replies; do
  status=0
  mkdir -p "corpus/$t"
  cargo fuzz run -s none --debug-assertions "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" >"$log" 2>&1 || status=$?
  echo "$t: $(grep -E '^Done' "$log" || echo 'no summary')"
  if [ $status -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz target $t failed (inputs that crash it are in fuzz/artifacts/$t)" >&2
    exit 1
  fi
done
rm -f "$log"
