// The two figures of issue 36, measured against the scripted server with the client's default options:
//   node test/figures.mjs [drop|ackdrop|storm]
// drop:  a server that accepts every socket and drops it at once, while REST knows the payment is
//        SUCCESSFUL: connections in 15 s, token() calls, and whether `done` settled.
// ackdrop: a server that answers the track-payment of every socket and then drops it: connections in 15 s.
// storm: a server that refuses every token (socket and REST), 20 payments tracked: token() calls
//        in 9.5 s and the connection states the page was shown.
// Not a test (it asserts nothing and takes 25 s); docs/CLIENT.md quotes its output.
import { PaymentTracker } from "../paytrack-client.js";
import { payment, startScriptedServer } from "./scripted-server.mjs";

const which = process.argv[2] ?? "all";
const server = await startScriptedServer();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function drop() {
  server.reset();
  server.script.connect = "drop";
  server.set(payment("drop-1", "SUCCESSFUL", 2), { push: false });
  let tokens = 0;
  const tracker = new PaymentTracker({ url: server.url, token: () => `t${++tokens}` });
  let settled = null;
  const started = Date.now();
  tracker.track("drop-1").done.then((p) => (settled ??= `${p.status} after ${Date.now() - started} ms`), (e) => (settled ??= `rejected ${e.code}`));
  await sleep(15_000);
  tracker.close();
  console.log(`drop: ${server.connections.length} connections in 15 s, ${tokens} token() calls, done: ${settled ?? "not settled"}, REST reads: ${server.requests.filter((r) => r.path.startsWith("/api/payment/tracking/")).length}`);
}

async function ackdrop() {
  server.reset();
  server.script.connect = "drop-after-ack";
  server.set(payment("ackdrop-1", "PENDING", 1), { push: false });
  let tokens = 0;
  const tracker = new PaymentTracker({ url: server.url, token: () => `t${++tokens}` });
  tracker.track("ackdrop-1");
  await sleep(15_000);
  tracker.close();
  console.log(`ackdrop: ${server.connections.length} connections in 15 s, ${tokens} token() calls, ${server.trackCalls.length} track-payments`);
}

async function storm() {
  server.reset();
  server.script.refuseConnect = () => ({ code: "invalid_token", message: "scripted: every token is refused" });
  server.script.restAuth = () => false;
  let tokens = 0;
  const tracker = new PaymentTracker({ url: server.url, token: () => `t${++tokens}` });
  const states = [];
  tracker.on("connection", (state) => states.push(state));
  tracker.on("error", () => {});
  for (let i = 0; i < 20; i++) tracker.track(`storm-${i}`);
  await sleep(9_500);
  tracker.close();
  const rest = server.requests.filter((r) => r.path.startsWith("/api/payment/tracking/")).length;
  console.log(`storm: ${tokens} token() calls in 9.5 s for 20 payments, ${rest} REST reads, ${server.connections.length} connects, states: ${states.join(" > ")}`);
}

if (which === "all" || which === "drop") await drop();
if (which === "all" || which === "ackdrop") await ackdrop();
if (which === "all" || which === "storm") await storm();
await server.close();
