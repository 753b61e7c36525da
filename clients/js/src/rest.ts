// The few REST calls a WebSocket client needs around its socket (PROTOCOL.md §2, §9):
// fetching a one-time ticket, and turning a `ws://` URL into the `http://` base of the
// same server. Publishing and channel management belong to the application's server side
// and stay out of this package; these use the global `fetch` (browsers, Node 18+).

import { ShardcastError } from "./errors.js";
import type { RestError, TicketAnswer } from "./protocol.js";

type FetchLike = (input: string, init: { method: string; headers: Record<string, string> }) => Promise<{
  status: number;
  json(): Promise<unknown>;
}>;

/** `ws://h:p/ws` → `http://h:p` (`wss` → `https`); an `http(s)` base is returned as is. */
export function httpBase(url: string): string {
  const u = new URL(url);
  const scheme = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  return `${scheme}//${u.host}`;
}

/**
 * `POST /api/v1/ws-tickets` with `Authorization: Bearer <token>`; resolves with the
 * ticket's uuid (single use, short-lived: fetch one per connection attempt, e.g. from the
 * client's `getTicket`). Rejects with the server's error code.
 */
export async function fetchTicket(
  baseUrl: string,
  token: string,
  options: { fetch?: FetchLike } = {},
): Promise<string> {
  if (typeof token !== "string" || token === "") throw new TypeError("fetchTicket: token must be a non-empty string");
  const f = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
  if (typeof f !== "function") throw new TypeError("fetchTicket: no global fetch; pass options.fetch");
  const res = await f(`${httpBase(baseUrl)}/api/v1/ws-tickets`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  const body = (await res.json().catch(() => null)) as TicketAnswer | RestError | null;
  if (res.status !== 201 || !body || typeof (body as TicketAnswer).uuid !== "string") {
    const e = (body as RestError | null)?.error;
    throw new ShardcastError(e?.code ?? "INTERNAL", e?.message ?? `ticket request answered ${res.status}`);
  }
  return (body as TicketAnswer).uuid;
}
