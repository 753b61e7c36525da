// The live-query view: sorted like the server (orderBy, ties by id, cross-type order),
// built from pages and kept by added/updated/removed, started over on every
// liveQueryCreated (the server's re-initialisation after an overflow or a reconnect).
import test from "node:test";
import assert from "node:assert/strict";
import { ShardcastClient, compareValues } from "../../dist/index.js";
import { FakeTimers, fakeWebSocket, until } from "../support/fake.mjs";

async function connected() {
  const timers = new FakeTimers();
  const { WebSocket, sockets } = fakeWebSocket();
  const client = new ShardcastClient({ url: "ws://127.0.0.1:9/ws", token: "t", WebSocket, timers, random: () => 1, backoff: { initialMs: 100 } });
  const p = client.connect();
  const ws = await until(() => sockets[0], "a socket");
  ws.accept();
  await p;
  return { client, ws, sockets, timers };
}

const ids = (lq) => lq.items.map((n) => n.id);

test("the cross-type order is null < false < true < numbers < strings < arrays < objects", () => {
  const sorted = [{ a: 1 }, [1], "b", "a", 2, 1.5, true, false, null].sort(compareValues);
  assert.deepEqual(sorted, [null, false, true, 1.5, 2, "a", "b", [1], { a: 1 }]);
  // A missing field (undefined; Array.sort would move it last by itself) is like null.
  assert.equal(compareValues(undefined, null), 0);
  assert.equal(compareValues(undefined, false), -1);
  // Strings by code point (UTF-8 byte order), not UTF-16 units.
  assert.equal(compareValues("\u{1F600}", "\uFFFD"), 1);
});

test("pages, then added, updated and removed keep the view sorted by orderBy", async () => {
  const { client, ws } = await connected();
  const changes = [];
  const p = client.liveQuery({ id: "lq", query: { edge: "orders", filter: "open", orderBy: "prio desc, name" } }, (lq) => changes.push(lq.size));
  const create = await until(() => ws.ofType("createLiveQuery")[0], "createLiveQuery");
  assert.deepEqual(create.query, { edge: "orders", filter: "open", orderBy: "prio desc, name" });
  ws.receive({ type: "liveQueryCreated", id: "lq", totalCount: 4, capped: false });
  ws.receive({ type: "liveQueryData", id: "lq", data: [{ id: "o1", prio: 3, name: "b" }, { id: "o2", prio: 3, name: "a" }], hasMore: true, capped: false });
  let resolved = false;
  p.then(() => (resolved = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(resolved, false, "not ready before the last page");
  ws.receive({ type: "liveQueryData", id: "lq", data: [{ id: "o3", prio: 1, name: "c" }, { id: "o4", prio: 1, name: "c" }], hasMore: false, capped: false });
  const lq = await p;
  assert.equal(lq.ready, true);
  assert.equal(lq.totalCount, 4);
  assert.deepEqual(ids(lq), ["o2", "o1", "o3", "o4"]);
  ws.receive({ type: "liveQueryAddedNode", id: "lq", nodeId: "o5", data: { id: "o5", prio: 2, name: "z" } });
  assert.deepEqual(ids(lq), ["o2", "o1", "o5", "o3", "o4"]);
  ws.receive({ type: "liveQueryUpdatedNode", id: "lq", nodeId: "o4", data: { id: "o4", prio: 9, name: "c" } });
  assert.deepEqual(ids(lq), ["o4", "o2", "o1", "o5", "o3"]);
  assert.equal(lq.get("o4").prio, 9);
  ws.receive({ type: "liveQueryRemovedNode", id: "lq", nodeId: "o2" });
  assert.deepEqual(ids(lq), ["o4", "o1", "o5", "o3"]);
  assert.equal(lq.get("o2"), undefined);
  assert.ok(changes.length >= 6);
});

test("an overflow marks the view stale and the next liveQueryCreated starts it over", async () => {
  const { client, ws } = await connected();
  const p = client.liveQuery({ id: "lq", query: { edge: "orders" } });
  await until(() => ws.ofType("createLiveQuery")[0], "createLiveQuery");
  ws.receive({ type: "liveQueryCreated", id: "lq", totalCount: 2, capped: false });
  ws.receive({ type: "liveQueryData", id: "lq", data: [{ id: "b" }, { id: "a" }], hasMore: false, capped: false });
  const lq = await p;
  assert.deepEqual(ids(lq), ["a", "b"], "no orderBy: by id");
  const overflows = [];
  lq.on("overflow", (w) => overflows.push(w.dropped));
  let clientOverflow = 0;
  client.on("overflow", () => clientOverflow++);
  ws.receive({ type: "warning", code: "QUEUE_OVERFLOW", liveQueryId: "lq", dropped: 3, message: "3 dropped" });
  assert.equal(lq.ready, false);
  assert.deepEqual(overflows, [3]);
  assert.equal(clientOverflow, 1);
  ws.receive({ type: "liveQueryCreated", id: "lq", totalCount: 1, capped: false });
  assert.deepEqual(ids(lq), [], "started over");
  ws.receive({ type: "liveQueryData", id: "lq", data: [{ id: "c" }], hasMore: false, capped: false });
  assert.deepEqual(ids(lq), ["c"]);
  assert.equal(lq.ready, true);
});

test("a reconnect creates the live query again; destroy sends destroyLiveQuery", async () => {
  const { client, ws, sockets, timers } = await connected();
  const p = client.liveQuery({ id: "lq", query: { edge: "orders", limit: 5 } });
  await until(() => ws.ofType("createLiveQuery")[0], "createLiveQuery");
  ws.receive({ type: "liveQueryCreated", id: "lq", totalCount: 0, capped: false });
  ws.receive({ type: "liveQueryData", id: "lq", data: [], hasMore: false, capped: false });
  const lq = await p;
  ws.serverClose(1001, "reconnect in 10");
  timers.advance(10);
  const ws2 = await until(() => sockets[1], "a second socket");
  ws2.accept();
  const again = await until(() => ws2.ofType("createLiveQuery")[0], "createLiveQuery again");
  assert.deepEqual([again.id, again.query], ["lq", { edge: "orders", limit: 5 }]);
  const d = lq.destroy();
  const msg = await until(() => ws2.ofType("destroyLiveQuery")[0], "destroyLiveQuery");
  ws2.receive({ type: "liveQueryDestroyed", id: "lq", requestId: msg.requestId });
  await d;
  ws2.receive({ type: "liveQueryAddedNode", id: "lq", nodeId: "x", data: { id: "x" } });
  assert.equal(lq.size, 0, "nothing applies after destroy");
});

test("a createLiveQuery error rejects with the server's code and frees the id", async () => {
  const { client, ws } = await connected();
  const p = client.liveQuery({ id: "lq", query: { edge: "secret" } });
  const m = await until(() => ws.ofType("createLiveQuery")[0], "createLiveQuery");
  ws.receive({ type: "error", code: "FORBIDDEN", message: "scope", requestId: m.requestId });
  await assert.rejects(p, (e) => e.code === "FORBIDDEN");
  const p2 = client.liveQuery({ id: "lq", query: { edge: "orders" } });
  await until(() => ws.ofType("createLiveQuery")[1], "the id is free again");
  ws.receive({ type: "liveQueryCreated", id: "lq", totalCount: 0, capped: false });
  ws.receive({ type: "liveQueryData", id: "lq", data: [], hasMore: false, capped: false });
  await p2;
});

test("a live query asked for while reconnecting is created once, by its own request", async () => {
  const { client, ws, sockets, timers } = await connected();
  ws.serverClose(1006);
  const p = client.liveQuery({ id: "late", query: { edge: "orders" } });
  timers.advance(100);
  const ws2 = await until(() => sockets[1], "a second socket");
  ws2.accept();
  const create = await until(() => ws2.ofType("createLiveQuery")[0], "createLiveQuery");
  ws2.receive({ type: "liveQueryCreated", id: "late", totalCount: 0, capped: false });
  ws2.receive({ type: "liveQueryData", id: "late", data: [], hasMore: false, capped: false });
  await p;
  assert.equal(ws2.ofType("createLiveQuery").length, 1);
  assert.equal(typeof create.requestId, "string");
});
