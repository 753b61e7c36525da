// One subscription as the client keeps it across reconnects (PROTOCOL.md §5): what was
// asked for, the last `seq` seen (what a resubscribe passes as `since`), and the server's
// `recovered` flag after a resume. The client owns the registry; this object is the
// application's handle on one entry of it.

import type {
  EventMessage,
  QueueOverflowWarning,
  SubscriptionRefreshMessage,
  SubscriptionSpec,
} from "./protocol.js";

/** Called when a resume could not recover everything since the last seq seen. */
export interface ResyncInfo {
  subscription: Subscription;
  /** The `since` the resubscribe asked for. */
  since: number;
  /** The newest seq at the resubscribe: live delivery starts after it. */
  seq: number;
}

export type EventHandler = (event: EventMessage) => void;

/** Per-subscription callbacks beside the event handler. */
export interface SubscribeOptions {
  /** An entity that matched the filter no longer does (`subscriptionRefresh`). */
  onRefresh?: (refresh: SubscriptionRefreshMessage) => void;
  /** The server dropped events for this subscription (`QUEUE_OVERFLOW`): re-sync. */
  onOverflow?: (warning: QueueOverflowWarning) => void;
  /** A resume came back with `recovered: false`: events may be missing, re-sync. */
  onResync?: (info: ResyncInfo) => void;
}

/** What the handle needs from the client. */
export interface SubscriptionOwner {
  unsubscribe(ids: string | string[]): Promise<string[]>;
}

export class Subscription {
  readonly id: string;
  readonly path: string;
  /** As requested; `[]`: every event type. */
  readonly events: string[];
  readonly filter: string | undefined;
  /**
   * The last seq seen for this subscription (events and refreshes), or the server's
   * starting seq when nothing came yet; a resubscribe asks for `since` = this.
   */
  seq: number;
  /**
   * The server's `recovered` flag of the last subscribe that asked for `since` (a resume
   * after a reconnect, or a first subscribe with `since`); `undefined` before any.
   */
  recovered: boolean | undefined;
  /** False once unsubscribed, replaced by a subscribe with the same id, or rejected. */
  active = true;

  /** @internal */
  readonly handler: EventHandler | undefined;
  /** @internal */
  readonly options: SubscribeOptions;
  private readonly owner: SubscriptionOwner;

  /** @internal Made by `ShardcastClient.subscribe`. */
  constructor(
    owner: SubscriptionOwner,
    spec: SubscriptionSpec,
    seq: number,
    recovered: boolean | undefined,
    handler: EventHandler | undefined,
    options: SubscribeOptions,
  ) {
    this.owner = owner;
    this.id = spec.id;
    this.path = spec.path;
    this.events = spec.events ?? [];
    this.filter = spec.filter;
    this.seq = seq;
    this.recovered = recovered;
    this.handler = handler;
    this.options = options;
  }

  /** The spec a resubscribe sends: the original one with `since` = the last seq seen. */
  resumeSpec(): SubscriptionSpec {
    const spec: SubscriptionSpec = { id: this.id, path: this.path, since: this.seq };
    if (this.events.length > 0) spec.events = this.events;
    if (this.filter !== undefined) spec.filter = this.filter;
    return spec;
  }

  /** Ends this subscription on the server; no event for it is dispatched afterwards. */
  async unsubscribe(): Promise<void> {
    if (!this.active) return;
    await this.owner.unsubscribe(this.id);
  }
}
