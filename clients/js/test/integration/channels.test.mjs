// Channels against the real server, in Node: a custom channel created over REST with a
// user's Bearer token, its websocket_url attached by the client: the backlog first, then
// live events (with channelId, without subscriptionIds); DELETE closes the socket with
// 1000, which the client takes as the end (no reconnect).
import test, { after, before } from "node:test";
import assert from "node:assert/strict";
import { ShardcastClient } from "../../dist/index.js";
import { Server, bearer, countingTimers, next, ready, token } from "../support/server.mjs";

if (!ready()) {
  test("channels (SKIPPED: see the line above)", () => {});
} else {
  let s;
  const clients = [];
  before(async () => {
    s = await Server.start();
  });
  after(async () => {
    for (const c of clients) c.close();
    await s?.stop();
  });

  test("a channel's socket gets its backlog, then live events, and ends on DELETE", async () => {
    const t = token({ sub: "chan-user", scopes: ["jobs"] });
    const created = await s.http("POST", "/api/v1/realtime-subscriptions", { path: "jobs", event_types: [], filter: null }, bearer(t));
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const ch = created.body;
    assert.equal(ch.subscription_type, "custom");
    assert.equal(ch.websocket_url, s.ws(`/channels/${ch.channel_id}`));
    // Collected before any socket attaches.
    const early = await s.publish({ path: "jobs/1", eventType: "queued", data: { n: 1 } });

    const timers = countingTimers();
    const c = new ShardcastClient({ url: ch.websocket_url, token: t, batchMs: 0, timers });
    clients.push(c);
    assert.equal(c.isChannel, true);
    const got = [];
    c.on("event", (e) => got.push(e));
    const backlog = next(c, "event", (e) => e.seq === early.firstSeq);
    await c.connect();
    await backlog;
    const live = next(c, "event", (e) => e.data.n === 2);
    await s.publish({ path: "jobs/2", eventType: "done", data: { n: 2 } });
    const e = await live;
    assert.equal(e.channelId, ch.channel_id);
    assert.equal(e.subscriptionIds, undefined);
    assert.deepEqual(got.map((x) => x.data.n), [1, 2]);
    assert.throws(() => c.log("info", "x"), /channel socket/);

    const closed = next(c, "state", (st) => st.state === "closed");
    const del = await s.http("DELETE", `/api/v1/realtime-subscriptions/${ch.channel_id}`, undefined, bearer(t));
    assert.equal(del.status, 200);
    const st = await closed;
    assert.equal(st.code, 1000);
    assert.match(st.reason, /deleted/);
    assert.equal(timers.live.size, 0, "no reconnect scheduled");
  });

  test("another user's channel is refused: FORBIDDEN before close 4001", async () => {
    const owner = token({ sub: "owner", scopes: ["jobs"] });
    const created = await s.http("POST", "/api/v1/realtime-subscriptions", { path: "jobs", event_types: ["done"], filter: "n > 1" }, bearer(owner));
    assert.equal(created.status, 201);
    const c = new ShardcastClient({ url: created.body.websocket_url, token: token({ sub: "intruder", scopes: ["jobs"] }) });
    clients.push(c);
    // The socket is authenticated first, then refused: the client ends (no retry) with
    // the server's FORBIDDEN as the reason.
    const closed = next(c, "state", (st) => st.state === "closed");
    c.connect().catch(() => {});
    const st = await closed;
    assert.deepEqual([st.code, st.error.code], [4001, "FORBIDDEN"]);
    assert.match(st.error.message, /not yours/);
  });
}
