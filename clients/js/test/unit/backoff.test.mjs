// Backoff and close decisions: pure functions, so exact numbers.
import test from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, decideOnClose, parseDrainReason } from "../../dist/index.js";

test("backoff grows exponentially, is capped, and jitters within [d/2, d]", () => {
  const o = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, o, () => 1)), [100, 200, 400, 800, 1000, 1000]);
  assert.deepEqual([0, 1, 2, 3].map((a) => backoffDelay(a, o, () => 0)), [50, 100, 200, 400]);
  assert.equal(backoffDelay(2, o, () => 0.5), 300);
  // Defaults: 500 ms first, 30 s at most.
  assert.equal(backoffDelay(0, {}, () => 1), 500);
  assert.equal(backoffDelay(20, {}, () => 1), 30000);
});

test("the drain reason's delay is parsed", () => {
  assert.equal(parseDrainReason("reconnect in 1234"), 1234);
  assert.equal(parseDrainReason("server draining, reconnect in 80 ms"), 80);
  assert.equal(parseDrainReason("going away"), undefined);
  assert.equal(parseDrainReason(""), undefined);
});

test("close codes: drain delay honoured, 4001 and 1000 stop, the rest back off", () => {
  const o = { initialMs: 100, maxMs: 1000 };
  assert.deepEqual(decideOnClose(1001, "reconnect in 1500", 7, o, () => 1), { retry: true, delayMs: 1500, drain: true });
  // A drain without a delay in the reason falls back to backoff.
  assert.deepEqual(decideOnClose(1001, "", 1, o, () => 1), { retry: true, delayMs: 200, drain: false });
  assert.equal(decideOnClose(4001, "", 0, o).retry, false);
  assert.equal(decideOnClose(1000, "channel deleted", 0, o).retry, false);
  for (const code of [1006, 1009, 1013, 4002, 4003]) {
    assert.deepEqual(decideOnClose(code, "", 2, o, () => 1), { retry: true, delayMs: 400, drain: false }, `code ${code}`);
  }
  // An absurd suggestion is cut to 5 minutes.
  assert.equal(decideOnClose(1001, "reconnect in 999999999", 0, o).delayMs, 300000);
});

test("the package resolves by its own name to the built ES module", async () => {
  const byName = await import("shardcast-client");
  const byPath = await import("../../dist/index.js");
  assert.equal(byName.ShardcastClient, byPath.ShardcastClient);
  for (const name of ["ShardcastClient", "ShardcastError", "Subscription", "LiveQuery", "fetchTicket", "CloseCode"]) {
    assert.ok(name in byName, name);
  }
});
