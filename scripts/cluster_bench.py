#!/usr/bin/env python3
"""Cluster mode figures for docs/PERFORMANCE.md ("Cluster mode"), on loopback:

  commands   Redis commands per publication (single and batched), per entity write and
             per delivery, from Redis's own INFO commandstats around each phase.
  latency    publish -> deliver p50/p99 with the subscribers on node A and the publisher
             on node B, at ~10k and ~100k deliveries/s, against a single node.
  throughput publications per second one Redis takes from three nodes at once
             (batches of 100, keep-alive, one publisher thread per node).
  services   service tasks end to end (loadtest services --mode e2e: publish -> task
             -> taskComplete), the instances on node A and the publisher on node B,
             against a single node; and Redis commands per task.

Usage: scripts/cluster_bench.py [commands|latency|throughput|services|all]
Needs: release builds (cargo build --release -p shardcast -p loadtest), redis-server.
SHARDCAST_BIN=path runs another shardcast build. Everything it starts it stops.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SHARDCAST_BIN", os.path.join(ROOT, "target/release/shardcast"))
LOADTEST = os.path.join(ROOT, "target/release/loadtest")
SECRET, KEY = "perf-secret", "perf-key"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(cond, within=30.0, what="condition"):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(lambda: socket.create_connection(("127.0.0.1", self.port), 0.2), what="redis")

    def cmd(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args],
                             capture_output=True, text=True, check=True).stdout
        return out

    def calls(self):
        """{command: calls} from INFO commandstats."""
        stats = {}
        for line in self.cmd("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                fields = dict(kv.split("=") for kv in rest.split(","))
                stats[name] = int(fields["calls"])
        return stats

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Node:
    def __init__(self, tmp, name, redis=None):
        self.port = free_port()
        cfg = os.path.join(tmp, f"{name}.toml")
        cluster = f'[cluster]\nredis_url = "redis://127.0.0.1:{redis.port}"\nnode_id = "{name}"\n' if redis else ""
        with open(cfg, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\nshards = 1\ndata_dir = "{tmp}/data-{name}"\n'
                    f'[auth]\njwt_secret = "{SECRET}"\napi_keys = ["{KEY}"]\n{cluster}')
        self.log = open(os.path.join(tmp, f"{name}.log"), "w")
        self.proc = subprocess.Popen([BIN, "serve", "--config", cfg], stdout=self.log, stderr=self.log)
        wait(lambda: self.get("/readyz") == 200, what=f"node {name} ready")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        c.request("GET", path)
        return c.getresponse().status

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def publish_batches(node, batches, size, out):
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    body = json.dumps({"events": [{"path": "bench/x", "eventType": "e", "data": i} for i in range(size)]})
    ok = 0
    for _ in range(batches):
        c.request("POST", "/api/v1/publish", body, {"Authorization": f"apikey {KEY}",
                                                    "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status == 202:
            ok += size
    out.append(ok)


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def loadtest(args):
    out = subprocess.run([LOADTEST, *args, "--json", "-"], capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"loadtest failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")


def commands(tmp):
    redis = Redis(tmp)
    nodes = [Node(tmp, n, redis) for n in "abc"]
    try:
        rows = []
        # Single publications: 2000 requests of 1, through node b.
        before = redis.calls()
        got = []
        publish_batches(nodes[1], 2000, 1, got)
        time.sleep(1.5)  # every node's reader reads to the end (one XREAD per wake-up)
        d = delta(redis.calls(), before)
        rows.append(("publish, 1 per request", got[0], d))
        before = redis.calls()
        got = []
        publish_batches(nodes[1], 200, 100, got)
        time.sleep(1.5)
        d = delta(redis.calls(), before)
        rows.append(("publish, batches of 100", got[0], d))
        before = redis.calls()
        r = loadtest(["entities", "--http", f"http://127.0.0.1:{nodes[1].port}", "--api-key", KEY,
                      "--connections", "8", "--pipeline", "8", "--rate", "2000", "--duration", "3s",
                      "--entities", "1000"])
        time.sleep(1.5)
        d = delta(redis.calls(), before)
        rows.append(("entity PUT", r["acknowledged"], d))
        # Deliveries: 100 subscribers on node a, 2000 publications from node b.
        before = redis.calls()
        r = loadtest(["fanout", "--url", f"ws://127.0.0.1:{nodes[0].port}/ws",
                      "--http", f"http://127.0.0.1:{nodes[1].port}", "--secret", SECRET,
                      "--api-key", KEY, "--connections", "100", "--rate", "500", "--duration", "4s",
                      "--batch-ms", "0"])
        time.sleep(1.5)
        d = delta(redis.calls(), before)
        rows.append((f"fan-out: {r['delivered']} deliveries of {r['published']} publications", r["published"], d))
        for what, n, d in rows:
            total = sum(d.values())
            per = {k: round(v / n, 3) for k, v in sorted(d.items())}
            print(f"{what}: n={n}, Redis commands {total} ({total / n:.2f} per op; per op by command: {per})")
    finally:
        for n in nodes:
            n.stop()
        redis.stop()


def latency(tmp):
    runs = []
    for label, conns in (("10k/s", 100), ("100k/s", 1000)):
        for mode in ("single", "cluster"):
            redis = Redis(tmp) if mode == "cluster" else None
            if mode == "cluster":
                a, b = Node(tmp, f"a{conns}", redis), Node(tmp, f"b{conns}", redis)
            else:
                a = Node(tmp, f"s{conns}")
                b = a
            try:
                r = loadtest(["fanout", "--url", f"ws://127.0.0.1:{a.port}/ws",
                              "--http", f"http://127.0.0.1:{b.port}", "--secret", SECRET,
                              "--api-key", KEY, "--connections", str(conns), "--rate", "100",
                              "--duration", "10s", "--batch-ms", "0"])
                lat = r["latency_us"]
                runs.append((label, mode, r["delivered"], r["lost"], lat.get("p50"), lat.get("p99")))
            finally:
                a.stop()
                if b is not a:
                    b.stop()
                if redis:
                    redis.stop()
    for label, mode, delivered, lost, p50, p99 in runs:
        print(f"{label} {mode}: delivered {delivered}, lost {lost}, p50 {p50 / 1000:.2f} ms, p99 {p99 / 1000:.2f} ms")


def throughput(tmp):
    redis = Redis(tmp)
    nodes = [Node(tmp, n, redis) for n in "abc"]
    try:
        for what, batches, size in (("batches of 100", 300, 100),
                                    ("single publications, one connection per node", 3000, 1)):
            got = []
            threads = [threading.Thread(target=publish_batches, args=(n, batches, size, got))
                       for n in nodes]
            start = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.time() - start
            total = sum(got)
            print(f"three nodes, {what}: {total} publications in {took:.2f} s = {total / took:,.0f}/s")
    finally:
        for n in nodes:
            n.stop()
        redis.stop()


def services(tmp):
    runs = []
    for mode in ("single", "cluster"):
        redis = Redis(tmp) if mode == "cluster" else None
        if redis:
            a, b = Node(tmp, "sa", redis), Node(tmp, "sb", redis)
        else:
            a = b = Node(tmp, "ss")
        try:
            before = redis.calls() if redis else {}
            r = loadtest(["services", "--mode", "e2e", "--ws", f"ws://127.0.0.1:{a.port}/ws",
                          "--http", f"http://127.0.0.1:{b.port}", "--secret", SECRET,
                          "--api-key", KEY, "--instances", "4", "--batch-ms", "0",
                          "--batch", "100", "--connections", "2", "--pipeline", "2",
                          "--rate", os.environ.get("SERVICES_RATE", "20000"), "--duration", "10s"])
            per_task = None
            if redis:
                d = delta(redis.calls(), before)
                done = max(1, r["tasks"]["completed"])
                per_task = sum(d.values()) / done
            runs.append((mode, r, per_task))
        finally:
            a.stop()
            if b is not a:
                b.stop()
            if redis:
                redis.stop()
    for mode, r, per_task in runs:
        t, lat = r["tasks"], r["tasks"].get("latency_ms") or {}
        extra = f", Redis commands per task {per_task:.2f}" if per_task is not None else ""
        print(f"services e2e {mode}: accepted {r['publish']['events_accepted']}, completed "
              f"{t['completed']}, lost {t.get('lost')}, duplicates {t.get('duplicates')}, "
              f"{t.get('tasks_per_sec') or 0:,.0f} tasks/s, latency p50 {lat.get('p50')} ms, "
              f"p99 {lat.get('p99')} ms{extra}")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    for b in (BIN, LOADTEST):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: cargo build --release -p shardcast -p loadtest")
    with tempfile.TemporaryDirectory(prefix="shardcast-cluster-bench-") as tmp:
        if what in ("commands", "all"):
            commands(tmp)
        if what in ("latency", "all"):
            latency(tmp)
        if what in ("throughput", "all"):
            throughput(tmp)
        if what in ("services", "all"):
            services(tmp)


if __name__ == "__main__":
    main()
