// ShardcastClient against a fake socket whose server side the test plays, on a virtual
// clock: connecting and authenticating, reconnects (backoff, drain delay, 4001),
// requestId correlation, batch unwrapping, resubscribe with since, overflow, services.
import test from "node:test";
import assert from "node:assert/strict";
import { ShardcastClient, ShardcastError } from "../../dist/index.js";
import { FakeTimers, fakeWebSocket, flush, until } from "../support/fake.mjs";

function setup(extra = {}) {
  const timers = new FakeTimers();
  const { WebSocket, sockets } = fakeWebSocket();
  const client = new ShardcastClient({
    url: "ws://127.0.0.1:9/ws",
    token: "tok-1",
    WebSocket,
    timers,
    random: () => 1,
    backoff: { initialMs: 100, maxMs: 1000 },
    ...extra,
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  const errors = [];
  client.on("error", (e) => errors.push(e));
  return { client, timers, sockets, states, errors };
}

async function connected(extra) {
  const t = setup(extra);
  const p = t.client.connect();
  const ws = await until(() => t.sockets[0], "a socket");
  ws.accept();
  await p;
  return { ...t, ws };
}

/** Answers the last subscribeEvents on `ws` accepting every entry. */
function acceptSubscribe(ws, seq = 100, recovered) {
  const req = ws.ofType("subscribeEvents").at(-1);
  ws.receive({
    type: "subscribedEvents",
    requestId: req.requestId,
    subscriptions: req.subscriptions.map((s) => ({
      id: s.id, path: s.path, events: s.events ?? [], seq,
      ...(s.since !== undefined ? { recovered: recovered ?? true } : {}),
    })),
  });
  return req;
}

test("connect puts the token and options in the URL and resolves on authenticated", async () => {
  const { client, sockets, states } = setup({ batchMs: 0, framing: "array" });
  const p = client.connect();
  const ws = await until(() => sockets[0], "a socket");
  assert.equal(ws.url.pathname, "/ws");
  assert.equal(ws.url.searchParams.get("token"), "tok-1");
  assert.equal(ws.url.searchParams.get("batchMs"), "0");
  assert.equal(ws.url.searchParams.get("framing"), "array");
  let resolved = false;
  p.then(() => (resolved = true));
  ws.open();
  await flush();
  assert.equal(resolved, false, "open alone is not authenticated");
  ws.receive({ type: "authenticated", connectionId: "n-1-7", heartbeatMs: 30000 });
  await p;
  assert.equal(client.state, "connected");
  assert.equal(client.connectionId, "n-1-7");
  assert.deepEqual(states.map((s) => s.state), ["connecting", "connected"]);
});

test("first-message auth sends the token and options in the auth message, not the URL", async () => {
  const { client, sockets } = setup({ auth: "message", batchMs: 0 });
  const p = client.connect();
  const ws = await until(() => sockets[0], "a socket");
  assert.equal(ws.url.searchParams.get("token"), null);
  assert.equal(ws.url.searchParams.get("batchMs"), null);
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "auth", token: "tok-1", options: { batchMs: 0 } }]);
  ws.receive({ type: "authenticated", connectionId: "c", heartbeatMs: 30000 });
  await p;
});

test("a ticket callback is asked for a fresh ticket on every attempt", async () => {
  let n = 0;
  const { client, sockets, timers } = setup({ token: undefined, getTicket: async () => `ticket-${++n}` });
  const p = client.connect();
  const ws = await until(() => sockets[0], "a socket");
  assert.equal(ws.url.searchParams.get("uuid"), "ticket-1");
  assert.equal(ws.url.searchParams.get("token"), null);
  ws.accept();
  await p;
  ws.serverClose(1006);
  timers.advance(100);
  const ws2 = await until(() => sockets[1], "a second socket");
  assert.equal(ws2.url.searchParams.get("uuid"), "ticket-2");
});

test("a drain close waits the server's delay, then reconnects with a refreshed token", async () => {
  let refreshed = 0;
  const { client, sockets, timers, states } = await connected({ getToken: () => `fresh-${++refreshed}` });
  sockets[0].serverClose(1001, "reconnect in 1234");
  const r = states.at(-1);
  assert.deepEqual([r.state, r.code, r.delayMs, r.drain], ["reconnecting", 1001, 1234, true]);
  timers.advance(1233);
  await flush();
  assert.equal(sockets.length, 1, "not before the suggested delay");
  timers.advance(1);
  const ws2 = await until(() => sockets[1], "a new socket");
  assert.equal(ws2.url.searchParams.get("token"), "fresh-1", "getToken refreshes for reconnects");
  ws2.accept();
  await until(() => client.state === "connected", "connected again");
});

test("failed attempts back off exponentially and the count resets on authenticated", async () => {
  const { sockets, timers, states } = await connected();
  const delays = [];
  for (let i = 0; i < 5; i++) {
    sockets.at(-1).serverClose(1006);
    delays.push(states.at(-1).delayMs);
    const n = sockets.length;
    timers.advance(states.at(-1).delayMs);
    await until(() => sockets.length === n + 1, "the next attempt");
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1000]);
  sockets.at(-1).accept();
  sockets.at(-1).serverClose(1006);
  assert.equal(states.at(-1).delayMs, 100, "reset after authenticated");
});

test("an attempt not authenticated within connectTimeoutMs is given up and retried with backoff", async () => {
  const { client, sockets, timers, states } = setup({ connectTimeoutMs: 500 });
  const p = client.connect();
  await until(() => sockets[0], "a socket");
  // Opened but never authenticated (a black hole), then never even opened (as Node 20
  // shows a proxy that accepts and closes: no close event ever comes).
  sockets[0].open();
  timers.advance(499);
  assert.equal(client.state, "connecting", "not before the deadline");
  timers.advance(1);
  const gaveUp = states.at(-1);
  assert.equal(gaveUp.state, "reconnecting");
  assert.equal(gaveUp.timedOut, true);
  assert.equal(gaveUp.code, 1006);
  assert.match(gaveUp.reason, /not authenticated within connectTimeoutMs \(500 ms\)/);
  assert.equal(gaveUp.delayMs, 100, "the backoff of a first failure");
  assert.equal(sockets[0].closedByClient.code, 1000, "the given-up socket is closed");
  timers.advance(100);
  await until(() => sockets[1], "the second attempt");
  timers.advance(500);
  assert.equal(states.at(-1).timedOut, true);
  assert.equal(states.at(-1).delayMs, 200, "a timed-out attempt counts as a failure");
  // The late events of a given-up socket are ignored.
  sockets[0].accept();
  assert.equal(client.state, "reconnecting");
  timers.advance(200);
  await until(() => sockets[2], "the third attempt");
  sockets[2].accept();
  await p;
  assert.equal(client.state, "connected");
  // Authenticated in time: the deadline is off (no timer fires on a live socket).
  timers.advance(10000);
  assert.equal(client.state, "connected");
});

test("connectTimeoutMs also bounds a credential callback that never returns", async () => {
  let calls = 0;
  const { client, sockets, timers, states } = setup({
    token: undefined,
    connectTimeoutMs: 300,
    getToken: () => (++calls === 1 ? new Promise(() => {}) : "tok-2"),
  });
  const p = client.connect();
  await flush();
  timers.advance(300);
  assert.equal(states.at(-1).state, "reconnecting");
  assert.equal(states.at(-1).timedOut, true);
  assert.equal(sockets.length, 0);
  timers.advance(states.at(-1).delayMs);
  const ws = await until(() => sockets[0], "the second attempt's socket");
  assert.equal(ws.url.searchParams.get("token"), "tok-2");
  ws.accept();
  await p;
});

test("4001 is terminal: the server's UNAUTHORIZED is the reason, and no retry is scheduled", async () => {
  const { client, sockets, timers, states } = setup();
  const p = client.connect();
  const ws = await until(() => sockets[0], "a socket");
  ws.open();
  ws.receive({ type: "error", code: "UNAUTHORIZED", message: "token expired" });
  ws.serverClose(4001, "");
  await assert.rejects(p, (e) => e instanceof ShardcastError && e.code === "UNAUTHORIZED" && /expired/.test(e.message));
  const last = states.at(-1);
  assert.equal(last.state, "closed");
  assert.equal(last.code, 4001);
  assert.equal(last.error.code, "UNAUTHORIZED");
  assert.deepEqual(timers.pending(), [], "no timer left: nothing will retry");
  timers.advance(600000);
  await flush();
  assert.equal(sockets.length, 1);
  assert.equal(client.state, "closed");
});

test("requests are correlated by requestId, whatever order the answers come in", async () => {
  const { client, ws } = await connected();
  const a = client.subscribe({ id: "a", path: "jobs" });
  const b = client.subscribe({ id: "b", path: "orders", filter: "n > 1" });
  await until(() => ws.ofType("subscribeEvents").length === 2, "two subscribes");
  const [ra, rb] = ws.ofType("subscribeEvents");
  assert.notEqual(ra.requestId, rb.requestId);
  ws.receive({ type: "subscribedEvents", requestId: rb.requestId, subscriptions: [{ id: "b", path: "orders", events: [], seq: 9 }] });
  ws.receive({ type: "subscribedEvents", requestId: ra.requestId, subscriptions: [{ id: "a", path: "jobs", events: [], seq: 8 }] });
  const [sa, sb] = await Promise.all([a, b]);
  assert.deepEqual([sa.id, sa.seq, sb.id, sb.seq, sb.filter], ["a", 8, "b", 9, "n > 1"]);
});

test("an error answer rejects its request with the server's code; a rejected entry too", async () => {
  const { client, ws, errors } = await connected();
  const p1 = client.subscribe({ id: "x", path: "jobs", filter: "n ==" });
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  const r1 = ws.last();
  ws.receive({ type: "subscribedEvents", requestId: r1.requestId, subscriptions: [],
    rejected: [{ id: "x", code: "INVALID_FILTER", message: "filter: expected a literal at byte 4" }] });
  await assert.rejects(p1, (e) => e.code === "INVALID_FILTER" && e.subscriptionId === "x" && /byte 4/.test(e.message));
  const p2 = client.lock("l", { ttlMs: 1000 });
  await until(() => ws.ofType("lock").length === 1, "lock");
  ws.receive({ type: "error", code: "FORBIDDEN", message: "services only", requestId: ws.last().requestId });
  await assert.rejects(p2, (e) => e instanceof ShardcastError && e.code === "FORBIDDEN");
  // An error nobody waits for goes to the error event.
  ws.receive({ type: "error", code: "RATE_LIMITED", message: "slow down" });
  assert.equal(errors.at(-1).code, "RATE_LIMITED");
});

test("a request without an answer times out on the client's clock", async () => {
  const { client, ws, timers } = await connected({ requestTimeoutMs: 500 });
  const p = client.unlock("l");
  await until(() => ws.ofType("unlock").length === 1, "unlock");
  timers.advance(500);
  await assert.rejects(p, (e) => e.code === "TIMEOUT");
});

test("batch messages are unwrapped in order; ping is answered with pong", async () => {
  const { client, ws } = await connected();
  const got = [];
  const p = client.subscribe({ id: "s", path: "jobs" }, (e) => got.push(e.seq));
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  acceptSubscribe(ws, 10);
  await p;
  const ev = (seq) => ({ type: "event", subscriptionIds: ["s"], eventType: "e", path: "jobs/1", data: seq, timestamp: "t", seq });
  ws.receive({ type: "batch", messages: [ev(11), { type: "ping" }, ev(12), { type: "batch", messages: [ev(13)] }] });
  assert.deepEqual(got, [11, 12, 13]);
  assert.deepEqual(ws.last(), { type: "pong" });
  assert.equal(client.subscription("s").seq, 13);
});

test("after a reconnect every subscription is resumed with since = the last seq seen", async () => {
  const { client, ws, sockets, timers } = await connected();
  const resyncs = [];
  client.on("resync", (r) => resyncs.push(r.subscription.id));
  const subA = client.subscribe({ id: "a", path: "jobs", events: ["done"] });
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe a");
  acceptSubscribe(ws, 4);
  const a = await subA;
  const onResync = [];
  const subB = client.subscribe({ id: "b", path: "orders", filter: "x" }, undefined, { onResync: (i) => onResync.push(i) });
  await until(() => ws.ofType("subscribeEvents").length === 2, "subscribe b");
  acceptSubscribe(ws, 4);
  const b = await subB;
  ws.receive({ type: "event", subscriptionIds: ["a", "b"], eventType: "done", path: "jobs/1", data: 1, timestamp: "t", seq: 5 });
  ws.receive({ type: "event", subscriptionIds: ["a"], eventType: "done", path: "jobs/1", data: 1, timestamp: "t", seq: 7 });
  ws.serverClose(1006);
  timers.advance(100);
  const ws2 = await until(() => sockets[1], "a second socket");
  ws2.accept();
  const resub = await until(() => ws2.ofType("subscribeEvents")[0], "the resubscribe");
  assert.deepEqual(resub.subscriptions, [
    { id: "a", path: "jobs", since: 7, events: ["done"] },
    { id: "b", path: "orders", since: 5, filter: "x" },
  ]);
  ws2.receive({ type: "subscribedEvents", requestId: resub.requestId, subscriptions: [
    { id: "a", path: "jobs", events: ["done"], seq: 9, recovered: true },
    { id: "b", path: "orders", events: [], seq: 9, recovered: false },
  ] });
  await until(() => b.recovered === false, "b's flag");
  assert.equal(a.recovered, true);
  assert.deepEqual(resyncs, ["b"]);
  assert.deepEqual(onResync.map((i) => [i.since, i.seq]), [[5, 9]]);
});

test("a since the server rejects as in the future is retried without since, and re-syncs", async () => {
  const { client, ws, sockets, timers } = await connected();
  const resyncs = [];
  client.on("resync", (r) => resyncs.push(r));
  const p = client.subscribe({ id: "a", path: "jobs" });
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  acceptSubscribe(ws, 50);
  const a = await p;
  ws.serverClose(1006);
  timers.advance(100);
  const ws2 = await until(() => sockets[1], "a second socket");
  ws2.accept();
  const r1 = await until(() => ws2.ofType("subscribeEvents")[0], "resubscribe");
  ws2.receive({ type: "subscribedEvents", requestId: r1.requestId, subscriptions: [],
    rejected: [{ id: "a", code: "BAD_MESSAGE", message: "since is in the future" }] });
  const r2 = await until(() => ws2.ofType("subscribeEvents")[1], "the retry");
  assert.deepEqual(r2.subscriptions, [{ id: "a", path: "jobs" }]);
  ws2.receive({ type: "subscribedEvents", requestId: r2.requestId, subscriptions: [{ id: "a", path: "jobs", events: [], seq: 3 }] });
  await until(() => resyncs.length === 1, "a resync");
  assert.equal(resyncs[0].subscription, a);
  assert.equal(a.active, true);
});

test("requests made while reconnecting wait, and go out after the resubscribe", async () => {
  const { client, ws, sockets, timers } = await connected();
  const p = client.subscribe({ id: "a", path: "jobs" });
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  acceptSubscribe(ws, 1);
  await p;
  ws.serverClose(1006);
  const pub = client.publish({ path: "jobs/1", eventType: "e", data: 1 });
  client.taskComplete("g:1");
  timers.advance(100);
  const ws2 = await until(() => sockets[1], "a second socket");
  ws2.accept();
  await until(() => ws2.sent.length === 3, "three messages");
  assert.deepEqual(ws2.sent.map((m) => m.type), ["subscribeEvents", "publish", "taskComplete"]);
  ws2.receive({ type: "published", requestId: ws2.sent[1].requestId, seq: 77 });
  assert.deepEqual(await pub, { seq: 77 });
});

test("a request in flight when the socket drops rejects with DISCONNECTED", async () => {
  const { client, ws } = await connected();
  const p = client.lock("l", { ttlMs: 1000 });
  await until(() => ws.ofType("lock").length === 1, "lock");
  ws.serverClose(1006);
  await assert.rejects(p, (e) => e.code === "DISCONNECTED");
});

test("QUEUE_OVERFLOW is surfaced as an overflow event and to the subscription", async () => {
  const { client, ws } = await connected();
  const own = [];
  const p = client.subscribe({ id: "s", path: "jobs" }, undefined, { onOverflow: (w) => own.push(w.dropped) });
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  acceptSubscribe(ws);
  await p;
  const seen = [];
  client.on("overflow", (w) => seen.push(w));
  ws.receive({ type: "warning", code: "QUEUE_OVERFLOW", subscriptionId: "s", dropped: 5, message: "5 events dropped" });
  assert.equal(seen.length, 1);
  assert.equal(seen[0].subscriptionId, "s");
  assert.deepEqual(own, [5]);
});

test("subscriptionRefresh goes to the subscription and advances its seq", async () => {
  const { client, ws } = await connected();
  const own = [];
  const p = client.subscribe({ id: "s", path: "accounts", filter: "x" }, undefined, { onRefresh: (r) => own.push(r.entityId) });
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  acceptSubscribe(ws, 3);
  const s = await p;
  ws.receive({ type: "subscriptionRefresh", subscriptionId: "s", path: "accounts/a1", entityId: "a1", seq: 12 });
  assert.deepEqual(own, ["a1"]);
  assert.equal(s.seq, 12);
});

test("unsubscribe stops dispatch at once and resolves with the removed ids", async () => {
  const { client, ws } = await connected();
  const got = [];
  const p = client.subscribe({ id: "s", path: "jobs" }, (e) => got.push(e.seq));
  await until(() => ws.ofType("subscribeEvents").length === 1, "subscribe");
  acceptSubscribe(ws);
  const s = await p;
  const u = s.unsubscribe();
  ws.receive({ type: "event", subscriptionIds: ["s"], eventType: "e", path: "jobs/1", data: 0, timestamp: "t", seq: 101 });
  await until(() => ws.ofType("unsubscribeEvents").length === 1, "unsubscribe");
  ws.receive({ type: "unsubscribedEvents", requestId: ws.last().requestId, ids: ["s"] });
  await u;
  assert.deepEqual(got, []);
  assert.equal(s.active, false);
});

test("handleTasks completes a task its handler finished and fails one it threw on", async () => {
  const { client, ws, errors } = await connected({ group: "billing" });
  assert.equal(ws.url.searchParams.get("group"), "billing");
  const tasks = [];
  client.on("task", (t) => tasks.push(t.taskId));
  client.handleTasks(async (t) => {
    if (t.data.bad) throw new Error("cannot");
  }, { retryInMs: 250 });
  const task = (seq, data) => ({ type: "event", subscriptionIds: ["s"], eventType: "e", path: "p", data, timestamp: "t", seq, taskId: `billing:${seq}`, attempt: 1 });
  ws.receive(task(1, {}));
  ws.receive(task(2, { bad: true }));
  ws.receive(task(3, {}));
  await until(() => ws.ofType("taskFailed").length === 1 && ws.ofType("taskComplete").length >= 1, "acks");
  assert.deepEqual(ws.ofType("taskComplete").flatMap((m) => m.taskIds).sort(), ["billing:1", "billing:3"]);
  assert.deepEqual(ws.ofType("taskFailed"), [{ type: "taskFailed", taskIds: ["billing:2"], retryInMs: 250 }]);
  assert.deepEqual(tasks, ["billing:1", "billing:2", "billing:3"]);
  assert.match(errors.at(-1).message, /cannot/);
});

test("lock answers the fencing token; unlock says whether it released", async () => {
  const { client, ws } = await connected();
  const l = client.lock("invoice-42", { ttlMs: 10000, waitMs: 0 });
  await until(() => ws.ofType("lock").length === 1, "lock");
  const lr = ws.last();
  assert.deepEqual({ ...lr, requestId: undefined }, { type: "lock", name: "invoice-42", ttlMs: 10000, waitMs: 0, requestId: undefined });
  ws.receive({ type: "lockResult", requestId: lr.requestId, name: "invoice-42", acquired: true, fencingToken: 17, expiresAt: "x" });
  assert.deepEqual(await l, { name: "invoice-42", acquired: true, fencingToken: 17, expiresAt: "x" });
  const u = client.unlock("invoice-42");
  await until(() => ws.ofType("unlock").length === 1, "unlock");
  ws.receive({ type: "unlockResult", requestId: ws.last().requestId, name: "invoice-42", released: true });
  assert.deepEqual(await u, { name: "invoice-42", released: true });
  client.log("warn", "hello", { k: 1 });
  assert.deepEqual(ws.last(), { type: "log", level: "warn", message: "hello", fields: { k: 1 } });
});

test("a channel socket de-duplicates by seq and refuses commands", async () => {
  const { client, ws } = await connected({ url: "ws://127.0.0.1:9/channels/chan_0123456789abcdef" });
  assert.equal(client.isChannel, true);
  const seqs = [];
  client.on("event", (e) => seqs.push(e.seq));
  for (const seq of [3, 4, 4, 5]) {
    ws.receive({ type: "event", channelId: "chan_0123456789abcdef", eventType: "e", path: "claims/c", data: {}, timestamp: "t", seq });
  }
  assert.deepEqual(seqs, [3, 4, 5]);
  await assert.rejects(client.subscribe({ id: "a", path: "jobs" }), /channel socket/);
});

test("close() is terminal: pending requests reject with CLOSED and the socket is closed 1000", async () => {
  const { client, ws, timers } = await connected();
  const p = client.unlock("x");
  client.close();
  await assert.rejects(p, (e) => e.code === "CLOSED");
  assert.equal(client.state, "closed");
  assert.equal(ws.closedByClient.code, 1000);
  assert.deepEqual(timers.pending(), []);
});

test("liveness: a socket silent past livenessTimeoutMs is replaced", async () => {
  const { sockets, timers, states } = await connected({ livenessTimeoutMs: 1000 });
  timers.advance(999);
  sockets[0].receive({ type: "ping" });
  timers.advance(999);
  assert.equal(states.at(-1).state, "connected", "a message resets the deadline");
  timers.advance(1);
  assert.equal(states.at(-1).state, "reconnecting");
  assert.equal(sockets[0].closedByClient.code, 1000);
});

test("bad input gets a clear error, never a silent drop", async () => {
  const { WebSocket } = fakeWebSocket();
  assert.throws(() => new ShardcastClient(), /options are required/);
  assert.throws(() => new ShardcastClient({ url: "http://x/ws", token: "t", WebSocket }), /ws:\/\/ or wss:\/\//);
  assert.throws(() => new ShardcastClient({ url: "ws://x/ws", WebSocket }), /credential/);
  assert.throws(() => new ShardcastClient({ url: "ws://x/ws", token: "t", framing: "lines", WebSocket }), /framing/);
  assert.throws(() => new ShardcastClient({ url: "ws://x/ws", token: "t", batchMs: -1, WebSocket }), /batchMs/);
  assert.throws(() => new ShardcastClient({ url: "ws://x/ws", token: "t", connectTimeoutMs: 0.5, WebSocket }), /connectTimeoutMs must be an integer >= 0/);
  const { client } = await connected();
  await assert.rejects(client.subscribe({ path: "jobs" }), /id must be a non-empty string/);
  await assert.rejects(client.subscribe({ id: "a" }), /path must be/);
  await assert.rejects(client.subscribe({ id: "a", path: "p", since: -1 }), /since/);
  await assert.rejects(client.subscribe({ id: "a", path: "p", events: "done" }), /events must be an array/);
  await assert.rejects(client.subscribe({ id: "a", path: "p", sinec: 1 }), /unknown field 'sinec'/);
  await assert.rejects(client.subscribe({ id: "a", path: "p" }, "nope"), /handler must be a function/);
  await assert.rejects(client.lock("l", {}), /ttlMs is required/);
  await assert.rejects(client.lock("", { ttlMs: 1 }), /name/);
  assert.throws(() => client.taskComplete([]), /non-empty array/);
  assert.throws(() => client.taskFailed("t", -5), /retryInMs/);
  assert.throws(() => client.log("loud", "x"), /level/);
  await assert.rejects(client.publish({ path: "p" }), /eventType/);
  await assert.rejects(client.liveQuery({ id: "q", query: {} }), /edge/);
  await assert.rejects(client.liveQuery({ id: "q", query: { edge: "o", orderBy: "a sideways" } }), /orderBy/);
  assert.throws(() => client.on("event", 5), /listener must be a function/);
  const idle = new ShardcastClient({ url: "ws://x/ws", token: "t", WebSocket });
  await assert.rejects(idle.subscribe({ id: "a", path: "p" }), /call connect\(\) first/);
});

test("connection options the server refuses (BAD_MESSAGE before authenticated) end the client", async () => {
  const { client, sockets, timers, states } = setup({ batchMs: 999999 });
  const p = client.connect();
  const ws = await until(() => sockets[0], "a socket");
  ws.open();
  ws.receive({ type: "error", code: "BAD_MESSAGE", message: "batchMs: 999999 is above max_batch_ms 60000" });
  await assert.rejects(p, (e) => e.code === "BAD_MESSAGE" && /batchMs/.test(e.message));
  assert.equal(states.at(-1).state, "closed");
  assert.equal(ws.closedByClient.code, 1000);
  assert.deepEqual(timers.pending(), [], "no retry with the same options");
});
