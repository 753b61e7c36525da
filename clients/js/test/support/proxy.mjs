// A TCP proxy on loopback that the test controls, for the failures a client meets between
// itself and the server (a load balancer, a flaky network). Every connection accepted is
// handled by the mode at that moment:
// - "pass": piped both ways to the upstream port;
// - "close": closed at once (FIN) before a byte is read: a proxy with no backend;
// - "reset": reset at once (RST): a peer that went away;
// - "blackhole": accepted and never answered (kept open, what it sends is read and
//   dropped): a network or backend that hangs.
// `dropConnections()` ends every connection still open, as a network blip does. Each
// test file starts its own; `stop()` ends it and what it holds.

import { connect, createServer } from "node:net";

export class Proxy {
  /** Starts a proxy to 127.0.0.1:`upstreamPort` on a free loopback port, in "pass" mode. */
  static async start(upstreamPort) {
    const p = new Proxy(upstreamPort);
    await new Promise((res, rej) => {
      p.server.once("error", rej);
      p.server.listen(0, "127.0.0.1", res);
    });
    p.port = p.server.address().port;
    return p;
  }

  constructor(upstreamPort) {
    this.upstreamPort = upstreamPort;
    this.mode = "pass";
    /** Connections accepted, by the mode that handled them. */
    this.accepted = { pass: 0, close: 0, reset: 0, blackhole: 0 };
    /** Every socket still open (client sides and upstream sides). */
    this.live = new Set();
    this.server = createServer((socket) => this.#accept(socket));
  }

  /** The proxy's WebSocket URL for `path`. */
  ws(path = "/ws") {
    return `ws://127.0.0.1:${this.port}${path}`;
  }

  /** Connections accepted from now on get `mode`. */
  setMode(mode) {
    if (!(mode in this.accepted)) throw new Error(`proxy: unknown mode '${mode}'`);
    this.mode = mode;
  }

  /** Ends every open connection (both sides); returns how many client connections ended. */
  dropConnections() {
    let n = 0;
    for (const s of this.live) {
      if (s.clientSide) n++;
      s.resetAndDestroy();
    }
    this.live.clear();
    return n;
  }

  async stop() {
    this.dropConnections();
    await new Promise((res) => this.server.close(() => res()));
  }

  #track(socket, clientSide) {
    socket.clientSide = clientSide;
    this.live.add(socket);
    socket.on("close", () => this.live.delete(socket));
    // A reset peer is expected here; it must not become an uncaught error.
    socket.on("error", () => {});
  }

  #accept(socket) {
    const mode = this.mode;
    this.accepted[mode]++;
    this.#track(socket, true);
    if (mode === "close") {
      socket.end();
      socket.destroy();
    } else if (mode === "reset") {
      socket.resetAndDestroy();
    } else if (mode === "blackhole") {
      socket.resume(); // read and drop: the client's handshake is never answered
    } else {
      const upstream = connect(this.upstreamPort, "127.0.0.1");
      this.#track(upstream, false);
      socket.pipe(upstream);
      upstream.pipe(socket);
      // One side gone: the other goes too (a proxy does not keep half a connection).
      socket.on("close", () => upstream.destroy());
      upstream.on("close", () => socket.destroy());
    }
  }
}
