#!/usr/bin/env bash
# shardcast side by side with nats-server and with the write floor, in one run.
#
#   loadtest/compare.sh [CONNECTIONS] [RATE] [DURATION] [BATCH_MS]
#   e.g. loadtest/compare.sh 1000 100 10s 0        (these are the defaults)
#
# Environment: SCENARIO=fanout|spread|idle (default fanout; the floor runs with fanout
# only), PATHS (spread, default 100), PAYLOAD (publish body bytes, default 128), FLUSH_K
# (messages per writev for the second floor run, default 10), OUT (default target/compare),
# SHARDCAST_BIN (another shardcast build, e.g. the one before a change: run right after
# the new one, as column "shardcast-old" with the ratio new/old), NATS=0 (skip
# nats-server), BIN_DIR (where shardcast, loadtest and floorwriter are; default
# target/release).
#
# Each target runs alone: the server pinned to core 0 (taskset -c 0), the harness to
# core 1 (taskset -c 1), then the server is stopped:
#   1. shardcast (release build, shards = 1), clients with batchMs = BATCH_MS;
#   2. nats-server over WebSocket (clients: CONNECT/SUB/PING, MSG), publishing with PUB
#      over plain TCP (loadtest --target nats --nats-url: as measured so far);
#   3. floorwriter --write per-message: one write(2) per message and socket;
#   4. floorwriter --write per-flush --batch FLUSH_K: one writev(2) of FLUSH_K messages.
# Then one table: both servers' and the floors' figures and the ratios. Reports (JSON) and
# server logs are kept in OUT. Nothing is installed: missing tools are named with how to
# get them, and the script stops (exit 2).
set -euo pipefail
cd "$(dirname "$0")/.."

conns=${1:-1000}
rate=${2:-100}
dur=${3:-10s}
batch_ms=${4:-0}
scenario=${SCENARIO:-fanout}
paths=${PATHS:-100}
payload=${PAYLOAD:-128}
k=${FLUSH_K:-10}
out=${OUT:-target/compare}
bin=${BIN_DIR:-target/release}
old_bin=${SHARDCAST_BIN:-}
with_nats=${NATS:-1}

case "$scenario" in fanout | spread | idle) ;; *)
  echo "compare.sh: SCENARIO must be fanout, spread or idle (got $scenario)" >&2
  exit 2
  ;;
esac

missing=()
[ "$with_nats" = 0 ] || command -v nats-server >/dev/null ||
  missing+=("nats-server: as root, apt-get update && apt-get install nats-server (Debian package, 2.9)")
command -v taskset >/dev/null || missing+=("taskset: as root, apt-get install util-linux")
command -v python3 >/dev/null || missing+=("python3 (free ports, the table): as root, apt-get install python3")
command -v curl >/dev/null || missing+=("curl (waits for shardcast's /healthz): as root, apt-get install curl")
for b in "$bin/shardcast" "$bin/loadtest" "$bin/floorwriter"; do
  [ -x "$b" ] || missing+=("$b: cargo build --release -p shardcast -p loadtest")
done
[ -z "$old_bin" ] || [ -x "$old_bin" ] || missing+=("SHARDCAST_BIN=$old_bin: not an executable")
if [ ${#missing[@]} -gt 0 ]; then
  echo "compare.sh: missing, nothing was run:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "compare.sh: warning: fewer than 2 cores; server and harness will share one" >&2
fi
load=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0.5 else 1)" "$load"; then
  echo "compare.sh: warning: load average $load: other processes use the cores, the figures will be noisy" >&2
fi

mkdir -p "$out"
rm -f "$out"/*.json

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for NAME CHECK...: retries CHECK for 10 s
wait_for() {
  local name=$1
  shift
  for _ in $(seq 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "compare.sh: $name exited at start; see its log in $out" >&2
      exit 3
    fi
    sleep 0.05
  done
  echo "compare.sh: $name did not become ready in 10 s; see its log in $out" >&2
  exit 3
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# harness NAME ARGS...: runs the scenario on core 1, report in OUT/NAME.json
harness() {
  local name=$1
  shift
  local extra=()
  case "$scenario" in
  spread) extra+=(--paths "$paths") ;;
  esac
  echo "== $name: loadtest $scenario, $conns connections, rate $rate, $dur" >&2
  local rc=0
  taskset -c 1 "$bin/loadtest" "$scenario" "$@" "${extra[@]}" \
    --connections "$conns" --rate "$rate" --duration "$dur" --payload "$payload" \
    --server-pid "$server_pid" --json "$out/$name.json" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "compare.sh: $name: loadtest exited with $rc (see above)" >&2
  fi
  echo "$rc" >"$out/$name.rc"
}

# 1. shardcast (and the other build, if given)
# run_shardcast NAME BINARY
run_shardcast() {
  local name=$1 server=$2
  port=$(free_port)
  rm -rf "$out/$name-data"
  cat >"$out/$name.toml" <<TOML
listen = "127.0.0.1:$port"
shards = 1
data_dir = "$out/$name-data"
[auth]
jwt_secret = "compare-secret"
api_keys = ["compare-key"]
TOML
  taskset -c 0 "$server" serve --config "$out/$name.toml" >"$out/$name.log" 2>&1 &
  server_pid=$!
  wait_for "$name" curl -sf "http://127.0.0.1:$port/healthz"
  if [ "$scenario" = idle ]; then
    harness "$name" --url "ws://127.0.0.1:$port/ws" --secret compare-secret --batch-ms "$batch_ms"
  else
    harness "$name" --url "ws://127.0.0.1:$port/ws" --secret compare-secret --api-key compare-key \
      --batch-ms "$batch_ms"
  fi
  stop_server
}
run_shardcast shardcast "$bin/shardcast"
[ -z "$old_bin" ] || run_shardcast shardcast-old "$old_bin"

# 2. nats-server
if [ "$with_nats" != 0 ]; then
nport=$(free_port)
wport=$(free_port)
cat >"$out/nats.conf" <<CONF
listen: "127.0.0.1:$nport"
websocket {
  listen: "127.0.0.1:$wport"
  no_tls: true
}
CONF
taskset -c 0 nats-server -c "$out/nats.conf" >"$out/nats.log" 2>&1 &
server_pid=$!
wait_for nats-server tcp_open "$wport"
harness nats --target nats --url "ws://127.0.0.1:$wport/" --nats-url "nats://127.0.0.1:$nport"
stop_server
fi

# 3, 4. the write floor (fanout: every subscriber gets every publication)
if [ "$scenario" = fanout ]; then
  for mode in per-message per-flush; do
    fport=$(free_port)
    if [ "$mode" = per-message ]; then
      name=floor-1
      fargs=(--write per-message)
    else
      name=floor-$k
      fargs=(--write per-flush --batch "$k" --flush-ms 1000)
    fi
    taskset -c 0 "$bin/floorwriter" --listen "127.0.0.1:$fport" "${fargs[@]}" \
      --json "$out/$name.own.json" >"$out/$name.log" 2>&1 &
    server_pid=$!
    wait_for floorwriter curl -sf "http://127.0.0.1:$fport/healthz"
    # floorwriter ignores connection options; --batch-ms 0 keeps the harness's grace at
    # its 2 s minimum, as before the harness sent only the options it is given
    harness "$name" --url "ws://127.0.0.1:$fport/ws" --secret compare-secret --api-key compare-key \
      --batch-ms 0
    stop_server
  done
fi
trap - EXIT INT TERM

python3 - "$out" "$k" "$scenario" "$conns" "$rate" "$dur" "$batch_ms" "$payload" <<'PY'
import json, os, sys

out, k, scenario, conns, rate, dur, batch_ms, payload = sys.argv[1:]
cols = [("shardcast", "shardcast"), ("shardcast-old", "shardcast-old"), ("nats", "nats-server"),
        ("floor-1", "floor 1 write/msg"), (f"floor-{k}", f"floor writev x{k}")]

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

reports = {name: load(name) for name, _ in cols}
own = {name: load(name + ".own") for name, _ in cols if name.startswith("floor")}

def cpu_per_m(r):
    c, d = r["server"]["cpu_seconds"], r["delivered"]
    return c / d * 1e6 if c is not None and d else None

def ms(v):
    return None if v is None else v / 1000.0

metrics = [
    ("connections subscribed", lambda r: r["connections"], "{:.0f}", False),
    ("delivered", lambda r: r["delivered"], "{:.0f}", False),
    ("lost", lambda r: r["lost"], "{:.0f}", False),
    ("deliveries/s", lambda r: r["deliveries_per_sec"], "{:,.0f}", True),
    ("server CPU-s per 1M deliveries", cpu_per_m, "{:.3f}", True),
    ("deliveries per server CPU-s", lambda r: r["server"]["deliveries_per_cpu_second"], "{:,.0f}", True),
    ("latency p50 (ms)", lambda r: ms(r["latency_us"]["p50"]), "{:.2f}", True),
    ("latency p99 (ms)", lambda r: ms(r["latency_us"]["p99"]), "{:.2f}", True),
    ("RSS per connection (B)", lambda r: r["server"]["rss_bytes_per_connection"], "{:,.0f}", True),
]

def val(name, f):
    r = reports.get(name)
    if r is None:
        return None
    try:
        return f(r)
    except (KeyError, TypeError, ZeroDivisionError):
        return None

ratio_cols = [("shardcast-old", "new/old"), ("nats", "shardcast/nats"),
              ("floor-1", "shardcast/floor-1"), (f"floor-{k}", f"shardcast/floor-{k}")]
# Columns of runs that did not happen (no SHARDCAST_BIN, NATS=0, no floor) are left out.
cols = [c for c in cols if reports.get(c[0]) is not None or c[0] == "shardcast"]
ratio_cols = [c for c in ratio_cols if reports.get(c[0]) is not None]
header = ["metric"] + [t for _, t in cols] + [t for _, t in ratio_cols]
rows = []
for label, f, fmt, with_ratio in metrics:
    row = [label]
    vals = {}
    for name, _ in cols:
        v = val(name, f)
        vals[name] = v
        row.append("-" if v is None else fmt.format(v))
    for name, _ in ratio_cols:
        a, b = vals["shardcast"], vals[name]
        row.append(f"{a / b:.2f}" if with_ratio and a is not None and b else "-")
    rows.append(row)

widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
line = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
print()
print(f"compare: {scenario}, {conns} connections, {rate} publications/s for {dur}, "
      f"payload {payload} B, shardcast batchMs={batch_ms}; servers on core 0, harness on core 1")
print(line(header))
print("  ".join("-" * w for w in widths))
for r in rows:
    print(line(r))
print("ratios are shardcast / other: below 1 is better for CPU per delivery, latency and RSS;"
      " above 1 is better for deliveries/s and deliveries per CPU-s")
for name, title in cols:
    o = own.get(name)
    if o:
        print(f"{title}: its own count (/proc/self/stat): {o['writes']} writes, "
              f"{o['cpu_us_per_write']} us CPU per write, {o['cpu_us_per_delivery']} us per delivery")
for name, title in cols:
    rc_path = os.path.join(out, name + ".rc")
    if os.path.exists(rc_path) and open(rc_path).read().strip() not in ("0", ""):
        print(f"note: the {title} run was not healthy (loadtest exit code "
              f"{open(rc_path).read().strip()}): see its output above")
PY
