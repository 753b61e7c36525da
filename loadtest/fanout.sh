#!/usr/bin/env bash
# One side-by-side-ready fan-out measurement, as in docs/PERFORMANCE.md: a release
# shardcast with one shard pinned to core 0, the harness pinned to core 1.
#   loadtest/fanout.sh NAME CONNECTIONS RATE BATCH_MS DURATION [OUTDIR]
# e.g. loadtest/fanout.sh b0 10000 20 0 15s   → OUTDIR/b0.json (default OUTDIR: target/perf)
# Needs: cargo build --release -p shardcast -p loadtest; taskset (util-linux).
# SHARDCAST_BIN=path runs another shardcast build (before/after comparisons);
# LOADTEST_BIN=path another harness build.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 conns=$2 rate=$3 batch_ms=$4 dur=$5 out=${6:-target/perf}
command -v taskset >/dev/null || { echo "taskset (util-linux) is missing" >&2; exit 2; }
server_bin=${SHARDCAST_BIN:-target/release/shardcast}
harness_bin=${LOADTEST_BIN:-target/release/loadtest}
for b in "$server_bin" "$harness_bin"; do
  [ -x "$b" ] || { echo "$b is missing: cargo build --release -p shardcast -p loadtest" >&2; exit 2; }
done
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$out/$name.toml" <<TOML
listen = "127.0.0.1:$port"
shards = 1
data_dir = "$out/data-$name"
[auth]
jwt_secret = "perf-secret"
api_keys = ["perf-key"]
TOML
taskset -c 0 "$server_bin" serve --config "$out/$name.toml" > "$out/$name.server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
taskset -c 1 "$harness_bin" fanout --url "ws://127.0.0.1:$port/ws" --http "http://127.0.0.1:$port" \
  --secret perf-secret --api-key perf-key --connections "$conns" --rate "$rate" --duration "$dur" \
  --batch-ms "$batch_ms" --server-pid "$server" --json "$out/$name.json"
