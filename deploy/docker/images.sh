#!/usr/bin/env bash
# Makes every image compose.yaml names, on a machine with a Docker engine and
# no image registry, so that `docker compose up` (without --build) runs the
# demo:
#
#   turnout:local  turnout's four binaries from the host's release build,
#                  stripped, on a root filesystem of just what they load
#                  (the C library, from the host); runs as nobody.
#   redis:7        a stand-in for the official image, made of the host's
#                  Debian redis-server and redis-cli: its entrypoint behaves
#                  like the official one where compose relies on it (given
#                  no config file, protected mode off; `redis-server` as the
#                  default command), /data as working directory, user redis.
#   python:3-slim  a stand-in for the official image, made of the host's
#                  python3 and its standard library (no site-packages): the
#                  example backend (deploy/examples/backend.py) needs
#                  nothing more.
#   prom/prometheus:v2.42.0  when the host has Debian's prometheus: its
#                  binary, for `docker compose --profile monitoring`.
#
#   deploy/docker/images.sh            # builds the release binaries first
#   SKIP_BUILD=1 deploy/docker/images.sh
#
# With a registry, `docker compose up --build` builds turnout:local from the
# Dockerfile instead and pulls redis:7 and python:3-slim.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bins=(turnout-gateway turnout-router turnout-ws-node turnout-bench)

command -v docker >/dev/null || { echo "images.sh: no docker command (apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "images.sh: the Docker engine does not answer (start dockerd)" >&2; exit 1; }
if ! command -v redis-server >/dev/null; then
  echo "images.sh: the redis:7 stand-in is made from the host's redis-server (apt-get install redis-server)" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "images.sh: the python:3-slim stand-in is made from the host's python3" >&2; exit 1; }

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --locked --bins
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies executables into a root filesystem with every shared library they
# load (as ldd resolves them here) and the dynamic loader.
with_libs() {
  local dest=$1; shift
  local f lib
  for f in "$@"; do
    for lib in $(ldd "$f" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }'); do
      cp -L --parents "$lib" "$dest"/
    done
  done
}

base_fs() {
  local dest=$1
  mkdir -p "$dest"/{etc,tmp,usr/local/bin,usr/bin,bin}
  chmod 1777 "$dest/tmp"
  cat >"$dest/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
redis:x:999:999:redis:/data:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  cat >"$dest/etc/group" <<'EOF'
root:x:0:
redis:x:999:
nogroup:x:65534:
EOF
  echo "hosts: files dns" >"$dest/etc/nsswitch.conf"
}

# turnout:local
fs="$work/turnout"
base_fs "$fs"
for b in "${bins[@]}"; do
  install -m 0755 "target/release/$b" "$fs/usr/local/bin/$b"
  strip "$fs/usr/local/bin/$b"
done
with_libs "$fs" "${bins[@]/#/$fs/usr/local/bin/}"
tar -C "$fs" -c . | docker import \
  --change 'USER 65534:65534' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'LABEL org.opencontainers.image.source="turnout: deploy/docker/images.sh"' \
  - turnout:local >/dev/null

# redis:7 (stand-in)
fs="$work/redis"
base_fs "$fs"
install -m 0755 "$(readlink -f "$(command -v redis-server)")" "$fs/usr/bin/redis-server"
install -m 0755 "$(command -v redis-cli)" "$fs/usr/bin/redis-cli"
install -m 0755 "$(readlink -f /bin/sh)" "$fs/bin/sh"
with_libs "$fs" "$fs/usr/bin/redis-server" "$fs/usr/bin/redis-cli" "$fs/bin/sh"
mkdir -p "$fs/data" "$fs/usr/local/bin"
chown 999:999 "$fs/data"
cat >"$fs/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# As the official redis image's entrypoint: options alone (or a .conf
# first) run redis-server; without a config file, protected mode is off,
# so that other containers on the network may connect.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ]; then
  case "${2:-}" in
    *.conf) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
fi
exec "$@"
EOF
chmod 0755 "$fs/usr/local/bin/docker-entrypoint.sh"
tar -C "$fs" -c . | docker import \
  --change 'USER 999:999' \
  --change 'WORKDIR /data' \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'EXPOSE 6379' \
  --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
  --change 'CMD ["redis-server"]' \
  --change 'LABEL org.opencontainers.image.source="stand-in for redis:7: deploy/docker/images.sh"' \
  - redis:7 >/dev/null

# python:3-slim (stand-in): the interpreter where it lives on the host (it
# finds its standard library relative to itself), linked from /usr/local/bin.
fs="$work/python"
base_fs "$fs"
read -r py_exe py_lib < <(python3 -c 'import os, sys, sysconfig; print(os.path.realpath(sys.executable), sysconfig.get_paths()["stdlib"])')
install -D -m 0755 "$py_exe" "$fs$py_exe"
ln -s "$py_exe" "$fs/usr/local/bin/python3"
ln -s "$py_exe" "$fs/usr/local/bin/python"
mkdir -p "$fs$py_lib"
tar -C "$py_lib" -c --exclude=site-packages --exclude=dist-packages --exclude=__pycache__ \
  --exclude=./test --exclude="./config-*" --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo --exclude=./ensurepip . |
  tar -C "$fs$py_lib" -x
install -m 0755 "$(readlink -f /bin/sh)" "$fs/bin/sh"
with_libs "$fs" "$fs$py_exe" "$fs/bin/sh" $(find "$fs$py_lib" -name '*.so')
tar -C "$fs" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'CMD ["python3"]' \
  --change 'LABEL org.opencontainers.image.source="stand-in for python:3-slim: deploy/docker/images.sh"' \
  - python:3-slim >/dev/null

# prom/prometheus (stand-in, for `docker compose --profile monitoring`):
# Debian's prometheus binary, when the host has it.
if command -v prometheus >/dev/null; then
  fs="$work/prometheus"
  base_fs "$fs"
  install -D -m 0755 "$(command -v prometheus)" "$fs/bin/prometheus"
  with_libs "$fs" "$fs/bin/prometheus"
  mkdir -p "$fs/prometheus" && chown 65534:65534 "$fs/prometheus"
  tar -C "$fs" -c . | docker import \
    --change 'USER 65534:65534' \
    --change 'WORKDIR /prometheus' \
    --change 'EXPOSE 9090' \
    --change 'ENTRYPOINT ["/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
    --change 'LABEL org.opencontainers.image.source="stand-in for prom/prometheus: deploy/docker/images.sh"' \
    - prom/prometheus:v2.42.0 >/dev/null
fi

size() { docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }
echo "turnout:local $(size turnout:local), redis:7 $(size redis:7) (stand-in: $(redis-server --version | awk '{ print $3 }')), python:3-slim $(size python:3-slim) (stand-in: $(python3 -c 'import platform; print(platform.python_version())'))"
if command -v prometheus >/dev/null; then
  echo "prom/prometheus:v2.42.0 $(size prom/prometheus:v2.42.0) (stand-in: $(prometheus --version 2>&1 | awk 'NR == 1 { print $3 }'))"
fi
