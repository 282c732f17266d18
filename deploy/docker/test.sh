#!/usr/bin/env bash
# The compose cluster, checked from the host like a user, in each strategy:
# the demo page; the example backend in the loop (clients/js/e2e/backend.mjs:
# a banned user refused, a moderated room, rpc, a message to a user, and the
# webhooks it was sent); library clients on different nodes chatting through the
# gateway (clients/js/e2e/chat.mjs) while one node is killed, one stopped
# (a drain), one paused, one cut off from Redis and one from the gateway;
# every member must end with every acked message exactly once, in order;
# then `down` must leave no container, network or volume behind.
#
#   deploy/docker/test.sh                 # images.sh first, then both strategies
#   SKIP_IMAGES=1 STRATEGIES=sticky deploy/docker/test.sh
#
# Needs a Docker engine (started here when none answers and we are root:
# dockerd --storage-driver=vfs), docker-compose 1.29 or docker compose v2,
# Node.js >= 20 and curl.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "starting dockerd (vfs)"
    (dockerd --storage-driver=vfs >/tmp/turnout-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 || { echo "no Docker engine answers" >&2; exit 1; }
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
[ -n "${SKIP_IMAGES:-}" ] || deploy/docker/images.sh

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export COMPOSE_PROJECT_NAME="turnout-test-$$"
# Members recover what they missed from history. At 40 messages a second a
# room and faults a few seconds apart (backoff grows between them), the
# default 100 would hold 2.5 s: a member still reconnecting would then see
# `recovered: false`, as documented. Keep a minute's worth.
export TURNOUT_HISTORY_SIZE=2400
export TURNOUT_GATEWAY_PORT TURNOUT_PROMETHEUS_PORT
TURNOUT_GATEWAY_PORT=$(free_port)
base="http://127.0.0.1:$TURNOUT_GATEWAY_PORT"
# Prometheus too (the `monitoring` profile), when its image is there.
if docker image inspect prom/prometheus:v2.42.0 >/dev/null 2>&1; then
  export COMPOSE_PROFILES=monitoring
  TURNOUT_PROMETHEUS_PORT=$(free_port)
fi
c() { "${compose[@]}" "$@"; }
container() { c ps -q "$1"; }

cleanup() {
  [ -n "${chat_pid:-}" ] && kill "$chat_pid" 2>/dev/null || true
  c down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

node_count() {
  curl -fsS "$base/api/cluster" 2>/dev/null |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).nodes.length))' 2>/dev/null
}
wait_ready() {
  for _ in $(seq 1 120); do
    if curl -fsS "$base/readyz" >/dev/null 2>&1 && [ "$(node_count)" = 3 ]; then
      return 0
    fi
    sleep 0.5
  done
  echo "the cluster did not become ready with 3 nodes" >&2
  c ps >&2; c logs --tail 30 >&2
  return 1
}
# Holds a fault until the cluster has seen it: the node's lease lapsed and
# it left the membership (two nodes listed).
wait_lapsed() {
  for _ in $(seq 1 120); do
    [ "$(node_count)" = 2 ] && return 0
    sleep 0.5
  done
  echo "$1: its lease did not lapse within 60 s" >&2
  c ps >&2; c logs --tail 30 >&2
  return 1
}

# The chat's stdin and stdout: fds 7 and 8, through two fifos.
say() { echo "$1" >&7; }
hear() {
  local line
  if ! read -r -t "${2:-90}" -u 8 line; then
    echo "the chat said nothing (waiting for: $1)" >&2
    c ps >&2
    return 1
  fi
  printf '%s' "$line"
}
mark() {
  say "mark $1"
  local got; got=$(hear "marked $1")
  [ "$got" = "marked $1" ] || { echo "expected 'marked $1', got '$got'" >&2; return 1; }
  echo "  delivering again after: $2"
}
busiest() {
  say where
  local line; line=$(hear where)
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const c=JSON.parse(s);console.log(Object.entries(c).sort((a,b)=>b[1]-a[1])[0][0])})' <<<"$line"
}

for strategy in ${STRATEGIES:-pubsub sticky}; do
  echo "== $strategy"
  start=$(date +%s)
  TURNOUT_STRATEGY=$strategy c up -d >/dev/null
  wait_ready
  page=$(curl -fsS "$base/")
  grep -q "turnout demo" <<<"$page" || { echo "no demo page at $base/" >&2; exit 1; }
  lib=$(curl -fsS "$base/turnout-client.js")
  grep -q "export class Client" <<<"$lib" || { echo "no client library at $base/turnout-client.js" >&2; exit 1; }
  [ "$(curl -fsS "$base/api/cluster" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).strategy))')" = "$strategy" ]

  if [ -n "${COMPOSE_PROFILES:-}" ]; then
    # Prometheus scrapes every process and has loaded the alert rules.
    prom="http://127.0.0.1:$TURNOUT_PROMETHEUS_PORT"
    up=""
    for _ in $(seq 1 60); do
      up=$(curl -fsS "$prom/api/v1/query?query=count(up%7Bjob%3D~%22turnout.*%22%7D%3D%3D1)" 2>/dev/null |
        node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s).data.result;console.log(r.length?r[0].value[1]:0)})' 2>/dev/null || true)
      [ "$up" = 5 ] && break
      sleep 1
    done
    [ "$up" = 5 ] || { echo "Prometheus sees $up of 5 turnout targets up" >&2; c logs --tail 30 prometheus >&2; exit 1; }
    rules=$(curl -fsS "$prom/api/v1/rules" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const g=JSON.parse(s).data.groups.filter(g=>g.name==="turnout");console.log(g.length?g[0].rules.length:0)})')
    [ "$rules" -ge 8 ] || { echo "Prometheus loaded $rules turnout alert rules" >&2; exit 1; }
    echo "  Prometheus: 5 targets up, $rules alert rules loaded"
  fi

  # The backend decides: every check in backend.mjs goes through it.
  GATEWAY="ws://127.0.0.1:$TURNOUT_GATEWAY_PORT/ws" API="$base" \
    node --experimental-websocket --no-warnings clients/js/e2e/backend.mjs
  # ... and hears of rooms and members (signed webhooks, checked by it).
  # (The log is read whole before it is searched: `logs | grep -q` fails
  # under pipefail when grep's early exit cuts the writer off.)
  heard() { local log; log=$(c logs --no-color backend 2>/dev/null) || true; grep -q "webhook: member_joined moderated:lobby bob" <<<"$log"; }
  for _ in $(seq 1 60); do
    heard && break
    sleep 0.5
  done
  heard ||
    { echo "the backend was sent no member_joined for moderated:lobby" >&2; c logs --tail 30 backend >&2; exit 1; }
  echo "  the backend moderated, answered rpc and got its webhooks"

  fifos=$(mktemp -d)
  mkfifo "$fifos/in" "$fifos/out"
  GATEWAY="ws://127.0.0.1:$TURNOUT_GATEWAY_PORT/ws" ROOMS=2 MEMBERS=4 RATE=10 BETWEEN=60 \
    node --experimental-websocket --no-warnings clients/js/e2e/chat.mjs <"$fifos/in" >"$fifos/out" &
  chat_pid=$!
  exec 7>"$fifos/in" 8<"$fifos/out"
  [ "$(hear ready 60)" = ready ]
  mark 0 "start"

  n=$(busiest); c kill "$n" >/dev/null 2>&1; mark 1 "kill $n"
  c start "$n" >/dev/null 2>&1; wait_ready
  n=$(busiest); c stop "$n" >/dev/null 2>&1; mark 2 "stop $n (drain)"
  c start "$n" >/dev/null 2>&1; wait_ready
  # The faults below last until the node's lease has lapsed.
  n=$(busiest); docker pause "$(container "$n")" >/dev/null; wait_lapsed "paused $n"
  docker unpause "$(container "$n")" >/dev/null; mark 3 "pause $n past its lease"
  wait_ready
  n=$(busiest); docker network disconnect "${COMPOSE_PROJECT_NAME}_data" "$(container "$n")"; wait_lapsed "$n cut off from Redis"
  docker network connect --alias "$n" "${COMPOSE_PROJECT_NAME}_data" "$(container "$n")"
  mark 4 "$n cut off from Redis past its lease"
  wait_ready
  # Cut between the gateway and one node: only its clients notice, and they
  # move (the mark is taken while the cut lasts).
  n=$(busiest); docker network disconnect "${COMPOSE_PROJECT_NAME}_edge" "$(container "$n")"
  mark 5 "$n cut off from the gateway (during the cut)"
  docker network connect --alias "$n" "${COMPOSE_PROJECT_NAME}_edge" "$(container "$n")"
  [ "$(busiest)" != "$n" ] || { echo "members are still on $n, cut off from the gateway" >&2; exit 1; }

  say stop
  result=$(hear results 120)
  c logs --no-color >"${LOG_DIR:-/tmp}/turnout-containers-$strategy.log" 2>&1 || true
  wait "$chat_pid" 2>/dev/null || true
  chat_pid=
  exec 7>&- 8<&-
  rm -rf "$fifos"
  node -e '
    const r = JSON.parse(process.argv[1]);
    const bad = r.members.filter((m) => m.missing || m.delivered_twice || m.out_of_order);
    console.log(`  ${r.acked} publishes acked (${r.duplicates_acked} resends taken once), ${r.rejected} rejected; ` +
      `members: ${r.members.map((m) => m.received).join(" ")} messages`);
    if (r.rejected || r.seq_clashes || bad.length || r.acked < 300) {
      console.error(JSON.stringify(r, null, 1));
      process.exit(1);
    }' "$result" || { echo "container logs: ${LOG_DIR:-/tmp}/turnout-containers-$strategy.log" >&2; exit 1; }

  c down -v --remove-orphans >/dev/null 2>&1
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"; \
         docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"; \
         docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  [ -z "$left" ] || { echo "down left: $left" >&2; exit 1; }
  echo "  $strategy: ok in $(( $(date +%s) - start )) s; down left nothing"
done
