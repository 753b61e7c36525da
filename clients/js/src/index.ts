// The package's public surface: the client, its helpers and the wire contract's types.
// Everything an application imports comes from here; the modules behind it are:
//   client.ts        ShardcastClient: socket lifecycle, requests, subscriptions, services
//   subscription.ts  one subscription's handle (last seq seen, recovered)
//   live-query.ts    the sorted local view of a live query
//   backoff.ts       when to reconnect (backoff, drain delay, terminal close codes)
//   protocol.ts      every message and code of docs/PROTOCOL.md as types
//   rest.ts          tickets (POST /api/v1/ws-tickets) and the HTTP base of a ws URL
//   errors.ts        ShardcastError (the server's code, or the client's own)
//   emitter.ts       the small typed emitter behind `on`

export { ShardcastClient } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  LockOptions,
  LockResult,
  StateChange,
  TaskHandler,
  TaskHandlerOptions,
  Timers,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Subscription } from "./subscription.js";
export type { EventHandler, ResyncInfo, SubscribeOptions } from "./subscription.js";
export { LiveQuery, compareValues, nodeComparator, parseOrderBy } from "./live-query.js";
export type { LiveQueryChange, LiveQueryEvents } from "./live-query.js";
export { backoffDelay, decideOnClose } from "./backoff.js";
export type { BackoffOptions, CloseDecision } from "./backoff.js";
export { ShardcastError } from "./errors.js";
export type { ClientErrorCode } from "./errors.js";
export { fetchTicket, httpBase } from "./rest.js";
export { Emitter } from "./emitter.js";
export type { Listener } from "./emitter.js";
export * from "./protocol.js";
