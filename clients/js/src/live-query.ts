// The live-query helper (PROTOCOL.md §7): keeps one query's result as a local array,
// sorted as the server sorts it, from the initial `liveQueryData` pages and the added /
// updated / removed messages after them. The server does not say where an added node
// sorts, so the order is computed here, with the server's rules (PROTOCOL-NOTES: ties and
// no `orderBy` by `id`; across types missing/null < false < true < numbers < strings <
// arrays < objects; strings by UTF-8 bytes, i.e. by code point). Every `liveQueryCreated`
// for the id starts the view over: that is how the server re-initialises a query after an
// overflow or a reconnect, so the view is never left wrong.

import { Emitter } from "./emitter.js";
import type {
  LiveQueryNode,
  LiveQuerySpec,
  QueueOverflowWarning,
  ServerMessage,
} from "./protocol.js";

/** What changed in a live query's view. */
export type LiveQueryChange =
  | { kind: "reset"; totalCount: number; capped: boolean }
  | { kind: "page"; nodes: LiveQueryNode[]; hasMore: boolean }
  | { kind: "added"; node: LiveQueryNode }
  | { kind: "updated"; node: LiveQueryNode; previous: LiveQueryNode | undefined }
  | { kind: "removed"; nodeId: string; previous: LiveQueryNode | undefined };

export interface LiveQueryEvents {
  /** Every change of the view, after it was applied. */
  change: LiveQueryChange;
  /** The initial pages are all in (after creation and after every re-initialisation). */
  ready: LiveQuery;
  /** The server dropped messages for this query; it is being loaded again. */
  overflow: QueueOverflowWarning;
}

/** A sort key: a field path and a direction. */
interface SortKey {
  path: string[];
  desc: boolean;
}

/** Parses `field [asc|desc]` items joined by commas; throws on anything else. */
export function parseOrderBy(orderBy: string | undefined): SortKey[] {
  if (orderBy === undefined || orderBy.trim() === "") return [];
  return orderBy.split(",").map((item) => {
    const words = item.trim().split(/\s+/);
    const [field, dir, extra] = words;
    if (!field || extra !== undefined || (dir !== undefined && !/^(asc|desc)$/i.test(dir))) {
      throw new TypeError(`orderBy: "${item.trim()}" is not "field [asc|desc]"`);
    }
    if (!/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/.test(field)) {
      throw new TypeError(`orderBy: "${field}" is not a field name`);
    }
    return { path: field.split("."), desc: dir !== undefined && dir.toLowerCase() === "desc" };
  });
}

function rank(v: unknown): number {
  if (v === undefined || v === null) return 0;
  if (v === false) return 1;
  if (v === true) return 2;
  if (typeof v === "number") return 3;
  if (typeof v === "string") return 4;
  if (Array.isArray(v)) return 5;
  return 6;
}

/** Code point order, which is UTF-8 byte order (JS's `<` compares UTF-16 units). */
function compareStrings(a: string, b: string): number {
  if (a === b) return 0;
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return x.done ? (y.done ? 0 : -1) : 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/** Compares two JSON values by the server's cross-type order. */
export function compareValues(a: unknown, b: unknown): number {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra < rb ? -1 : 1;
  switch (ra) {
    case 3:
      return (a as number) === (b as number) ? 0 : (a as number) < (b as number) ? -1 : 1;
    case 4:
      return compareStrings(a as string, b as string);
    case 5: {
      const x = a as unknown[];
      const y = b as unknown[];
      for (let i = 0; i < Math.min(x.length, y.length); i++) {
        const c = compareValues(x[i], y[i]);
        if (c !== 0) return c;
      }
      return x.length === y.length ? 0 : x.length < y.length ? -1 : 1;
    }
    case 6:
      return compareStrings(JSON.stringify(a), JSON.stringify(b));
    default:
      return 0;
  }
}

function field(node: LiveQueryNode, path: string[]): unknown {
  let v: unknown = node;
  for (const p of path) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[p];
  }
  return v;
}

/** The comparator of an `orderBy`, ties broken by `id`. */
export function nodeComparator(orderBy: string | undefined): (a: LiveQueryNode, b: LiveQueryNode) => number {
  const keys = parseOrderBy(orderBy);
  return (a, b) => {
    for (const k of keys) {
      const c = compareValues(field(a, k.path), field(b, k.path));
      if (c !== 0) return k.desc ? -c : c;
    }
    return compareStrings(String(a.id), String(b.id));
  };
}

/** What the helper needs from the client: to ask the server to destroy the query. */
export interface LiveQueryOwner {
  destroyLiveQuery(id: string): Promise<void>;
}

export class LiveQuery extends Emitter<LiveQueryEvents> {
  /** The query's id (the `id` of `createLiveQuery`). */
  readonly id: string;
  readonly query: LiveQuerySpec;
  /** The uncapped count at the last (re-)creation; the server does not update it. */
  totalCount = 0;
  /** Whether the result was capped at the last (re-)creation. */
  capped = false;
  /** Whether the initial pages are all in since the last (re-)creation. */
  ready = false;
  /** Whether `destroy()` was called. */
  destroyed = false;

  private sorted: LiveQueryNode[] = [];
  private byId = new Map<string, LiveQueryNode>();
  private readonly compare: (a: LiveQueryNode, b: LiveQueryNode) => number;
  private readonly owner: LiveQueryOwner;

  /** @internal Made by `ShardcastClient.liveQuery`. */
  constructor(owner: LiveQueryOwner, id: string, query: LiveQuerySpec) {
    super();
    this.owner = owner;
    this.id = id;
    this.query = query;
    this.compare = nodeComparator(query.orderBy);
  }

  /** The result, sorted by the query's `orderBy` (a copy). */
  get items(): LiveQueryNode[] {
    return this.sorted.slice();
  }

  get size(): number {
    return this.sorted.length;
  }

  get(nodeId: string): LiveQueryNode | undefined {
    return this.byId.get(nodeId);
  }

  /** Ends the query on the server; nothing for it arrives afterwards. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await this.owner.destroyLiveQuery(this.id);
  }

  /** @internal Applies one server message about this query. */
  handle(msg: ServerMessage): void {
    switch (msg.type) {
      case "liveQueryCreated":
        this.sorted = [];
        this.byId.clear();
        this.totalCount = msg.totalCount;
        this.capped = msg.capped;
        this.ready = false;
        this.emit("change", { kind: "reset", totalCount: msg.totalCount, capped: msg.capped });
        return;
      case "liveQueryData":
        for (const node of msg.data) this.upsert(node);
        this.capped = msg.capped;
        this.emit("change", { kind: "page", nodes: msg.data, hasMore: msg.hasMore });
        if (!msg.hasMore) {
          this.ready = true;
          this.emit("ready", this);
        }
        return;
      case "liveQueryAddedNode": {
        const node = withId(msg.data, msg.nodeId);
        this.upsert(node);
        this.emit("change", { kind: "added", node });
        return;
      }
      case "liveQueryUpdatedNode": {
        const node = withId(msg.data, msg.nodeId);
        const previous = this.upsert(node);
        this.emit("change", { kind: "updated", node, previous });
        return;
      }
      case "liveQueryRemovedNode": {
        const previous = this.remove(msg.nodeId);
        this.emit("change", { kind: "removed", nodeId: msg.nodeId, previous });
        return;
      }
      case "warning":
        // The server discards the query's other queued messages and loads it again (a
        // new liveQueryCreated follows); until then the view is known to be stale.
        this.ready = false;
        this.emit("overflow", msg);
        return;
      default:
        return;
    }
  }

  /** Inserts or replaces a node at its sorted place; returns the node it replaced. */
  private upsert(node: LiveQueryNode): LiveQueryNode | undefined {
    const previous = this.remove(node.id);
    let lo = 0;
    let hi = this.sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.compare(this.sorted[mid]!, node) <= 0) lo = mid + 1;
      else hi = mid;
    }
    this.sorted.splice(lo, 0, node);
    this.byId.set(node.id, node);
    return previous;
  }

  private remove(nodeId: string): LiveQueryNode | undefined {
    const previous = this.byId.get(nodeId);
    if (previous === undefined) return undefined;
    this.byId.delete(nodeId);
    const i = this.sorted.indexOf(previous);
    if (i >= 0) this.sorted.splice(i, 1);
    return previous;
  }
}

/** Nodes carry their `id`; the added/updated messages name it beside the data too. */
function withId(data: LiveQueryNode, nodeId: string): LiveQueryNode {
  return data && data.id === nodeId ? data : { ...data, id: nodeId };
}
