#!/usr/bin/env python3
"""Measures channel backlogs against a shardcast binary on loopback (docs/PERFORMANCE.md,
"Channel backlogs on disk"; docs/SECURITY.md, "Channel limits").

  attack      one user token creates --channels channels on one path, then --events
              events of --size bytes are published; RSS and disk after that, and RSS after
              deleting every channel, for --rounds rounds (the issue 18 probe).
  throughput  one channel: a socket attached while --events events are published (live
              delivery), then --events more collected with no socket and read by one that
              attaches (replay); events per second of each, counted by the client.

Starts the server itself (a fresh data directory under /tmp, removed at the end) and
stops it. Standard library only: the WebSocket client is the few lines below.

  python3 scripts/channel_backlogs.py attack --bin target/release/shardcast \\
      --channels 1000 --max-per-user 1000
  python3 scripts/channel_backlogs.py throughput --bin target/release/shardcast
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SECRET = "measure-secret-0123456789abcdef"
API_KEY = "measure-api-key"
BASE = "/api/v1/realtime-subscriptions"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(sub, role="user", scopes=("jobs",)):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "role": role, "scopes": list(scopes), "exp": int(time.time()) + 7200}
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


class Server:
    def __init__(self, binary, extra=""):
        self.dir = tempfile.mkdtemp(prefix="shardcast-measure-")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        cfg = (
            f'listen = "127.0.0.1:{self.port}"\ndata_dir = "{self.dir}/data"\n{extra}\n'
            f'[auth]\njwt_secret = "{SECRET}"\napi_keys = ["{API_KEY}"]\n'
        )
        with open(f"{self.dir}/shardcast.toml", "w") as f:
            f.write(cfg)
        self.log = open(f"{self.dir}/server.log", "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", f"{self.dir}/shardcast.toml"],
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.http("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("server not healthy")

    def http(self, method, path, body=None, auth=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name):
        """The sum of a metric's series; `name{label="v"}` keeps the series with that
        label (every series also has the node's `node` label first)."""
        name, _, label = name.partition("{")
        label = label.rstrip("}")
        _, text = self.http("GET", "/metrics")
        total = None
        for line in text.decode().splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                if label and label not in line.rsplit(" ", 1)[0]:
                    continue
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total

    def wait_metric(self, name, want, within=300):
        deadline = time.time() + within
        while time.time() < deadline:
            if self.metric(name) == want:
                return
            time.sleep(0.2)
        raise SystemExit(f"{name} is {self.metric(name)}, not {want}")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def disk_mib(self):
        out = subprocess.run(["du", "-sk", f"{self.dir}/data"], capture_output=True, text=True)
        return int(out.stdout.split()[0]) / 1024

    def publish(self, events):
        st, body = self.http("POST", "/api/v1/publish", {"events": events}, f"apikey {API_KEY}")
        if st != 202:
            raise SystemExit(f"publish: {st} {body[:200]}")
        b = json.loads(body)
        return b["firstSeq"], b["lastSeq"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Ws:
    """A WebSocket client (RFC 6455) that reads text frames and counts events."""

    def __init__(self, port, path):
        self.s = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"upgrade refused: {head[:200]}")

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise SystemExit("socket closed")
            self.buf += chunk

    def frame(self):
        self._need(2)
        op, ln = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        at = 2
        if ln == 126:
            self._need(4)
            ln, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif ln == 127:
            self._need(10)
            ln, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(at + ln)
        payload, self.buf = self.buf[at : at + ln], self.buf[at + ln :]
        return op, payload

    def events(self, n):
        """Reads until n events have arrived (counted by `"channelId"`, not parsed)."""
        got = 0
        while got < n:
            op, payload = self.frame()
            if op == 1:
                got += payload.count(b'"channelId"')
            elif op == 8:
                raise SystemExit(f"closed: {payload}")

    def close(self):
        self.s.close()


def create_channels(srv, tok, n):
    ids, refused = [], 0
    for _ in range(n):
        st, body = srv.http("POST", f"{BASE}/", {"path": "jobs", "event_types": [], "filter": None}, f"Bearer {tok}")
        if st == 201:
            ids.append(json.loads(body)["channel_id"])
        elif st == 429:
            refused += 1
        else:
            raise SystemExit(f"create: {st} {body[:200]}")
    return ids, refused


def attack(a):
    extra = f"[channels]\nmax_per_user = {a.max_per_user}\n" if a.max_per_user else ""
    srv = Server(a.bin, extra)
    tok = token("attacker")
    pad = "x" * a.size
    try:
        print(f"start: RSS {srv.rss_mib():.0f} MiB, disk {srv.disk_mib():.0f} MiB")
        collected = 0
        for r in range(1, a.rounds + 1):
            ids, refused = create_channels(srv, tok, a.channels)
            for i in range(0, a.events, a.batch):
                srv.publish([{"path": "jobs/x", "eventType": "e", "data": {"n": i + j, "pad": pad}} for j in range(min(a.batch, a.events - i))])
            collected += len(ids) * a.events
            srv.wait_metric("shardcast_channel_events_total", float(collected))
            cache = srv.metric("shardcast_channel_backlog_cache_bytes")
            print(
                f"round {r}: {len(ids)} channels created, {refused} refused (429); "
                f"after {a.events} events of {a.size} B: RSS {srv.rss_mib():.0f} MiB, "
                f"disk {srv.disk_mib():.0f} MiB, backlog cache {cache} B"
            )
            for cid in ids:
                st, body = srv.http("DELETE", f"{BASE}/{cid}", None, f"Bearer {tok}")
                if st != 200:
                    raise SystemExit(f"delete: {st} {body[:200]}")
            srv.wait_metric("shardcast_channel_backlog_events", 0.0)
            time.sleep(a.settle)
            print(
                f"round {r}: after deleting them: RSS {srv.rss_mib():.0f} MiB, "
                f"disk {srv.disk_mib():.0f} MiB, backlog cache "
                f"{srv.metric('shardcast_channel_backlog_cache_bytes')} B"
            )
    finally:
        srv.stop()


def throughput(a):
    srv = Server(a.bin)
    tok = token("reader")
    pad = "x" * a.size
    try:
        (cid,), _ = create_channels(srv, tok, 1)
        batches = [
            [{"path": "jobs/x", "eventType": "e", "data": {"n": i + j, "pad": pad}} for j in range(a.batch)]
            for i in range(0, a.events, a.batch)
        ]
        n = len(batches) * a.batch
        ws = Ws(srv.port, f"/channels/{cid}?token={tok}&batchMs=0&framing=array&batchMax=1000")
        ws.frame()  # authenticated
        t0 = time.time()
        for b in batches:
            srv.publish(b)
        ws.events(n)
        live = n / (time.time() - t0)
        ws.close()
        srv.wait_metric('shardcast_channels{status="disconnected"}', 1.0)
        for b in batches:
            srv.publish(b)
        srv.wait_metric("shardcast_channel_backlog_events", float(n))
        ws = Ws(srv.port, f"/channels/{cid}?token={tok}&batchMs=0&framing=array&batchMax=1000")
        ws.frame()
        t0 = time.time()
        ws.events(n)
        replay = n / (time.time() - t0)
        ws.close()
        print(f"{n} events of {a.size} B: live {live:,.0f} events/s (publish to receipt), replay {replay:,.0f} events/s")
    finally:
        srv.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["attack", "throughput"])
    p.add_argument("--bin", default="target/release/shardcast")
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=20, help="events per REST publish")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-per-user", type=int, default=0, help="channels.max_per_user (0: the default)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the deletes before RSS is read")
    a = p.parse_args()
    if a.events % a.batch:
        sys.exit("--events must be a multiple of --batch")
    attack(a) if a.mode == "attack" else throughput(a)


if __name__ == "__main__":
    main()
