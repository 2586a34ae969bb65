#!/usr/bin/env bash
# `make bench`: the three benchmark scenarios of docs/benchmarks.md, each
# bounded to a few minutes on a 2-core machine, ending with one table.
#
#   1. idle connections: gateway resident memory (VmRSS) per connection at
#      10k connections on one node and 50k over three nodes (a process may
#      hold 20,000 open files here, so 50k needs three nodes and three load
#      processes); then at 10k with 0, 1 and 5 subscriptions each, embedded
#      and in cluster mode (issue 26);
#   2. fan-out: one channel, 10k subscribers on one node: deliveries per
#      second at saturation, and latency at fixed rates;
#   3. cross-node: two nodes through Redis, subscribers on node B, the
#      publisher on node A: latency at 100k deliveries per second and
#      throughput at saturation, with history on (the default) and off, so
#      the cost of the history script is a measured figure;
#   4. one Redis against a 3-shard Redis Cluster (sharded Pub/Sub): the same
#      cross-node load spread over 20 channels of 50 subscribers, at 100k and
#      200k deliveries per second and at saturation, on each;
#   5. webhooks and a slow backend: the cross-node load of scenario 3 with
#      webhooks off, then on with a receiver that answers each request after
#      2 s (so a backlog of events is being delivered throughout): publishing
#      and fan-out must not slow down;
#   6. fan-out past the syscall floor: one node, 1,000 subscribers on one
#      channel, at 10 (quiet), 500 and 700 messages/s, with server CPU µs per
#      delivery; embedded and on Redis; write_coalesce 0 (off) and the
#      default, plain and batched frames; then cross-node coalescing (issue 24);
#   7. the publish path (issue 24), on one Redis and on a 3-shard Redis
#      Cluster: Redis and node CPU µs per publish for 200 rooms of 10 on node
#      B fed by 8 WebSocket publishers on node A at 5,000/s (history on and
#      off); acked publishes/s of 8 serial publishers into 200 rooms of 1;
#      the batch API (batches of 100 over 1,000 channels) with every message
#      read back from history. About 4 minutes.
#   8. server-sent events against WebSocket (issue 27), one node, embedded:
#      resident memory per idle connection at 10k, WebSocket then SSE
#      streams, with no channel and with one, measured as scenario 1 does,
#      the SSE row giving its ratio to the WebSocket one (goal: at most
#      1.5x); then scenario 6's 1,000-subscriber fan-out (10, 500 and 700
#      msg/s through the server API) with WebSocket then SSE subscribers on
#      the same node. About 4 minutes.
#   9. formats and compression (issue 28): one node with
#      SWITCHBOARD_DEFLATE=true and the bench namespace at deflate = true,
#      1,000 subscribers on one channel fed through the server API, for a
#      ~300 B chat message at 500 msg/s and a ~4 KB JSON document at 100
#      msg/s, each with JSON, MessagePack and JSON + permessage-deflate
#      subscribers: bytes on the wire per delivery, server CPU per delivery,
#      deliveries/s and p99, with the ratios to JSON (goals: deflate at most
#      +20 % CPU per delivery, MessagePack no slower than JSON). About 2
#      minutes.
#
# BENCH_SCENARIOS (default "1 2 3 4 5 6 7 8 9") picks scenarios, e.g.
# `BENCH_SCENARIOS=3 make bench` for the cross-node ones alone.
# BENCH_MEMORY_ONLY=1 keeps, of scenario 1, the memory rows at 10k on one
# node (no subscription, 1 and 5 each, embedded and in cluster mode) and
# skips the 50k, rooms and burst rows: about 4 minutes, for comparing
# builds (`BENCH_MEMORY_ONLY=1 BENCH_SCENARIOS=1 GATEWAY=... make bench`);
# of scenario 8 it keeps the four memory rows and skips the fan-out.
#
# GATEWAY and LOAD name the gateway and load tool binaries (default
# target/release/switchboard and target/release/switchboard-loadtest, which
# it builds first); BENCH_BUILD=0 skips that build. So the same scenarios
# run against a gateway built from another commit, before and after a
# change, with the same load tool:
#
#   git worktree add /tmp/before <commit>
#   (cd /tmp/before && cargo build --release -p switchboard-gateway)
#   GATEWAY=/tmp/before/target/release/switchboard make bench | tee before.txt
#   make bench | tee after.txt
#
# Relative paths are taken from where it is started. Each run replaces
# target/bench, so keep the first run's table (or copy target/bench away).
#
# It starts everything it needs (redis-server and gateway nodes on free
# loopback ports, in a temp dir) and stops all of it on exit. Logs and the
# JSON reports are kept in target/bench/. The load tool runs on the same
# cores as the gateway; see docs/benchmarks.md for how to read the figures.
set -euo pipefail

# GATEWAY and LOAD as given, relative to where this was started.
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -n "${GATEWAY:-}" ] && GATEWAY=$(absolute "$GATEWAY")
[ -n "${LOAD:-}" ] && LOAD=$(absolute "$LOAD")

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
OUT=target/bench
GATEWAY=${GATEWAY:-target/release/switchboard}
LOAD=${LOAD:-target/release/switchboard-loadtest}
SECRET=bench-secret-bench-secret-bench-secret
API_KEY=bench-api-key-0123456789
SCENARIOS=" ${BENCH_SCENARIOS:-1 2 3 4 5 6 7 8 9} "
BACKEND_SECRET=bench-backend-secret-bench-backend-secret

# Each connection is a descriptor: take the whole hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

if [ "${BENCH_BUILD:-1}" != 0 ]; then
    echo "building release binaries..."
    $CARGO build --release -p switchboard-gateway -p switchboard-loadtest
fi
for bin in "$GATEWAY" "$LOAD"; do
    [ -x "$bin" ] || { echo "bench: $bin is missing or not executable" >&2; exit 1; }
done
echo "gateway: $GATEWAY"
echo "load tool: $LOAD"

rm -rf "$OUT"
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

rss_kb() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# sessions PORT: open sessions on a node, from /readyz.
sessions() {
    curl -sf "http://127.0.0.1:$1/readyz" | jq -r '.sessions // 0' 2>/dev/null || echo 0
}

# start_node NAME PORT [REDIS_URL] [CONFIG]: starts a gateway, waits until
# ready; sets NODE_PID.
start_node() {
    local name=$1 port=$2 redis=${3:-} config=${4:-}
    env -i PATH="$PATH" \
        SWITCHBOARD_LISTEN="127.0.0.1:$port" \
        SWITCHBOARD_NODE_ID="$name" \
        SWITCHBOARD_JWT_HS256_SECRET="$SECRET" \
        SWITCHBOARD_API_KEY="$API_KEY" \
        SWITCHBOARD_ALLOWED_ORIGINS='*' \
        SWITCHBOARD_MAX_CONNECTIONS=19500 \
        SWITCHBOARD_CONN_RATE_PER_IP=1000000 \
        SWITCHBOARD_CONN_BURST_PER_IP=1000000 \
        SWITCHBOARD_MAX_CONNECTIONS_PER_IP=1000000 \
        SWITCHBOARD_MSG_RATE=1000000 \
        SWITCHBOARD_MSG_BURST=1000000 \
        ${redis:+SWITCHBOARD_REDIS_URL="$redis"} \
        ${HOOKS_URL:+SWITCHBOARD_WEBHOOK_URLS="$HOOKS_URL" SWITCHBOARD_BACKEND_SECRET="$BACKEND_SECRET"} \
        ${COALESCE:+SWITCHBOARD_WRITE_COALESCE="$COALESCE"} \
        ${DEFLATE:+SWITCHBOARD_DEFLATE="$DEFLATE"} \
        RUST_LOG="${NODE_LOG:-warn}" \
        "$GATEWAY" ${config:+--config "$config"} >"$OUT/$name.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "gateway $name did not become ready; see $OUT/$name.log" >&2
    exit 1
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# start_pair NAME REDIS_URL CONFIG: nodes NAME-a (publishers' node, PORT_A)
# and NAME-b (subscribers' node, PORT_B) on one Redis; stop_pair stops them.
start_pair() {
    PORT_A=$(free_port)
    PORT_B=$(free_port)
    start_node "$1-a" "$PORT_A" "$2" "$3"
    PID_A=$NODE_PID
    start_node "$1-b" "$PORT_B" "$2" "$3"
    PID_B=$NODE_PID
}

stop_pair() {
    stop_pid "$PID_A"
    stop_pid "$PID_B"
}

start_redis() {
    REDIS_PORT=$(free_port)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$TMP" >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "redis-server did not start" >&2
    exit 1
}

# load NAME ARGS...: runs the load tool, report in $OUT/NAME.json, log in $OUT/NAME.log.
load() {
    local name=$1
    shift
    "$LOAD" --secret "$SECRET" --api-key "$API_KEY" --json "$OUT/$name.json" "$@" \
        >"$OUT/$name.log" 2>&1
}

# field NAME JQ: a figure from a report.
field() {
    jq -r "$2" "$OUT/$1.json"
}

ms() {
    awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}

ROWS=()
row() {
    ROWS+=("$(printf '| %s | %s | %s |' "$1" "$2" "$3")")
    echo "  $1: $2 ($3)"
}

# latency_row LABEL REPORT: a latency row from a fixed-rate run.
latency_row() {
    local name=$2
    row "$1" \
        "p50 $(ms "$(field "$name" .latency_us.p50)") / p90 $(ms "$(field "$name" .latency_us.p90)") / p99 $(ms "$(field "$name" .latency_us.p99)") / p999 $(ms "$(field "$name" .latency_us.p999)") / max $(ms "$(field "$name" .latency_us.max)") ms" \
        "$(printf '%.0f' "$(field "$name" .deliveries_per_sec)") deliveries/s measured; $(field "$name" .disconnects) disconnects, $(field "$name" '.errors + .publish_errors + .connect_errors') errors"
}

# ---------------------------------------------------------------- scenario 1
# idle KEY NODES CONNS_PER_NODE SHAPE LABEL: per-node RSS per connection;
# nodes in cluster mode on IDLE_REDIS when it is set; subscribers as event
# streams (`--transport sse`) when IDLE_TRANSPORT=sse.
idle() {
    local key=$1 nodes=$2 per_node=$3 shape=$4 label=$5
    local ports=() pids=() bases=() loads=()
    for n in $(seq 1 "$nodes"); do
        local port
        port=$(free_port)
        start_node "$key-node-$n" "$port" "${IDLE_REDIS:-}"
        ports+=("$port")
        pids+=("$NODE_PID")
    done
    sleep 1
    for n in $(seq 0 $((nodes - 1))); do
        bases+=("$(rss_kb "${pids[$n]}")")
    done
    for n in $(seq 0 $((nodes - 1))); do
        load "$key-load-$n" --target "127.0.0.1:${ports[$n]}" --connections "$per_node" \
            --shape "$shape" --room-size 100 --publishers 0 --ramp 4000 --sources 4 \
            --source-first $((2 + 4 * n)) --duration 20s ${IDLE_TRANSPORT:+--transport "$IDLE_TRANSPORT"} &
        loads+=("$!")
        PIDS+=("$!")
    done
    # Wait until every node holds all its sessions, then let allocations settle.
    local deadline=$((SECONDS + 180))
    for n in $(seq 0 $((nodes - 1))); do
        while [ "$(sessions "${ports[$n]}")" -lt "$per_node" ]; do
            if [ "$SECONDS" -gt "$deadline" ]; then
                echo "node $n holds only $(sessions "${ports[$n]}") sessions" >&2
                break
            fi
            sleep 0.5
        done
    done
    sleep 3
    local worst=0 sum=0 held=0
    for n in $(seq 0 $((nodes - 1))); do
        local now open per
        now=$(rss_kb "${pids[$n]}")
        open=$(sessions "${ports[$n]}")
        held=$((held + open))
        per=$(awk -v a="$now" -v b="${bases[$n]}" -v c="$open" 'BEGIN { printf "%.0f", (a - b) * 1024 / (c > 0 ? c : 1) }')
        echo "  node $n: ${bases[$n]} KiB before, $now KiB with $open connections: $per B/connection"
        sum=$((sum + per))
        [ "$per" -gt "$worst" ] && worst=$per
    done
    for pid in "${loads[@]}"; do
        wait "$pid" || true
    done
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    IDLE_LAST=$((sum / nodes))
    row "$label" "$IDLE_LAST B per connection (worst node $worst B)" \
        "$held connections held on $nodes node(s); RSS after minus RSS before, per node"
}

# idle_burst KEY CONNS MESSAGES BYTES LABEL: per-connection RSS of CONNS
# idle subscribers of one channel, then again after a burst of MESSAGES
# messages of BYTES each (POST /api/publish) once things settle: buffers
# grown for the burst must be given back.
idle_burst() {
    local key=$1 conns=$2 messages=$3 bytes=$4 label=$5
    local port pid base idle after open_idle open_after
    port=$(free_port)
    start_node "$key-node" "$port"
    pid=$NODE_PID
    sleep 1
    base=$(rss_kb "$pid")
    load "$key-load" --target "127.0.0.1:$port" --connections "$conns" \
        --shape one --publishers 0 --ramp 4000 --sources 4 --source-first 2 --duration 40s &
    local loader=$!
    PIDS+=("$loader")
    local deadline=$((SECONDS + 180))
    while [ "$(sessions "$port")" -lt "$conns" ] && [ "$SECONDS" -le "$deadline" ]; do
        sleep 0.5
    done
    sleep 3
    idle=$(rss_kb "$pid")
    open_idle=$(sessions "$port")
    python3 -c "import json,sys; print(json.dumps({'channel': 'bench:all', 'data': 'x' * int(sys.argv[1])}))" \
        "$bytes" >"$TMP/burst.json"
    for _ in $(seq 1 "$messages"); do
        curl -sf -X POST -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
            --data-binary @"$TMP/burst.json" "http://127.0.0.1:$port/api/publish" >/dev/null
    done
    sleep 8
    after=$(rss_kb "$pid")
    open_after=$(sessions "$port")
    local per_idle per_after ratio
    per_idle=$(awk -v a="$idle" -v b="$base" -v c="$open_idle" 'BEGIN { printf "%.0f", (a - b) * 1024 / (c > 0 ? c : 1) }')
    per_after=$(awk -v a="$after" -v b="$base" -v c="$open_after" 'BEGIN { printf "%.0f", (a - b) * 1024 / (c > 0 ? c : 1) }')
    ratio=$(awk -v a="$per_after" -v b="$per_idle" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }')
    echo "  $per_idle B/connection idle, $per_after B/connection after the burst (${ratio}x)"
    wait "$loader" || true
    stop_pid "$pid"
    row "$label" "$per_after B per connection (${ratio}x the $per_idle B before the burst)" \
        "$open_after of $conns subscribers still connected; RSS 8 s after the burst minus RSS before connecting"
}

if [[ $SCENARIOS == *" 1 "* ]]; then
echo "scenario 1: idle connections (nodes at the default log level, info)"
NODE_LOG=info
idle idle-10k 1 10000 idle "idle, 10k connections, 1 node"
if [ "${BENCH_MEMORY_ONLY:-0}" = 0 ]; then
idle idle-50k 3 16667 idle "idle, 50k connections, 3 nodes x 16.7k"
idle rooms-10k 1 10000 rooms "10k connections each subscribed to a room of 100, 1 node"
idle_burst burst-10k 10000 20 32768 "idle after a burst of 20 x 32 KiB messages to 10k subscribers of one channel, 1 node"
fi
# Memory per connection by subscriptions (issue 26), embedded and in cluster
# mode on one redis-server of its own: none, one shared channel, five
# shared channels each (`--shape many`, the channels' own state shared, so
# the rows show what a connection and each of its subscriptions cost).
idle mem-emb-1 1 10000 one "memory, embedded, 10k connections, 1 subscription each (one shared channel)"
idle mem-emb-5 1 10000 many "memory, embedded, 10k connections, 5 subscriptions each (five shared channels)"
start_redis
MEM_REDIS_PID=$REDIS_PID
IDLE_REDIS="redis://127.0.0.1:$REDIS_PORT/"
IDLE_REDIS=$IDLE_REDIS idle mem-clu-0 1 10000 idle "memory, cluster mode (one Redis), 10k connections, no subscription"
IDLE_REDIS=$IDLE_REDIS idle mem-clu-1 1 10000 one "memory, cluster mode (one Redis), 10k connections, 1 subscription each (one shared channel)"
MEM_ONE=$IDLE_LAST
IDLE_REDIS=$IDLE_REDIS idle mem-clu-5 1 10000 many "memory, cluster mode (one Redis), 10k connections, 5 subscriptions each (five shared channels)"
row "memory, cluster mode, 5 subscriptions against 1" \
    "$(awk -v a="$IDLE_LAST" -v b="$MEM_ONE" 'BEGIN { printf "%.2fx", a / (b > 0 ? b : 1) }')" \
    "$IDLE_LAST B against $MEM_ONE B per connection, in the two rows above"
stop_pid "$MEM_REDIS_PID"
unset REDIS_PORT REDIS_PID IDLE_REDIS
NODE_LOG=warn
fi

# ---------------------------------------------------------------- scenario 2
if [[ $SCENARIOS == *" 2 "* ]]; then
echo "scenario 2: fan-out, one channel, 10k subscribers on one node"
PORT=$(free_port)
start_node fanout "$PORT"
FANOUT_PID=$NODE_PID
FANOUT=(--target "127.0.0.1:$PORT" --connections 10000 --shape one --ramp 5000)
load fanout-saturation "${FANOUT[@]}" --rate 0 --window 32 --publishers 2 \
    --duration 20s --warmup 5s
row "fan-out saturation, 10k subscribers, 1 channel, 1 node" \
    "$(printf '%.0f' "$(field fanout-saturation .deliveries_per_sec)") deliveries/s" \
    "$(field fanout-saturation .published) messages; at most 32 in flight per subscriber; p50 $(ms "$(field fanout-saturation .latency_us.p50)") ms (queueing); $(field fanout-saturation .disconnects) disconnects"
load fanout-100k "${FANOUT[@]}" --rate 10 --duration 20s --warmup 3s
latency_row "fan-out latency at 10 msg/s x 10k = 100k deliveries/s, 1 node" fanout-100k
load fanout-300k "${FANOUT[@]}" --rate 30 --duration 20s --warmup 3s
latency_row "fan-out latency at 30 msg/s x 10k = 300k deliveries/s, 1 node" fanout-300k
stop_pid "$FANOUT_PID"
fi

# ---------------------------------------------------------------- scenario 3
# cross HISTORY CONFIG: the cross-node runs on two fresh nodes; HISTORY
# ("on" or "off") labels the rows, CONFIG is the nodes' config file.
cross() {
    local history=$1 config=$2
    start_pair "node-$history" "redis://127.0.0.1:$REDIS_PORT/" "$config"
    local cross=(--target "127.0.0.1:$PORT_B" --publish-target "127.0.0.1:$PORT_A" --shape one --ramp 4000)
    load "cross-1k-$history" "${cross[@]}" --connections 1000 --rate 100 --duration 20s --warmup 3s
    latency_row "cross-node latency, history $history, 1k subscribers x 100 msg/s = 100k deliveries/s" "cross-1k-$history"
    load "cross-100-$history" "${cross[@]}" --connections 100 --rate 1000 --duration 20s --warmup 3s
    latency_row "cross-node latency, history $history, 100 subscribers x 1000 msg/s = 100k deliveries/s" "cross-100-$history"
    load "cross-sat-$history" "${cross[@]}" --connections 1000 --rate 0 --window 32 --publishers 2 \
        --duration 20s --warmup 5s
    row "cross-node saturation, history $history, 1k subscribers, 1 channel" \
        "$(printf '%.0f' "$(field "cross-sat-$history" .deliveries_per_sec)") deliveries/s" \
        "$(field "cross-sat-$history" .published) messages; at most 32 in flight per subscriber; p99 $(ms "$(field "cross-sat-$history" .latency_us.p99)") ms; $(field "cross-sat-$history" .disconnects) disconnects, $(field "cross-sat-$history" '.errors + .publish_errors + .connect_errors') errors"
    if [ "$history" = on ]; then
        load cross-10k "${cross[@]}" --connections 10000 --rate 10 --duration 20s --warmup 3s
        latency_row "cross-node latency, history on, 10k subscribers x 10 msg/s = 100k deliveries/s" cross-10k
    fi
    stop_pair
}

if [[ $SCENARIOS == *" 3 "* ]]; then
echo "scenario 3: cross-node through Redis, subscribers on B, publisher on A"
start_redis
# The load tool's channels are in the `bench` namespace.
printf '[namespaces.bench]\nhistory_size = 100\n' >"$TMP/history-on.toml"
printf '[namespaces.bench]\nhistory_size = 0\n' >"$TMP/history-off.toml"
cross on "$TMP/history-on.toml"
cross off "$TMP/history-off.toml"
fi

# ---------------------------------------------------------------- scenario 4
# start_cluster: three redis-server masters with cluster-enabled, joined by
# redis-cli --cluster create (no replicas: the benchmark measures the shards'
# throughput, not failover); sets CLUSTER_URL.
start_cluster() {
    local ports=() seeds=() port
    for i in 1 2 3; do
        # The cluster bus listens on port + 10000: pick ports that leave it free.
        while :; do
            port=$((20000 + RANDOM % 12000))
            if python3 -c "import socket,sys
for p in ($port, $port + 10000):
    s = socket.socket(); s.bind(('127.0.0.1', p)); s.close()" 2>/dev/null; then
                break
            fi
        done
        mkdir -p "$TMP/shard-$i"
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --cluster-enabled yes --cluster-config-file "$TMP/shard-$i/nodes.conf" \
            --dir "$TMP/shard-$i" >"$OUT/shard-$i.log" 2>&1 &
        PIDS+=("$!")
        ports+=("$port")
        seeds+=("127.0.0.1:$port")
    done
    for port in "${ports[@]}"; do
        for _ in $(seq 1 100); do
            [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break
            sleep 0.1
        done
    done
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes >"$OUT/cluster-create.log" 2>&1
    for port in "${ports[@]}"; do
        for _ in $(seq 1 100); do
            redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' && break
            sleep 0.1
        done
    done
    CLUSTER_URL="redis+cluster://$(IFS=,; echo "${seeds[*]}")"
}

# spread NAME LABEL URL: cross-node runs over 20 channels on two fresh
# nodes; NAME names the reports, LABEL the rows.
spread() {
    local name=$1 label=$2 url=$3
    start_pair "spread-$name" "$url" "$TMP/history-on.toml"
    local spread=(--target "127.0.0.1:$PORT_B" --publish-target "127.0.0.1:$PORT_A" --shape rooms --room-size 50 --connections 1000 --ramp 4000)
    load "spread-100k-$name" "${spread[@]}" --rate 2000 --duration 20s --warmup 3s
    latency_row "cross-node, $label, 1k subscribers in 20 channels x 2000 msg/s = 100k deliveries/s" "spread-100k-$name"
    load "spread-200k-$name" "${spread[@]}" --rate 4000 --duration 20s --warmup 3s
    latency_row "cross-node, $label, 1k subscribers in 20 channels x 4000 msg/s = 200k deliveries/s" "spread-200k-$name"
    load "spread-sat-$name" "${spread[@]}" --rate 0 --window 32 --publishers 4 --duration 20s --warmup 5s
    row "cross-node saturation, $label, 1k subscribers in 20 channels" \
        "$(printf '%.0f' "$(field "spread-sat-$name" .deliveries_per_sec)") deliveries/s" \
        "$(field "spread-sat-$name" .published) messages; at most 32 in flight per subscriber; p99 $(ms "$(field "spread-sat-$name" .latency_us.p99)") ms; $(field "spread-sat-$name" .disconnects) disconnects, $(field "spread-sat-$name" '.errors + .publish_errors + .connect_errors') errors"
    stop_pair
}

if [[ $SCENARIOS == *" 4 "* ]]; then
echo "scenario 4: one Redis against a 3-shard Redis Cluster, 20 channels"
printf '[namespaces.bench]\nhistory_size = 100\n' >"$TMP/history-on.toml"
[ -n "${REDIS_PORT:-}" ] || start_redis
spread single "one Redis" "redis://127.0.0.1:$REDIS_PORT/"
start_cluster
spread cluster "3-shard cluster" "$CLUSTER_URL"
fi

# ---------------------------------------------------------------- scenario 5
# hooks LABEL: cross-node latency at 100k deliveries/s and saturation, with
# the nodes started as HOOKS_URL says.
hooks() {
    local name=$1 label=$2
    start_pair "hooks-$name" "redis://127.0.0.1:$REDIS_PORT/" "$TMP/history-on.toml"
    local cross=(--target "127.0.0.1:$PORT_B" --publish-target "127.0.0.1:$PORT_A" --shape one --ramp 4000)
    load "hooks-1k-$name" "${cross[@]}" --connections 1000 --rate 100 --duration 20s --warmup 3s
    latency_row "cross-node latency, $label, 1k subscribers x 100 msg/s = 100k deliveries/s" "hooks-1k-$name"
    load "hooks-sat-$name" "${cross[@]}" --connections 1000 --rate 0 --window 32 --publishers 2 \
        --duration 20s --warmup 5s
    row "cross-node saturation, $label, 1k subscribers, 1 channel" \
        "$(printf '%.0f' "$(field "hooks-sat-$name" .deliveries_per_sec)") deliveries/s" \
        "$(field "hooks-sat-$name" .published) messages; p99 $(ms "$(field "hooks-sat-$name" .latency_us.p99)") ms; $(field "hooks-sat-$name" .disconnects) disconnects, $(field "hooks-sat-$name" '.errors + .publish_errors + .connect_errors') errors"
    if [ -n "${HOOKS_URL:-}" ]; then
        local emitted delivered
        emitted=$(curl -sf "http://127.0.0.1:$PORT_A/metrics" "http://127.0.0.1:$PORT_B/metrics" |
            awk '/^switchboard_webhook_events_emitted_total/ { n += $2 } END { print n + 0 }')
        delivered=$(cat "$TMP/hooks-received" 2>/dev/null || echo 0)
        row "webhook events during the two runs, $label" \
            "$emitted queued, $delivered delivered by the end" \
            "each subscriber's connect and disconnect: user_online/offline and member_added/removed (the bench namespace lists members), at most 100 per request, one request at a time per endpoint"
    fi
    stop_pair
}

if [[ $SCENARIOS == *" 5 "* ]]; then
echo "scenario 5: webhooks off, then on with a backend that answers after 2 s"
printf '[namespaces.bench]\nhistory_size = 100\n' >"$TMP/history-on.toml"
[ -n "${REDIS_PORT:-}" ] || start_redis
HOOKS_URL="" hooks off "webhooks off"
HOOKS_PORT=$(free_port)
python3 scripts/webhook-receiver.py --port "$HOOKS_PORT" --secret "$BACKEND_SECRET" --delay 2 \
    --quiet --count-file "$TMP/hooks-received" >"$OUT/webhook-receiver.log" 2>&1 &
PIDS+=("$!")
HOOKS_URL="http://127.0.0.1:$HOOKS_PORT/hooks" hooks on "webhooks on, backend answering after 2 s"
fi

# ---------------------------------------------------------------- scenario 6
# cpu_row LABEL REPORT: a latency row with the server's CPU per delivery.
cpu_row() {
    local name=$2
    row "$1" \
        "$(printf '%.0f' "$(field "$name" .deliveries_per_sec)") deliveries/s, p50 $(ms "$(field "$name" .latency_us.p50)") / p99 $(ms "$(field "$name" .latency_us.p99)") ms, $(printf '%.2f' "$(field "$name" .server_cpu_us_per_delivery)") µs server CPU per delivery" \
        "$(field "$name" .published) messages; $(field "$name" .disconnects) disconnects, $(field "$name" '.errors + .publish_errors + .connect_errors') errors"
}

# fanout1k NAME LABEL REDIS COALESCE BATCH: one node, 1k subscribers on one
# channel, at 10, 500 and 700 msg/s.
fanout1k() {
    local name=$1 label=$2 redis=$3 batch=$5 port pid
    port=$(free_port)
    COALESCE=$4 start_node "f1k-$name" "$port" "$redis"
    pid=$NODE_PID
    local args=(--target "127.0.0.1:$port" --connections 1000 --shape one --ramp 4000 --publishers 4 \
        --duration 15s --warmup 3s --server-pid "$pid")
    [ "$batch" = batch ] && args+=(--batch)
    for rate in 10 500 700; do
        load "f1k-$name-$rate" "${args[@]}" --rate "$rate"
        cpu_row "1 node, 1k subscribers x $rate msg/s, $label" "f1k-$name-$rate"
    done
    stop_pid "$pid"
}

# coalesce_cross: scenario 3's 1k-subscriber run (node B's subscribers, 100
# msg/s published on node A: 100k deliveries/s through one Redis, history
# on), 8 s measured with node B's CPU, at the default write_coalesce and at
# 0s, two rounds: the default must add no latency where it saves no CPU.
coalesce_cross() {
    [ -n "${REDIS_PORT:-}" ] || start_redis
    printf '[namespaces.bench]\nhistory_size = 100\n' >"$TMP/coalesce-cross.toml"
    local round setting name
    for round in 1 2; do
        for setting in default 0s; do
            name="cc-$setting-$round"
            COALESCE=${setting#default} start_pair "$name" "redis://127.0.0.1:$REDIS_PORT/" "$TMP/coalesce-cross.toml"
            load "$name" --target "127.0.0.1:$PORT_B" --publish-target "127.0.0.1:$PORT_A" --shape one \
                --ramp 4000 --connections 1000 --rate 100 --duration 10s --warmup 2s --server-pid "$PID_B"
            row "cross-node coalescing, write_coalesce $setting, round $round: 1k subscribers on B x 100 msg/s on A" \
                "p50 $(ms "$(field "$name" .latency_us.p50)") / p99 $(ms "$(field "$name" .latency_us.p99)") ms, node B CPU $(printf '%.2f' "$(field "$name" .server_cpu_secs)") s ($(printf '%.2f' "$(field "$name" .server_cpu_us_per_delivery)") µs per delivery)" \
                "$(printf '%.0f' "$(field "$name" .deliveries_per_sec)") deliveries/s over the 8 s measured; $(field "$name" .disconnects) disconnects, $(field "$name" '.errors + .publish_errors + .connect_errors') errors"
            stop_pair
        done
    done
}

if [[ $SCENARIOS == *" 6 "* ]]; then
echo "scenario 6: one node, 1k subscribers on one channel, write coalescing and batched frames"
[ -n "${REDIS_PORT:-}" ] || start_redis
fanout1k mem-off "embedded, write_coalesce 0" "" 0s plain
fanout1k mem-def "embedded, write_coalesce default (10ms)" "" "" plain
fanout1k mem-def-batch "embedded, default, batched frames" "" "" batch
fanout1k redis-off "on Redis, write_coalesce 0" "redis://127.0.0.1:$REDIS_PORT/" 0s plain
fanout1k redis-def-batch "on Redis, default, batched frames" "redis://127.0.0.1:$REDIS_PORT/" "" batch
coalesce_cross
fi

# ---------------------------------------------------------------- scenario 7
# publish_path NAME LABEL URL REDIS_PIDS: issue 24's publish-path rows on
# one Redis set-up (URL; REDIS_PIDS, comma-separated, are every redis-server
# whose CPU is summed): two fresh nodes, publishers on A, subscribers on B.
# CPU per publish is each process's utime+stime over the measured window
# (after the warm-up) divided by the publishes acknowledged in it.
publish_path() {
    local name=$1 label=$2 url=$3 redis_pids=$4 key
    local on="$TMP/pp-history-on.toml" off="$TMP/pp-history-off.toml" big="$TMP/pp-history-big.toml"
    printf '[namespaces.bench]\nhistory_size = 100\n' >"$on"
    printf '[namespaces.bench]\nhistory_size = 0\n' >"$off"
    # The batch run's read-back needs every message still in history.
    printf '[namespaces.bench]\nhistory_size = 10000\nhistory_ttl = "10m"\n' >"$big"
    # num KEY JQ: a figure from a report with two decimals, or n/a.
    num() {
        jq -r "$2 // \"n/a\" | if type == \"number\" then (. * 100 | round / 100 | tostring) else . end" \
            "$OUT/$1.json" 2>/dev/null || echo n/a
    }
    errors() { num "$1" '.errors + .publish_errors + .connect_errors + .disconnects'; }

    # a. rooms of 10, 8 WebSocket publishers (each awaits its ack) at 5,000/s.
    for history in on off; do
        key="pp-rooms-$name-$history"
        if [ "$history" = on ]; then start_pair "$key" "$url" "$on"; else start_pair "$key" "$url" "$off"; fi
        load "$key" --target "127.0.0.1:$PORT_B" --publish-target "127.0.0.1:$PORT_A" \
            --connections 2000 --shape rooms --room-size 10 --ramp 4000 \
            --via client --publishers 8 --in-flight 1 --rate 5000 --duration 12s --warmup 3s \
            --server-pid "$PID_A,$PID_B" --redis-pid "$redis_pids" || true
        row "publish path, $label: 200 rooms x 10 on node B, 8 WS publishers on node A at 5000/s, history $history" \
            "Redis $(num "$key" .redis_cpu_us_per_publish) µs, node A $(num "$key" '.servers[0].cpu_us_per_publish') µs per publish" \
            "$(num "$key" ".publishes_per_sec | round") acked publishes/s; node B $(num "$key" '.servers[1].cpu_us_per_publish') µs per publish ($(num "$key" '.servers[1].cpu_us_per_delivery') µs per delivery); delivery p50 $(num "$key" .latency_us.p50/1000) / p99 $(num "$key" .latency_us.p99/1000) ms; $(num "$key" .undelivered) deliveries undelivered, $(errors "$key") errors"
        stop_pair
    done

    # b. 8 serial WebSocket publishers at saturation, rooms of 1.
    key="pp-serial-$name"
    start_pair "$key" "$url" "$on"
    load "$key" --target "127.0.0.1:$PORT_B" --publish-target "127.0.0.1:$PORT_A" \
        --connections 200 --shape rooms --room-size 1 --ramp 4000 \
        --via client --publishers 8 --in-flight 1 --rate 0 --duration 12s --warmup 3s \
        --exactly-once --server-pid "$PID_A,$PID_B" --redis-pid "$redis_pids" || true
    row "publish path, $label: 8 serial WS publishers on node A at saturation, 200 rooms x 1 on node B, history on" \
        "$(num "$key" ".publishes_per_sec | round") acked publishes/s, $(num "$key" .exactly_once.lost_messages) lost, delivery p99 $(num "$key" .latency_us.p99/1000) ms" \
        "each publisher awaits its ack before the next; p50 $(num "$key" .latency_us.p50/1000) ms; Redis $(num "$key" .redis_cpu_us_per_publish) µs, node A $(num "$key" '.servers[0].cpu_us_per_publish') µs per publish; $(errors "$key") errors"
    stop_pair

    # c. the batch API: batches of 100 from one HTTP client over 1,000
    # channels (no subscribers) through one node, then every channel's
    # history read back.
    key="pp-batch-$name"
    local port
    port=$(free_port)
    start_node "$key" "$port" "$url" "$big"
    load "$key" --target "127.0.0.1:$port" --connections 0 --shape rooms --channels 1000 \
        --via batch --batch-size 100 --publishers 1 --rate 0 --duration 8s --warmup 2s \
        --history-check --server-pid "$NODE_PID" --redis-pid "$redis_pids" || true
    local failed
    failed=$(jq -r '.batch.last_request_error // ""' "$OUT/$key.json" 2>/dev/null || echo "no report")
    if [ "$(num "$key" .published)" = 0 ] || [ "$(num "$key" .published)" = n/a ]; then
        row "publish path, $label: batch API, batches of 100 from one HTTP client over 1000 channels, history on" \
            "n/a: no message accepted" "${failed:-see $OUT/$key.log}"
    else
        row "publish path, $label: batch API, batches of 100 from one HTTP client over 1000 channels, history on" \
            "$(num "$key" ".publishes_per_sec | round") messages/s, $(num "$key" .batch.message_errors) per-message errors, history check $(jq -r 'if .history_check.accepted > 0 and .history_check.found == .history_check.accepted and .history_check.missing + .history_check.trimmed + .history_check.gaps + .history_check.out_of_order + .history_check.duplicates + .history_check.read_errors == 0 then "OK" else "FAILED" end' "$OUT/$key.json")" \
            "$(num "$key" .history_check.found) of $(num "$key" .history_check.accepted) accepted messages in history at their offsets, $(num "$key" .history_check.gaps) gaps, $(num "$key" .history_check.out_of_order) out of order; $(num "$key" .batch.request_errors) failed requests; Redis $(num "$key" .redis_cpu_us_per_publish) µs, node $(num "$key" '.servers[0].cpu_us_per_publish') µs per message"
    fi
    stop_pid "$NODE_PID"
}

if [[ $SCENARIOS == *" 7 "* ]]; then
echo "scenario 7: the publish path (issue 24), one Redis and a 3-shard Redis Cluster"
[ -n "${REDIS_PORT:-}" ] || start_redis
publish_path single "one Redis" "redis://127.0.0.1:$REDIS_PORT/" "$REDIS_PID"
[ -n "${CLUSTER_URL:-}" ] || start_cluster
SHARD_PIDS=$(for port in $(echo "${CLUSTER_URL#redis+cluster://}" | tr ',' '\n' | cut -d: -f2); do
        redis-cli -p "$port" INFO server | tr -d '\r' | sed -n 's/^process_id://p'
    done | paste -sd, -)
publish_path cluster "3-shard cluster" "$CLUSTER_URL" "$SHARD_PIDS"
fi

# ---------------------------------------------------------------- scenario 8
# sse_memory SHAPE WHAT: scenario 1's 10k row on one node, WebSocket then
# SSE, and the SSE row's ratio to the WebSocket one.
sse_memory() {
    local shape=$1 what=$2 ws
    idle "sse-mem-ws-$shape" 1 10000 "$shape" "memory, WebSocket, 10k connections, $what"
    ws=$IDLE_LAST
    IDLE_TRANSPORT=sse idle "sse-mem-sse-$shape" 1 10000 "$shape" \
        "memory, SSE, 10k connections, $what"
    # The ratio goes into the SSE row just written.
    local ratio
    ratio=$(awk -v a="$IDLE_LAST" -v b="$ws" 'BEGIN { printf "%.2f", a / (b > 0 ? b : 1) }')
    ROWS[${#ROWS[@]} - 1]=$(printf '| %s | %s | %s |' "memory, SSE, 10k connections, $what" \
        "$IDLE_LAST B per connection, ${ratio}x WebSocket's $ws B (goal: at most 1.5x)" \
        "event streams (GET /sse) held on 1 node, measured as the WebSocket row above, right after it")
    echo "  SSE against WebSocket, $what: ${ratio}x"
}

# sse_fanout: scenario 6's embedded row at the default write_coalesce (one
# node, 1k subscribers on one channel, 4 API publishers, 15 s with the first
# 3 s not measured, server CPU per delivery), WebSocket then SSE
# subscribers at each rate, on the same node.
sse_fanout() {
    local port pid rate transport
    port=$(free_port)
    start_node f1k-sse "$port"
    pid=$NODE_PID
    for rate in 10 500 700; do
        for transport in websocket sse; do
            load "f1k-$transport-$rate" --target "127.0.0.1:$port" --connections 1000 --shape one \
                --ramp 4000 --publishers 4 --duration 15s --warmup 3s --server-pid "$pid" \
                --rate "$rate" --transport "$transport"
            if [ "$transport" = sse ]; then
                cpu_row "1 node, 1k subscribers x $rate msg/s, SSE (GET /sse), embedded, default" "f1k-$transport-$rate"
            else
                cpu_row "1 node, 1k subscribers x $rate msg/s, WebSocket, embedded, default" "f1k-$transport-$rate"
            fi
        done
    done
    stop_pid "$pid"
}

if [[ $SCENARIOS == *" 8 "* ]]; then
echo "scenario 8: server-sent events against WebSocket (issue 27), one node, embedded"
NODE_LOG=info
sse_memory idle "no channel"
sse_memory one "1 subscription each (one shared channel)"
NODE_LOG=warn
if [ "${BENCH_MEMORY_ONLY:-0}" = 0 ]; then
    sse_fanout
fi
fi

# ---------------------------------------------------------------- scenario 9
# ratio A B: A / B to two decimals ("n/a" without B).
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else printf "n/a" }'
}

# format_row LABEL REPORT BASE ROUNDS: bytes on the wire and server CPU per
# delivery, deliveries/s and p99 of REPORT, the first two also as ratios to
# BASE (the JSON row of the same payload; itself for the JSON row); the
# notes list the CPU per delivery of every round (ROUNDS: report names).
format_row() {
    local name=$2 base=$3 wire cpu rounds=""
    wire=$(field "$name" '.wire_bytes_per_delivery // 0')
    cpu=$(field "$name" '.server_cpu_us_per_delivery // 0')
    for r in $4; do
        rounds+="${rounds:+ / }$(printf '%.2f' "$(field "$r" '.server_cpu_us_per_delivery // 0')")"
    done
    row "$1" \
        "$(printf '%.0f' "$wire") B on the wire per delivery ($(ratio "$wire" "$(field "$base" '.wire_bytes_per_delivery // 0')")x JSON), $(printf '%.2f' "$cpu") µs server CPU per delivery ($(ratio "$cpu" "$(field "$base" '.server_cpu_us_per_delivery // 0')")x JSON), $(printf '%.0f' "$(field "$name" .deliveries_per_sec)") deliveries/s, p99 $(ms "$(field "$name" .latency_us.p99)") ms" \
        "median of $(echo "$4" | wc -w) rounds by CPU (each: $rounds µs); $(frames_per_write "$name") frames per socket write; $(field "$name" .published) messages; $(field "$name" .disconnects) disconnects, $(field "$name" '.errors + .publish_errors + .connect_errors') errors"
}

# node_writes PORT: the node's frames written and socket writes so far.
node_writes() {
    curl -sf "http://127.0.0.1:$1/metrics" |
        awk '/^switchboard_frames_written_total / { f = $2 } /^switchboard_socket_writes_total / { w = $2 } END { print f + 0, w + 0 }'
}

# frames_per_write NAME: frames per socket write during that run (the node's
# counters before and after it).
frames_per_write() {
    awk 'NR == FNR { f = $1; w = $2; next } { if ($2 > w) printf "%.1f", ($1 - f) / ($2 - w); else printf "n/a" }' \
        "$OUT/$1.before" "$OUT/$1.after"
}

# median_report NAMES...: the report whose server CPU per delivery is the
# median of NAMES.
median_report() {
    local r
    for r in "$@"; do
        printf '%s %s\n' "$(field "$r" '.server_cpu_us_per_delivery // 0')" "$r"
    done | sort -g | awk '{ names[NR] = $2 } END { print names[int((NR + 1) / 2)] }'
}

# formats: one node with deflate on for the node and the bench namespace;
# 1k subscribers on one channel, 4 API publishers (JSON), 15 s with the
# first 3 s not measured, --server-pid; per payload, JSON, MessagePack and
# JSON + permessage-deflate subscribers against the same node, in
# FORMATS_ROUNDS interleaved rounds (default 3): the server's CPU per
# delivery on this shared machine moves by 10-30 % between runs, and with
# adaptive write coalescing it also follows how fast the clients read (a
# round where the node coalesces less makes more writes), so each row is
# the round with the median CPU, not one draw.
formats() {
    local port pid payload rate format name round rounds=${FORMATS_ROUNDS:-3}
    printf '[namespaces.bench]\ndeflate = true\n' >"$TMP/formats.toml"
    port=$(free_port)
    DEFLATE=true start_node formats "$port" "" "$TMP/formats.toml"
    pid=$NODE_PID
    for payload in chat doc; do
        # Rates all three formats sustain here (see docs/benchmarks.md).
        if [ "$payload" = chat ]; then rate=${FORMATS_CHAT_RATE:-500}; else rate=${FORMATS_DOC_RATE:-100}; fi
        for round in $(seq 1 "$rounds"); do
            for format in json msgpack deflate; do
                name="fmt-$payload-$format-$round"
                local args=(--target "127.0.0.1:$port" --connections 1000 --shape one --ramp 4000 \
                    --publishers 4 --duration 15s --warmup 3s --server-pid "$pid" --rate "$rate" \
                    --payload-kind "$payload")
                case $format in
                    msgpack) args+=(--format msgpack) ;;
                    deflate) args+=(--deflate) ;;
                esac
                node_writes "$port" >"$OUT/$name.before"
                load "$name" "${args[@]}"
                node_writes "$port" >"$OUT/$name.after"
            done
        done
        local base
        base=$(median_report $(for r in $(seq 1 "$rounds"); do echo "fmt-$payload-json-$r"; done))
        for format in json msgpack deflate; do
            local names what
            names=$(for r in $(seq 1 "$rounds"); do echo "fmt-$payload-$format-$r"; done)
            case $format in
                json) what="JSON" ;;
                msgpack) what="MessagePack" ;;
                deflate) what="JSON + permessage-deflate" ;;
            esac
            local size="~300 B chat message"
            [ "$payload" = doc ] && size="~4 KB JSON document"
            # shellcheck disable=SC2086 # one name per word
            format_row "formats, 1 node, 1k subscribers x $rate msg/s, $size, $what" \
                "$(median_report $names)" "$base" "$names"
        done
    done
    stop_pid "$pid"
}

if [[ $SCENARIOS == *" 9 "* ]]; then
echo "scenario 9: formats and compression (issue 28), one node, embedded, deflate on"
formats
fi

# -------------------------------------------------------------------- table
{
    echo
    echo "Switchboard benchmarks ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo "command: make bench (scripts/bench.sh), scenarios$(echo "$SCENARIOS" | tr -s ' ' | sed 's/ $//')${GATEWAY:+, gateway $GATEWAY}"
    echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r); load average before the table: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| scenario | result | notes |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/table.md"
