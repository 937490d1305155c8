// A paytrack server that misbehaves as each test scripts it: the official `socket.io` Node server
// and a plain `http` REST API on one real port, speaking paytrack's protocol (track-payment acks,
// payment-* events, GET /tracking with ETags, GET /status, POST /initiate, GET /api/origin), with
// knobs for what a proxy, an overloaded instance or an older server does wrong. The client under
// test talks to it over real sockets; nothing of the client is replaced.
//
// Knobs (all on `server.script`, changeable while a test runs):
//   handshake: "accept" | "refuse"   refuse: the Engine.IO handshake is answered 403, as for a refused origin
//   connect: "accept" | "drop" | "drop-after-ack"
//                                    drop: accept the Socket.IO connection, then close its transport at once;
//                                    drop-after-ack: close it right after answering its first track-payment
//   refuseConnect: (auth) => null | {code, message}   refuse the CONNECT (the client sees connect_error)
//   track: (ctx) => answer           what a track-payment is answered with (see `ack` below); default: ok
//   rest: (ctx) => "ok" | "hang" | "reset" | {status, body, headers}   GET /api/payment/tracking/{reference}
//                                    reset: the connection is cut (a fetch fails as a CORS refusal does)
//   status: same, for GET /api/payment/status/{order_id}
//   initiate: (ctx) => {status, body, headers} | "hang"       POST /api/payment/initiate
//   restAuth: (token) => true | false  false: 401 invalid_token (every REST route)
//   origin: (origin) => {accepted} | "missing" | "reset" | "hang"   GET /api/origin
// Records: connections, trackCalls, requests (every HTTP request with its path, token and time).
import http from "node:http";
import { Server } from "socket.io";

/** A payment as paytrack's REST and socket events carry it. */
export function payment(reference, status = "PENDING", seq = 1, extra = {}) {
  return {
    reference,
    order_id: `order-${reference}`,
    status,
    amount: 500,
    currency: "XAF",
    operator: "MTN",
    seq,
    timestamp: new Date().toISOString(),
    ...(status === "FAILED" ? { reason: "failed" } : {}),
    ...extra,
  };
}

/** Answers a track-payment can get: the stored payment, an error code, an empty ack, or none at all. */
export const ack = {
  ok: (ctx) => ({ ok: true, payment: ctx.server.payments.get(ctx.reference) ?? null }),
  error: (code, extra = {}) => () => ({ ok: false, error: { code, message: `scripted ${code}`, ...extra } }),
  empty: () => undefined, // an ack with no argument
  never: () => NEVER, // no ack at all
};
const NEVER = Symbol("never");

const defaults = () => ({
  handshake: "accept",
  connect: "accept",
  refuseConnect: () => null,
  track: ack.ok,
  rest: () => "ok",
  status: () => "ok",
  initiate: () => ({ status: 503, body: { error: { code: "busy", message: "scripted busy" } }, headers: { "Retry-After": "1" } }),
  restAuth: () => true,
  origin: () => ({ accepted: true }),
});

/** Listens on `port` (default: a free one), so a test can start it where a client already tries to connect. */
export async function startScriptedServer({ port = 0 } = {}) {
  const server = {
    script: defaults(),
    payments: new Map(),
    connections: [], // {at, id, auth}
    trackCalls: [], // {at, reference, last_seq, socketId}
    requests: [], // {at, method, path, token, origin, status}
    waiters: new Set(),
  };
  const hung = new Set();

  /** Stores `next` for its reference and pushes it to every socket tracking it, as paytrack does. */
  server.set = (p, { push = true } = {}) => {
    server.payments.set(p.reference, p);
    if (!push) return;
    io.to(p.reference).emit("payment-status", p);
    if (p.status !== "PENDING") {
      const success = p.status === "SUCCESSFUL";
      io.to(p.reference).emit(success ? "payment-success" : "payment-failed", p);
      io.to(p.reference).emit("payment-completed", { ...p, success });
    }
  };
  server.reset = () => {
    server.script = defaults();
    server.payments.clear();
    server.connections.length = 0;
    server.trackCalls.length = 0;
    server.requests.length = 0;
  };
  /** Resolves when `check()` holds, re-checked after everything the server records. */
  server.until = (check, what = "the scripted server", timeoutMs = 10_000) => {
    if (check()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = () => {
        if (!check()) return;
        clearTimeout(timer);
        server.waiters.delete(waiter);
        resolve();
      };
      const timer = setTimeout(() => {
        server.waiters.delete(waiter);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      server.waiters.add(waiter);
    });
  };
  const recorded = () => {
    for (const waiter of [...server.waiters]) waiter();
  };

  const reply = (res, { status = 200, body = null, headers = {} }) => {
    const text = body === null ? "" : JSON.stringify(body);
    res.writeHead(status, { ...(body === null ? {} : { "Content-Type": "application/json" }), ...headers });
    res.end(text);
  };

  const httpServer = http.createServer((req, res) => {
    const url = new URL(req.url, "http://scripted");
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1] ?? null;
    const entry = { at: Date.now(), method: req.method, path: url.pathname, token: bearer, origin: req.headers.origin ?? null, status: null };
    if (url.pathname.startsWith("/socket.io/")) return; // socket.io's own handler answers
    server.requests.push(entry);
    const answer = (result) => {
      if (result === "reset") {
        entry.status = "reset";
        req.socket.destroy();
        recorded();
        return;
      }
      if (result === "hang") {
        hung.add(res);
        res.on("close", () => hung.delete(res));
        recorded();
        return;
      }
      entry.status = result.status ?? 200;
      reply(res, result);
      recorded();
    };
    if (url.pathname === "/api/origin") {
      const verdict = server.script.origin(entry.origin);
      if (verdict === "reset" || verdict === "hang") return answer(verdict);
      if (verdict === "missing") return answer({ status: 404, body: { error: { code: "not_found", message: "no such route" } } });
      return answer({ status: 200, body: { origin: entry.origin, ...verdict }, headers: { "Access-Control-Allow-Origin": "*" } });
    }
    if (!server.script.restAuth(bearer)) {
      return answer({ status: 401, body: { error: { code: "invalid_token", message: "scripted: every token is refused" } } });
    }
    let match = /^\/api\/payment\/tracking\/([^/]+)$/.exec(url.pathname);
    if (match && req.method === "GET") {
      const reference = decodeURIComponent(match[1]);
      const scripted = server.script.rest({ server, reference, req });
      if (scripted !== "ok") return answer(scripted);
      const stored = server.payments.get(reference);
      if (!stored) return answer({ status: 404, body: { error: { code: "not_found", message: "unknown payment" } } });
      const etag = `"${stored.seq}-${stored.status}"`;
      if (req.headers["if-none-match"] === etag) return answer({ status: 304, headers: { ETag: etag } });
      return answer({ status: 200, body: { payment: stored, tracking_clients: 0 }, headers: { ETag: etag } });
    }
    match = /^\/api\/payment\/status\/([^/]+)$/.exec(url.pathname);
    if (match && req.method === "GET") {
      const orderId = decodeURIComponent(match[1]);
      const scripted = server.script.status({ server, orderId, req });
      if (scripted !== "ok") return answer(scripted);
      const stored = [...server.payments.values()].find((p) => p.order_id === orderId);
      if (!stored) return answer({ status: 404, body: { error: { code: "not_found", message: "unknown order" } } });
      return answer({ status: 200, body: stored, headers: { "X-Provider-Refresh": "checked" } });
    }
    if (url.pathname === "/api/payment/initiate" && req.method === "POST") {
      req.resume();
      req.on("end", () => answer(server.script.initiate({ server, req })));
      return;
    }
    answer({ status: 404, body: { error: { code: "not_found", message: "no such route" } } });
  });

  const io = new Server(httpServer, {
    transports: ["websocket", "polling"],
    allowRequest: (req, callback) => {
      const accepted = server.script.handshake !== "refuse";
      if (!accepted) {
        server.requests.push({ at: Date.now(), method: req.method, path: "/socket.io/", token: null, origin: req.headers.origin ?? null, status: 403 });
        recorded();
      }
      callback(accepted ? null : "scripted: handshake refused", accepted);
    },
  });
  io.use((socket, next) => {
    const refusal = server.script.refuseConnect(socket.handshake.auth ?? {});
    if (!refusal) return next();
    const err = new Error(refusal.message ?? refusal.code);
    err.data = { code: refusal.code, ...(refusal.retry_after !== undefined ? { retry_after: refusal.retry_after } : {}) };
    server.connections.push({ at: Date.now(), id: null, auth: socket.handshake.auth ?? {}, refused: refusal.code });
    recorded();
    next(err);
  });
  io.on("connection", (socket) => {
    server.connections.push({ at: Date.now(), id: socket.id, auth: socket.handshake.auth ?? {} });
    recorded();
    if (server.script.connect === "drop") {
      socket.conn.close(); // a proxy that lets the handshake through and cuts the connection at once
      return;
    }
    socket.on("track-payment", (data, callback) => {
      const reference = data?.reference;
      server.trackCalls.push({ at: Date.now(), reference, last_seq: data?.last_seq, socketId: socket.id });
      recorded();
      const answer = server.script.track({ server, socket, reference, data });
      if (answer === NEVER) return;
      socket.join(reference);
      if (typeof callback === "function") {
        if (answer === undefined) callback();
        else callback(answer);
      }
      if (server.script.connect === "drop-after-ack") setImmediate(() => socket.conn.close());
    });
    socket.on("stop-tracking-payment", (data, callback) => {
      socket.leave(data?.reference);
      if (typeof callback === "function") callback({ ok: true });
    });
    socket.on("refresh-token", (data, callback) => {
      if (typeof callback === "function") callback({ ok: true, expires_at: null });
    });
  });

  await new Promise((resolve) => httpServer.listen(port, "127.0.0.1", resolve));
  server.url = `http://127.0.0.1:${httpServer.address().port}`;
  server.io = io;
  server.close = () =>
    new Promise((resolve) => {
      for (const res of hung) res.destroy();
      io.close(() => resolve());
      httpServer.closeAllConnections?.();
    });
  return server;
}
