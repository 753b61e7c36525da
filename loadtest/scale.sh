#!/usr/bin/env bash
# One machine, as many connections as it holds: a Redis, NODES shardcast nodes in cluster
# mode sharing one port (SO_REUSEPORT), and `loadtest scale` (worker processes of at most
# PER_WORKER connections each, source addresses 127.0.0.x) opening CONNECTIONS subscribed
# connections, then one publication reaching all of them. Everything it starts is stopped
# by pid when it ends (also on Ctrl-C or an error).
#
#   loadtest/scale.sh CONNECTIONS [NODES]
#   loadtest/scale.sh 100000              # nodes: ceil(CONNECTIONS / PER_NODE)
#
# Environment (defaults in brackets):
#   OUT                 reports, node and Redis logs [target/scale]
#   PER_NODE            connections planned per node when NODES is not given [17000]:
#                       a node holds at most ~18.7k under the 20,000 open-file limit
#                       (its conn_budget), and SO_REUSEPORT's spread is not exact
#   PER_WORKER          connections per loadtest worker process (--fd-budget) [18000]
#   MIN_AVAILABLE_MIB   stop connecting when MemAvailable falls below this [7168]
#   MAX_INFLIGHT        handshakes in flight over all workers (the ramp) [1000]
#   HOLD                the window after the publication (--duration) [10s]
#   SOCKBUF             SO_RCVBUF/SO_SNDBUF of the client sockets [4096]
#   PER_SOURCE          connections per source address 127.0.0.x [8000]: the kernel has
#                       ~28k ports per source and destination, but connect() searches
#                       even ports first and checks every used one on its way, so past
#                       ~14k per source each connect costs milliseconds of kernel time
#   PORT, REDIS_PORT    [free ports]
#   SHARDCAST_BIN, LOADTEST_BIN  [$CARGO_TARGET_DIR or target/release/{shardcast,loadtest}]
#   any SHARDCAST_* variable reaches every node (e.g. SHARDCAST_DELIVERY__HEARTBEAT_MS)
# Exit code: loadtest's (0: every connection subscribed and got the publication), 2 when
# something it needs is missing, 3 when Redis or a node did not start.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,13p' "$0" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
conns=$1
[[ $conns =~ ^[1-9][0-9]*$ ]] || { echo "CONNECTIONS: a positive number, not $conns" >&2; exit 2; }
per_node=${PER_NODE:-17000}
nodes=${2:-$(( (conns + per_node - 1) / per_node ))}
[[ $nodes =~ ^[1-9][0-9]*$ ]] || { echo "NODES: a positive number, not $nodes" >&2; exit 2; }
out=${OUT:-target/scale}
target_dir=${CARGO_TARGET_DIR:-target}
server_bin=${SHARDCAST_BIN:-$target_dir/release/shardcast}
loadtest_bin=${LOADTEST_BIN:-$target_dir/release/loadtest}
for b in "$server_bin" "$loadtest_bin"; do
  [ -x "$b" ] || { echo "$b is missing: cargo build --release -p shardcast -p loadtest" >&2; exit 2; }
done
redis_bin=$(command -v redis-server || echo /usr/bin/redis-server)
[ -x "$redis_bin" ] || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is missing (free ports, the summary)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is missing" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=${PORT:-$(free_port)}
redis_port=${REDIS_PORT:-$(free_port)}
secret=scale-secret
key=scale-key

rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
pids=()
stop_all() {
  # nodes first (SIGTERM: their drain has nothing left to close), Redis last; whatever
  # did not exit within 10 s is killed
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

"$redis_bin" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$out" > "$out/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
echo "$redis_pid" >> "$out/pids"   # what it started, for whoever checks that all stopped
redis_up=0
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port" && printf 'PING\r\n' >&3 && read -r -t 1 line <&3 && [[ $line == +PONG* ]]) 2>/dev/null; then
    redis_up=1; break
  fi
  kill -0 "$redis_pid" 2>/dev/null || break
  sleep 0.05
done
[ $redis_up = 1 ] || { echo "redis-server did not start on port $redis_port (see $out/redis.log)" >&2; exit 3; }

# The nodes: one shard each (two cores for all of them and the clients), their own
# data_dir and node_id, one port.
node_pids=()
for i in $(seq "$nodes"); do
  mkdir -p "$out/node-$i"
  SHARDCAST_SHARE_PORT=1 \
  SHARDCAST_LISTEN="127.0.0.1:$port" \
  SHARDCAST_SHARDS=1 \
  SHARDCAST_DATA_DIR="$out/node-$i" \
  SHARDCAST_CLUSTER__REDIS_URL="redis://127.0.0.1:$redis_port" \
  SHARDCAST_CLUSTER__NODE_ID="scale-$i" \
  SHARDCAST_AUTH__JWT_SECRET="$secret" \
  SHARDCAST_AUTH__API_KEYS="[\"$key\"]" \
    "$server_bin" serve > "$out/node-$i.log" 2>&1 &
  node_pids+=($!)
  pids+=($!)
  echo $! >> "$out/pids"
done
# Ready: every node logged that it listens and reached Redis, and /readyz answers.
deadline=$(( $(date +%s) + 60 ))
for i in $(seq "$nodes"); do
  until grep -q "Redis writer connected" "$out/node-$i.log" 2>/dev/null \
        && grep -q "shardcast listening" "$out/node-$i.log"; do
    if ! kill -0 "${node_pids[$((i - 1))]}" 2>/dev/null || [ "$(date +%s)" -gt "$deadline" ]; then
      echo "node $i did not start (see $out/node-$i.log):" >&2
      tail -5 "$out/node-$i.log" >&2
      exit 3
    fi
    sleep 0.1
  done
done
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
  [ "$(date +%s)" -le "$deadline" ] || { echo "/readyz on port $port never answered 200" >&2; exit 3; }
  sleep 0.1
done
# Every node must be ours: a node that lost the port to something else would show here.
for i in $(seq "$nodes"); do
  grep -q "local_addr=127.0.0.1:$port" "$out/node-$i.log" \
    || { echo "node $i does not listen on port $port (see $out/node-$i.log)" >&2; exit 3; }
done

# Source addresses: PER_SOURCE connections each (see above), at most 127.0.0.254.
per_source=${PER_SOURCE:-8000}
srcs=$(( (conns + per_source - 1) / per_source ))
[ "$srcs" -le 254 ] || { echo "$conns connections need more than 254 source addresses at PER_SOURCE=$per_source" >&2; exit 2; }
server_pids=$(IFS=,; echo "${node_pids[*]}")
echo "scale: $conns connections, $nodes nodes on 127.0.0.1:$port, Redis on $redis_port," \
     "sources 127.0.0.1-127.0.0.$srcs, at most ${PER_WORKER:-18000} per worker; out: $out" >&2
set +e
"$loadtest_bin" scale --url "ws://127.0.0.1:$port/ws" --secret "$secret" --api-key "$key" \
  --connections "$conns" --duration "${HOLD:-10s}" --source-ips "127.0.0.1-127.0.0.$srcs" \
  --fd-budget "${PER_WORKER:-18000}" --max-inflight "${MAX_INFLIGHT:-1000}" \
  --sockbuf "${SOCKBUF:-4096}" --min-available-mib "${MIN_AVAILABLE_MIB:-7168}" \
  --server-pid "$server_pids" --json "$out/report.json" 2> >(tee "$out/loadtest.log" >&2)
rc=$?
set -e
[ -f "$out/report.json" ] || exit "$rc"

# One summary line per run (the table of docs/PERFORMANCE.md), plus what the nodes said
# about refused or evicted connections.
python3 - "$out/report.json" "$nodes" > "$out/summary.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); nodes = int(sys.argv[2]); sc = r["scale"]
k = sc["kernel"]["per_socket"] or {}
f = lambda v, unit="": "-" if v is None else f"{v:,.0f}{unit}"
ms = lambda us: "-" if us is None else f"{us / 1000:.0f} ms"
print(f"nodes {nodes} | workers {len(sc['workers'])} | connections {r['connections']:,}"
      f" | delivered {r['delivered']:,} | failed {sc['failed']:,} | closed later {sc['disconnected']:,}"
      f" | server rss/conn {f(r['server']['rss_bytes_per_connection'], ' B')}"
      f" | worker rss/conn {f(sc['client_rss_bytes_per_connection'], ' B')}"
      f" | kernel/socket slab {f(k.get('slab_bytes_per_socket'), ' B')}"
      f" (socket caches {f(k.get('socket_caches_bytes_per_socket'), ' B')},"
      f" tcp buffers {f(k.get('tcp_buffer_bytes_per_socket'), ' B')})"
      f" | reach all {ms(sc['reach_all_us'])} (p50 {ms(r['latency_us']['p50'])},"
      f" p99 {ms(r['latency_us']['p99'])})"
      f" | node open files {sc['server_open_files']['min']}..{sc['server_open_files']['max']}"
      f" | connect {sc['connect_secs']:.0f} s | stopped: {sc['connect_stopped'] or 'no'}")
PY
cat "$out/summary.txt" >&2
grep -hiE "WARN|ERROR" "$out"/node-*.log | sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -5 >&2 || true
exit "$rc"
