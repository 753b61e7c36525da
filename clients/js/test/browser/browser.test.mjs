// The client in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core,
// no downloaded browser) against the real server: the page comes from a tiny node:http
// server on localhost (another origin than the API on 127.0.0.1, so tickets go through
// CORS), loads dist/index.js as an ES module, and the tests drive it with page.evaluate.
// Covers: ?token=, ticket callback, first-message auth, subscribe + event, a rejection
// with the server's code, reconnect after a drain and restart with since and resync,
// 4001 as a terminal state, a channel socket, a live query, and the attempt deadline
// (`connectTimeoutMs`) through a TCP proxy that closes, black-holes or resets attempts.
import test, { after, before } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { Proxy } from "../support/proxy.mjs";
import { CHROMIUM, PACKAGE_DIR, Server, bearer, ready, token, waitFor } from "../support/server.mjs";

if (!ready(["server", "browser"])) {
  test("browser (SKIPPED: see the line above)", () => {});
} else {
  const { chromium } = await import("playwright-core");
  let s;
  let http;
  let pageUrl;
  let browser;
  const pages = [];

  /** Serves the test page at / and the built package under /dist/. */
  function serveStatic() {
    const types = { ".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".map": "application/json" };
    return new Promise((res) => {
      const srv = createServer(async (req, resp) => {
        const path = new URL(req.url, "http://x").pathname;
        if (path === "/favicon.ico") {
          resp.writeHead(204).end();
          return;
        }
        const file = path === "/" ? join(PACKAGE_DIR, "test/browser/page.html") : join(PACKAGE_DIR, normalize(path));
        if (path !== "/" && !file.startsWith(join(PACKAGE_DIR, "dist")) && !file.startsWith(join(PACKAGE_DIR, "examples"))) {
          resp.writeHead(404).end();
          return;
        }
        try {
          const body = await readFile(file);
          resp.writeHead(200, { "Content-Type": types[extname(file)] ?? "application/octet-stream" }).end(body);
        } catch {
          resp.writeHead(404).end();
        }
      });
      srv.listen(0, "127.0.0.1", () => res(srv));
    });
  }

  before(async () => {
    [s, http] = await Promise.all([Server.start(), serveStatic()]);
    pageUrl = `http://localhost:${http.address().port}/`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: 30000,
    });
  });
  after(async () => {
    await browser?.close();
    http?.close();
    await s?.stop();
  });

  /** A fresh page with the client loaded; page errors fail the test that made it. */
  async function page() {
    const p = await browser.newPage();
    pages.push(p);
    p.setDefaultTimeout(15000);
    p.on("console", (m) => m.type() === "error" && console.error("page:", m.text()));
    await p.goto(pageUrl);
    await p.waitForFunction(() => window.pageReady === true);
    return p;
  }

  /** Runs `fn(arg)` in the page with a deadline (page.evaluate alone has none). */
  function inPage(p, fn, arg, ms = 15000) {
    let timer;
    const timeout = new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`page.evaluate took more than ${ms} ms`)), ms);
    });
    return Promise.race([p.evaluate(fn, arg), timeout]).finally(() => clearTimeout(timer));
  }

  /** In the page: connects a client with `opts` (+ url), subscribes `jobs`, records events. */
  const connectAndSubscribe = async ({ url, opts, ticketToken, api }) => {
    const { ShardcastClient, fetchTicket } = window.shardcast;
    window.events = [];
    window.states = [];
    window.resyncs = [];
    const o = { url, batchMs: 0, backoff: { initialMs: 100, maxMs: 400 }, ...opts };
    if (ticketToken) o.getTicket = () => fetchTicket(api, ticketToken);
    const c = new ShardcastClient(o);
    window.client = c;
    c.on("state", (st) => window.states.push({ state: st.state, code: st.code, reason: st.reason, drain: st.drain, timedOut: st.timedOut }));
    c.on("resync", (r) => window.resyncs.push({ id: r.subscription.id, since: r.since }));
    await c.connect();
    window.sub = await c.subscribe({ id: "jobs", path: "jobs" }, (e) => window.events.push({ seq: e.seq, n: e.data.n }));
    return { state: c.state, seq: window.sub.seq };
  };

  async function expectEvent(p, n) {
    const { firstSeq } = await s.publish({ path: "jobs/b", eventType: "e", data: { n } });
    await p.waitForFunction((seq) => window.events.some((e) => e.seq === seq), firstSeq);
    return firstSeq;
  }

  test("browser: ?token=, a ticket callback (CORS) and first-message auth connect and receive", async () => {
    const p = await page();
    for (const [i, arg] of [
      { opts: { token: token() } },
      { opts: {}, ticketToken: token({ sub: "ticket-user" }), api: s.base },
      { opts: { token: token(), auth: "message" } },
    ].entries()) {
      const r = await inPage(p, connectAndSubscribe, { url: s.ws(), ...arg });
      assert.equal(r.state, "connected");
      await expectEvent(p, i);
      await inPage(p, () => window.client.close());
    }
  });

  test("browser: a bad filter rejects with INVALID_FILTER; an expired token ends in closed, 4001", async () => {
    const p = await page();
    const r = await inPage(p, async ({ url, t }) => {
      const { ShardcastClient } = window.shardcast;
      const c = new ShardcastClient({ url, token: t });
      await c.connect();
      const out = {};
      try {
        await c.subscribe({ id: "bad", path: "jobs", filter: "n ==" });
      } catch (e) {
        out.code = e.code;
        out.subscriptionId = e.subscriptionId;
      }
      try {
        await c.subscribe({ path: "x" });
      } catch (e) {
        out.badInput = e instanceof TypeError && /id must be/.test(e.message);
      }
      c.close();
      return out;
    }, { url: s.ws(), t: token() });
    assert.deepEqual(r, { code: "INVALID_FILTER", subscriptionId: "bad", badInput: true });
    const closed = await inPage(p, async ({ url, t }) => {
      const { ShardcastClient } = window.shardcast;
      const states = [];
      const c = new ShardcastClient({ url, token: t, getToken: () => t, backoff: { initialMs: 50 } });
      c.on("state", (st) => states.push(st.state));
      let code;
      await c.connect().catch((e) => (code = e.code));
      // Had it scheduled a retry, `reconnecting` would be in the states before `closed`.
      return { code, states, state: c.state };
    }, { url: s.ws(), t: token({ exp: -60 }) });
    assert.deepEqual(closed, { code: "UNAUTHORIZED", states: ["connecting", "closed"], state: "closed" });
  });

  test("browser: after a drain and a restart the page reconnects, resumes with since and re-syncs", async () => {
    const p = await page();
    await inPage(p, connectAndSubscribe, { url: s.ws(), opts: { token: token() } });
    const before1 = await expectEvent(p, 1);
    const exit = await s.drain();
    assert.equal(exit.code, 0);
    await s.spawn();
    await p.waitForFunction(() => window.resyncs.length === 1 && window.client.state === "connected");
    const r = await inPage(p, () => ({ resyncs: window.resyncs, recovered: window.sub.recovered, states: window.states }));
    assert.deepEqual(r.resyncs, [{ id: "jobs", since: before1 }]);
    assert.equal(r.recovered, false);
    const drainState = r.states.find((st) => st.state === "reconnecting");
    assert.equal(drainState.code, 1001);
    assert.match(drainState.reason, /^reconnect in \d+$/);
    assert.equal(drainState.drain, true);
    const after1 = await expectEvent(p, 2);
    assert.ok(after1 > before1);
    await inPage(p, () => window.client.close());
  });

  // The attempt deadline in the browser (the Node side: test/integration/attempt-deadline):
  // a connected page loses its socket to the proxy, its attempts meet `mode` while events
  // are published, and once the proxy passes again it resumes with since (all arrive, no
  // re-sync). `cutOff` resolves once the page's attempts are being retried.
  async function deadlineCase(mode, cutOff) {
    const proxy = await Proxy.start(s.port);
    const p = await page();
    try {
      await inPage(p, connectAndSubscribe, { url: proxy.ws(), opts: { token: token(), connectTimeoutMs: 500 } });
      await expectEvent(p, 0);
      proxy.setMode(mode);
      const mark = await inPage(p, () => window.states.length);
      assert.equal(proxy.dropConnections(), 1);
      await p.waitForFunction((m) => window.states.slice(m).some((st) => st.state === "reconnecting"), mark);
      await s.publish([1, 2].map((n) => ({ path: "jobs/b", eventType: "e", data: { n } })));
      await cutOff(proxy, p, mark);
      assert.notEqual(await inPage(p, () => window.client.state), "connected");
      proxy.setMode("pass");
      await p.waitForFunction(() => window.client.state === "connected" && window.events.some((e) => e.n === 2));
      await expectEvent(p, 3);
      const r = await inPage(p, () => ({ ns: window.events.map((e) => e.n), recovered: window.sub.recovered, resyncs: window.resyncs, states: window.states }));
      assert.deepEqual(r.ns, [0, 1, 2, 3], "the replay came in order, before the live one");
      assert.equal(r.recovered, true);
      assert.deepEqual(r.resyncs, []);
      assert.ok(!r.states.some((st) => st.state === "closed"));
      return r.states.slice(mark);
    } finally {
      await inPage(p, () => window.client.close()).catch(() => {});
      await proxy.stop();
    }
  }

  test("browser: (a) a proxy that accepts and closes at once: attempts are retried until it passes", async () => {
    const states = await deadlineCase("close", async (proxy) => {
      await waitFor(() => proxy.accepted.close >= 2, "two attempts closed by the proxy", 10000);
    });
    assert.ok(states.filter((st) => st.state === "reconnecting").length >= 2, JSON.stringify(states));
  });

  test("browser: (b) a proxy that never answers: connectTimeoutMs gives up each attempt", async () => {
    const states = await deadlineCase("blackhole", async (proxy, p, mark) => {
      await p.waitForFunction((m) => window.states.slice(m).some((st) => st.timedOut === true), mark);
      await waitFor(() => proxy.accepted.blackhole >= 2, "a retry after the deadline", 10000);
    });
    const t = states.find((st) => st.timedOut);
    assert.equal(t.code, 1006);
    assert.match(t.reason, /not authenticated within connectTimeoutMs \(500 ms\)/);
  });

  test("browser: (c) a proxy that drops live connections and resets new ones for a moment", async () => {
    await deadlineCase("reset", async (proxy) => {
      await waitFor(() => proxy.accepted.reset >= 1, "an attempt reset by the proxy", 10000);
    });
  });

  test("browser: a channel socket receives its events; a live query keeps its sorted view", async () => {
    const t = token({ sub: "browser-user", scopes: ["jobs", "tasks"] });
    const ch = await s.http("POST", "/api/v1/realtime-subscriptions", { path: "jobs", event_types: [], filter: null }, bearer(t));
    assert.equal(ch.status, 201);
    const p = await page();
    await inPage(p, async ({ url, t }) => {
      const { ShardcastClient } = window.shardcast;
      window.channelEvents = [];
      const c = new ShardcastClient({ url, token: t, batchMs: 0 });
      c.on("event", (e) => window.channelEvents.push({ channelId: e.channelId, n: e.data.n }));
      window.channel = c;
      await c.connect();
    }, { url: ch.body.websocket_url, t });
    const { firstSeq } = await s.publish({ path: "jobs/c", eventType: "e", data: { n: 7 } });
    assert.ok(firstSeq > 0);
    await p.waitForFunction(() => window.channelEvents.length === 1);
    assert.deepEqual(await inPage(p, () => window.channelEvents), [{ channelId: ch.body.channel_id, n: 7 }]);

    for (const [id, n] of [["t1", 2], ["t2", 1]]) {
      assert.equal((await s.http("PUT", `/api/v1/entities/tasks/${id}`, { n })).status, 200);
    }
    await inPage(p, async ({ url, t }) => {
      const { ShardcastClient } = window.shardcast;
      const c = new ShardcastClient({ url, token: t, batchMs: 0 });
      await c.connect();
      window.lq = await c.liveQuery({ id: "tasks", query: { edge: "tasks", orderBy: "n" } });
    }, { url: s.ws(), t });
    assert.deepEqual(await inPage(p, () => window.lq.items.map((x) => x.id)), ["t2", "t1"]);
    await s.http("PUT", "/api/v1/entities/tasks/t0", { n: 0 });
    await p.waitForFunction(() => window.lq.items.map((x) => x.id).join() === "t0,t2,t1");
  });

  test("browser: the example page connects and shows events", async () => {
    const p = await browser.newPage();
    pages.push(p);
    p.setDefaultTimeout(15000);
    await p.goto(`${pageUrl}examples/index.html`);
    await p.fill("#url", s.ws());
    await p.fill("#token", token({ scopes: ["jobs"] }));
    await p.click("#connect");
    await p.waitForFunction(() => document.getElementById("events").textContent.includes("subscribed to 'jobs'"));
    assert.equal(await p.textContent("#state"), "connected");
    await s.publish({ path: "jobs/ex", eventType: "shown", data: { n: 42 } });
    await p.waitForFunction(() => document.getElementById("events").textContent.includes('shown jobs/ex {"n":42}'));
  });

  // No page is left open past its file (the browser closes in after()).
  test("browser: pages closed", async () => {
    await Promise.all(pages.map((p) => p.close()));
    await waitFor(() => browser.contexts().every((c) => c.pages().length === 0), "pages to close");
  });
}
