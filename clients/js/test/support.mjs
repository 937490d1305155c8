// Test support: real paytrack server processes (server.py), a real redis-server, the Python
// CamPay fake, all on free loopback ports; plus small waiting helpers. Every wait is bounded.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const WAIT_MS = Number(process.env.PAYTRACK_TEST_WAIT_MS ?? 10_000);
export const PYTHON =
  process.env.PAYTRACK_PYTHON ?? (existsSync(path.join(ROOT, ".venv/bin/python")) ? path.join(ROOT, ".venv/bin/python") : "python3");
export const REDIS_SERVER = process.env.PAYTRACK_REDIS_SERVER ?? (existsSync("/usr/bin/redis-server") ? "/usr/bin/redis-server" : "redis-server");
export const JWT_SECRET = "jwt-secret-for-node-tests-0123456789abcdef";

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves with `check()`'s first truthy value; rejects after `timeoutMs`. */
export async function eventually(check, { timeoutMs = WAIT_MS, intervalMs = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A promise that rejects after `timeoutMs` unless `promise` settles first. */
export function within(promise, what, timeoutMs = WAIT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Records every call of the tracker callbacks, and lets a test await the n-th one. */
export class Recorder {
  constructor() {
    this.calls = [];
    this.waiters = [];
  }

  handler(name) {
    return (...args) => {
      this.calls.push({ name, args });
      this.waiters = this.waiters.filter((w) => !w.check() || (w.resolve(), false));
    };
  }

  named(name) {
    return this.calls.filter((c) => c.name === name);
  }

  /** Handlers for track(): onUpdate, onSuccess, onFailure, onStuck, onUnknown. */
  handlers(extra = {}) {
    return {
      onUpdate: this.handler("update"),
      onSuccess: this.handler("success"),
      onFailure: this.handler("failure"),
      onStuck: this.handler("stuck"),
      onUnknown: this.handler("unknown"),
      ...extra,
    };
  }

  waitFor(name, count = 1, timeoutMs = WAIT_MS) {
    const check = () => this.named(name).length >= count;
    if (check()) return Promise.resolve();
    return within(new Promise((resolve) => this.waiters.push({ check, resolve })), `${count} x ${name}`, timeoutMs);
  }
}

/** The states a page was shown, each once in a row (a "connection" event also comes when only nextAttemptAt changed). */
export function distinct(states) {
  return states.filter((s, i) => s !== states[i - 1]);
}

/** Waits for the tracker's "connection" state to become `state`. */
export function stateReached(tracker, state, timeoutMs = WAIT_MS) {
  if (tracker.state === state) return Promise.resolve();
  return within(
    new Promise((resolve) => {
      const off = tracker.on("connection", (s) => {
        if (s === state) {
          off();
          resolve();
        }
      });
    }),
    `connection state ${state}`,
    timeoutMs,
  );
}

/** Waits for a raw server event (tracker "event") matching `predicate`. */
export function rawEvent(tracker, predicate, timeoutMs = WAIT_MS) {
  return within(
    new Promise((resolve) => {
      const off = tracker.on("event", (name, data) => {
        if (predicate(name, data)) {
          off();
          resolve({ name, data });
        }
      });
    }),
    "a raw event",
    timeoutMs,
  );
}

function spawnLogged(command, args, options) {
  const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.output = "";
  const keep = (chunk) => {
    child.output = (child.output + chunk.toString()).slice(-8000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.exited = new Promise((resolve) => child.on("exit", (code, signal) => {
    children.delete(child);
    resolve({ code, signal });
  }));
  return child;
}

async function stop(child, signal = "SIGKILL") {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  await within(child.exited, `process ${child.pid} to exit`);
}

/** A real `python server.py` on a fixed port, which a test can kill and start again. */
export class ServerProcess {
  constructor(env = {}, port = null) {
    this.env = env;
    this.port = port;
    this.child = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port ??= await freePort();
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME ?? "/tmp",
      LANG: process.env.LANG ?? "C.UTF-8",
      APP_ENV: "development",
      STORAGE_BACKEND: "memory",
      PAYMENT_PROVIDER: "sandbox",
      LOG_LEVEL: "WARNING",
      ...this.env,
    };
    this.child = spawnLogged(PYTHON, ["server.py", "--host", "127.0.0.1", "--port", String(this.port)], { cwd: ROOT, env });
    const child = this.child;
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`server.py exited with ${child.exitCode}:\n${child.output}`);
        try {
          const response = await fetch(`${this.url}/health`);
          return response.ok;
        } catch {
          return false;
        }
      },
      { what: `server.py on port ${this.port}`, timeoutMs: 30_000, intervalMs: 50 },
    );
    return this;
  }

  /** Kill it: an outage (SIGKILL, nothing closed gracefully), not a clean stop. */
  async kill() {
    await stop(this.child, "SIGKILL");
    this.child = null;
  }

  /** Stop it as a deploy does (SIGTERM): every websocket is closed with 1001, going away. */
  async terminate() {
    await stop(this.child, "SIGTERM");
    this.child = null;
  }


  get output() {
    return this.child?.output ?? "";
  }
}

export async function startServer(env = {}) {
  return new ServerProcess(env).start();
}

/** A real redis-server on a free port, no persistence. */
export async function startRedis() {
  const port = await freePort();
  const child = spawnLogged(REDIS_SERVER, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {});
  await eventually(() => ping(port, child), { what: `redis-server on port ${port}`, intervalMs: 20 });
  return { url: `redis://127.0.0.1:${port}/0`, port, stop: () => stop(child) };
}

function ping(port, child) {
  if (child.exitCode !== null) throw new Error(`redis-server exited: ${child.output}`);
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.on("error", () => resolve(false));
    socket.on("data", (data) => {
      socket.destroy();
      resolve(data.toString().startsWith("+PONG"));
    });
    socket.on("connect", () => socket.write("PING\r\n"));
  });
}

/** The Python CamPay fake (tests/campay_fake.py) as a process; returns paytrack's settings for it. */
export async function startCampayFake() {
  const port = await freePort();
  const child = spawnLogged(PYTHON, ["-m", "tests.campay_fake", "--port", String(port)], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME ?? "/tmp" },
  });
  const url = `http://127.0.0.1:${port}`;
  await eventually(
    async () => {
      if (child.exitCode !== null) throw new Error(`campay fake exited: ${child.output}`);
      try {
        await fetch(`${url}/api/transaction/none/`);
        return true;
      } catch {
        return false;
      }
    },
    { what: "the CamPay fake", timeoutMs: 30_000, intervalMs: 50 },
  );
  return {
    url,
    settings: {
      PAYMENT_PROVIDER: "campay",
      CAMPAY_API_URL: `${url}/api`,
      CAMPAY_USERNAME: "campay-user",
      CAMPAY_APP_PASSWORD: "campay-pass",
      CAMPAY_WEBHOOK_KEY: "campay-webhook-key-for-tests-0123456789abcdef",
      CAMPAY_RETRY_BASE_SECONDS: "0.01",
      RECONCILE_ENABLED: "false",
    },
    /** Sets the transaction's true status at "CamPay", without sending any webhook. */
    async setStatus(reference, status) {
      const response = await fetch(`${url}/_fake/transactions/${reference}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ status }),
      });
      if (!response.ok) throw new Error(`fake CamPay refused: ${response.status}`);
    },
    stop: () => stop(child),
  };
}

export async function api(baseUrl, method, urlPath, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(baseUrl + urlPath, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null, headers: response.headers };
}

/**
 * The payer on the sandbox's stand-in for CamPay's hosted page (`link`, as POST /api/payment/link
 * answered it): pays by "CARD" or "MOMO" (from `phone_number`), or declines (`outcome: "FAILED"`).
 */
export async function payLink(link, method, { outcome = "SUCCESSFUL", phone_number = "237671234567" } = {}) {
  const body = { method, outcome, ...(method === "MOMO" ? { phone_number } : {}) };
  const response = await fetch(`${link}/pay`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok) throw new Error(`the stand-in refused: ${response.status} ${JSON.stringify(answer)}`);
  return answer;
}

export async function simulate(baseUrl, reference, status, extra = {}) {
  const result = await api(baseUrl, "POST", "/api/payment/test/simulate", { reference, status, ...extra });
  if (result.status !== 200) throw new Error(`simulate failed: ${result.status} ${JSON.stringify(result.body)}`);
  return result.body;
}

let orderCounter = 0;
export function orderId(prefix = "node") {
  orderCounter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${orderCounter}`;
}

export function paymentBody(prefix) {
  return { order_id: orderId(prefix), amount: 500, phone_number: "237671234567" };
}

/** An HS256 JWT as the merchant's auth service would issue it. */
export function jwt(sub, ttlSeconds, secret = JWT_SECRET) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds });
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/**
 * An HTTP proxy in front of `target` that can refuse websocket upgrades, as some corporate
 * proxies do. Logs every HTTP request with its If-None-Match and Idempotency-Key, the status it
 * got and whether the server said it replayed it. `proxy.loseAnswer(entry)`, when set and true for
 * a request, lets the request reach the server and then cuts the page's connection instead of
 * passing the answer on (an answer lost on the way back: `entry.lost`).
 */
export async function startProxy(target) {
  const { hostname, port } = new URL(target);
  const proxy = { allowUpgrades: false, requests: [], upgrades: 0, sockets: new Set(), loseAnswer: null };
  const server = http.createServer((req, res) => {
    const entry = {
      method: req.method,
      url: req.url,
      ifNoneMatch: req.headers["if-none-match"] ?? null,
      idempotencyKey: req.headers["idempotency-key"] ?? null,
      status: null,
      replayed: false,
      lost: false,
    };
    proxy.requests.push(entry);
    const upstream = http.request({ host: hostname, port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      entry.status = answer.statusCode;
      entry.replayed = answer.headers["idempotent-replayed"] === "true";
      if (proxy.loseAnswer?.(entry)) {
        entry.lost = true;
        answer.resume();
        answer.on("end", () => req.socket.destroy());
        return;
      }
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", () => {
      entry.status = 502;
      res.writeHead(502).end();
    });
    req.pipe(upstream);
  });
  server.on("connection", (socket) => {
    proxy.sockets.add(socket);
    socket.on("close", () => proxy.sockets.delete(socket));
  });
  server.on("upgrade", (req, socket, head) => {
    proxy.upgrades += 1;
    if (!proxy.allowUpgrades) {
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    const upstream = net.connect(Number(port), hostname, () => {
      let head_ = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head_ += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${head_}\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    proxy.sockets.add(upstream);
    upstream.on("close", () => proxy.sockets.delete(upstream));
    upstream.on("error", () => socket.destroy());
    socket.on("error", () => upstream.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  /** Cut every connection through the proxy (a network drop); it keeps listening. */
  proxy.cut = () => {
    for (const socket of proxy.sockets) socket.destroy();
  };
  proxy.close = () =>
    new Promise((resolve) => {
      for (const socket of proxy.sockets) socket.destroy();
      server.close(() => resolve());
    });
  return proxy;
}
