// Reconnects against the real server, in Node: a SIGTERM drain (close 1001 with
// `reconnect in <ms>`) followed by a restart on the same port and data dir, after which
// the client reconnects by itself, resubscribes with since and is told recovered: false
// (history is memory: empty after a restart), so it asks the application to re-sync;
// and a dropped socket without a restart, where since recovers what was published
// meanwhile (recovered: true).
import test, { after, before } from "node:test";
import assert from "node:assert/strict";
import { ShardcastClient } from "../../dist/index.js";
import { Server, next, ready, token } from "../support/server.mjs";

if (!ready()) {
  test("reconnect (SKIPPED: see the line above)", () => {});
} else {
  let s;
  const clients = [];
  const make = (opts) => {
    const c = new ShardcastClient({ url: s.ws(), batchMs: 0, backoff: { initialMs: 100, maxMs: 400 }, ...opts });
    clients.push(c);
    return c;
  };
  before(async () => {
    s = await Server.start();
  });
  after(async () => {
    for (const c of clients) c.close();
    await s?.stop();
  });

  test("after a drain and a restart the client reconnects, resumes with since, and re-syncs", async () => {
    let tokens = 0;
    const c = make({ token: token(), getToken: () => (tokens++, token()) });
    const states = [];
    c.on("state", (st) => states.push(st));
    await c.connect();
    const got = [];
    const sub = await c.subscribe({ id: "jobs", path: "jobs" }, (e) => got.push(e.data.n));
    const before1 = next(c, "event", (e) => e.data.n === 1);
    const { firstSeq } = await s.publish({ path: "jobs/a", eventType: "e", data: { n: 1 } });
    await before1;
    assert.equal(sub.seq, firstSeq);

    const reconnecting = next(c, "state", (st) => st.state === "reconnecting", 5000);
    const resync = next(c, "resync", () => true, 15000);
    const exit = await s.drain();
    assert.deepEqual(exit, { code: 0, signal: null }, "a drain exits 0");
    const r = await reconnecting;
    assert.equal(r.code, 1001);
    assert.match(r.reason, /^reconnect in \d+$/);
    assert.equal(r.drain, true);
    assert.equal(r.delayMs, Number(r.reason.split(" ")[2]), "the server's delay is honoured");
    await s.spawn(); // same port, same data dir

    const info = await resync;
    assert.equal(info.subscription, sub);
    assert.equal(info.since, firstSeq, "resumed with since = the last seq seen");
    assert.ok(info.seq >= firstSeq, "seq never goes back across a restart");
    assert.equal(sub.recovered, false, "history does not survive a restart");
    assert.equal(c.state, "connected");
    assert.ok(tokens >= 1, "the refresh callback gave the reconnect its token");

    const after1 = next(c, "event", (e) => e.data.n === 2);
    const p2 = await s.publish({ path: "jobs/b", eventType: "e", data: { n: 2 } });
    const e2 = await after1;
    assert.ok(p2.firstSeq > firstSeq);
    assert.deepEqual(e2.subscriptionIds, ["jobs"]);
    assert.deepEqual(got, [1, 2]);
    assert.equal(sub.seq, p2.firstSeq);
    // Went through reconnecting, then connecting and connected again (and no closed).
    assert.ok(!states.some((st) => st.state === "closed"));
    assert.equal(states.at(-1).state, "connected");
  });

  test("a dropped socket resumes with since and recovers what was published meanwhile", async () => {
    let socket;
    const Tracking = class extends WebSocket {
      constructor(url) {
        super(url);
        socket = this;
      }
    };
    const c = make({ token: token(), WebSocket: Tracking, backoff: { initialMs: 300, maxMs: 300 } });
    await c.connect();
    const got = [];
    const resyncs = [];
    c.on("resync", (r) => resyncs.push(r));
    const sub = await c.subscribe({ id: "m", path: "missed" }, (e) => got.push(e.data.n));
    const first = next(c, "event", (e) => e.data.n === 0);
    await s.publish({ path: "missed/x", eventType: "e", data: { n: 0 } });
    await first;
    // Drop the socket under the client (as a network failure would: not close()).
    const reconnecting = next(c, "state", (st) => st.state === "reconnecting");
    socket.close(3000, "test drop");
    await reconnecting;
    // Published while no socket is open: only `since` can bring these.
    await s.publish([1, 2, 3].map((n) => ({ path: "missed/x", eventType: "e", data: { n } })));
    const last = next(c, "event", (e) => e.data.n === 4, 10000);
    await next(c, "state", (st) => st.state === "connected", 10000);
    await s.publish({ path: "missed/x", eventType: "e", data: { n: 4 } });
    await last;
    assert.deepEqual(got, [0, 1, 2, 3, 4], "the replay came in order, before the live one");
    assert.equal(sub.recovered, true);
    assert.deepEqual(resyncs, [], "nothing was lost: no resync");
  });
}
