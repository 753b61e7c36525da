// Drives the operator console (/console) in Debian's headless Chromium (playwright-core,
// no downloaded browser) for tests/console.rs, against a node that test seeded. Every
// check waits on a condition with a deadline; a failed one throws with what it saw. Prints
// one JSON line: {"ok":true,...} or {"ok":false,"error":...}; screenshots of each view go
// to the directory given.
//
// argv: base URL, admin token, user token, api key, screenshot dir, expected JSON
// ({connections, subscriptions, hotPath, hotCount, replayGroup, replayDead, purgeGroup,
//   purgeDead, channels, closeChannel}).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, adminToken, userToken, apiKey, shots, expectedJson] = process.argv.slice(2);
const want = JSON.parse(expectedJson);
mkdirSync(shots, { recursive: true });

const report = { ok: false, steps: [] };
const problems = { consoleErrors: [], pageErrors: [], failedRequests: [], badResponses: [] };

function step(name, extra = {}) {
  report.steps.push({ name, ...extra });
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** Waits until fn() (run in the page) returns a truthy value; returns it. */
async function until(page, what, fn, arg, timeout = 10000) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return await h.jsonValue();
  } catch (e) {
    const text = await page.evaluate(() => document.querySelector("main")?.innerText ?? "").catch(() => "");
    throw new Error(`${what}: not within ${timeout} ms (${e.message.split("\n")[0]})\npage:\n${text.slice(0, 3000)}`);
  }
}


async function publish(events) {
  const res = await fetch(`${base}/api/v1/publish`, {
    method: "POST",
    headers: { Authorization: `apikey ${apiKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({ events }),
  });
  const text = await res.text();
  check(res.status === 202, `publish: ${res.status} ${text}`);
  return JSON.parse(text).lastSeq;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => {
    if (m.type() === "error") problems.consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => problems.pageErrors.push(String(e)));
  page.on("requestfailed", (r) => problems.failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.badResponses.push(`${r.request().method()} ${r.url()}: ${r.status()}`);
  });
  page.on("dialog", (d) => void d.accept());

  // 1. Refused logins: a wrong token (401) and a user's token (403, the admin API is
  // admin only). Both are expected to fail, so their 4xx and the browser's console line
  // about them are taken out of the lists before the rest.
  await page.goto(`${base}/console`);
  await page.fill("#token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.wrong");
  await page.click("#login-form button[type=submit]");
  const wrong = await until(page, "wrong token refused", (sel) => document.querySelector(sel)?.textContent || null, "#login-error");
  check(wrong.startsWith("UNAUTHORIZED"), `wrong token: ${wrong}`);
  await page.fill("#token", userToken);
  await page.click("#login-form button[type=submit]");
  const user = await until(page, "user token refused", () => {
    const t = document.querySelector("#login-error")?.textContent ?? "";
    return t.startsWith("FORBIDDEN") ? t : null;
  });
  check(await page.isHidden("#nav"), "a refused login shows the views");
  check((await page.evaluate(() => sessionStorage.length)) === 0, "a refused token was kept");
  step("refused", { wrong, user });
  const expected = problems.badResponses.splice(0);
  check(expected.length === 2 && expected.every((r) => r.includes("/api/v1/admin/overview")), `refusals: ${expected}`);
  problems.consoleErrors.splice(0);

  // 2. Log in; the token is in session storage, not in the URL.
  await page.fill("#token", adminToken);
  await page.click("#login-form button[type=submit]");
  await until(page, "overview shown", () => !document.querySelector("#overview-view").hidden && document.querySelector("#ov-connections"));
  check(!page.url().includes(adminToken), "the token is in the URL");
  check((await page.evaluate(() => sessionStorage.getItem("shardcast.console.token"))) === adminToken, "token not in sessionStorage");

  // 3. Overview: the seeded connections; it refreshes on its own (two refreshes).
  const conns = await until(page, `overview connections = ${want.connections}`, (n) => {
    const t = document.querySelector("#ov-connections")?.textContent;
    return t === String(n) ? t : null;
  }, want.connections);
  const userRow = await until(page, "connection table", () => {
    const rows = [...document.querySelectorAll("#ov-conn-table tbody tr")];
    const all = rows.find((r) => r.cells[0].textContent === "all");
    return all ? all.cells[2].textContent : null;
  });
  check(userRow === String(want.connections), `user connections in the table: ${userRow}`);
  const first = Number(await page.evaluate(() => document.body.dataset.refreshed));
  await until(page, "overview refreshes by itself", (t) => Number(document.body.dataset.refreshed) > t, first);
  await until(page, "the chart has lines", () => document.querySelectorAll("svg.chart polyline").length === 2);
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });
  step("overview", { connections: conns });

  // 4. Hidden tab: refreshing pauses; visible again: it resumes with a new refresh.
  await page.evaluate(() => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  await until(page, "paused while hidden", () => document.body.dataset.refresh === "paused");
  const pausedAt = Number(await page.evaluate(() => document.body.dataset.refreshed));
  await page.evaluate(() => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => false });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  await until(page, "resumes when visible", (t) => Number(document.body.dataset.refreshed) > t && document.body.dataset.refresh === "running", pausedAt);
  step("visibility");

  // 5. Services: groups with their dead letters; replay one group, purge another.
  await page.click("#nav a[data-view=services]");
  // Cell `col` of `group`'s row (run in the page, with its arguments passed in).
  const groupCell = ([group, col]) => {
    const row = [...document.querySelectorAll("#svc-groups tbody tr")].find((r) => r.cells[0].textContent === group);
    return row ? row.cells[col].textContent : null;
  };
  const dead1 = await until(page, "replay group's dead letters", ([g, n]) => {
    const row = [...document.querySelectorAll("#svc-groups tbody tr")].find((r) => r.cells[0].textContent === g);
    return row && row.cells[4].textContent === String(n) ? row.cells[4].textContent : null;
  }, [want.replayGroup, want.replayDead]);
  await page.click(`button[data-group="${want.replayGroup}"]`);
  await until(page, "dead letters listed with payloads", (n) => document.querySelectorAll("#svc-dead tbody tr").length === n && document.querySelector("#svc-dead tbody pre")?.textContent.includes("invoice"), want.replayDead);
  await page.screenshot({ path: `${shots}/services.png`, fullPage: true });
  await page.click("#svc-replay");
  const replayed = await until(page, "replay answered", (n) => {
    const t = document.querySelector("#svc-note")?.textContent;
    return t === `replayed ${n}` ? t : null;
  }, want.replayDead);
  await until(page, "replayed group has no dead letters", ([g]) => {
    const row = [...document.querySelectorAll("#svc-groups tbody tr")].find((r) => r.cells[0].textContent === g);
    return row && row.cells[4].textContent === "0";
  }, [want.replayGroup]);
  const pending = await page.evaluate(groupCell, [want.replayGroup, 2]);
  await page.click(`button[data-group="${want.purgeGroup}"]`);
  await until(page, "purge group's dead letters listed", (n) => document.querySelectorAll("#svc-dead tbody tr").length === n, want.purgeDead);
  await page.click("#svc-purge");
  const purged = await until(page, "purge answered", (n) => {
    const t = document.querySelector("#svc-note")?.textContent;
    return t === `purged ${n}` ? t : null;
  }, want.purgeDead);
  await until(page, "purged group has no dead letters", ([g]) => {
    const row = [...document.querySelectorAll("#svc-groups tbody tr")].find((r) => r.cells[0].textContent === g);
    return row && row.cells[4].textContent === "0" && document.querySelectorAll("#svc-dead tbody tr").length === 0;
  }, [want.purgeGroup]);
  step("services", { dead: dead1, replayed, pendingAfterReplay: pending, purged, deadAfter: await page.evaluate(groupCell, [want.replayGroup, 4]) });

  // 6. Channels: the seeded ones with their counts; close one.
  await page.click("#nav a[data-view=channels]");
  await until(page, `channels = ${want.channels}`, (n) => document.querySelector("#ch-total")?.textContent === String(n) && document.querySelectorAll("#ch-table tbody tr").length === n, want.channels);
  const counted = await until(page, "the channel's event count", (id) => {
    const row = [...document.querySelectorAll("#ch-table tbody tr")].find((r) => r.cells[0].textContent === id);
    return row
      ? { status: row.cells[3].textContent, backlog: row.cells[4].textContent, missed: row.cells[5].textContent, events: row.cells[7].textContent }
      : null;
  }, want.closeChannel);
  check(counted.events === String(want.closeChannelEvents), `event count: ${JSON.stringify(counted)}`);
  check(counted.backlog === String(want.closeChannelBacklog), `backlog: ${JSON.stringify(counted)}`);
  check(counted.missed === "0" && counted.status === "connected", `status, missed: ${JSON.stringify(counted)}`);
  await page.screenshot({ path: `${shots}/channels.png`, fullPage: true });
  await page.click(`button[data-close="${want.closeChannel}"]`);
  await until(page, "the channel is gone", ([id, n]) => {
    const ids = [...document.querySelectorAll("#ch-table tbody tr")].map((r) => r.cells[0].textContent);
    return !ids.includes(id) && document.querySelector("#ch-total")?.textContent === String(n - 1);
  }, [want.closeChannel, want.channels]);
  step("channels", { closed: want.closeChannel, before: counted });

  // 7. Subscriptions: per shard and the busiest path.
  await page.click("#nav a[data-view=subscriptions]");
  await until(page, `subscriptions = ${want.subscriptions}`, (n) => document.querySelector("#sub-total")?.textContent === String(n), want.subscriptions);
  const top = await until(page, "busiest path", () => {
    const r = document.querySelector("#sub-top tbody tr");
    return r ? { path: r.cells[0].textContent, count: r.cells[1].textContent } : null;
  });
  check(top.path === want.hotPath && top.count === String(want.hotCount), `busiest: ${JSON.stringify(top)}`);
  await page.screenshot({ path: `${shots}/subscriptions.png`, fullPage: true });
  step("subscriptions", { top });

  // 8. Live tail: path, event type and filter; an event not matching the type and one not
  // matching the filter are published first, so the matching one (after them in seq order)
  // arriving alone proves they were left out.
  await page.click("#nav a[data-view=tail]");
  await page.fill("#tail-path", "jobs");
  await page.fill("#tail-events", "done");
  await page.fill("#tail-filter", "n > 5");
  await page.click("#tail-start");
  await until(page, "tail subscribed", () => document.querySelector("#tail-view").dataset.subscribed === "true");
  const published = Date.now();
  const seq = await publish([
    { path: "jobs/7", eventType: "created", data: { n: 9 } },
    { path: "jobs/7", eventType: "done", data: { n: 1 } },
    { path: "jobs/7", eventType: "done", data: { n: 9, note: "tail-me" } },
  ]);
  await until(page, "the published event in the tail within a second", (s) => document.querySelector(`#tail-rows tr[data-seq="${s}"]`), seq, 1000);
  const shownMs = Date.now() - published;
  const rows = await page.evaluate(() => document.querySelectorAll("#tail-rows tr").length);
  check(rows === 1, `the filter let ${rows} events through, expected 1`);
  // Paused: a new matching event is kept but not shown until resumed.
  await page.click("#tail-pause");
  const seq2 = await publish([{ path: "jobs/8", eventType: "done", data: { n: 10 } }]);
  await until(page, "kept while paused", () => document.querySelector("#tail-count").textContent === "2");
  check((await page.evaluate(() => document.querySelectorAll("#tail-rows tr").length)) === 1, "a paused tail still renders");
  await page.click("#tail-pause");
  await until(page, "shown when resumed", (s) => document.querySelector(`#tail-rows tr[data-seq="${s}"]`), seq2);
  await page.screenshot({ path: `${shots}/tail.png`, fullPage: true });
  await page.click("#tail-stop");
  step("tail", { shownMs, rows });

  // 9. Log out: the token leaves session storage.
  await page.click("#logout");
  await until(page, "logged out", () => !document.querySelector("#login-view").hidden);
  check((await page.evaluate(() => sessionStorage.length)) === 0, "token kept after log out");

  const bad = Object.entries(problems).filter(([, v]) => v.length > 0);
  check(bad.length === 0, `problems: ${JSON.stringify(problems)}`);
  report.ok = true;
} catch (e) {
  report.error = String(e.stack ?? e);
  report.problems = problems;
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
