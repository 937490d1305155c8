// The Node floor: a bare socket.io 4.x server (what the original checkout server ran on) doing
// exactly what the bench asks of every target, and nothing else:
//
//   POST /api/payment/initiate       -> 201 {reference, status: "PENDING", seq: 1}
//   socket "track-payment" {reference} -> joins the payment's room, acks {ok: true}
//   POST /api/payment/test/simulate  {reference, status}
//                                     -> payment-status, payment-success|payment-failed,
//                                        payment-completed to the room, answers {applied: true}
//   GET  /health                      -> {status: "healthy"}
//
// The payloads have the same fields as paytrack's (docs/API.md), so every target sends the same
// bytes per completion. Usage: node server.js --port P [--host 127.0.0.1] [--backlog N]
//
// With BENCH_LOOP_LOG naming a file, a timer runs every 10 ms and each time one fires 5 ms or more late
// a line "<CLOCK_MONOTONIC seconds> <seconds late>" is appended: the event loop's stalls, written as
// bench/gcprobe/sitecustomize.py writes the Python servers' (bench/storm.py reads both).

import { randomUUID } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    backlog: { type: "string", default: "511" }, // Node's own; the bench passes paytrack's
  },
});
if (!args.port) {
  console.error("usage: node server.js --port P [--host H] [--backlog N]");
  process.exit(2);
}

const payments = new Map(); // reference -> {order_id, amount, operator}: what the payload repeats

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
}

async function handle(req, res) {
  try {
    if (req.method === "GET" && req.url === "/health") {
      return send(res, 200, { status: "healthy" });
    }
    if (req.method === "POST" && req.url === "/api/payment/initiate") {
      const body = await readJson(req);
      const reference = randomUUID();
      payments.set(reference, { order_id: body.order_id ?? null, amount: body.amount ?? null, operator: "MTN" });
      return send(res, 201, { reference, status: "PENDING", seq: 1 });
    }
    if (req.method === "POST" && req.url === "/api/payment/test/simulate") {
      const { reference, status } = await readJson(req);
      const known = payments.get(reference) ?? { order_id: null, amount: null, operator: null };
      payments.delete(reference);
      const payload = {
        reference, order_id: known.order_id, status, amount: known.amount, currency: "XAF",
        operator: known.operator, seq: 2, timestamp: new Date().toISOString(),
      };
      const success = status === "SUCCESSFUL";
      const room = io.to(`payment:${reference}`);
      room.emit("payment-status", payload);
      room.emit(success ? "payment-success" : "payment-failed", payload);
      room.emit("payment-completed", { ...payload, success });
      return send(res, 200, { applied: true });
    }
    return send(res, 404, { error: { code: "not_found", message: "no such route" } });
  } catch (err) {
    return send(res, 400, { error: { code: "invalid_json", message: String(err) } });
  }
}

const httpServer = http.createServer(handle);
const io = new Server(httpServer, { cors: { origin: "*" } });

io.on("connection", (socket) => {
  socket.on("track-payment", (data, ack) => {
    const reference = typeof data === "string" ? data : data?.reference;
    socket.join(`payment:${reference}`);
    if (typeof ack === "function") ack({ ok: true });
  });
});

httpServer.listen(Number(args.port), args.host, Number(args.backlog));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    httpServer.close(() => process.exit(0));
    httpServer.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}

if (process.env.BENCH_LOOP_LOG) {
  const fd = fs.openSync(process.env.BENCH_LOOP_LOG, "a");
  const seconds = () => Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, as Python's time.monotonic()
  const tick = (due) => {
    const fired = seconds();
    if (fired - due >= 0.005) fs.writeSync(fd, `${fired.toFixed(6)} ${(fired - due).toFixed(6)}\n`);
    setTimeout(tick, 10, seconds() + 0.01).unref();
  };
  tick(seconds());
}
