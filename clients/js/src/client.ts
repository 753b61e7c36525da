// ShardcastClient: one logical connection to a shardcast server (`/ws`, or a channel's
// `/channels/{id}`) that survives socket drops. It owns the socket's lifecycle
// (authenticate within the attempt deadline, heartbeat, close, reconnect with backoff or
// after the drain delay), the requests in flight (correlated by `requestId`, settled by
// the answer or rejected with the server's error code), and the registries that are
// replayed on every new socket:
// subscriptions (resubscribed with `since` = the last seq seen) and live queries
// (created again). Messages for the application leave through the emitter and the
// per-subscription handlers; nothing else in the package touches the socket.

import { decideOnClose, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ShardcastError } from "./errors.js";
import { LiveQuery } from "./live-query.js";
import {
  CloseCode,
  isTask,
  type ClientMessage,
  type ConnectionOptions,
  type ErrorMessage,
  type EventMessage,
  type LiveQuerySpec,
  type LockResultMessage,
  type LogLevel,
  type PublishedMessage,
  type QueueOverflowWarning,
  type ServerMessage,
  type SubscribedEventsMessage,
  type SubscriptionRefreshMessage,
  type SubscriptionSpec,
  type TaskEvent,
  type UnlockResultMessage,
  type UnsubscribedEventsMessage,
} from "./protocol.js";
import {
  Subscription,
  type EventHandler,
  type ResyncInfo,
  type SubscribeOptions,
} from "./subscription.js";

/** The part of the WebSocket API the client uses (browsers' and Node's global). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Timer functions, injectable so tests control time. */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/**
 * - `idle`: made, `connect()` not called yet;
 * - `connecting`: a socket is opening or authenticating;
 * - `connected`: authenticated (subscriptions are being or have been resumed);
 * - `reconnecting`: waiting `delayMs` before the next socket;
 * - `closed`: terminal (by `close()`, or a close code a retry cannot fix: 1000, 4001).
 */
export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** The close code of the socket whose close led here. */
  code?: number;
  /** Its close reason. */
  reason?: string;
  /** `reconnecting`: how long until the next socket. */
  delayMs?: number;
  /** `reconnecting`: whether the delay is the draining server's suggestion. */
  drain?: boolean;
  /**
   * `reconnecting`: the attempt was given up because it had not reached `authenticated`
   * within `connectTimeoutMs` (`code` is then 1006 and `reason` says so).
   */
  timedOut?: boolean;
  /** `connected`: the server's connection id. */
  connectionId?: string;
  /** `closed` by the server: why (e.g. the `UNAUTHORIZED` error before a 4001). */
  error?: ShardcastError;
}

export interface ClientEvents {
  state: StateChange;
  /** Every event (user, channel and service connections), once per message. */
  event: EventMessage;
  /** Service connections: every task (an event with `taskId` and `attempt`). */
  task: TaskEvent;
  /** `subscriptionRefresh`: an entity left a filtered subscription. */
  refresh: SubscriptionRefreshMessage;
  /** `QUEUE_OVERFLOW`: the server dropped messages for a subscription or live query. */
  overflow: QueueOverflowWarning;
  /** A resume answered `recovered: false`: the application re-syncs that subscription. */
  resync: ResyncInfo;
  /** Errors no request is waiting for; a listener that threw. */
  error: ShardcastError | Error;
  /** Every server message, after `batch` unwrapping (for logging and debugging). */
  message: ServerMessage;
}

export interface ClientOptions extends ConnectionOptions {
  /** `ws://host:port/ws`, or a channel's `websocket_url` (`/channels/{id}`). */
  url: string;
  /** A JWT. */
  token?: string;
  /**
   * Returns a token; called before every connection attempt after the first (or before
   * the first too, when `token` is not given): the token refresh for reconnects.
   */
  getToken?: () => string | Promise<string>;
  /**
   * Returns a one-time ticket (`POST /api/v1/ws-tickets`, see `fetchTicket`); called
   * before every connection attempt, since a ticket is single use. Takes precedence over
   * `token` / `getToken`.
   */
  getTicket?: () => string | Promise<string>;
  /**
   * How a token travels: `query` (`?token=`, the default) or `message` (the first
   * message `{"type":"auth"}`, which keeps the token out of URLs and logs).
   */
  auth?: "query" | "message";
  /** Reconnect after a lost socket (default true). */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** How long a request waits for its answer, queued time included (default 10000). */
  requestTimeoutMs?: number;
  /**
   * How long one connection attempt (credential callback, TCP connect, WebSocket
   * handshake, authentication) may take before it is given up and retried with backoff
   * like any failed attempt (default 10000; 0: no deadline). Without it an attempt that a
   * proxy accepts and closes (Node 20's WebSocket then never fires `close`), or that a
   * black-holed network never answers, would stay `connecting` forever.
   */
  connectTimeoutMs?: number;
  /**
   * Silence after which the socket is considered dead and replaced (default
   * `2 × heartbeatMs + 60000`: pings may wait behind a long `batchMs`); 0: never.
   */
  livenessTimeoutMs?: number;
  /** Default: the global `WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Default: the global `setTimeout` / `clearTimeout`. */
  timers?: Timers;
  /** Default: `Math.random` (backoff jitter). */
  random?: () => number;
}

/** `lock` options (PROTOCOL.md §10). */
export interface LockOptions {
  /** Required: 1..=86400000. */
  ttlMs: number;
  /** How long to wait for the lock (default 0: answer at once). */
  waitMs?: number;
}

export interface LockResult {
  name: string;
  acquired: boolean;
  /** Present when acquired: grows with every grant; pass it to what the lock guards. */
  fencingToken?: number;
  expiresAt?: string;
}

export type TaskHandler = (task: TaskEvent) => unknown | Promise<unknown>;

export interface TaskHandlerOptions {
  /** `retryInMs` of the `taskFailed` sent when the handler throws (default 0). */
  retryInMs?: number;
}

/** A request waiting for its answer. */
interface Pending {
  resolve(msg: ServerMessage): void;
  reject(err: ShardcastError): void;
  timer: unknown;
  /** Not yet written: waits in the outbox for a connected socket. */
  queued: boolean;
}

const OPEN = 1;
const MAX_TASK_IDS = 10000;
const MAX_RETRY_MS = 86400000;
const ID_RE = /^.+$/s;

export class ShardcastClient extends Emitter<ClientEvents> {
  /** Whether the URL is a channel socket (`/channels/{id}`): events only, no commands. */
  readonly isChannel: boolean;
  /** The server's id for the current socket (set on `authenticated`). */
  connectionId: string | undefined;
  /** The server's heartbeat interval for the current socket. */
  heartbeatMs: number | undefined;

  private readonly opts: ClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly timers: Timers;
  private readonly random: () => number;
  private currentState: ConnectionState = "idle";
  private ws: WebSocketLike | null = null;
  /** Bumped for every socket, so late callbacks of an old one are ignored. */
  private generation = 0;
  /** Failed attempts since the last `authenticated`: the backoff exponent. */
  private attempt = 0;
  private reconnectTimer: unknown = null;
  private livenessTimer: unknown = null;
  /** The current attempt's deadline (`connectTimeoutMs`), until `authenticated`. */
  private attemptTimer: unknown = null;
  /**
   * The last `error` of this socket that answered no request: it explains a 4001 (bad
   * credential before `authenticated`; on a channel socket, `FORBIDDEN` or `NOT_FOUND`
   * right after it).
   */
  private closeError: ShardcastError | undefined;
  private nextRequest = 0;
  private readonly pending = new Map<string, Pending>();
  /** What waits for a connected socket, in order (requests and acknowledgements). */
  private outbox: { msg: ClientMessage; requestId?: string }[] = [];
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly liveQueries = new Map<string, LiveQuery>();
  /** Live queries whose `liveQuery()` call waits: their own request creates them. */
  private readonly creatingLiveQueries = new Set<string>();
  private readonly taskHandlers = new Set<{ handler: TaskHandler; options: TaskHandlerOptions }>();
  private completeQueue: string[] = [];
  private pingWaiters: { resolve(): void; reject(e: ShardcastError): void; timer: unknown }[] = [];
  private connectWaiters: { resolve(): void; reject(e: Error): void }[] = [];
  /** Channel sockets: the newest seq delivered (a takeover may repeat one; PROTOCOL-NOTES). */
  private channelSeq = -1;

  constructor(options: ClientOptions) {
    super();
    this.opts = validateOptions(options);
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError(
        "ShardcastClient: no WebSocket: pass the WebSocket option (Node 20 has a global one with --experimental-websocket, Node 22+ by default)",
      );
    }
    this.WS = WS;
    this.timers = options.timers ?? {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
    };
    this.random = options.random ?? Math.random;
    this.isChannel = /\/channels\/[^/]+\/?$/.test(new URL(options.url).pathname);
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /**
   * Opens the connection; resolves on the next `authenticated`. Failed attempts are
   * retried as reconnects are; rejects when the client reaches `closed` first (4001, 1000,
   * or `close()`). Calling it again while connecting or connected waits for the same.
   */
  connect(): Promise<void> {
    if (this.currentState === "connected") return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.currentState === "idle" || this.currentState === "closed") {
      this.attempt = 0;
      void this.openSocket();
    }
    return p;
  }

  /** Closes for good: no reconnect; pending requests reject with `CLOSED`. */
  close(): void {
    if (this.currentState === "closed") return;
    const ws = this.ws;
    this.ws = null;
    this.generation++;
    if (ws) {
      detach(ws);
      try {
        ws.close(CloseCode.normal);
      } catch {
        /* already closing */
      }
    }
    this.toClosed({}, new ShardcastError("CLOSED", "the client was closed"));
  }

  // -------------------------------------------------------------------------------------
  // Subscriptions

  /**
   * Subscribes (`subscribeEvents` with one entry); resolves with the subscription once the
   * server accepted it, rejects with the server's code (`INVALID_FILTER`, `FORBIDDEN`, ...)
   * when it was rejected. Reusing an id replaces that subscription.
   */
  async subscribe(
    spec: SubscriptionSpec,
    handler?: EventHandler,
    options: SubscribeOptions = {},
  ): Promise<Subscription> {
    this.refuseOnChannel("subscribe");
    validateSpec(spec);
    if (handler !== undefined && typeof handler !== "function") {
      throw new TypeError("subscribe: the handler must be a function");
    }
    for (const k of ["onRefresh", "onOverflow", "onResync"] as const) {
      if (options[k] !== undefined && typeof options[k] !== "function") {
        throw new TypeError(`subscribe: options.${k} must be a function`);
      }
    }
    const entry: SubscriptionSpec = { id: spec.id, path: spec.path };
    if (spec.events !== undefined) entry.events = [...spec.events];
    if (spec.filter !== undefined) entry.filter = spec.filter;
    if (spec.since !== undefined) entry.since = spec.since;
    const answer = (await this.request({ type: "subscribeEvents", subscriptions: [entry] })) as SubscribedEventsMessage;
    const rejected = answer.rejected?.find((r) => r.id === spec.id);
    if (rejected) {
      throw new ShardcastError(rejected.code, rejected.message, {
        subscriptionId: spec.id,
        ...(answer.requestId !== undefined ? { requestId: answer.requestId } : {}),
      });
    }
    const accepted = answer.subscriptions.find((s) => s.id === spec.id);
    if (!accepted) {
      throw new ShardcastError("INTERNAL", `the answer names no subscription '${spec.id}'`);
    }
    // Replayed events (seq > since) follow the answer: start from `since` so they count.
    const seq = spec.since !== undefined ? spec.since : accepted.seq;
    const sub = new Subscription(this, entry, seq, accepted.recovered, handler, options);
    const old = this.subscriptions.get(sub.id);
    if (old) old.active = false;
    this.subscriptions.set(sub.id, sub);
    return sub;
  }

  /** Unsubscribes ids (`unsubscribeEvents`); resolves with the ids the server removed. */
  async unsubscribe(ids: string | string[]): Promise<string[]> {
    this.refuseOnChannel("unsubscribe");
    const list = typeof ids === "string" ? [ids] : ids;
    if (!Array.isArray(list) || list.length === 0 || !list.every((i) => typeof i === "string" && i !== "")) {
      throw new TypeError("unsubscribe: give a subscription id or a non-empty array of them");
    }
    // Removed here at once: nothing for them is dispatched after this call.
    for (const id of list) {
      const s = this.subscriptions.get(id);
      if (s) s.active = false;
      this.subscriptions.delete(id);
    }
    const answer = (await this.request({ type: "unsubscribeEvents", ids: list })) as UnsubscribedEventsMessage;
    return answer.ids;
  }

  /** The subscription with this id, if active. */
  subscription(id: string): Subscription | undefined {
    return this.subscriptions.get(id);
  }

  // -------------------------------------------------------------------------------------
  // Live queries

  /**
   * Creates a live query and resolves once its initial pages are in. The helper keeps
   * the sorted result and is created again after every reconnect.
   */
  async liveQuery(
    spec: { id: string; query: LiveQuerySpec },
    onChange?: (lq: LiveQuery) => void,
  ): Promise<LiveQuery> {
    this.refuseOnChannel("liveQuery");
    if (!spec || typeof spec !== "object") throw new TypeError("liveQuery: give { id, query }");
    if (typeof spec.id !== "string" || spec.id === "") {
      throw new TypeError("liveQuery: id must be a non-empty string");
    }
    const q = spec.query;
    if (!q || typeof q !== "object" || typeof q.edge !== "string" || q.edge === "") {
      throw new TypeError("liveQuery: query.edge (an entity collection) is required");
    }
    if (q.filter !== undefined && typeof q.filter !== "string") throw new TypeError("liveQuery: query.filter must be a string");
    if (q.orderBy !== undefined && typeof q.orderBy !== "string") throw new TypeError("liveQuery: query.orderBy must be a string");
    if (q.limit !== undefined && !(Number.isInteger(q.limit) && q.limit >= 1)) {
      throw new TypeError("liveQuery: query.limit must be an integer >= 1");
    }
    if (onChange !== undefined && typeof onChange !== "function") {
      throw new TypeError("liveQuery: onChange must be a function");
    }
    if (this.liveQueries.has(spec.id)) {
      throw new Error(`liveQuery: '${spec.id}' exists; destroy it first`);
    }
    const query: LiveQuerySpec = { edge: q.edge };
    if (q.filter !== undefined) query.filter = q.filter;
    if (q.orderBy !== undefined) query.orderBy = q.orderBy;
    if (q.limit !== undefined) query.limit = q.limit;
    const lq = new LiveQuery(this, spec.id, query); // throws on a malformed orderBy
    if (onChange) lq.on("change", () => onChange(lq));
    this.liveQueries.set(spec.id, lq);
    // The request is settled by the query's first `ready` (liveQueryCreated has no
    // requestId), or rejected by an error that echoes the requestId.
    const requestId = this.newRequestId();
    const offReady = lq.once("ready", () => this.settle(requestId, { type: "liveQueryCreated", id: spec.id, totalCount: lq.totalCount, capped: lq.capped }));
    this.creatingLiveQueries.add(spec.id);
    try {
      await this.request({ type: "createLiveQuery", id: spec.id, query }, requestId);
    } catch (err) {
      offReady();
      if (this.liveQueries.get(spec.id) === lq) this.liveQueries.delete(spec.id);
      lq.destroyed = true;
      throw err;
    } finally {
      this.creatingLiveQueries.delete(spec.id);
    }
    return lq;
  }

  /** @internal Used by `LiveQuery.destroy`. */
  async destroyLiveQuery(id: string): Promise<void> {
    const lq = this.liveQueries.get(id);
    if (!lq) throw new Error(`destroyLiveQuery: no live query '${id}'`);
    lq.destroyed = true;
    this.liveQueries.delete(id);
    await this.request({ type: "destroyLiveQuery", id });
  }

  // -------------------------------------------------------------------------------------
  // Services (PROTOCOL.md §10)

  /** Acknowledges tasks (no answer; idempotent). Queued while disconnected. */
  taskComplete(taskIds: string | string[]): void {
    const ids = taskIdList("taskComplete", taskIds);
    for (let i = 0; i < ids.length; i += MAX_TASK_IDS) {
      this.sendOrQueue({ type: "taskComplete", taskIds: ids.slice(i, i + MAX_TASK_IDS) });
    }
  }

  /** Fails tasks: they come back with `attempt` + 1 after `retryInMs` (default 0). */
  taskFailed(taskIds: string | string[], retryInMs?: number): void {
    const ids = taskIdList("taskFailed", taskIds);
    if (retryInMs !== undefined && !(Number.isInteger(retryInMs) && retryInMs >= 0 && retryInMs <= MAX_RETRY_MS)) {
      throw new TypeError(`taskFailed: retryInMs must be an integer in 0..=${MAX_RETRY_MS}`);
    }
    for (let i = 0; i < ids.length; i += MAX_TASK_IDS) {
      const msg: ClientMessage = { type: "taskFailed", taskIds: ids.slice(i, i + MAX_TASK_IDS) };
      if (retryInMs !== undefined) msg.retryInMs = retryInMs;
      this.sendOrQueue(msg);
    }
  }

  /**
   * Runs `handler` for every task: when it returns (or its promise resolves) the task is
   * completed, when it throws it is failed with `retryInMs`. Returns a function that
   * removes the handler.
   */
  handleTasks(handler: TaskHandler, options: TaskHandlerOptions = {}): () => void {
    if (typeof handler !== "function") throw new TypeError("handleTasks: the handler must be a function");
    const r = options.retryInMs;
    if (r !== undefined && !(Number.isInteger(r) && r >= 0 && r <= MAX_RETRY_MS)) {
      throw new TypeError(`handleTasks: retryInMs must be an integer in 0..=${MAX_RETRY_MS}`);
    }
    const entry = { handler, options };
    this.taskHandlers.add(entry);
    return () => this.taskHandlers.delete(entry);
  }

  /** Takes (or extends) a lock; `acquired: false` when `waitMs` ran out. */
  async lock(name: string, options: LockOptions): Promise<LockResult> {
    validateLockName("lock", name);
    if (!options || typeof options !== "object") throw new TypeError("lock: give { ttlMs }");
    if (!(Number.isInteger(options.ttlMs) && options.ttlMs >= 1 && options.ttlMs <= MAX_RETRY_MS)) {
      throw new TypeError(`lock: ttlMs is required, an integer in 1..=${MAX_RETRY_MS}`);
    }
    const w = options.waitMs;
    if (w !== undefined && !(Number.isInteger(w) && w >= 0 && w <= MAX_RETRY_MS)) {
      throw new TypeError(`lock: waitMs must be an integer in 0..=${MAX_RETRY_MS}`);
    }
    const msg: ClientMessage = { type: "lock", name, ttlMs: options.ttlMs };
    if (w !== undefined) msg.waitMs = w;
    // A lock may wait `waitMs` on the server before it is answered.
    const a = (await this.request(msg, undefined, (w ?? 0) + this.requestTimeout())) as LockResultMessage;
    const result: LockResult = { name: a.name, acquired: a.acquired };
    if (a.fencingToken !== undefined) result.fencingToken = a.fencingToken;
    if (a.expiresAt !== undefined) result.expiresAt = a.expiresAt;
    return result;
  }

  /** Releases a lock; `released: false` when this connection did not hold it. */
  async unlock(name: string): Promise<{ name: string; released: boolean }> {
    validateLockName("unlock", name);
    const a = (await this.request({ type: "unlock", name })) as UnlockResultMessage;
    return { name: a.name, released: a.released };
  }

  /** Sends a log line (published on `$logs/{group}`); no answer. */
  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    if (!["trace", "debug", "info", "warn", "error"].includes(level)) {
      throw new TypeError("log: level must be trace, debug, info, warn or error");
    }
    if (typeof message !== "string") throw new TypeError("log: message must be a string");
    if (fields !== undefined && (fields === null || typeof fields !== "object" || Array.isArray(fields))) {
      throw new TypeError("log: fields must be an object");
    }
    const msg: ClientMessage = { type: "log", level, message };
    if (fields !== undefined) msg.fields = fields;
    this.sendOrQueue(msg);
  }

  /** Publishes over the socket (services and admins); resolves with the publication's seq. */
  async publish(publication: { path: string; eventType: string; data?: unknown }): Promise<{ seq: number }> {
    if (!publication || typeof publication !== "object") throw new TypeError("publish: give { path, eventType, data }");
    if (typeof publication.path !== "string" || publication.path === "") throw new TypeError("publish: path must be a non-empty string");
    if (typeof publication.eventType !== "string" || publication.eventType === "") {
      throw new TypeError("publish: eventType must be a non-empty string");
    }
    const msg: ClientMessage = { type: "publish", path: publication.path, eventType: publication.eventType };
    if (publication.data !== undefined) msg.data = publication.data;
    const a = (await this.request(msg)) as PublishedMessage;
    return { seq: a.seq };
  }

  /** Sends `ping`; resolves on the server's `pong`. */
  ping(): Promise<void> {
    if (this.currentState !== "connected" || !this.ws) {
      return Promise.reject(new ShardcastError("DISCONNECTED", "ping needs a connected socket"));
    }
    return new Promise((resolve, reject) => {
      const w = {
        resolve,
        reject,
        timer: this.timers.setTimeout(() => {
          this.pingWaiters = this.pingWaiters.filter((x) => x !== w);
          reject(new ShardcastError("TIMEOUT", "no pong"));
        }, this.requestTimeout()),
      };
      this.pingWaiters.push(w);
      this.write({ type: "ping" });
    });
  }

  // -------------------------------------------------------------------------------------
  // The socket

  private async openSocket(): Promise<void> {
    const gen = ++this.generation;
    this.reconnectTimer = null;
    this.closeError = undefined;
    this.setState({ state: "connecting" });
    this.startAttemptDeadline(gen);
    let url: string;
    let authToken: string | undefined;
    try {
      const cred = await this.credential();
      if (gen !== this.generation) return; // closed or superseded meanwhile
      const u = new URL(this.opts.url);
      if (cred.ticket !== undefined) u.searchParams.set("uuid", cred.ticket);
      else if (this.opts.auth === "message") authToken = cred.token;
      else u.searchParams.set("token", cred.token!);
      if (authToken === undefined) {
        for (const [k, v] of Object.entries(this.connectionOptions())) u.searchParams.set(k, String(v));
      }
      url = u.toString();
    } catch (err) {
      if (gen !== this.generation) return;
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
      this.afterClose(gen, 0, "credential callback failed");
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (err) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
      this.afterClose(gen, 0, "WebSocket constructor failed");
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (gen !== this.generation) return;
      if (authToken !== undefined) {
        const options = this.connectionOptions();
        const msg: ClientMessage = { type: "auth", token: authToken };
        if (Object.keys(options).length > 0) msg.options = options;
        this.write(msg);
      }
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      this.onData(ev.data);
    };
    ws.onerror = () => {
      // A close event follows; it carries what we can know.
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.ws = null;
      this.afterClose(gen, ev.code, ev.reason ?? "");
    };
  }

  private async credential(): Promise<{ token?: string; ticket?: string }> {
    const o = this.opts;
    if (o.getTicket) {
      const ticket = await o.getTicket();
      if (typeof ticket !== "string" || ticket === "") throw new TypeError("getTicket must return a non-empty string");
      return { ticket };
    }
    // The initial token serves the first attempt; getToken refreshes it for later ones.
    const useGiven = o.token !== undefined && (this.connectedOnce === false || !o.getToken);
    const token = useGiven ? o.token : await o.getToken!();
    if (typeof token !== "string" || token === "") throw new TypeError("getToken must return a non-empty string");
    return { token };
  }

  /** Whether any socket of this client was authenticated (getToken refreshes after). */
  private connectedOnce = false;

  private connectionOptions(): ConnectionOptions {
    const out: ConnectionOptions = {};
    if (this.opts.batchMs !== undefined) out.batchMs = this.opts.batchMs;
    if (this.opts.batchMax !== undefined) out.batchMax = this.opts.batchMax;
    if (this.opts.framing !== undefined) out.framing = this.opts.framing;
    if (this.opts.group !== undefined) out.group = this.opts.group;
    return out;
  }

  /**
   * Gives up the attempt `gen` if it has not reached `authenticated` in time: its socket
   * is dropped unheard (whatever it does later is ignored) and the attempt counts as
   * failed, so backoff follows as for a close.
   */
  private startAttemptDeadline(gen: number): void {
    this.stopAttemptDeadline();
    const limit = this.opts.connectTimeoutMs ?? 10000;
    if (limit <= 0) return;
    this.attemptTimer = this.timers.setTimeout(() => {
      this.attemptTimer = null;
      if (gen !== this.generation || this.currentState !== "connecting") return;
      // A new generation: a credential callback still running for this attempt, or a
      // socket that opens late, is ignored from here on.
      const next = ++this.generation;
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        detach(ws);
        try {
          ws.close(CloseCode.normal);
        } catch {
          /* still connecting: some runtimes refuse close() then; it is dropped anyway */
        }
      }
      this.afterClose(next, 1006, `not authenticated within connectTimeoutMs (${limit} ms)`, true);
    }, limit);
  }

  private stopAttemptDeadline(): void {
    if (this.attemptTimer !== null) this.timers.clearTimeout(this.attemptTimer);
    this.attemptTimer = null;
  }

  /** A socket closed (or never opened): fail what waited on it, then retry or stop. */
  private afterClose(gen: number, code: number, reason: string, timedOut = false): void {
    if (gen !== this.generation) return;
    this.stopLiveness();
    this.stopAttemptDeadline();
    for (const [id, p] of this.pending) {
      if (!p.queued) {
        this.pending.delete(id);
        this.timers.clearTimeout(p.timer);
        p.reject(new ShardcastError("DISCONNECTED", `the socket closed (${code}) before the answer`, { requestId: id }));
      }
    }
    this.failPings(new ShardcastError("DISCONNECTED", "the socket closed"));
    const decision = decideOnClose(code, reason, this.attempt, this.opts.backoff, this.random);
    if (!decision.retry || this.opts.reconnect === false) {
      const why = !decision.retry ? decision.why : "reconnect is off";
      const error = (code === CloseCode.unauthorized ? this.closeError : undefined) ?? new ShardcastError(code === CloseCode.unauthorized ? "UNAUTHORIZED" : "CLOSED", `${why}${reason ? `: ${reason}` : ""}`);
      this.toClosed({ code, reason }, error);
      return;
    }
    this.attempt = decision.drain ? 0 : this.attempt + 1;
    const change: Omit<StateChange, "previous"> = { state: "reconnecting", code, reason, delayMs: decision.delayMs, drain: decision.drain };
    if (timedOut) change.timedOut = true;
    this.setState(change);
    this.reconnectTimer = this.timers.setTimeout(() => void this.openSocket(), decision.delayMs);
  }

  private toClosed(extra: Partial<StateChange>, error: ShardcastError): void {
    this.generation++;
    if (this.reconnectTimer !== null) this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.stopLiveness();
    this.stopAttemptDeadline();
    for (const [id, p] of this.pending) {
      this.timers.clearTimeout(p.timer);
      p.reject(new ShardcastError("CLOSED", error.message, { requestId: id }));
    }
    this.pending.clear();
    this.outbox = [];
    this.failPings(new ShardcastError("CLOSED", error.message));
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    this.setState({ state: "closed", ...extra, error });
    for (const w of waiters) w.reject(error);
  }

  private setState(change: Omit<StateChange, "previous">): void {
    const previous = this.currentState;
    this.currentState = change.state;
    this.emit("state", { ...change, previous });
  }

  private onData(data: unknown): void {
    this.touchLiveness();
    if (typeof data !== "string") {
      this.emit("error", new Error("shardcast-client: a non-text frame arrived"));
      return;
    }
    let msg: ServerMessage;
    try {
      msg = JSON.parse(data) as ServerMessage;
    } catch {
      this.emit("error", new Error("shardcast-client: a frame was not JSON"));
      return;
    }
    this.dispatch(msg);
  }

  private dispatch(msg: ServerMessage): void {
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") {
      this.emit("error", new Error("shardcast-client: a message without a type"));
      return;
    }
    if (msg.type === "batch") {
      for (const m of Array.isArray(msg.messages) ? msg.messages : []) this.dispatch(m);
      return;
    }
    this.emit("message", msg);
    switch (msg.type) {
      case "authenticated":
        this.onAuthenticated(msg.connectionId, msg.heartbeatMs);
        return;
      case "ping":
        this.write({ type: "pong" });
        return;
      case "pong": {
        const w = this.pingWaiters.shift();
        if (w) {
          this.timers.clearTimeout(w.timer);
          w.resolve();
        }
        return;
      }
      case "event":
        this.onEvent(msg);
        return;
      case "subscriptionRefresh": {
        const sub = this.subscriptions.get(msg.subscriptionId);
        if (sub) {
          if (msg.seq > sub.seq) sub.seq = msg.seq;
          this.call(() => sub.options.onRefresh?.(msg));
        }
        this.emit("refresh", msg);
        return;
      }
      case "warning":
        if (msg.code === "QUEUE_OVERFLOW") {
          if (msg.subscriptionId !== undefined) {
            const sub = this.subscriptions.get(msg.subscriptionId);
            if (sub) this.call(() => sub.options.onOverflow?.(msg));
          }
          if (msg.liveQueryId !== undefined) this.liveQueries.get(msg.liveQueryId)?.handle(msg);
          this.emit("overflow", msg);
        } else {
          this.emit("error", new ShardcastError("INTERNAL", `unknown warning ${String((msg as { code?: unknown }).code)}`));
        }
        return;
      case "error":
        this.onError(msg);
        return;
      case "liveQueryCreated":
      case "liveQueryData":
      case "liveQueryAddedNode":
      case "liveQueryUpdatedNode":
      case "liveQueryRemovedNode":
        this.liveQueries.get(msg.id)?.handle(msg);
        return;
      default: {
        // Answers: subscribedEvents, unsubscribedEvents, liveQueryDestroyed, lockResult,
        // unlockResult, published.
        const requestId = (msg as { requestId?: unknown }).requestId;
        if (typeof requestId === "string") this.settle(requestId, msg);
      }
    }
  }

  private onAuthenticated(connectionId: string, heartbeatMs: number): void {
    this.connectionId = connectionId;
    this.heartbeatMs = heartbeatMs;
    this.stopAttemptDeadline();
    this.attempt = 0;
    this.connectedOnce = true;
    this.touchLiveness();
    this.setState({ state: "connected", connectionId });
    this.resume();
    // Then what waited for a socket, in the order it was asked for.
    const outbox = this.outbox;
    this.outbox = [];
    for (const item of outbox) {
      if (item.requestId !== undefined) {
        const p = this.pending.get(item.requestId);
        if (!p) continue; // timed out meanwhile
        p.queued = false;
      }
      this.write(item.msg);
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
  }

  /** Resubscribes with `since` = the last seq seen, and creates the live queries again. */
  private resume(): void {
    const subs = [...this.subscriptions.values()];
    if (subs.length > 0) {
      const specs = subs.map((s) => s.resumeSpec());
      void this.resubscribe(specs, true);
    }
    for (const lq of this.liveQueries.values()) {
      // One still waiting in the outbox is created by its own request, right after.
      if (this.creatingLiveQueries.has(lq.id)) continue;
      const requestId = this.newRequestId();
      // Errors echo the requestId; nobody waits, so they surface as `error` events.
      this.write({ type: "createLiveQuery", requestId, id: lq.id, query: lq.query });
    }
  }

  private async resubscribe(specs: SubscriptionSpec[], retrySinceInFuture: boolean): Promise<void> {
    let answer: SubscribedEventsMessage;
    try {
      answer = (await this.request({ type: "subscribeEvents", subscriptions: specs })) as SubscribedEventsMessage;
    } catch (err) {
      // A dropped socket resumes again on the next one; anything else is reported.
      if (!(err instanceof ShardcastError && (err.code === "DISCONNECTED" || err.code === "CLOSED"))) {
        this.emit("error", err as Error);
      }
      return;
    }
    const retry: SubscriptionSpec[] = [];
    for (const entry of answer.subscriptions) {
      const sub = this.subscriptions.get(entry.id);
      const spec = specs.find((s) => s.id === entry.id);
      if (!sub || !spec) continue;
      sub.recovered = entry.recovered;
      const since = spec.since ?? sub.seq;
      if (entry.recovered === false || spec.since === undefined) {
        // Some events may be lost: the application re-syncs from here on.
        if (entry.seq > sub.seq) sub.seq = entry.seq;
        const info: ResyncInfo = { subscription: sub, since, seq: entry.seq };
        this.call(() => sub.options.onResync?.(info));
        this.emit("resync", info);
      }
    }
    for (const r of answer.rejected ?? []) {
      const sub = this.subscriptions.get(r.id);
      const spec = specs.find((s) => s.id === r.id);
      if (!sub || !spec) continue;
      if (r.code === "BAD_MESSAGE" && spec.since !== undefined && retrySinceInFuture) {
        // `since` is ahead of the server (it lost its data): subscribe afresh, and the
        // application re-syncs (the resync is reported for the retried entry).
        const { since: _dropped, ...fresh } = spec;
        void _dropped;
        retry.push(fresh);
        continue;
      }
      sub.active = false;
      this.subscriptions.delete(r.id);
      this.emit("error", new ShardcastError(r.code, `resubscribe of '${r.id}' refused: ${r.message}`, { subscriptionId: r.id }));
    }
    if (retry.length > 0) await this.resubscribe(retry, false);
  }

  private onEvent(event: EventMessage): void {
    if (this.isChannel) {
      // A takeover may send an event the old socket wrote already: de-duplicate by seq.
      if (event.seq <= this.channelSeq) return;
      this.channelSeq = event.seq;
    }
    for (const id of event.subscriptionIds ?? []) {
      const sub = this.subscriptions.get(id);
      if (!sub) continue;
      if (event.seq > sub.seq) sub.seq = event.seq;
      if (sub.handler) this.call(() => sub.handler!(event));
    }
    this.emit("event", event);
    if (isTask(event)) {
      this.emit("task", event);
      for (const { handler, options } of this.taskHandlers) this.runTask(event, handler, options);
    }
  }

  private runTask(task: TaskEvent, handler: TaskHandler, options: TaskHandlerOptions): void {
    Promise.resolve()
      .then(() => handler(task))
      .then(
        () => this.queueComplete(task.taskId),
        (err: unknown) => {
          this.emit("error", err instanceof Error ? err : new Error(String(err)));
          this.taskFailed([task.taskId], options.retryInMs);
        },
      );
  }

  /** Completions of one turn go out as one `taskComplete`. */
  private queueComplete(taskId: string): void {
    this.completeQueue.push(taskId);
    if (this.completeQueue.length > 1) return;
    Promise.resolve().then(() => {
      const ids = this.completeQueue;
      this.completeQueue = [];
      if (this.currentState !== "closed") this.taskComplete(ids);
    });
  }

  private onError(msg: ErrorMessage): void {
    const err = new ShardcastError(msg.code, msg.message, msg.requestId !== undefined ? { requestId: msg.requestId } : {});
    if (msg.requestId !== undefined && this.pending.has(msg.requestId)) {
      const p = this.pending.get(msg.requestId)!;
      this.pending.delete(msg.requestId);
      this.timers.clearTimeout(p.timer);
      p.reject(err);
      return;
    }
    this.closeError = err;
    this.emit("error", err);
    if (this.currentState === "connecting" && msg.code === "BAD_MESSAGE") {
      // The server refused our connection options (out of its configured range): the
      // socket stays unauthenticated until 4002, and every retry would be refused alike.
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        detach(ws);
        try {
          ws.close(CloseCode.normal);
        } catch {
          /* already closing */
        }
      }
      this.toClosed({}, err);
    }
  }

  // -------------------------------------------------------------------------------------
  // Requests and writing

  private newRequestId(): string {
    return `r${++this.nextRequest}`;
  }

  private requestTimeout(): number {
    return this.opts.requestTimeoutMs ?? 10000;
  }

  /** Sends a message with a requestId; resolves with the answer, rejects with its error. */
  private request(msg: ClientMessage, requestId = this.newRequestId(), timeoutMs = this.requestTimeout()): Promise<ServerMessage> {
    if (this.currentState === "closed" || this.currentState === "idle") {
      return Promise.reject(
        new ShardcastError("CLOSED", `${msg.type}: the client is ${this.currentState}; call connect() first`),
      );
    }
    (msg as { requestId?: string }).requestId = requestId;
    return new Promise((resolve, reject) => {
      const p: Pending = {
        resolve,
        reject,
        queued: false,
        timer: this.timers.setTimeout(() => {
          this.pending.delete(requestId);
          this.outbox = this.outbox.filter((o) => o.requestId !== requestId);
          reject(new ShardcastError("TIMEOUT", `no answer to ${msg.type} within ${timeoutMs} ms`, { requestId }));
        }, timeoutMs),
      };
      this.pending.set(requestId, p);
      if (this.currentState === "connected" && this.ws) {
        this.write(msg);
      } else {
        p.queued = true;
        this.outbox.push({ msg, requestId });
      }
    });
  }

  private settle(requestId: string, msg: ServerMessage): void {
    const p = this.pending.get(requestId);
    if (!p) return;
    this.pending.delete(requestId);
    this.timers.clearTimeout(p.timer);
    p.resolve(msg);
  }

  private sendOrQueue(msg: ClientMessage): void {
    this.refuseOnChannel(msg.type);
    if (this.currentState === "closed" || this.currentState === "idle") {
      throw new ShardcastError("CLOSED", `${msg.type}: the client is ${this.currentState}; call connect() first`);
    }
    if (this.currentState === "connected" && this.ws) this.write(msg);
    else this.outbox.push({ msg });
  }

  private write(msg: ClientMessage): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return; // the close handler deals with what waited
    ws.send(JSON.stringify(msg));
  }

  private refuseOnChannel(what: string): void {
    if (this.isChannel) {
      throw new Error(`${what}: a channel socket (/channels/{id}) only receives events; use /ws for commands`);
    }
  }

  private failPings(err: ShardcastError): void {
    for (const w of this.pingWaiters) {
      this.timers.clearTimeout(w.timer);
      w.reject(err);
    }
    this.pingWaiters = [];
  }

  private touchLiveness(): void {
    this.stopLiveness();
    const limit = this.opts.livenessTimeoutMs ?? (this.heartbeatMs !== undefined ? 2 * this.heartbeatMs + 60000 : 0);
    if (limit <= 0 || this.heartbeatMs === undefined) return;
    const gen = this.generation;
    this.livenessTimer = this.timers.setTimeout(() => {
      if (gen !== this.generation || !this.ws) return;
      // Silent too long: the TCP connection is probably dead. Replace the socket.
      const ws = this.ws;
      this.ws = null;
      detach(ws);
      try {
        ws.close(CloseCode.normal);
      } catch {
        /* ignore */
      }
      this.afterClose(gen, 1006, "no message within livenessTimeoutMs");
    }, limit);
  }

  private stopLiveness(): void {
    if (this.livenessTimer !== null) this.timers.clearTimeout(this.livenessTimer);
    this.livenessTimer = null;
  }

  /** Runs application code; what it throws goes to `error`, delivery goes on. */
  private call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.listenerFailed("event", err);
    }
  }

  protected override listenerFailed(name: keyof ClientEvents, err: unknown): void {
    if (name !== "error" && this.hasListeners("error")) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
    } else {
      console.error("shardcast-client: a listener threw", err);
    }
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onerror = null;
  ws.onclose = null;
}

function validateOptions(o: ClientOptions): ClientOptions {
  if (!o || typeof o !== "object") throw new TypeError("ShardcastClient: options are required ({ url, token })");
  if (typeof o.url !== "string") throw new TypeError("ShardcastClient: url is required (ws://host:port/ws)");
  let u: URL;
  try {
    u = new URL(o.url);
  } catch {
    throw new TypeError(`ShardcastClient: url '${o.url}' is not a URL`);
  }
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`ShardcastClient: url must start with ws:// or wss://, not ${u.protocol}//`);
  }
  if (o.token !== undefined && (typeof o.token !== "string" || o.token === "")) {
    throw new TypeError("ShardcastClient: token must be a non-empty string");
  }
  for (const k of ["getToken", "getTicket"] as const) {
    if (o[k] !== undefined && typeof o[k] !== "function") throw new TypeError(`ShardcastClient: ${k} must be a function`);
  }
  if (o.token === undefined && !o.getToken && !o.getTicket) {
    throw new TypeError("ShardcastClient: give a credential: token, getToken or getTicket");
  }
  if (o.auth !== undefined && o.auth !== "query" && o.auth !== "message") {
    throw new TypeError("ShardcastClient: auth must be 'query' or 'message'");
  }
  const nonNegInt = (k: keyof ClientOptions, min: number) => {
    const v = o[k];
    if (v !== undefined && !(typeof v === "number" && Number.isInteger(v) && v >= min)) {
      throw new TypeError(`ShardcastClient: ${String(k)} must be an integer >= ${min}`);
    }
  };
  nonNegInt("batchMs", 0);
  nonNegInt("batchMax", 1);
  nonNegInt("requestTimeoutMs", 1);
  nonNegInt("livenessTimeoutMs", 0);
  nonNegInt("connectTimeoutMs", 0);
  if (o.framing !== undefined && o.framing !== "frames" && o.framing !== "array") {
    throw new TypeError("ShardcastClient: framing must be 'frames' or 'array'");
  }
  if (o.group !== undefined && (typeof o.group !== "string" || o.group === "")) {
    throw new TypeError("ShardcastClient: group must be a non-empty string");
  }
  if (o.backoff !== undefined) {
    const b = o.backoff;
    for (const k of ["initialMs", "maxMs", "factor"] as const) {
      if (b[k] !== undefined && !(typeof b[k] === "number" && b[k]! > 0)) {
        throw new TypeError(`ShardcastClient: backoff.${k} must be a positive number`);
      }
    }
  }
  if (o.random !== undefined && typeof o.random !== "function") throw new TypeError("ShardcastClient: random must be a function");
  return { ...o };
}

function validateSpec(spec: SubscriptionSpec): void {
  if (!spec || typeof spec !== "object") throw new TypeError("subscribe: give { id, path }");
  if (typeof spec.id !== "string" || !ID_RE.test(spec.id)) throw new TypeError("subscribe: id must be a non-empty string");
  if (typeof spec.path !== "string" || spec.path === "") throw new TypeError(`subscribe '${spec.id}': path must be a non-empty string`);
  if (spec.events !== undefined && !(Array.isArray(spec.events) && spec.events.every((e) => typeof e === "string" && e !== ""))) {
    throw new TypeError(`subscribe '${spec.id}': events must be an array of event type strings`);
  }
  if (spec.filter !== undefined && typeof spec.filter !== "string") throw new TypeError(`subscribe '${spec.id}': filter must be a string`);
  if (spec.since !== undefined && !(Number.isSafeInteger(spec.since) && spec.since >= 0)) {
    throw new TypeError(`subscribe '${spec.id}': since must be a non-negative integer (a seq)`);
  }
  const known = new Set(["id", "path", "events", "filter", "since"]);
  for (const k of Object.keys(spec)) {
    if (!known.has(k)) throw new TypeError(`subscribe '${spec.id}': unknown field '${k}'`);
  }
}

function taskIdList(what: string, taskIds: string | string[]): string[] {
  const ids = typeof taskIds === "string" ? [taskIds] : taskIds;
  if (!Array.isArray(ids) || ids.length === 0 || !ids.every((i) => typeof i === "string" && i !== "")) {
    throw new TypeError(`${what}: give a taskId or a non-empty array of them`);
  }
  return ids;
}

function validateLockName(what: string, name: string): void {
  if (typeof name !== "string" || name === "") throw new TypeError(`${what}: name must be a non-empty string`);
  if (new TextEncoder().encode(name).length > 256) throw new TypeError(`${what}: name is at most 256 bytes`);
}

