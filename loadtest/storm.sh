#!/usr/bin/env bash
# A reconnect storm against two server builds side by side, in one session.
#
#   loadtest/storm.sh OLD_BINARY NEW_BINARY [CONNECTIONS] [STEP] [EVERY] [ROUNDS]
#   e.g. loadtest/storm.sh /work/old/target/release/shardcast target/release/shardcast \
#        18000 200 5ms 2                                   (the last four are the defaults)
#
# Environment: SHARDS (space-separated shard counts to run, default "1 2"), OUT (default
# target/storm).
#
# For each round, shard count and binary (old, then new): a fresh data_dir, the server
# pinned to core 0 (taskset -c 0), then `loadtest idle --storm STEP/EVERY` pinned to core
# 1 (taskset -c 1) opening CONNECTIONS WebSockets, STEP every EVERY, all authenticated and
# subscribed; then the server is stopped. One line per run: subscribed, failed (with the
# main reasons), the server's shardcast_http_connections_closed_total{reason="http_full"},
# handshakes per second (per shard: divided by the shard count, though all shards share
# core 0) and the setup time (TCP connect to subscribedEvents) p50/p90/p99/max. JSON
# reports and server logs are kept in OUT. CONNECTIONS near the open-file limit: the
# harness needs one file per connection (ulimit -n), one source address gives ~28k ports.
set -euo pipefail
cd "$(dirname "$0")/.."

old=${1:?old binary}
new=${2:?new binary}
conns=${3:-18000}
step=${4:-200}
every=${5:-5ms}
rounds=${6:-2}
shards_list=${SHARDS:-1 2}
out=${OUT:-target/storm}
lt=target/release/loadtest

for b in "$old" "$new" "$lt"; do
  [ -x "$b" ] || {
    echo "storm.sh: $b is missing (cargo build --release -p shardcast -p loadtest)" >&2
    exit 2
  }
done
for t in taskset curl python3; do
  command -v $t >/dev/null || {
    echo "storm.sh: $t is missing" >&2
    exit 2
  }
done
echo "storm.sh: ulimit -n $(ulimit -n), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
mkdir -p "$out"

run() { # label binary shards round
  local label=$1 bin=$2 shards=$3 round=$4
  local port dir pid name=$label-s$shards-r$round
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir=$(mktemp -d /tmp/storm-XXXXXX)
  SHARDCAST_LISTEN=127.0.0.1:$port SHARDCAST_DATA_DIR=$dir SHARDCAST_SHARDS=$shards \
    taskset -c 0 "$bin" serve >"$out/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.05
  done
  taskset -c 1 "$lt" idle --url "ws://127.0.0.1:$port/ws" --secret change-me \
    --connections "$conns" --storm "$step/$every" --duration 1s --server-pid "$pid" \
    --json "$out/$name.json" 2>"$out/$name.loadtest.txt" || true
  local full
  full=$(curl -s "http://127.0.0.1:$port/metrics" |
    awk '/^shardcast_http_connections_closed_total\{.*reason="http_full"/ {s += $2} END {print s + 0}')
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 - "$out/$name.json" "$out/$name.loadtest.txt" "$label" "$shards" "$full" <<'EOF'
import json, re, sys
path, txt, label, shards, full = sys.argv[1:]
r = json.load(open(path))
st = r.get("storm", {})
s = st.get("setup_us", {})
fails = re.findall(r"^\s+connect failure\s+(.+)$", open(txt).read(), re.M)
ms = lambda v: "-" if v is None else f"{v / 1000:.1f}"
hs = st.get("handshakes_per_sec") or 0
print(f"{label:<4} shards={shards}  subscribed {r['connections']:>6}  http_full {full:>6}  "
      f"{hs:>9.0f} handshakes/s ({hs / int(shards):>8.0f} per shard) over {st.get('connect_secs', 0):.2f} s  "
      f"server cpu {st.get('server_cpu_us_per_handshake') or 0:.1f} us/handshake  "
      f"setup ms p50/p90/p99/max {ms(s.get('p50'))} / {ms(s.get('p90'))} / {ms(s.get('p99'))} / {ms(s.get('max'))}"
      + (f"  failures: {fails[:3]}" if fails else ""))
EOF
}

for round in $(seq "$rounds"); do
  for shards in $shards_list; do
    run old "$old" "$shards" "$round"
    run new "$new" "$shards" "$round"
  done
done
