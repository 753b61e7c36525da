// The one error type the client rejects and emits with: a server error keeps the server's
// `code` (PROTOCOL.md §11) so callers can branch on it, and the client's own failures use
// codes of their own that can never collide with the server's (lower-case, see below).

import type { ErrorCode } from "./protocol.js";

/**
 * Codes the client itself produces, never the server:
 * - `TIMEOUT`: no answer to a request within `requestTimeoutMs`;
 * - `DISCONNECTED`: the socket closed before the answer came;
 * - `CLOSED`: the client was closed (by `close()` or a terminal close code).
 */
export type ClientErrorCode = "TIMEOUT" | "DISCONNECTED" | "CLOSED";

export class ShardcastError extends Error {
  /** The server's error code, or one of the client's own. */
  readonly code: ErrorCode | ClientErrorCode;
  /** The request this answers, when it answered one. */
  readonly requestId?: string;
  /** The subscription a rejection or a failed resubscribe named. */
  readonly subscriptionId?: string;

  constructor(
    code: ErrorCode | ClientErrorCode,
    message: string,
    extra: { requestId?: string; subscriptionId?: string } = {},
  ) {
    super(`${code}: ${message}`);
    this.name = "ShardcastError";
    this.code = code;
    if (extra.requestId !== undefined) this.requestId = extra.requestId;
    if (extra.subscriptionId !== undefined) this.subscriptionId = extra.subscriptionId;
  }
}
