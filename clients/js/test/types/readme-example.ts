// The README's example, type-checked against the built declarations (dist/index.d.ts)
// through the package's own name, so the documented surface cannot drift from the code.
// `npm test` runs `tsc -p test/types` (no output); nothing here is executed.
import { ShardcastClient, ShardcastError, fetchTicket, type EventMessage, type LiveQuery, type TaskEvent } from "shardcast-client";

declare const token: string;

export async function readmeExample(): Promise<void> {
  const client = new ShardcastClient({ url: "ws://127.0.0.1:8080/ws", token });
  await client.connect(); // resolves on `authenticated`
  const sub = await client.subscribe({ id: "jobs", path: "jobs" }, (event: EventMessage) => void event.seq);
  const recovered: boolean | undefined = sub.recovered;
  void recovered;
  client.on("overflow", (warning) => void warning.dropped);
  client.on("resync", (info) => void info.subscription.id);
  client.on("state", (st) => void (st.state === "reconnecting" && st.delayMs));
  client.on("error", (e) => void (e instanceof ShardcastError && e.code));
  await sub.unsubscribe();
  client.close();
}

export async function servicesAndLiveQueries(jwt: string): Promise<void> {
  const svc = new ShardcastClient({ url: "ws://127.0.0.1:8080/ws", getTicket: () => fetchTicket("http://127.0.0.1:8080", jwt), group: "billing" });
  await svc.connect();
  svc.handleTasks(async (task: TaskEvent) => void task.attempt, { retryInMs: 1000 });
  const lock = await svc.lock("invoice-42", { ttlMs: 10000 });
  const fencing: number | undefined = lock.fencingToken;
  void fencing;
  const { released } = await svc.unlock("invoice-42");
  void released;
  const { seq } = await svc.publish({ path: "invoices/42", eventType: "charged", data: {} });
  void seq;
  svc.log("info", "charged", { invoice: 42 });
  const lq: LiveQuery = await svc.liveQuery({ id: "q", query: { edge: "orders", orderBy: "createdAt desc" } });
  lq.on("change", (c) => void c.kind);
  await lq.destroy();
}
