// The operator console's page (served at /console by src/console.rs, which embeds the
// bundle esbuild makes of this file). It owns the page only: what it reads and changes
// goes through the node's REST API (the read-only /api/v1/admin/… views, the services and
// channels APIs) and, for the live tail, a WebSocket through the TypeScript client in
// clients/js. It has no power the REST API does not already give an admin.
//
// The admin token lives in this tab's sessionStorage (never in a URL: the live tail's
// socket sends it in its first message, `auth: "message"`). Views refresh on their own
// every REFRESH_MS and stop while the tab is hidden. Text from the server is always set
// with textContent, never parsed as HTML.

import { ShardcastClient } from "../../clients/js/src/index.js";
import type { EventMessage } from "../../clients/js/src/index.js";
import { el, fmtBytes, fmtDuration, fmtNumber, lineChart } from "./dom.js";

const TOKEN_KEY = "shardcast.console.token";
const REFRESH_MS = 2000;
/** Overview samples kept for the chart: five minutes at one per refresh. */
const CHART_POINTS = 150;
/** Live tail: events kept. */
const TAIL_MAX = 1000;

type Json = Record<string, unknown>;
type ViewName = "overview" | "services" | "channels" | "subscriptions" | "tail";
const VIEWS: ViewName[] = ["overview", "services", "channels", "subscriptions", "tail"];

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function $(id: string): HTMLElement {
  const e = document.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e;
}

function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** One REST call with the admin token; the parsed JSON, or an ApiError with the server's code. */
async function api(method: string, path: string, tok = token()): Promise<Json> {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${tok ?? ""}` },
    cache: "no-store",
  });
  const text = await res.text();
  let body: Json = {};
  try {
    body = text ? (JSON.parse(text) as Json) : {};
  } catch {
    throw new ApiError(res.status, "BAD_ANSWER", `${method} ${path}: the answer is not JSON`);
  }
  if (!res.ok) {
    const err = (body.error ?? {}) as Json;
    throw new ApiError(res.status, String(err.code ?? res.status), String(err.message ?? res.statusText));
  }
  return body;
}

function num(v: unknown): number {
  return typeof v === "number" ? v : 0;
}

function arr(v: unknown): Json[] {
  return Array.isArray(v) ? (v as Json[]) : [];
}

function status(text: string, isError = false): void {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

// ---------------------------------------------------------------------------------------
// Overview

interface Sample {
  at: number;
  publications: number;
  deliveries: number;
}
const samples: Sample[] = [];

function rates(): { pub: number[]; del: number[] } {
  const pub: number[] = [];
  const del: number[] = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = Math.max((b.at - a.at) / 1000, 0.001);
    pub.push(Math.max(0, (b.publications - a.publications) / dt));
    del.push(Math.max(0, (b.deliveries - a.deliveries) / dt));
  }
  return { pub, del };
}

function card(label: string, value: string, id: string): HTMLElement {
  return el("div", { class: "card" }, [el("div", { class: "label" }, [label]), el("div", { class: "value", id }, [value])]);
}

function renderOverview(o: Json): void {
  const conns = (o.connections ?? {}) as Json;
  const byRole = (conns.byRole ?? {}) as Json;
  const history = (o.history ?? {}) as Json;
  const store = (o.store ?? {}) as Json;
  const channels = (o.channels ?? {}) as Json;
  const services = (o.services ?? {}) as Json;
  const dropped = (o.dropped ?? {}) as Json;
  $("node-name").textContent = `${String(o.node)} · v${String(o.version)}`;
  const { pub, del } = rates();
  const last = (xs: number[]) => (xs.length ? xs[xs.length - 1] : 0);
  const view = $("overview-view");
  view.replaceChildren(
    el("h1", {}, ["Overview"]),
    el("div", { class: "cards" }, [
      card("connections", fmtNumber(num(conns.total)), "ov-connections"),
      card("publications/s", fmtNumber(last(pub), 1), "ov-pub-rate"),
      card("deliveries/s", fmtNumber(last(del), 1), "ov-del-rate"),
      card("publications", fmtNumber(num(o.publications)), "ov-publications"),
      card("deliveries", fmtNumber(num(o.deliveries)), "ov-deliveries"),
      card("history", `${fmtNumber(num(history.publications))} / ${fmtNumber(num(history.size))}`, "ov-history"),
      card("history bytes", fmtBytes(num(history.bytes)), "ov-history-bytes"),
      card("store", store.bytes == null ? "n/a" : fmtBytes(num(store.bytes)), "ov-store"),
      card("channels", fmtNumber(num(channels.open)), "ov-channels"),
      card("dead letters", fmtNumber(num(services.deadLetters)), "ov-dead"),
      card("uptime", fmtDuration(num(o.uptimeSeconds)), "ov-uptime"),
    ]),
    el("h2", {}, ["Publications and deliveries per second (last minutes)"]),
    el("p", { class: "muted" }, [
      el("span", { class: "legend-pub" }, ["— publications"]),
      "  ",
      el("span", { class: "legend-del" }, ["— deliveries"]),
    ]),
    lineChart([
      { values: pub, cls: "pub" },
      { values: del, cls: "del" },
    ], CHART_POINTS - 1),
    el("h2", {}, ["Connections by role and shard"]),
    table(
      ["shard", "pending", "user", "service", "admin"],
      [
        ...arr(conns.byShard).map((r) => [String(r.shard), ...["pending", "user", "service", "admin"].map((k) => fmtNumber(num(r[k])))]),
        ["all", ...["pending", "user", "service", "admin"].map((k) => fmtNumber(num(byRole[k])))],
      ],
      "ov-conn-table",
    ),
    el("h2", {}, ["Drops by reason"]),
    table(["reason", "dropped"], Object.entries(dropped).map(([k, v]) => [k, fmtNumber(num(v))]), "ov-drops"),
    el("h2", {}, ["Shard queues"]),
    table(["shard", "depth", "capacity"], arr(o.shardQueues).map((q) => [String(q.shard), fmtNumber(num(q.depth)), fmtNumber(num(q.capacity))]), "ov-queues"),
    el("h2", {}, ["Nodes"]),
    table(
      ["node", "connections", "publications", "deliveries", "uptime"],
      arr(o.nodes).map((n) => [String(n.node), fmtNumber(num(n.connections)), fmtNumber(num(n.publications)), fmtNumber(num(n.deliveries)), fmtDuration(num(n.uptimeSeconds))]),
      "ov-nodes",
    ),
    el("p", { class: "muted" }, [
      o.clusterMode ? "Cluster mode: one row per running node, as each last shared it (every 2 s)." : "Single node.",
    ]),
  );
}

function table(head: string[], rows: (string | Node)[][], id?: string): HTMLElement {
  return el("table", id ? { id } : {}, [
    el("thead", {}, [el("tr", {}, head.map((h) => el("th", {}, [h])))]),
    el(
      "tbody",
      {},
      rows.map((r) => el("tr", {}, r.map((c) => el("td", typeof c === "string" && /^[\d,.\s]+$/.test(c) ? { class: "num" } : {}, [c])))),
    ),
  ]);
}

async function refreshOverview(): Promise<void> {
  const o = await api("GET", "/api/v1/admin/overview");
  samples.push({ at: Date.now(), publications: num(o.publications), deliveries: num(o.deliveries) });
  while (samples.length > CHART_POINTS) samples.shift();
  if (current === "overview") renderOverview(o);
}

// ---------------------------------------------------------------------------------------
// Services

let selectedGroup: string | null = null;
let servicesNote = "";

async function refreshServices(): Promise<void> {
  const s = await api("GET", "/api/v1/services");
  const groups = arr(s.groups);
  const view = $("services-view");
  const rows = groups.map((g) => {
    const name = String(g.group);
    const show = el("button", { type: "button", "data-group": name }, ["Dead letters"]);
    show.addEventListener("click", () => {
      selectedGroup = name;
      servicesNote = "";
      void tick();
    });
    return [name, fmtNumber(num(g.instances)), fmtNumber(num(g.pending)), fmtNumber(num(g.inFlight)), fmtNumber(num(g.dead)), show];
  });
  const parts: (HTMLElement | string)[] = [
    el("h1", {}, ["Services"]),
    table(["group", "instances", "pending", "in flight", "dead letters", ""], rows, "svc-groups"),
  ];
  if (selectedGroup !== null && groups.some((g) => g.group === selectedGroup)) {
    const group = selectedGroup;
    const path = `/api/v1/services/${encodeURIComponent(group)}/dead-letters`;
    const dl = await api("GET", `${path}?limit=100`);
    const replay = el("button", { type: "button", id: "svc-replay" }, ["Replay all"]);
    const purge = el("button", { type: "button", id: "svc-purge", class: "danger" }, ["Purge all"]);
    replay.addEventListener("click", () => {
      if (!confirm(`Replay every dead letter of ${group} (back to its queue with attempt 1)?`)) return;
      void api("POST", `${path}/replay`).then(
        (r) => ((servicesNote = `replayed ${num(r.replayed)}`), tick()),
        (e: Error) => ((servicesNote = e.message), tick()),
      );
    });
    purge.addEventListener("click", () => {
      if (!confirm(`Purge every dead letter of ${group}? They cannot be recovered.`)) return;
      void api("DELETE", path).then(
        (r) => ((servicesNote = `purged ${num(r.purged)}`), tick()),
        (e: Error) => ((servicesNote = e.message), tick()),
      );
    });
    parts.push(
      el("h2", {}, [`Dead letters of ${group}: `, el("span", { id: "svc-dead-total" }, [String(num(dl.totalCount))])]),
      el("p", {}, [replay, " ", purge, " ", el("span", { id: "svc-note" }, [servicesNote])]),
      table(
        ["task", "attempt", "path", "event type", "data"],
        arr(dl.data).map((d) => {
          const ev = (d.event ?? {}) as Json;
          return [String(d.taskId), String(num(d.attempt)), String(ev.path ?? ""), String(ev.eventType ?? ""), el("pre", {}, [JSON.stringify(ev.data)])];
        }),
        "svc-dead",
      ),
    );
  }
  view.replaceChildren(...parts);
}

// ---------------------------------------------------------------------------------------
// Channels

let channelsNote = "";

async function refreshChannels(): Promise<void> {
  // Every channel with its counts (the admin view); closing is the channels REST API's.
  const list = await api("GET", "/api/v1/admin/channels");
  const items = arr(list.data);
  const o = await api("GET", "/api/v1/admin/overview");
  const ch = (o.channels ?? {}) as Json;
  const rows = items.map((c) => {
    const id = String(c.channel_id);
    const close = el("button", { type: "button", class: "danger", "data-close": id }, ["Close"]);
    close.addEventListener("click", () => {
      if (!confirm(`Close channel ${id}? Its socket is closed and its backlog dropped.`)) return;
      void api("DELETE", `/api/v1/realtime-subscriptions/${encodeURIComponent(id)}`).then(
        () => ((channelsNote = `closed ${id}`), tick()),
        (e: Error) => ((channelsNote = e.message), tick()),
      );
    });
    const who = String(c.user_id ?? c.path ?? "");
    return [
      id,
      String(c.subscription_type ?? ""),
      who,
      String(c.status ?? ""),
      fmtNumber(num(c.backlog)),
      fmtNumber(num(c.missed_events)),
      fmtNumber(num(c.dropped)),
      fmtNumber(num(c.event_count)),
      String(c.last_event_at ?? "—"),
      close,
    ];
  });
  $("channels-view").replaceChildren(
    el("h1", {}, ["Channels"]),
    el("div", { class: "cards" }, [
      card("channels", fmtNumber(num(list.total)), "ch-total"),
      card("backlog events (all channels)", fmtNumber(num(ch.backlogEvents)), "ch-backlog"),
    ]),
    el("p", { id: "ch-note" }, [channelsNote]),
    table(["channel", "type", "user / path", "status", "backlog", "missed", "dropped", "events", "last event", ""], rows, "ch-table"),
  );
}

// ---------------------------------------------------------------------------------------
// Subscriptions and live queries

async function refreshSubscriptions(): Promise<void> {
  const s = await api("GET", "/api/v1/admin/subscriptions?k=10");
  const totals = (s.totals ?? {}) as Json;
  $("subscriptions-view").replaceChildren(
    el("h1", {}, ["Subscriptions and live queries"]),
    el("div", { class: "cards" }, [
      card("subscriptions", fmtNumber(num(totals.subscriptions)), "sub-total"),
      card("live queries (node)", fmtNumber(num(totals.liveQueries)), "sub-lq"),
      card("shared feeds", fmtNumber(num(totals.feeds)), "sub-feeds"),
    ]),
    el("h2", {}, ["Per shard"]),
    table(
      ["shard", "subscriptions", "shared feeds"],
      arr(s.shards).map((r) => [String(r.shard), fmtNumber(num(r.subscriptions)), fmtNumber(num(r.feeds))]),
      "sub-shards",
    ),
    el("h2", {}, ["Busiest paths (publications through this node)"]),
    table(
      ["path", "publications", "± error"],
      arr(s.busiestPaths).map((p) => [String(p.path), fmtNumber(num(p.publications)), fmtNumber(num(p.error))]),
      "sub-top",
    ),
    el("p", { class: "muted" }, [
      `Counted over ${fmtNumber(num(s.publicationsCounted))} publications; at most ${num(s.tracked)} paths tracked (Space-Saving).`,
    ]),
  );
}

// ---------------------------------------------------------------------------------------
// Live tail

let tailClient: ShardcastClient | null = null;
let tailPaused = false;
const tailEvents: EventMessage[] = [];

function renderTail(): void {
  $("tail-count").textContent = String(tailEvents.length);
  if (tailPaused) return;
  $("tail-rows").replaceChildren(
    ...tailEvents
      .slice()
      .reverse()
      .map((e) =>
        el("tr", { "data-seq": String(e.seq) }, [
          el("td", { class: "num" }, [String(e.seq)]),
          el("td", {}, [e.timestamp]),
          el("td", {}, [e.path]),
          el("td", {}, [e.eventType]),
          el("td", {}, [el("pre", {}, [JSON.stringify(e.data)])]),
        ]),
      ),
  );
}

function stopTail(): void {
  tailClient?.close();
  tailClient = null;
  (($("tail-start") as HTMLButtonElement).disabled = false);
  (($("tail-pause") as HTMLButtonElement).disabled = true);
  (($("tail-stop") as HTMLButtonElement).disabled = true);
}

async function startTail(): Promise<void> {
  stopTail();
  $("tail-error").textContent = "";
  tailEvents.length = 0;
  tailPaused = false;
  $("tail-pause").textContent = "Pause";
  renderTail();
  const path = ($("tail-path") as HTMLInputElement).value.trim();
  const events = ($("tail-events") as HTMLInputElement).value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  const filter = ($("tail-filter") as HTMLInputElement).value.trim();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const client = new ShardcastClient({ url, token: token() ?? "", auth: "message", batchMs: 0 });
  tailClient = client;
  try {
    await client.connect();
    await client.subscribe(
      { id: "tail", path, ...(events.length ? { events } : {}), ...(filter ? { filter } : {}) },
      (e) => {
        tailEvents.push(e);
        while (tailEvents.length > TAIL_MAX) tailEvents.shift();
        renderTail();
      },
    );
    (($("tail-start") as HTMLButtonElement).disabled = true);
    (($("tail-pause") as HTMLButtonElement).disabled = false);
    (($("tail-stop") as HTMLButtonElement).disabled = false);
    $("tail-view").dataset.subscribed = "true";
  } catch (e) {
    $("tail-error").textContent = e instanceof Error ? e.message : String(e);
    stopTail();
  }
}

// ---------------------------------------------------------------------------------------
// Navigation, refresh and login

let current: ViewName = "overview";
let timer: ReturnType<typeof setTimeout> | null = null;
let busy = false;

function show(view: ViewName): void {
  current = view;
  for (const v of VIEWS) $(`${v}-view`).hidden = v !== view;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("#nav a")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
}

/** Refreshes the overview (for the chart) and the shown view; then waits for the next. */
async function tick(): Promise<void> {
  if (busy || token() === null) return;
  busy = true;
  try {
    await refreshOverview();
    if (current === "services") await refreshServices();
    if (current === "channels") await refreshChannels();
    if (current === "subscriptions") await refreshSubscriptions();
    status(`updated ${new Date().toLocaleTimeString()}`);
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      logout(`logged out: ${e.message}`);
    } else {
      status(e instanceof Error ? e.message : String(e), true);
    }
  } finally {
    busy = false;
  }
  schedule();
}

function schedule(): void {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  // Paused while the tab is hidden; visibilitychange starts it again.
  const running = token() !== null && !document.hidden;
  if (running) timer = setTimeout(() => void tick(), REFRESH_MS);
  // What the browser test reads to see the pause (no request goes out while "paused").
  document.body.dataset.refresh = running ? "running" : "paused";
}

function route(): void {
  const name = location.hash.slice(1) as ViewName;
  show(VIEWS.includes(name) ? name : "overview");
  void tick();
}

function loggedIn(): void {
  $("login-view").hidden = true;
  $("nav").hidden = false;
  route();
}

function logout(message = ""): void {
  sessionStorage.removeItem(TOKEN_KEY);
  stopTail();
  if (timer !== null) clearTimeout(timer);
  timer = null;
  samples.length = 0;
  for (const v of VIEWS) $(`${v}-view`).hidden = true;
  $("nav").hidden = true;
  $("node-name").textContent = "";
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  status("");
}

async function login(tok: string): Promise<void> {
  $("login-error").textContent = "";
  try {
    // The admin API answers admin tokens only: a good answer is the login.
    await api("GET", "/api/v1/admin/overview", tok);
  } catch (e) {
    $("login-error").textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, tok);
  ($("token") as HTMLTextAreaElement).value = "";
  loggedIn();
}

function start(): void {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    void login(($("token") as HTMLTextAreaElement).value.trim());
  });
  $("logout").addEventListener("click", () => logout());
  $("tail-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    void startTail();
  });
  $("tail-pause").addEventListener("click", () => {
    tailPaused = !tailPaused;
    $("tail-pause").textContent = tailPaused ? "Resume" : "Pause";
    renderTail();
  });
  $("tail-stop").addEventListener("click", () => stopTail());
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => (document.hidden ? schedule() : void tick()));
  if (token() !== null) loggedIn();
}

start();
