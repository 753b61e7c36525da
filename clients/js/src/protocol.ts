// The wire contract (docs/PROTOCOL.md, v1) as types: every message a client sends and
// every message the server sends, the error and close codes, and the REST bodies a client
// touches (tickets, publishing, channels). Nothing here has behaviour beyond two tiny
// helpers; the field names are the protocol's, camelCase on the WebSocket and snake_case
// in the channel REST bodies, exactly as the server spells them.

/** Error codes of PROTOCOL.md §11 (an `error` message's `code`, a rejection's `code`). */
export type ErrorCode =
  | "UNAUTHORIZED"
  | "FORBIDDEN"
  | "BAD_MESSAGE"
  | "UNKNOWN_TYPE"
  | "INVALID_PATH"
  | "INVALID_FILTER"
  | "NOT_FOUND"
  | "LIMIT_EXCEEDED"
  | "RATE_LIMITED"
  | "INTERNAL";

/** Close codes of PROTOCOL.md §11, by meaning. */
export const CloseCode = {
  normal: 1000,
  draining: 1001,
  tooBig: 1009,
  serverFull: 1013,
  unauthorized: 4001,
  authTimeout: 4002,
  heartbeatTimeout: 4003,
} as const;

/** Connection options (§2), as URL query parameters or the `auth` message's `options`. */
export interface ConnectionOptions {
  /** Flush interval in ms; 0 flushes as soon as the shard gets to it. */
  batchMs?: number;
  /** Items per flush. */
  batchMax?: number;
  /** `frames`: one frame per message; `array`: one `batch` message per flush. */
  framing?: "frames" | "array";
  /** Service group (services only). */
  group?: string;
}

// ---------------------------------------------------------------------------------------
// Client → server

export interface AuthMessage {
  type: "auth";
  /** The JWT, without a `Bearer ` prefix. */
  token: string;
  options?: ConnectionOptions;
}

export interface PingMessage {
  type: "ping";
}

export interface PongMessage {
  type: "pong";
}

/** One entry of `subscribeEvents.subscriptions` (§5). */
export interface SubscriptionSpec {
  /** Chosen by the client; reusing an id replaces that subscription. */
  id: string;
  path: string;
  /** Absent or empty: every event type. */
  events?: string[];
  /** A filter expression over the publication's `data` (§4). */
  filter?: string;
  /** Replay every retained matching publication with a larger `seq` first. */
  since?: number;
}

export interface SubscribeEventsMessage {
  type: "subscribeEvents";
  requestId?: string;
  subscriptions: SubscriptionSpec[];
}

export interface UnsubscribeEventsMessage {
  type: "unsubscribeEvents";
  requestId?: string;
  ids: string[];
}

/** The `query` of `createLiveQuery` (§7). */
export interface LiveQuerySpec {
  /** An entity collection. */
  edge: string;
  filter?: string;
  /** `field [asc|desc]` items joined by commas. */
  orderBy?: string;
  limit?: number;
}

export interface CreateLiveQueryMessage {
  type: "createLiveQuery";
  requestId?: string;
  id: string;
  query: LiveQuerySpec;
}

export interface DestroyLiveQueryMessage {
  type: "destroyLiveQuery";
  requestId?: string;
  id: string;
}

export interface TaskCompleteMessage {
  type: "taskComplete";
  taskIds: string[];
}

export interface TaskFailedMessage {
  type: "taskFailed";
  taskIds: string[];
  retryInMs?: number;
}

export interface LockMessage {
  type: "lock";
  requestId?: string;
  name: string;
  ttlMs: number;
  waitMs?: number;
}

export interface UnlockMessage {
  type: "unlock";
  requestId?: string;
  name: string;
}

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

export interface LogMessage {
  type: "log";
  level?: LogLevel;
  message: string;
  fields?: Record<string, unknown>;
}

export interface PublishMessage {
  type: "publish";
  requestId?: string;
  path: string;
  eventType: string;
  data?: unknown;
}

export type ClientMessage =
  | AuthMessage
  | PingMessage
  | PongMessage
  | SubscribeEventsMessage
  | UnsubscribeEventsMessage
  | CreateLiveQueryMessage
  | DestroyLiveQueryMessage
  | TaskCompleteMessage
  | TaskFailedMessage
  | LockMessage
  | UnlockMessage
  | LogMessage
  | PublishMessage;

// ---------------------------------------------------------------------------------------
// Server → client

export interface AuthenticatedMessage {
  type: "authenticated";
  connectionId: string;
  heartbeatMs: number;
}

/** One accepted entry of `subscribedEvents.subscriptions`. */
export interface SubscribedEntry {
  id: string;
  path: string;
  events: string[];
  /** The newest seq at subscribe time: everything after it that matches is delivered. */
  seq: number;
  /** Present only on entries that asked for `since`. */
  recovered?: boolean;
}

export interface Rejection {
  id: string;
  code: ErrorCode;
  message: string;
}

export interface SubscribedEventsMessage {
  type: "subscribedEvents";
  requestId?: string;
  subscriptions: SubscribedEntry[];
  /** Present only when non-empty. */
  rejected?: Rejection[];
}

export interface UnsubscribedEventsMessage {
  type: "unsubscribedEvents";
  requestId?: string;
  ids: string[];
  /** Ids that were not subscribed (PROTOCOL-NOTES). */
  notFound?: string[];
}

/** A publication delivered to a connection (§6), a channel socket (§9) or a service (§10). */
export interface EventMessage<T = unknown> {
  type: "event";
  /** User and service connections: every subscription of the connection it matched. */
  subscriptionIds?: string[];
  /** Channel sockets: the channel's id (and no `subscriptionIds`). */
  channelId?: string;
  eventType: string;
  path: string;
  data: T;
  timestamp: string;
  seq: number;
  /** Services only: `{group}:{seq}`. */
  taskId?: string;
  /** Services only: how often this task was sent, this time included. */
  attempt?: number;
}

/** An event that is a service task: it carries `taskId` and `attempt`. */
export interface TaskEvent<T = unknown> extends EventMessage<T> {
  taskId: string;
  attempt: number;
}

export interface SubscriptionRefreshMessage {
  type: "subscriptionRefresh";
  subscriptionId: string;
  path: string;
  entityId: string;
  seq: number;
}

export interface QueueOverflowWarning {
  type: "warning";
  code: "QUEUE_OVERFLOW";
  /** The subscription that lost messages (§6)… */
  subscriptionId?: string;
  /** …or the live query (PROTOCOL-NOTES: it is then loaded again). */
  liveQueryId?: string;
  dropped: number;
  message: string;
}

export interface BatchMessage {
  type: "batch";
  messages: ServerMessage[];
}

export interface ErrorMessage {
  type: "error";
  code: ErrorCode;
  message: string;
  requestId?: string;
}

export interface LiveQueryCreatedMessage {
  type: "liveQueryCreated";
  id: string;
  totalCount: number;
  capped: boolean;
}

/** A live-query node: the entity state with its `id`. */
export interface LiveQueryNode {
  id: string;
  [field: string]: unknown;
}

export interface LiveQueryDataMessage {
  type: "liveQueryData";
  id: string;
  data: LiveQueryNode[];
  hasMore: boolean;
  capped: boolean;
}

export interface LiveQueryAddedNodeMessage {
  type: "liveQueryAddedNode";
  id: string;
  nodeId: string;
  data: LiveQueryNode;
}

export interface LiveQueryUpdatedNodeMessage {
  type: "liveQueryUpdatedNode";
  id: string;
  nodeId: string;
  data: LiveQueryNode;
}

export interface LiveQueryRemovedNodeMessage {
  type: "liveQueryRemovedNode";
  id: string;
  nodeId: string;
}

export interface LiveQueryDestroyedMessage {
  type: "liveQueryDestroyed";
  id: string;
  requestId?: string;
}

export interface LockResultMessage {
  type: "lockResult";
  requestId?: string;
  name: string;
  acquired: boolean;
  /** Present when acquired; grows with every grant. */
  fencingToken?: number;
  expiresAt?: string;
}

export interface UnlockResultMessage {
  type: "unlockResult";
  requestId?: string;
  name: string;
  released: boolean;
}

export interface PublishedMessage {
  type: "published";
  requestId?: string;
  seq: number;
}

export type ServerMessage =
  | AuthenticatedMessage
  | PingMessage
  | PongMessage
  | SubscribedEventsMessage
  | UnsubscribedEventsMessage
  | EventMessage
  | SubscriptionRefreshMessage
  | QueueOverflowWarning
  | BatchMessage
  | ErrorMessage
  | LiveQueryCreatedMessage
  | LiveQueryDataMessage
  | LiveQueryAddedNodeMessage
  | LiveQueryUpdatedNodeMessage
  | LiveQueryRemovedNodeMessage
  | LiveQueryDestroyedMessage
  | LockResultMessage
  | UnlockResultMessage
  | PublishedMessage;

// ---------------------------------------------------------------------------------------
// REST bodies a client meets (§2 tickets, §8 publishing, §9 channels)

/** `POST /api/v1/ws-tickets` → 201. */
export interface TicketAnswer {
  uuid: string;
  expiresAt: string;
}

/** One publication in `POST /api/v1/publish`. */
export interface Publication {
  path: string;
  eventType: string;
  data?: unknown;
}

/** `POST /api/v1/publish` → 202. */
export interface PublishAnswer {
  accepted: number;
  firstSeq: number;
  lastSeq: number;
}

/** `POST /api/v1/realtime-subscriptions/` (a custom channel). */
export interface CustomChannelRequest {
  path: string;
  event_types?: string[];
  filter?: string | null;
}

/** A channel as created or read (`GET /{channel_id}` adds the stats). */
export interface ChannelAnswer {
  channel_id: string;
  subscription_type: "organisation_claims" | "user_claims" | "custom";
  websocket_url: string;
  status: "connected" | "disconnected";
  created_at: string;
  organisation_id?: string;
  user_id?: string;
  path?: string;
  filter?: string | null;
  event_types?: string[];
  event_count?: number;
  last_event_at?: string | null;
}

/** REST errors: `{"error":{"code","message"[,"index"]}}`. */
export interface RestError {
  error: { code: ErrorCode; message: string; index?: number };
}

/** The delay a draining server suggests in its 1001 close reason (`reconnect in <ms>`). */
export function parseDrainReason(reason: string): number | undefined {
  const m = /reconnect in (\d+)/.exec(reason);
  if (!m) return undefined;
  const ms = Number(m[1]);
  return Number.isSafeInteger(ms) ? ms : undefined;
}

/** Whether an event is a service task. */
export function isTask(event: EventMessage): event is TaskEvent {
  return typeof event.taskId === "string";
}
