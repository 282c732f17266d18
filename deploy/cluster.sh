#!/usr/bin/env bash
# Local turnout cluster as plain processes: redis-server, router, gateway and
# ws-nodes, with logs and pid files under $RUN_DIR.
#
#   deploy/cluster.sh up [--strategy sticky|pubsub|relay|local] [--nodes N]
#   deploy/cluster.sh status
#   deploy/cluster.sh stop NODE      # SIGTERM one ws-node (drain), e.g. node-2
#   deploy/cluster.sh kill NODE      # SIGKILL one ws-node (crash)
#   deploy/cluster.sh pause NODE     # SIGSTOP one ws-node (a long pause); resume NODE: SIGCONT
#   deploy/cluster.sh cut NODE       # cut NODE off from Redis (needs CUTTABLE=1); heal NODE
#   deploy/cluster.sh start NODE     # start a stopped ws-node again
#   deploy/cluster.sh restart-redis  # SIGKILL redis-server and start it again
#   deploy/cluster.sh down
#
# Ports and paths come from the environment (defaults in brackets):
#   REDIS_PORT [6390]  ROUTER_PORT [7070]  GATEWAY_PORT [8080]
#   NODE_PORT_BASE [9001] (node-i listens on NODE_PORT_BASE+i-1)
#   RUN_DIR [./run]  PROFILE [release]  BIND [127.0.0.1]
#   REDIS_PERSIST [0]: 1 keeps Redis data across restarts (AOF, fsync always)
#   CUTTABLE [0]: 1 runs each node's Redis connections through its own
#     `turnout-bench proxy` (port REDIS_PORT+100+i), so `cut`/`heal` work
#   REDIS_SHARDS [0]: N > 0 runs a Redis Cluster of N masters instead of one
#     Redis (ports REDIS_PORT..REDIS_PORT+N-1, cluster bus +10000), with
#     REDIS_REPLICAS [0] replicas each; every process gets redis_cluster = true
#   BACKEND [1]: 1 starts the example backend (deploy/examples/backend.py,
#     needs python3) on BACKEND_PORT [8090] and gives the nodes its hooks:
#     the `moderated:` rooms ask it before each join and publish, clients'
#     `rpc` frames go to it, it greets each connection, and it prints the
#     room and member events (webhooks) into run/backend.log (docs/BACKEND.md)
#   TURNOUT_STRATEGY [pubsub]  and any other TURNOUT_* setting, passed through.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
REDIS_PORT=${REDIS_PORT:-6390}
ROUTER_PORT=${ROUTER_PORT:-7070}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
NODE_PORT_BASE=${NODE_PORT_BASE:-9001}
BACKEND_PORT=${BACKEND_PORT:-8090}
# The demo's webhook secret (the backend checks the nodes' signatures).
WEBHOOK_SECRET=${WEBHOOK_SECRET:-demo-webhook-secret-0123456789}
RUN_DIR=${RUN_DIR:-$here/run}
PROFILE=${PROFILE:-release}
BIND=${BIND:-127.0.0.1}
STRATEGY=${TURNOUT_STRATEGY:-pubsub}
NODES=3
REDIS_SHARDS=${REDIS_SHARDS:-0}
REDIS_REPLICAS=${REDIS_REPLICAS:-0}
if [ "$REDIS_SHARDS" -gt 0 ]; then
  export TURNOUT_REDIS_CLUSTER=true
  redis_urls=""
  for k in $(seq 0 $(( REDIS_SHARDS * (1 + REDIS_REPLICAS) - 1 ))); do
    redis_urls="${redis_urls:+$redis_urls,}redis://127.0.0.1:$(( REDIS_PORT + k ))"
  done
else
  redis_urls=redis://127.0.0.1:$REDIS_PORT
fi
# The local runner is a demo on loopback: it runs open, on purpose.
export TURNOUT_INSECURE=${TURNOUT_INSECURE:-true}

if [ "$PROFILE" = release ]; then bin_dir=$here/target/release; else bin_dir=$here/target/debug; fi

die() { echo "cluster.sh: $*" >&2; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_http() { # url seconds; on failure, says what /readyz last answered
  local url=$1 n=$(( $2 * 10 ))
  for _ in $(seq "$n"); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: $url: $(curl -sS "$url" 2>&1 | head -c 300)" >&2
  return 1
}

ensure_redis_server() {
  command -v redis-server >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server (apt-get)…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    die "redis-server is not installed: apt-get install redis-server"
  fi
}

ensure_curl() {
  command -v curl >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  else
    die "curl is not installed"
  fi
}

start_redis_cluster() {
  local n=$(( REDIS_SHARDS * (1 + REDIS_REPLICAS) )) addrs=() p
  for k in $(seq 0 $(( n - 1 ))); do
    p=$(( REDIS_PORT + k ))
    addrs+=("127.0.0.1:$p")
    pid_alive "$RUN_DIR/redis-$p.pid" && continue
    rm -f "$RUN_DIR/nodes-$p.conf"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file "$RUN_DIR/nodes-$p.conf" --cluster-node-timeout 2000 \
      --dir "$RUN_DIR" --daemonize yes --pidfile "$RUN_DIR/redis-$p.pid" --logfile "$RUN_DIR/redis-$p.log"
  done
  for a in "${addrs[@]}"; do
    for _ in $(seq 50); do redis-cli -p "${a#*:}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! redis-cli -p "$REDIS_PORT" cluster info 2>/dev/null | grep -q cluster_state:ok; then
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REDIS_REPLICAS" --cluster-yes >"$RUN_DIR/redis-create.log" \
      || die "redis-cli --cluster create failed; see $RUN_DIR/redis-create.log"
    for _ in $(seq 100); do
      redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok && break; sleep 0.1
    done
  fi
}

start_redis() {
  if [ "$REDIS_SHARDS" -gt 0 ]; then start_redis_cluster; return; fi
  pid_alive "$RUN_DIR/redis.pid" && return
  local persist=(--appendonly no)
  if [ "${REDIS_PERSIST:-0}" = 1 ]; then
    persist=(--appendonly yes --appendfsync always --dir "$RUN_DIR")
  fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" "${persist[@]}" \
    --daemonize yes --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
}

# The example backend. The settings file that gives `moderated:` rooms its
# hooks (deploy/examples/turnout.toml, one file for every process) goes to
# the processes with it. Without python3 the cluster runs without both.
start_backend() {
  [ "${BACKEND:-1}" = 1 ] || return 0
  if ! command -v python3 >/dev/null; then
    echo "backend  (not started: no python3; the moderated: rooms ask nobody)"
    return 0
  fi
  if ! pid_alive "$RUN_DIR/backend.pid"; then
    python3 "$here/deploy/examples/backend.py" --port "$BACKEND_PORT" --webhook-secret "$WEBHOOK_SECRET" \
      >>"$RUN_DIR/backend.log" 2>&1 &
    echo $! >"$RUN_DIR/backend.pid"
    wait_http "http://127.0.0.1:$BACKEND_PORT/healthz" 20 || die "the example backend is not ready; see $RUN_DIR/backend.log"
  fi
  echo "backend  http://127.0.0.1:$BACKEND_PORT   (log: $RUN_DIR/backend.log)"
}

# The settings the backend brings to a ws-node started now (KEY=VALUE
# words; none without the backend).
backend_env() {
  if pid_alive "$RUN_DIR/backend.pid"; then
    local b=http://127.0.0.1:$BACKEND_PORT
    echo "TURNOUT_CONFIG=$here/deploy/examples/turnout.toml TURNOUT_PROXY_CONNECT_URL=$b/connect TURNOUT_PROXY_JOIN_URL=$b/join TURNOUT_PROXY_PUBLISH_URL=$b/publish TURNOUT_PROXY_RPC_URL=$b/rpc TURNOUT_WEBHOOK_URL=$b/webhook TURNOUT_WEBHOOK_SECRET=$WEBHOOK_SECRET"
  fi
}

start_node() { # index
  local i=$1 port=$(( NODE_PORT_BASE + $1 - 1 ))
  local id="node-$i"
  pid_alive "$RUN_DIR/$id.pid" && { echo "$id already running"; return; }
  local redis_url=$redis_urls
  if [ "${CUTTABLE:-0}" = 1 ]; then
    [ "$REDIS_SHARDS" -gt 0 ] && die "CUTTABLE=1 needs one Redis, not REDIS_SHARDS"
    local redis_port
    redis_port=$(( REDIS_PORT + 100 + i ))
    if ! pid_alive "$RUN_DIR/proxy-$id.pid"; then
      "$bin_dir/turnout-bench" proxy --listen "127.0.0.1:$redis_port" --target "127.0.0.1:$REDIS_PORT" \
        >>"$RUN_DIR/proxy-$id.log" 2>&1 &
      echo $! >"$RUN_DIR/proxy-$id.pid"
    fi
    redis_url=redis://127.0.0.1:$redis_port
  fi
  # shellcheck disable=SC2046 # the KEY=VALUE words are meant to split
  env $(backend_env) TURNOUT_STRATEGY="$STRATEGY" TURNOUT_REDIS_URL="$redis_url" \
    "$bin_dir/turnout-ws-node" --listen "$BIND:$port" --node-id "$id" \
    >>"$RUN_DIR/$id.log" 2>&1 &
  echo $! >"$RUN_DIR/$id.pid"
  wait_http "http://127.0.0.1:$port/readyz" 20 || die "$id is not ready; see $RUN_DIR/$id.log"
  echo "$id   ws://127.0.0.1:$port/ws   (log: $RUN_DIR/$id.log)"
}

up() {
  while [ $# -gt 0 ]; do
    case $1 in
      --strategy) STRATEGY=$2; shift 2 ;;
      --nodes) NODES=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  case $STRATEGY in sticky|pubsub|relay|local) ;; *) die "--strategy must be sticky, pubsub, relay or local" ;; esac
  ensure_redis_server
  ensure_curl
  mkdir -p "$RUN_DIR"
  echo "${CUTTABLE:-0}" >"$RUN_DIR/cuttable"
  echo "$STRATEGY" >"$RUN_DIR/strategy"
  echo "$NODES" >"$RUN_DIR/nodes"
  echo "building ($PROFILE)…"
  if [ "$PROFILE" = release ]; then
    (cd "$here" && cargo build --release --quiet --bins)
  else
    (cd "$here" && cargo build --quiet --bins)
  fi

  start_redis
  echo "redis    $redis_urls"
  start_backend

  if ! pid_alive "$RUN_DIR/router.pid"; then
    TURNOUT_STRATEGY=$STRATEGY TURNOUT_REDIS_URL=$redis_urls \
      "$bin_dir/turnout-router" --listen "$BIND:$ROUTER_PORT" --node-id router-1 \
      >>"$RUN_DIR/router.log" 2>&1 &
    echo $! >"$RUN_DIR/router.pid"
    wait_http "http://127.0.0.1:$ROUTER_PORT/readyz" 20 || die "router is not ready; see $RUN_DIR/router.log"
  fi
  echo "router   http://127.0.0.1:$ROUTER_PORT"

  for i in $(seq "$NODES"); do start_node "$i"; done

  if ! pid_alive "$RUN_DIR/gateway.pid"; then
    # The gateway reads the namespaces too (presence).
    # shellcheck disable=SC2046
    env $(backend_env | tr ' ' '\n' | grep '^TURNOUT_CONFIG=') TURNOUT_STRATEGY="$STRATEGY" TURNOUT_REDIS_URL="$redis_urls" \
      TURNOUT_ROUTER_URL=http://127.0.0.1:$ROUTER_PORT \
      "$bin_dir/turnout-gateway" --listen "$BIND:$GATEWAY_PORT" --node-id gateway-1 \
      >>"$RUN_DIR/gateway.log" 2>&1 &
    echo $! >"$RUN_DIR/gateway.pid"
  fi
  wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" 20 || die "gateway not ready; see $RUN_DIR/gateway.log"
  echo
  echo "turnout is up ($STRATEGY, $NODES ws-nodes). Open http://127.0.0.1:$GATEWAY_PORT/"
  if [ "$STRATEGY" = local ]; then
    echo "local: the nodes share nothing; open two pages: members on different nodes do not see each other"
  fi
  if pid_alive "$RUN_DIR/backend.pid"; then
    echo "backend: rooms named moderated:… (e.g. moderated:lobby) ask it before each join and publish"
  fi
  echo "cluster: curl -s http://127.0.0.1:$GATEWAY_PORT/api/cluster"
  echo "stop:    deploy/cluster.sh down"
}

status() {
  [ -d "$RUN_DIR" ] || { echo "not running"; return; }
  for f in "$RUN_DIR"/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    if pid_alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; fi
  done
  curl -fsS "http://127.0.0.1:$GATEWAY_PORT/api/cluster" 2>/dev/null && echo || true
}

signal_node() { # SIG name
  local f="$RUN_DIR/$2.pid"
  pid_alive "$f" || die "$2 is not running"
  kill -"$1" "$(cat "$f")"
  if [ "$1" = TERM ]; then
    for _ in $(seq 150); do pid_alive "$f" || break; sleep 0.1; done
  fi
  echo "$2: sent SIG$1"
}

down() {
  [ -d "$RUN_DIR" ] || { echo "not running"; return; }
  for name in gateway $(cd "$RUN_DIR" && ls node-*.pid 2>/dev/null | sed 's/\.pid$//') router; do
    f="$RUN_DIR/$name.pid"
    if pid_alive "$f"; then kill -CONT "$(cat "$f")" 2>/dev/null; kill -TERM "$(cat "$f")"; fi
  done
  for _ in $(seq 150); do
    alive=0
    for f in "$RUN_DIR"/gateway.pid "$RUN_DIR"/router.pid "$RUN_DIR"/node-*.pid; do
      pid_alive "$f" && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  # Nodes leave through their proxies: stop those last, and anything left over.
  for f in "$RUN_DIR"/proxy-*.pid "$RUN_DIR"/gateway.pid "$RUN_DIR"/router.pid "$RUN_DIR"/node-*.pid; do
    pid_alive "$f" && kill -KILL "$(cat "$f")" 2>/dev/null
  done
  if pid_alive "$RUN_DIR/backend.pid"; then kill "$(cat "$RUN_DIR/backend.pid")"; fi
  if pid_alive "$RUN_DIR/redis.pid"; then redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$RUN_DIR/redis.pid")"; fi
  for f in "$RUN_DIR"/redis-*.pid; do
    pid_alive "$f" && kill "$(cat "$f")"
  done
  rm -f "$RUN_DIR"/nodes-*.conf
  rm -f "$RUN_DIR"/*.pid
  echo "turnout is down (logs kept in $RUN_DIR)"
}

cmd=${1:-}
shift || true
case $cmd in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  stop) signal_node TERM "${1:?node name, e.g. node-2}" ;;
  kill) signal_node KILL "${1:?node name, e.g. node-2}" ;;
  pause) signal_node STOP "${1:?node name, e.g. node-2}" ;;
  resume) signal_node CONT "${1:?node name, e.g. node-2}" ;;
  cut|heal|sever)
    n=${1:?node name, e.g. node-2}
    f="$RUN_DIR/proxy-$n.pid"
    pid_alive "$f" || die "$n has no proxy: start the cluster with CUTTABLE=1"
    case $cmd in cut) sig=USR1 ;; heal) sig=USR2 ;; sever) sig=HUP ;; esac
    kill -"$sig" "$(cat "$f")"
    echo "$n: $cmd (Redis)" ;;
  restart-redis)
    pid_alive "$RUN_DIR/redis.pid" && kill -KILL "$(cat "$RUN_DIR/redis.pid")"
    for _ in $(seq 50); do pid_alive "$RUN_DIR/redis.pid" || break; sleep 0.1; done
    rm -f "$RUN_DIR/redis.pid"
    start_redis
    echo "redis restarted" ;;
  start)
    n=${1:?node name, e.g. node-2}
    [ -f "$RUN_DIR/strategy" ] && STRATEGY=$(cat "$RUN_DIR/strategy")
    [ -f "$RUN_DIR/cuttable" ] && CUTTABLE=$(cat "$RUN_DIR/cuttable")
    start_node "${n#node-}" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
