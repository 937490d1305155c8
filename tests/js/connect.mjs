// One connection attempt with the official socket.io client, as a page's first try, and what it got as one
// JSON line on stdout: {"event": "connect"}, or {"event": "connect_error", message, data, description}
// (data: what the server's Socket.IO refusal said; description: a transport error's, e.g. a refused
// handshake's HTTP status as Node's websocket reports it). Usage: node connect.mjs <server url> [websocket|polling]
import { io } from "socket.io-client";

const [url, transport = "websocket"] = process.argv.slice(2);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const socket = io(url, { transports: [transport], reconnection: false, forceNew: true, timeout: 10000 });
socket.on("connect", () => {
  say({ event: "connect" });
  socket.disconnect();
  process.exit(0);
});
socket.on("connect_error", (err) => {
  const described = err.description;
  const description = typeof described === "number" ? described : String(described?.message ?? described ?? "");
  say({ event: "connect_error", message: err.message, data: err.data ?? null, description });
  socket.close();
  process.exit(0);
});
