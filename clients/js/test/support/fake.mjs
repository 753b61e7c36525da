// Test doubles for the unit tests: a WebSocket whose server side the test plays, and
// timers that only move when the test says so (no test waits on real time hoping).

/** Timers on a virtual clock: `advance(ms)` runs what falls due, in time order. */
export class FakeTimers {
  now = 0;
  #next = 1;
  #timers = new Map();

  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.#timers.set(id, { at: this.now + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Delays (from now) of the timers still waiting, sorted. */
  pending() {
    return [...this.#timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }

  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      let due = null;
      for (const [id, t] of this.#timers) {
        if (t.at <= until && (!due || t.at < due[1].at)) due = [id, t];
      }
      if (!due) break;
      this.#timers.delete(due[0]);
      this.now = due[1].at;
      due[1].fn();
    }
    this.now = until;
  }
}

/** A class to pass as the client's `WebSocket` option; `sockets` lists every instance. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    static OPEN = 1;
    readyState = 0;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    /** What the client sent, parsed. */
    sent = [];
    closedByClient = null;

    constructor(url) {
      this.url = new URL(url);
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(data));
    }

    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }

    // The server's side.
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    receive(msg) {
      this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
    }

    /** Opens and authenticates. */
    accept(connectionId = "n-0-1", heartbeatMs = 30000) {
      this.open();
      this.receive({ type: "authenticated", connectionId, heartbeatMs });
    }

    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** The sent messages of one type. */
    ofType(type) {
      return this.sent.filter((m) => m.type === type);
    }

    last() {
      return this.sent[this.sent.length - 1];
    }
  }
  return { WebSocket: FakeWebSocket, sockets };
}

/** Lets pending promise callbacks run. */
export function flush() {
  return new Promise((r) => setImmediate(r));
}

/** Waits until `cond()` is truthy, flushing the microtask queue; fails after `ms`. */
export async function until(cond, what = "condition", ms = 2000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await flush();
  }
}
