#!/bin/bash
# usage: loadtest/publish-stall.sh BIN PORT [BODIES] [EVENTS]  -- the longest loop turn
# (shardcast_shard_loop_turn_max_seconds) while one keep-alive connection publishes BODIES
# (default 5) batches of EVENTS (default 10000, limits.max_publish_batch) 150-byte events,
# on a fresh node with shards = 1 and the whole server on core 0 (issue 21, "The rest of
# the budget" in docs/PERFORMANCE.md). Prints each request's time as the publisher sees it.
set -euo pipefail
BIN=$1; PORT=$2; NB=${3:-5}; BS=${4:-10000}; D=$(mktemp -d)
cat > "$D/c.toml" <<EOC
listen = "127.0.0.1:$PORT"
shards = 1
data_dir = "$D/data"
[auth]
jwt_secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
api_keys = ["k"]
EOC
taskset -c 0 "$BIN" serve --config "$D/c.toml" > "$D/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
taskset -c 1 python3 - "$PORT" "$NB" "$BS" <<'EOP'
import sys, json, http.client, time
port, nb, bs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
pad = "x" * 150
took = []
for b in range(nb):
    body = json.dumps({"events": [{"path": "hist/a", "eventType": "tick", "data": {"i": i, "pad": pad}} for i in range(bs)]})
    t = time.time()
    c.request("POST", "/api/v1/publish", body, {"Authorization": "apikey k", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
    took.append("%.1f" % ((time.time() - t) * 1000))
print("requests (ms):", " ".join(took))
EOP
curl -s "127.0.0.1:$PORT/metrics" | grep '^shardcast_shard_loop_turn_max_seconds'
