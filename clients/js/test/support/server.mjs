// Integration-test harness: starts the real shardcast binary (env SHARDCAST_BIN, default
// the repository's target/debug/shardcast) on a free loopback port with its own config
// and data dir, signs tokens, and speaks REST to it. Every process started here is killed
// when the test file ends, passing or failing (after() hooks, and an exit hook as the
// last resort), so none is left behind.
//
// `ready()` is the one place that decides whether integration tests can run: outside CI
// a missing binary, browser or WebSocket prints a loud SKIPPED line and the test passes;
// under CI (env CI set) it fails.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, writeFileSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
/** clients/js */
export const PACKAGE_DIR = resolve(here, "../..");
export const SERVER_BIN = process.env.SHARDCAST_BIN
  ? resolve(PACKAGE_DIR, process.env.SHARDCAST_BIN)
  : resolve(PACKAGE_DIR, "../../target/debug/shardcast");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const SECRET = "test-secret-0123456789abcdef";
export const API_KEY = "test-key";

/**
 * Whether this test file can run. `needs`: "server" (always), "websocket" (Node's global
 * WebSocket), "browser" (chromium and playwright-core). Missing pieces: SKIPPED (loud,
 * passes) outside CI, an exception (fails) under CI.
 */
export function ready(needs = ["server", "websocket"]) {
  const missing = [];
  if (!existsSync(SERVER_BIN)) {
    missing.push(`the server binary ${SERVER_BIN} (set SHARDCAST_BIN or build it: cargo build)`);
  }
  if (needs.includes("websocket") && typeof globalThis.WebSocket !== "function") {
    missing.push("Node's global WebSocket (Node 20: run with --experimental-websocket)");
  }
  if (needs.includes("browser")) {
    if (!existsSync(CHROMIUM)) missing.push(`chromium at ${CHROMIUM} (Debian: apt-get install chromium)`);
    try {
      createRequire(import.meta.url).resolve("playwright-core");
    } catch {
      missing.push("playwright-core (npm ci in clients/js)");
    }
  }
  if (missing.length === 0) return true;
  const what = `integration tests need: ${missing.join("; ")}`;
  // The one CI rule of every suite (tests/common/mod.rs `in_ci`): set, non-empty, not "false".
  const ci = process.env.CI;
  if (ci && ci !== "false") throw new Error(`under CI nothing is skipped: ${what}`);
  console.log(`\n${"!".repeat(78)}\nSKIPPED: ${what}\n${"!".repeat(78)}\n`);
  return false;
}

const children = new Set();
process.on("exit", () => {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
});

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT; `exp` is seconds from now (negative: already expired). */
export function token({ sub = "u1", role = "user", scopes = ["*"], group, org, exp = 3600 } = {}) {
  const claims = { sub, role, scopes, exp: Math.floor(Date.now() / 1000) + exp };
  if (group !== undefined) claims.group = group;
  if (org !== undefined) claims.org = org;
  const head = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

export const apikey = `apikey ${API_KEY}`;
export const bearer = (t) => `Bearer ${t}`;

/** Resolves once `cond()` is truthy (sync or async); rejects after `ms`. */
export async function waitFor(cond, what, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the first emitted value for which `pred` holds; rejects after `ms`. */
export function next(emitter, name, pred = () => true, ms = 5000) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`timed out after ${ms} ms waiting for '${name}'`));
    }, ms);
    const off = emitter.on(name, (v) => {
      if (!pred(v)) return;
      clearTimeout(timer);
      off();
      res(v);
    });
  });
}

export class Server {
  /** Starts a server; `extra` is TOML appended after the base config (use section headers). */
  static async start(extra = "") {
    const s = new Server();
    s.port = await freePort();
    s.dir = mkdtempSync(join(tmpdir(), "shardcast-js-"));
    s.config = join(s.dir, "shardcast.toml");
    const base = [
      `listen = "127.0.0.1:${s.port}"`,
      `data_dir = "${join(s.dir, "data")}"`,
      `public_url = "ws://127.0.0.1:${s.port}"`,
      `drain_period_ms = 200`,
      `[auth]`,
      `jwt_secret = "${SECRET}"`,
      `api_keys = ["${API_KEY}"]`,
    ].join("\n");
    // [delivery] batch_ms = 0 unless the test sets its own [delivery] section.
    const delivery = /^\[delivery\]/m.test(extra) ? "" : "\n[delivery]\nbatch_ms = 0\n";
    writeFileSync(s.config, `${base}\n${delivery}\n${extra}\n`);
    try {
      await s.spawn();
    } catch (err) {
      // The caller never gets `s` to stop: clean up here (the log is in the message).
      await s.stop();
      throw err;
    }
    return s;
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  ws(path = "/ws") {
    return `ws://127.0.0.1:${this.port}${path}`;
  }

  log() {
    try {
      return readFileSync(join(this.dir, "server.log"), "utf8");
    } catch {
      return "";
    }
  }

  /** Starts the binary on this config and data dir; resolves once /healthz answers 200. */
  async spawn() {
    const out = openSync(join(this.dir, "server.log"), "a");
    const child = spawn(SERVER_BIN, ["serve", "--config", this.config], { stdio: ["ignore", out, out] });
    children.add(child);
    this.child = child;
    this.exited = new Promise((res) => {
      child.on("exit", (code, signal) => {
        children.delete(child);
        res({ code, signal });
      });
      // Not startable (e.g. the binary vanished mid-rebuild): reported, not thrown later.
      child.on("error", (err) => {
        children.delete(child);
        res({ code: null, signal: null, error: String(err) });
      });
    });
    let exitedEarly = null;
    this.exited.then((e) => (exitedEarly = e));
    const deadline = Date.now() + 20000;
    for (;;) {
      if (exitedEarly) throw new Error(`server exited at start (${JSON.stringify(exitedEarly)}): ${this.log()}`);
      try {
        const r = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(1000) });
        if (r.status === 200) return;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error(`server not healthy in 20 s: ${this.log()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGTERM (drain: sockets closed with 1001 `reconnect in <ms>`); resolves with the exit. */
  async drain() {
    this.child.kill("SIGTERM");
    let timer;
    const timeout = new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error("server did not exit within 10 s of SIGTERM")), 10000);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kills the process (if running) and removes its directory. */
  async stop() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
    if (!process.env.KEEP_TEST_DIRS) rmSync(this.dir, { recursive: true, force: true });
  }

  /** One REST call; resolves with { status, body } (body parsed when JSON). */
  async http(method, path, body, auth = apikey) {
    const headers = { "Content-Type": "application/json" };
    if (auth) headers.Authorization = auth;
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await r.text();
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: r.status, body: parsed };
  }

  /** Publishes with the api key; resolves with the 202 answer. */
  async publish(events) {
    const body = Array.isArray(events) ? { events } : events;
    const r = await this.http("POST", "/api/v1/publish", body);
    if (r.status !== 202) throw new Error(`publish answered ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body;
  }

  async metric(name, labelPart = "") {
    const r = await fetch(`${this.base}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await r.text();
    let sum = null;
    for (const line of text.split("\n")) {
      if (line.startsWith("#")) continue;
      const [key, value] = line.split(" ");
      if (key && (key === name || key.startsWith(`${name}{`)) && key.includes(labelPart)) sum = (sum ?? 0) + Number(value);
    }
    return sum;
  }
}

/** Timers that count what is still scheduled: a client with none can never retry. */
export function countingTimers() {
  const live = new Set();
  return {
    live,
    setTimeout(fn, ms) {
      const h = setTimeout(() => {
        live.delete(h);
        fn();
      }, ms);
      live.add(h);
      return h;
    },
    clearTimeout(h) {
      live.delete(h);
      clearTimeout(h);
    },
  };
}
