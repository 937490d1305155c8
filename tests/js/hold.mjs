// Holds connections open with the official socket.io client, as checkout pages do, and prints one JSON
// line per step on stdout: {"step": "connected"} once all are up, then {"step": "disconnect", "reason"}
// for each one the server closes. Exits 0 once every one is closed, 2 when that takes past the timeout.
// Usage: node hold.mjs <server url> <connections> [timeout ms]
import { io } from "socket.io-client";

const [url, count = "1", timeoutMs = "10000"] = process.argv.slice(2);
if (!url) {
  console.error("usage: node hold.mjs <server url> <connections> [timeout ms]");
  process.exit(1);
}
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const total = Number(count);
let connected = 0;
let closed = 0;
let timer = null;

for (let i = 0; i < total; i++) {
  // reconnection off only so that the process can end: the reason says whether a page would reconnect
  const socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
  socket.on("connect", () => {
    if (++connected === total) {
      say({ step: "connected" });
      timer = setTimeout(() => { say({ step: "timeout" }); process.exit(2); }, Number(timeoutMs));
    }
  });
  socket.on("connect_error", (err) => { say({ step: "connect-error", error: err.message }); process.exit(1); });
  socket.on("disconnect", (reason) => {
    say({ step: "disconnect", reason });
    if (++closed === total) {
      clearTimeout(timer);
      process.exit(0);
    }
  });
}
