// When to try again after a socket closed: jittered exponential backoff for failures, the
// server's own suggestion after a drain (1001, `reconnect in <ms>`, already jittered by
// the server so a fleet of clients does not come back at once), and no retry at all for
// the close codes that a retry cannot fix.

import { CloseCode, parseDrainReason } from "./protocol.js";

export interface BackoffOptions {
  /** First delay in ms (default 500). */
  initialMs?: number;
  /** Largest delay in ms (default 30000). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
}

/** What to do after a close: retry after `delayMs`, or stop for good. */
export type CloseDecision =
  | { retry: true; delayMs: number; drain: boolean }
  | { retry: false; why: string };

/**
 * The delay before attempt number `attempt` (0 for the first retry): exponential, capped,
 * with "equal jitter" (a uniformly random delay in [d/2, d]) so that clients dropped together
 * spread out but none retries at once.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initial = options.initialMs ?? 500;
  const max = options.maxMs ?? 30000;
  const factor = options.factor ?? 2;
  const d = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(d / 2 + random() * (d / 2));
}

/** Longest drain delay honoured as given; a larger one (a misconfigured server) is cut. */
const MAX_DRAIN_DELAY_MS = 5 * 60 * 1000;

/**
 * Decides on a close. `attempt` counts the failures since the last `authenticated`.
 * - 1000 (normal): the server ended it on purpose (a deleted or taken-over channel); stop.
 * - 1001 (draining): retry after the delay the reason suggests (backoff if it has none).
 * - 4001 (unauthorized): the credential is refused; retrying the same one would loop.
 * - anything else (1006 lost, 1009, 1013 full, 4002, 4003, ...): backoff.
 */
export function decideOnClose(
  code: number,
  reason: string,
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): CloseDecision {
  if (code === CloseCode.normal) return { retry: false, why: "closed normally by the server" };
  if (code === CloseCode.unauthorized) return { retry: false, why: "unauthorized (4001)" };
  if (code === CloseCode.draining) {
    const ms = parseDrainReason(reason);
    if (ms !== undefined) {
      return { retry: true, delayMs: Math.min(ms, MAX_DRAIN_DELAY_MS), drain: true };
    }
  }
  return { retry: true, delayMs: backoffDelay(attempt, options, random), drain: false };
}
