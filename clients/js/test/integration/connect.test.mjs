// Against the real server, in Node: the three ways to authenticate (?token=, a ticket
// from a callback, the auth message), subscribe and receive with events and filters,
// subscriptionRefresh, request errors rejecting with the server's code, and 4001 as a
// terminal state with no retry left scheduled.
import test, { after, before } from "node:test";
import assert from "node:assert/strict";
import { ShardcastClient, fetchTicket } from "../../dist/index.js";
import { Server, countingTimers, next, ready, token, waitFor } from "../support/server.mjs";

if (!ready()) {
  test("connect (SKIPPED: see the line above)", () => {});
} else {
  let s;
  const clients = [];
  const make = (opts) => {
    const c = new ShardcastClient({ url: s.ws(), batchMs: 0, ...opts });
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

  /** Subscribes to `path` and resolves with the first event a publish there brings. */
  async function roundTrip(c, id) {
    const got = [];
    const sub = await c.subscribe({ id, path: `rt/${id}` }, (e) => got.push(e));
    assert.equal(typeof sub.seq, "number");
    const arrived = next(c, "event", (e) => e.path === `rt/${id}/x`);
    const { firstSeq } = await s.publish({ path: `rt/${id}/x`, eventType: "ping", data: { id } });
    const e = await arrived;
    assert.equal(e.seq, firstSeq);
    assert.deepEqual([e.path, e.eventType, e.data, e.subscriptionIds], [`rt/${id}/x`, "ping", { id }, [id]]);
    assert.match(e.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(got.length, 1, "the subscription's handler got it too");
    assert.equal(sub.seq, firstSeq, "the last seq seen");
  }

  test("?token= connects and resolves on authenticated", async () => {
    const c = make({ token: token() });
    const states = [];
    c.on("state", (st) => states.push(st.state));
    await c.connect();
    assert.equal(c.state, "connected");
    assert.match(c.connectionId, /.+-\d+-\d+/);
    assert.equal(c.heartbeatMs, 30000);
    assert.deepEqual(states, ["connecting", "connected"]);
    await roundTrip(c, "token");
  });

  test("a ticket fetched by the callback (POST /api/v1/ws-tickets) connects with ?uuid=", async () => {
    let fetched = 0;
    const t = token({ sub: "ticket-user" });
    const c = make({ getTicket: () => (fetched++, fetchTicket(s.base, t)) });
    await c.connect();
    assert.equal(fetched, 1);
    await roundTrip(c, "ticket");
    // A ticket is single use: a second socket with the same one is refused.
    const uuid = await fetchTicket(s.base, t);
    const first = make({ getTicket: () => uuid, reconnect: false });
    await first.connect();
    const second = make({ getTicket: () => uuid });
    await assert.rejects(second.connect(), (e) => e.code === "UNAUTHORIZED");
  });

  test("fetchTicket rejects with the server's code (an api key is no Bearer token)", async () => {
    await assert.rejects(fetchTicket(s.base, "not-a-jwt"), (e) => e.code === "UNAUTHORIZED");
  });

  test("first-message auth keeps the token out of the URL", async () => {
    const c = make({ token: token(), auth: "message" });
    await c.connect();
    await roundTrip(c, "message");
  });

  test("events and filter narrow what arrives; a later event proves the others did not", async () => {
    const c = make({ token: token() });
    await c.connect();
    const got = [];
    await c.subscribe({ id: "f", path: "orders", events: ["paid"], filter: "total > 10 && status == 'ok'" }, (e) => got.push(e.data.n));
    const last = next(c, "event", (e) => e.data.n === 4);
    await s.publish([
      { path: "orders/1", eventType: "paid", data: { n: 1, total: 5, status: "ok" } },
      { path: "orders/2", eventType: "refunded", data: { n: 2, total: 50, status: "ok" } },
      { path: "orders/3", eventType: "paid", data: { n: 3, total: 50, status: "bad" } },
      { path: "orders/4", eventType: "paid", data: { n: 4, total: 50, status: "ok" } },
    ]);
    await last;
    assert.deepEqual(got, [4]);
  });

  test("an entity that leaves a filtered subscription brings subscriptionRefresh", async () => {
    const c = make({ token: token() });
    await c.connect();
    const refreshes = [];
    await c.subscribe({ id: "denials", path: "accounts", filter: "status == 'denied'" }, undefined, {
      onRefresh: (r) => refreshes.push(r),
    });
    const created = next(c, "event", (e) => e.path === "accounts/acc_7");
    assert.equal((await s.http("PUT", "/api/v1/entities/accounts/acc_7", { status: "denied" })).status, 200);
    await created;
    const refreshed = next(c, "refresh");
    const put = await s.http("PUT", "/api/v1/entities/accounts/acc_7", { status: "ok" });
    const r = await refreshed;
    assert.deepEqual([r.subscriptionId, r.path, r.entityId, r.seq], ["denials", "accounts/acc_7", "acc_7", put.body.seq]);
    assert.equal(refreshes.length, 1);
    assert.equal(c.subscription("denials").seq, put.body.seq);
  });

  test("a malformed filter rejects subscribe with INVALID_FILTER and the byte offset", async () => {
    const c = make({ token: token() });
    await c.connect();
    await assert.rejects(c.subscribe({ id: "bad", path: "jobs", filter: "status == " }), (e) =>
      e.code === "INVALID_FILTER" && e.subscriptionId === "bad" && /byte \d+/.test(e.message));
    assert.equal(c.subscription("bad"), undefined);
    // A scope the token lacks: FORBIDDEN, as the server's code.
    const narrow = make({ token: token({ scopes: ["jobs"] }) });
    await narrow.connect();
    await assert.rejects(narrow.subscribe({ id: "o", path: "orders" }), (e) => e.code === "FORBIDDEN");
    // A user asking for a lock: the error answer (with requestId) rejects the request.
    await assert.rejects(narrow.lock("l", { ttlMs: 1000 }), (e) => e.code === "FORBIDDEN" && typeof e.requestId === "string");
    // Unsubscribing reports what was removed.
    await narrow.subscribe({ id: "j", path: "jobs" });
    assert.deepEqual(await narrow.unsubscribe(["j"]), ["j"]);
  });

  test("an expired token: UNAUTHORIZED, close 4001, state closed, and no retry scheduled", async () => {
    const timers = countingTimers();
    let sockets = 0;
    const Counting = class extends WebSocket {
      constructor(url) {
        super(url);
        sockets++;
      }
    };
    const c = make({ token: token({ exp: -60 }), getToken: () => token({ exp: -60 }), timers, WebSocket: Counting });
    const closed = next(c, "state", (st) => st.state === "closed");
    await assert.rejects(c.connect(), (e) => e.code === "UNAUTHORIZED" && /expired/i.test(e.message));
    const st = await closed;
    assert.equal(st.code, 4001);
    assert.equal(st.error.code, "UNAUTHORIZED");
    // Nothing is scheduled, so nothing can ever retry; and one socket was all it took.
    assert.equal(timers.live.size, 0);
    assert.equal(sockets, 1);
    assert.equal(c.state, "closed");
  });

  test("framing=array: batch messages are unwrapped, in order", async () => {
    let frames = 0;
    const Counting = class extends WebSocket {
      constructor(url) {
        super(url);
        this.addEventListener("message", () => frames++);
      }
    };
    const c = make({ token: token(), framing: "array", batchMs: 200, WebSocket: Counting });
    await c.connect();
    const got = [];
    await c.subscribe({ id: "arr", path: "arr" }, (e) => got.push(e.data));
    const last = next(c, "event", (e) => e.data === 4);
    const before = frames;
    await s.publish([0, 1, 2, 3, 4].map((n) => ({ path: "arr/x", eventType: "e", data: n })));
    await last;
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.ok(frames - before < 5, `5 events came in ${frames - before} frame(s)`);
  });

  test("the server's pings are answered: the socket outlives many heartbeats", async () => {
    const hb = await Server.start("[delivery]\nbatch_ms = 0\nheartbeat_ms = 100\npong_timeout_ms = 150\n");
    try {
      const c = make({ url: hb.ws(), token: token() });
      const states = [];
      c.on("state", (st) => states.push(st.state));
      let pings = 0;
      c.on("message", (m) => m.type === "ping" && pings++);
      await c.connect();
      const id = c.connectionId;
      assert.equal(c.heartbeatMs, 100);
      // Unanswered, the server would close with 4003 after one ping and 150 ms.
      await waitFor(() => pings >= 6, "six pings", 5000);
      assert.equal(c.connectionId, id);
      assert.deepEqual(states, ["connecting", "connected"]);
      c.close();
    } finally {
      await hb.stop();
    }
  });

  test("options out of the server's range end the client with BAD_MESSAGE, in both auth modes", async () => {
    for (const auth of ["query", "message"]) {
      const timers = countingTimers();
      const c = make({ token: token(), auth, batchMs: 99999999, timers });
      await assert.rejects(c.connect(), (e) => e.code === "BAD_MESSAGE" && /batchMs/.test(e.message), auth);
      assert.equal(c.state, "closed");
      assert.equal(timers.live.size, 0, `${auth}: no retry scheduled`);
    }
  });

  test("ping resolves on the server's pong", async () => {
    const c = make({ token: token() });
    await c.connect();
    await c.ping();
  });
}
