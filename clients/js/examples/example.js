// The example page's script: one ShardcastClient, one subscription, and a line per
// event, state change, overflow and re-sync. It imports the built package straight
// from ../dist (no bundler needed: the package is a plain ES module).
import { ShardcastClient } from "../dist/index.js";

const $ = (id) => document.getElementById(id);
let client = null;

function line(text, cls) {
  const div = document.createElement("div");
  div.textContent = `${new Date().toISOString().slice(11, 23)}  ${text}`;
  if (cls) div.className = cls;
  $("events").prepend(div);
}

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  client?.close();
  try {
    client = new ShardcastClient({ url: $("url").value, token: $("token").value.trim() });
  } catch (err) {
    line(String(err), "warn");
    return;
  }
  client.on("state", (st) => {
    $("state").textContent = st.state + (st.delayMs !== undefined ? ` (in ${st.delayMs} ms)` : "");
    if (st.error) line(`closed: ${st.error.message}`, "warn");
  });
  client.on("overflow", (w) => line(`overflow: ${w.message}`, "warn"));
  client.on("resync", (r) => line(`resync needed for '${r.subscription.id}' (since ${r.since})`, "warn"));
  client.on("error", (e) => line(`error: ${e.message}`, "warn"));
  $("disconnect").disabled = false;
  try {
    await client.connect();
    const spec = { id: "example", path: $("path").value };
    if ($("filter").value.trim()) spec.filter = $("filter").value.trim();
    const sub = await client.subscribe(spec, (e) => line(`#${e.seq} ${e.eventType} ${e.path} ${JSON.stringify(e.data)}`));
    line(`subscribed to '${sub.path}' from seq ${sub.seq}`);
  } catch (err) {
    line(String(err.message ?? err), "warn");
  }
});

$("disconnect").addEventListener("click", () => {
  client?.close();
  $("disconnect").disabled = true;
});
