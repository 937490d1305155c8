// Tracks one payment with the official socket.io client, as a merchant's checkout page would,
// and prints one JSON line per step on stdout: {"step": "tracked", ...}, then every event.
// Exits 0 after payment-completed, 1 on any error, 2 when nothing completes within the timeout.
// Usage: node track.mjs <server url> <reference> [timeout ms]
import { io } from "socket.io-client";

const [url, reference, timeoutMs = "10000"] = process.argv.slice(2);
if (!url || !reference) {
  console.error("usage: node track.mjs <server url> <reference> [timeout ms]");
  process.exit(1);
}
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const socket = io(url, { transports: ["websocket"], reconnection: false });
let lastSeq = 0;
const timer = setTimeout(() => { say({ step: "timeout" }); process.exit(2); }, Number(timeoutMs));

socket.on("connect", () => {
  socket.timeout(5000).emit("track-payment", { reference, last_seq: lastSeq }, (err, ack) => {
    if (err || !ack.ok) { say({ step: "track-failed", error: String(err || JSON.stringify(ack.error)) }); process.exit(1); }
    say({ step: "tracked", socket_id: socket.id, payment: ack.payment });
  });
});
socket.on("connect_error", (err) => { say({ step: "connect-error", error: err.message }); process.exit(1); });
socket.onAny((event, payload) => {
  if (payload && typeof payload.seq === "number" && payload.seq > lastSeq) lastSeq = payload.seq;
  say({ step: "event", event, payload });
  if (event === "payment-completed") {
    clearTimeout(timer);
    socket.close();
    process.exit(0);
  }
});
