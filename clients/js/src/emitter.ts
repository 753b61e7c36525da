// A minimal typed event emitter (no dependency on Node's `events` or the DOM's
// `EventTarget`, so one build runs in both). A listener that throws does not stop the
// others: its error goes to the `error` listeners, or to the console if there are none,
// because a bug in application code must not silently break delivery.

export type Listener<T> = (value: T) => void;

export class Emitter<Events extends object> {
  private listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    if (typeof listener !== "function") {
      throw new TypeError(`on(${String(name)}): the listener must be a function`);
    }
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => this.off(name, listener);
  }

  off<K extends keyof Events>(name: K, listener: Listener<Events[K]>): void {
    this.listeners.get(name)?.delete(listener as Listener<never>);
  }

  /** Adds a listener that is removed after its first call. */
  once<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(name, (v) => {
      off();
      listener(v);
    });
    return off;
  }

  protected emit<K extends keyof Events>(name: K, value: Events[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const l of [...set]) {
      try {
        (l as Listener<Events[K]>)(value);
      } catch (err) {
        this.listenerFailed(name, err);
      }
    }
  }

  protected hasListeners(name: keyof Events): boolean {
    return (this.listeners.get(name)?.size ?? 0) > 0;
  }

  /** Where a throwing listener's error goes; the client routes it to `error`. */
  protected listenerFailed(_name: keyof Events, err: unknown): void {
    console.error("shardcast-client: a listener threw", err);
  }
}
