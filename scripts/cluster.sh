#!/usr/bin/env bash
# A local Switchboard cluster without Docker: redis-server, three gateway
# nodes (target/release/switchboard) and NGINX configured from the same
# template as the shipped nginx/nginx.conf, all on loopback ports, with their
# logs, pid files and configuration in target/cluster/.
#
#   scripts/cluster.sh up     start everything, print the URL and a token,
#                             and stop it all on Ctrl-C (make cluster)
#   scripts/cluster.sh down   stop whatever a previous run left (make cluster-down)
#
# Ports (override with the environment): NGINX ws:// on CLUSTER_HTTP_PORT
# (8000) and wss:// on CLUSTER_HTTPS_PORT (8443, self-signed), gateways on
# CLUSTER_GATEWAY_PORT+1..3 (8081-8083) with /metrics on
# CLUSTER_METRICS_PORT+1..3 (9191-9193), Redis on CLUSTER_REDIS_PORT (6390).
set -euo pipefail
cd "$(dirname "$0")/.."

state="${CLUSTER_DIR:-target/cluster}"
http_port="${CLUSTER_HTTP_PORT:-8000}"
https_port="${CLUSTER_HTTPS_PORT:-8443}"
gateway_port="${CLUSTER_GATEWAY_PORT:-8080}"
metrics_port="${CLUSTER_METRICS_PORT:-9190}"
redis_port="${CLUSTER_REDIS_PORT:-6390}"
nodes=3
bin=target/release/switchboard
secret="${SWITCHBOARD_JWT_HS256_SECRET:-switchboard-dev-secret-not-for-production}"
api_key="${SWITCHBOARD_API_KEY:-dev-api-key-0123456789}"
pids="$state/pids"

say() { echo "cluster: $*" >&2; }
die() {
  say "$*"
  exit 1
}

find_tool() {
  local name=$1 dir
  command -v "$name" 2>/dev/null && return 0
  for dir in /usr/sbin /usr/local/sbin /sbin; do
    [ -x "$dir/$name" ] && echo "$dir/$name" && return 0
  done
  die "$name is not installed; run scripts/install-test-deps.sh"
}

# The pid in $pids/NAME.pid, if that process is still the program it names.
live_pid() {
  local file="$pids/$1.pid" pid program
  [ -f "$file" ] || return 1
  read -r pid program <"$file" || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program" || return 1
  echo "$pid"
}

# Stops NAME with SIGTERM, waits up to $2 seconds, then SIGKILL.
stop_one() {
  local name=$1 limit=$2 pid waited=0
  if pid=$(live_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((limit * 10)) ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name did not stop in ${limit}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pids/$name.pid"
}

# NGINX first (no new clients), then the gateways (they drain), then Redis.
down() {
  [ -d "$pids" ] || return 0
  stop_one nginx 5
  local i stoppers=()
  for i in $(seq 1 "$nodes"); do
    stop_one "gw-$i" 30 &
    stoppers+=($!)
  done
  wait "${stoppers[@]}"
  stop_one redis 5
}

# Starts a program in its own session (so a terminal's Ctrl-C reaches only
# this script, which then stops everything in order) and records its pid
# with PROGRAM, a word of its command line that `down` checks before killing.
# Usage: start NAME LOG PROGRAM COMMAND...
start() {
  local name=$1 log=$2 program=$3
  shift 3
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo "$! $program" >"$pids/$name.pid"
}

# HTTP status of GET $2 on 127.0.0.1:$1 (bash /dev/tcp; no curl needed).
http_status() {
  local status
  exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&3
  IFS=' ' read -r -t 2 _ status _ <&3 || true
  exec 3<&-
  echo "${status:-0}"
}

# Waits until $1 (a command) succeeds; names $2 when it does not.
wait_for() {
  local what=$2 name=$3 tries=0
  until eval "$1" >/dev/null 2>&1; do
    tries=$((tries + 1))
    live_pid "$name" >/dev/null || die "$what exited; see $state/logs/$name.log"
    [ "$tries" -lt 150 ] || die "$what did not come up in 15 s; see $state/logs/$name.log"
    sleep 0.1
  done
}

up() {
  [ -x "$bin" ] || die "$bin is missing: run make cluster (or cargo build --release -p switchboard-gateway)"
  local redis_server redis_cli nginx name
  redis_server=$(find_tool redis-server)
  redis_cli=$(find_tool redis-cli)
  nginx=$(find_tool nginx)
  command -v setsid >/dev/null || die "setsid (util-linux) is needed"
  for name in redis nginx $(seq -f 'gw-%g' 1 "$nodes"); do
    live_pid "$name" >/dev/null && die "a cluster is already running ($name); stop it with make cluster-down"
  done

  mkdir -p "$state/logs" "$pids" "$state/redis" "$state/nginx/tmp"
  # NGINX workers run as an unprivileged user when started by root.
  chmod 755 "$state" "$state/nginx" "$state/nginx/tmp"
  trap 'trap - INT TERM EXIT; say "stopping"; down; say "stopped"; exit 130' INT TERM
  trap 'trap - INT TERM EXIT; say "stopping"; down; say "stopped"' EXIT

  start redis "$state/logs/redis.log" redis-server "$redis_server" --bind 127.0.0.1 --port "$redis_port" \
    --save "" --appendonly no --dir "$state/redis"
  wait_for "[ \"\$('$redis_cli' -p $redis_port PING)\" = PONG ]" "redis-server on port $redis_port" redis

  local i upstreams=""
  for i in $(seq 1 "$nodes"); do
    start "gw-$i" "$state/logs/gw-$i.log" switchboard env \
      SWITCHBOARD_LISTEN="127.0.0.1:$((gateway_port + i))" \
      SWITCHBOARD_METRICS_LISTEN="127.0.0.1:$((metrics_port + i))" \
      SWITCHBOARD_NODE_ID="gw-$i" \
      SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$redis_port/0" \
      SWITCHBOARD_TRUSTED_PROXIES=127.0.0.1/32 \
      SWITCHBOARD_JWT_HS256_SECRET="$secret" \
      SWITCHBOARD_API_KEY="$api_key" \
      SWITCHBOARD_ALLOWED_ORIGINS="${SWITCHBOARD_ALLOWED_ORIGINS:-*}" \
      SWITCHBOARD_DRAIN_WINDOW="${SWITCHBOARD_DRAIN_WINDOW:-2s}" \
      SWITCHBOARD_SHUTDOWN_GRACE="${SWITCHBOARD_SHUTDOWN_GRACE:-5s}" \
      NO_COLOR=1 \
      "$bin" --config config/dev.toml
    upstreams+="${upstreams:+,}127.0.0.1:$((gateway_port + i))"
  done
  for i in $(seq 1 "$nodes"); do
    wait_for "[ \"\$(http_status $((gateway_port + i)) /readyz)\" = 200 ]" "gateway gw-$i" "gw-$i"
  done

  local conf="$state/nginx/nginx.conf"
  scripts/gen-cert.sh "$state/certs" 2>/dev/null
  NGINX_UPSTREAMS="$upstreams" \
    NGINX_HTTP_LISTEN="127.0.0.1:$http_port" \
    NGINX_HTTPS_LISTEN="127.0.0.1:$https_port" \
    NGINX_TLS_CERT="$PWD/$state/certs/tls.crt" \
    NGINX_TLS_KEY="$PWD/$state/certs/tls.key" \
    NGINX_PID_FILE="$PWD/$state/nginx/nginx.pid" \
    NGINX_ERROR_LOG="$PWD/$state/logs/nginx-error.log" \
    NGINX_ACCESS_LOG="$PWD/$state/logs/nginx-access.log" \
    NGINX_TEMP_DIR="$PWD/$state/nginx/tmp" \
    NGINX_WORKER_CONNECTIONS=4096 \
    NGINX_WORKER_RLIMIT_NOFILE=8192 \
    scripts/nginx-conf.sh >"$conf"
  # Also on [::1] where the machine has IPv6: ip_hash tells 127.0.0.1 and ::1
  # apart, so two browser tabs can reach two different nodes for the demo.
  if python3 -c 'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))' 2>/dev/null; then
    sed -i "s|listen 127.0.0.1:$http_port;|listen 127.0.0.1:$http_port;\n        listen [::1]:$http_port;|" "$conf"
  fi
  "$nginx" -t -q -p "$PWD/$state/nginx" -c "$PWD/$conf" -e "$PWD/$state/logs/nginx-error.log" \
    || die "nginx -t refused $conf"
  start nginx "$state/logs/nginx.log" nginx "$nginx" -p "$PWD/$state/nginx" -c "$PWD/$conf" \
    -e "$PWD/$state/logs/nginx-error.log" -g "daemon off;"
  wait_for "[ \"\$(http_status $http_port /healthz)\" = 200 ]" "nginx on port $http_port" nginx

  local token alice bob
  token=$(SWITCHBOARD_JWT_HS256_SECRET="$secret" "$bin" --config config/dev.toml token --user dev --ttl 1h --info '{"name":"Dev"}')
  alice=$(SWITCHBOARD_JWT_HS256_SECRET="$secret" "$bin" --config config/dev.toml token --user alice --ttl 1h --info '{"name":"Alice"}')
  bob=$(SWITCHBOARD_JWT_HS256_SECRET="$secret" "$bin" --config config/dev.toml token --user bob --ttl 1h --info '{"name":"Bob"}')
  cat <<MSG

  Switchboard cluster: redis-server, gw-1..gw-$nodes and NGINX (ip_hash). Ctrl-C stops it all.

    ws://127.0.0.1:$http_port/ws?token=...     through NGINX
    wss://127.0.0.1:$https_port/ws?token=...   TLS, self-signed ($state/certs/tls.crt)
    gateways   127.0.0.1:$((gateway_port + 1))-$((gateway_port + nodes))   metrics 127.0.0.1:$((metrics_port + 1))-$((metrics_port + nodes))
    redis      127.0.0.1:$redis_port          logs in $state/logs/

  Demo chat through NGINX (ip_hash: tabs on one machine share a node; the
  [::1] address hashes differently, so the second link may land elsewhere):
    alice: http://127.0.0.1:$http_port/demo/#token=$alice
    bob:   http://[::1]:$http_port/demo/#token=$bob

  Token for user "dev", valid 1 hour:
    $token

  Connect (two terminals land on the same node: ip_hash on your address):
    target/release/switchboard-cli 'ws://127.0.0.1:$http_port/ws?token=$token'

  More tokens: SWITCHBOARD_JWT_HS256_SECRET=$secret $bin token --user alice
  Server API:  curl -H 'Authorization: Bearer $api_key' -d '{"channel":"chat:lobby","data":"hi"}' 127.0.0.1:$http_port/api/publish

MSG
  # Run until Ctrl-C, or until one of them dies.
  set +e
  wait -n
  say "a process exited; see $state/logs/"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: scripts/cluster.sh [up|down]" ;;
esac
