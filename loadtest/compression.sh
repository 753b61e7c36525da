#!/usr/bin/env bash
# permessage-deflate against plain delivery, side by side in one run (docs/PERFORMANCE.md,
# "Compression (permessage-deflate)"): a release shardcast with one shard pinned to core 0
# and delivery.compression = "on", the harness pinned to core 1; for each row, plain and
# compressed subscribers (loadtest --compression) alternate ROUNDS times.
#   loadtest/compression.sh CONNECTIONS RATE BATCH_MS FRAMING DURATION [ROUNDS]
#   e.g. loadtest/compression.sh 10000 20 0 frames 15s 2
# Prints one line per run: egress bytes per delivery (the server's
# shardcast_bytes_written_total over deliveries: handshakes and answers included, under
# 0.1% here) and the server's CPU per delivery (from /proc over the delivery window, as
# the fanout scenario reports it). Reports go to OUT (default target/perf-compression).
# Needs: cargo build --release -p shardcast -p loadtest; taskset; curl.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=$1 rate=$2 batch_ms=$3 framing=$4 dur=$5 rounds=${6:-2}
out=${OUT:-target/perf-compression}
bin=${TARGET_DIR:-target}/release
for b in "$bin/shardcast" "$bin/loadtest"; do
  [ -x "$b" ] || { echo "$b is missing: cargo build --release -p shardcast -p loadtest" >&2; exit 2; }
done
mkdir -p "$out"
run() { # name, extra loadtest flag
  local name=$1 flag=$2 port server
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$out/data-$name"
  cat > "$out/$name.toml" <<TOML
listen = "127.0.0.1:$port"
shards = 1
data_dir = "$out/data-$name"
[delivery]
compression = "on"
[auth]
jwt_secret = "perf-secret"
api_keys = ["perf-key"]
TOML
  taskset -c 0 "$bin/shardcast" serve --config "$out/$name.toml" > "$out/$name.server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
  taskset -c 1 "$bin/loadtest" fanout --url "ws://127.0.0.1:$port/ws" --http "http://127.0.0.1:$port" \
    --secret perf-secret --api-key perf-key --connections "$conns" --rate "$rate" --duration "$dur" \
    --batch-ms "$batch_ms" --framing "$framing" $flag --server-pid "$server" \
    --json "$out/$name.json" > "$out/$name.out" 2>&1 || true
  local bytes
  bytes=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^shardcast_bytes_written_total/ {s+=$2} END {print s+0}')
  kill $server; wait $server 2>/dev/null || true
  python3 - "$out/$name.json" "$bytes" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); b = float(sys.argv[2]); name = sys.argv[3]
d = r["clients"]["delivered"] if "clients" in r else r["delivered"]
dps = r.get("server", {}).get("deliveries_per_cpu_second") or r.get("deliveries_per_cpu_second")
us = 1e6 / dps if dps else float("nan")
print(f"{name:<40} delivered {d:>10}  bytes/delivery {b / max(d, 1):8.1f}  server cpu us/delivery {us:6.3f}")
PY
}
for i in $(seq "$rounds"); do
  run "plain-$conns-$framing-b$batch_ms-$i" ""
  run "deflate-$conns-$framing-b$batch_ms-$i" "--compression"
done
