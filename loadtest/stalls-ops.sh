#!/bin/bash
# usage: loadtest/stalls-ops.sh BIN PORT  -- the longest loop turn (to its bucket, from
# shardcast_shard_loop_turn_seconds) while a channel socket attaches to a full backlog
# (10,000 events) and while a subscription replays the whole history window (since 0 over
# 100,000 publications), on a fresh node with shards = 1 (issue 21, docs/PERFORMANCE.md).
BIN=$1; PORT=$2; D=$(mktemp -d)
cat > $D/c.toml <<EOC
listen = "127.0.0.1:$PORT"
shards = 1
data_dir = "$D/data"
[auth]
jwt_secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
api_keys = ["k"]
EOC
$BIN serve --config $D/c.toml > $D/log 2>&1 &
PID=$!
for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$PORT/healthz && break; sleep 0.1; done
snap() { curl -s 127.0.0.1:$PORT/metrics | grep '^shardcast_shard_loop_turn_seconds_bucket' > $D/$1; }
# the highest bucket that gained a turn between two snapshots
longest() { python3 -c "
import sys
def rd(f): return [(l.split('le=\"')[1].split('\"')[0], float(l.split()[-1])) for l in open(f)]
a=rd('$D/$1'); b=rd('$D/$2'); prev=0; top='none'
for (le,x),(_,y) in zip(a,b):
    d=y-x
    if d>prev: top=le
    prev=d
print('longest turn <= '+top+' s')"; }
# a channel with a full backlog (10000 events)
TOK=$(python3 -c "
import base64,hmac,hashlib,json,time
b=lambda d: base64.urlsafe_b64encode(d).rstrip(b'=')
h=b(json.dumps({'alg':'HS256','typ':'JWT'}).encode()); p=b(json.dumps({'sub':'u2','role':'user','scopes':['*'],'exp':int(time.time())+3600}).encode())
print((h+b'.'+p+b'.'+b(hmac.new(b's3cret-s3cret-s3cret-s3cret-s3cret',h+b'.'+p,hashlib.sha256).digest())).decode())")
CH=$(curl -s -X POST 127.0.0.1:$PORT/api/v1/realtime-subscriptions/ -H "Authorization: Bearer $TOK" -H 'Content-Type: application/json' -d '{"path":"chan","event_types":[]}')
CID=$(echo "$CH" | python3 -c "import sys,json; print(json.load(sys.stdin)['channel_id'])")
python3 - $PORT <<'EOP'
import sys, json, http.client
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port)
pad = "x" * 150
for b in range(11):
    ev = [{"path": "chan/a", "eventType": "tick", "data": {"i": b * 1000 + i, "pad": pad}} for i in range(1000)]
    c.request("POST", "/api/v1/publish", json.dumps({"events": ev}), {"Authorization": "apikey k", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
EOP
sleep 1
echo "channel backlog: $(curl -s 127.0.0.1:$PORT/api/v1/realtime-subscriptions/$CID -H "Authorization: Bearer $TOK" | python3 -c 'import sys,json; print(json.load(sys.stdin).get("event_count"))') events"
snap c0; N=$(python3 $(dirname "$0")/stalls_ws.py $PORT /channels/$CID s3cret-s3cret-s3cret-s3cret-s3cret u2 user 3)
snap c1; echo "channel attach: $N messages; $(longest c0 c1)"
# 100k events (the history window) in batches of 1000
python3 - $PORT <<'EOP'
import sys, json, http.client
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port)
pad = "x" * 150
for b in range(100):
    ev = [{"path": "hist/a", "eventType": "tick", "data": {"i": b * 1000 + i, "pad": pad}} for i in range(1000)]
    c.request("POST", "/api/v1/publish", json.dumps({"events": ev}), {"Authorization": "apikey k", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
EOP
snap h0; N=$(python3 $(dirname "$0")/stalls_ws.py $PORT /ws s3cret-s3cret-s3cret-s3cret-s3cret u1 user 3 '{"type":"subscribeEvents","requestId":"r","subscriptions":[{"id":"h","path":"hist","since":0}]}')
snap h1; echo "since=0 replay: $N messages; $(longest h0 h1)"
kill $PID; wait $PID 2>/dev/null
rm -rf $D
