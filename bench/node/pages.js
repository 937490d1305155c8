// Checkout pages for bench/storm.py: many socket.io-client websockets in one Node process, each a page
// tracking one payment, reconnecting by itself and re-tracking with last_seq after every reconnect, and
// judged per page across its connections.
//
// Node, not python-socketio: one Python process cannot hold and reconnect 10,000 websockets at the rate
// a reconnect storm needs on a machine whose cores the server shares; socket.io-client is also what the
// official checkout client (clients/js) runs on.
//
// Driven by bench/storm.py with one JSON object per line on stdin, each answered by one line on stdout:
//   {"cmd": "open", "urls": [...], "pages": [[reference, home], ...], "concurrency": 100, "policy": {...}}
//       opens the pages (home: index of the url a page connects to first) and answers once each has had
//       its first track-payment answer, or after "timeout_ms": {"tracked", "failed", "errors"}
//   {"cmd": "progress", "since_ns": "..."}  how many pages lost their connection after that instant ("hit"),
//       how many of those have tracked again since, and how many are connected now
//   {"cmd": "drop"}   cut every page's connection at once, as a network failure does
//   {"cmd": "report"}   one row per page (see Page.row)
//   {"cmd": "quit"}
// Times are process.hrtime.bigint(): CLOCK_MONOTONIC in ns on Linux, the clock of Python's
// time.monotonic_ns(), so the orchestrator compares them with its own.
//
// Reconnection (`policy`): a page reconnects after any close, as the official client does, by one of
//   "socketio": socket.io-client's own backoff (reconnectionDelay 500 ms, max 5 s, randomization 0.5,
//               doubling per failed attempt): what the official client did up to 0.4.1; the first retry
//               after a close lands 0.25 to 0.75 s after it;
//   "spread":   the same, except that the first retry after a close the server started (the websocket's
//               closing handshake with 1001, going away, as a graceful stop sends) lands uniformly in
//               [0, first_window_ms], so that a whole instance's pages do not come back in the same half second
//               (the official client from 0.5.0, goingAwayWindowMs, which keeps its backoff as a floor).
// Either way a refusal that names a wait (a Socket.IO connect_error with data.retry_after, in seconds) is
// honoured: the next attempt comes no sooner than that wait, spread over up to half as long again, and no
// sooner than the page's own backoff. A connection refused by the kernel (no process listening) is tried on
// the next url at once, as a load balancer tries its next upstream (proxy_next_upstream error); one attempt
// fails only when every url refused.

import readline from "node:readline";
import { io } from "socket.io-client";

const now = () => process.hrtime.bigint();
const FINAL = new Set(["SUCCESSFUL", "FAILED"]);
const EVENTS = ["payment-initiated", "payment-status", "payment-success", "payment-failed", "payment-completed"];

let urls = [];
let policy = { kind: "socketio", first_window_ms: 3000 };
const pages = [];

function backoffMs(attempt) {
  // socket.io-client's Backoff (contrib/backo2.js) with min 500, max 5000, factor 2, jitter 0.5
  let ms = 500 * 2 ** attempt;
  const rand = Math.random();
  const deviation = Math.floor(rand * 0.5 * ms);
  ms = (Math.floor(rand * 10) & 1) === 0 ? ms - deviation : ms + deviation;
  return Math.min(ms, 5000);
}

class Page {
  constructor(reference, home) {
    this.reference = reference;
    this.home = home;
    this.socket = null;
    this.timer = null;
    this.attempt = 0; // failed attempts since the last connect (the backoff's exponent)
    this.upstream = home; // the url tried next
    this.askedMs = null; // what the last refusal asked for
    this.serverClosed = false; // the last close came from the server's closing handshake (1001)
    // what the page knows
    this.seq = 0;
    this.status = null;
    this.final = null;
    this.finalAt = 0n;
    // what it got, across connections
    this.completed = 0;
    this.outcomes = 0;
    this.violations = 0; // seq down, PENDING after a final status, the other final status
    this.staleAcks = 0; // track answers older than what the page already had
    this.firstViolation = "";
    this.connects = 0;
    this.attempts = 0;
    this.busy = 0; // refusals with a retry hint (connect_error busy / rate_limited, track busy)
    this.httpRefused = 0; // handshakes answered 429/503
    this.noListener = 0; // attempts every url refused at the TCP level
    this.timeouts = 0; // connect or track answers that did not come in time
    this.otherErrors = 0;
    this.lastError = "";
    this.trackedAt = 0n; // the last track-payment answer, on the current or last connection
    this.tracks = 0;
    this.disconnects = 0;
    this.disconnectedAt = 0n;
    this.at = -1; // the url of the current connection
    this.onTracked = null; // the open command's wait
  }

  row() {
    return [
      this.reference, this.final ?? "", this.seq, this.finalAt.toString(), this.completed, this.outcomes,
      this.violations, this.connects, this.attempts, this.busy, this.httpRefused, this.noListener, this.timeouts,
      this.otherErrors, this.trackedAt.toString(), this.tracks, this.disconnects, this.firstViolation || this.lastError,
      this.socket?.connected ? this.at : -1, this.disconnectedAt.toString(), this.staleAcks,
    ];
  }

  violate(what) {
    this.violations += 1;
    if (!this.firstViolation) this.firstViolation = what;
  }

  apply(data, kind) {
    if (!data || data.reference !== this.reference || typeof data.seq !== "number") return;
    const { seq, status } = data;
    if (kind === "ack" && seq < this.seq) {
      // The ack carries the payment as read before this connection's catch-up and live events went out, so
      // it may be older than what they said (docs/API.md); the official client ignores a lower seq too.
      this.staleAcks += 1;
      return;
    }
    if (seq < this.seq) {
      this.violate(`seq ${seq} after ${this.seq} (${kind})`);
      return;
    }
    if (this.final && status !== this.final) {
      this.violate(`${status} after ${this.final} (${kind})`);
      return;
    }
    if (kind === "payment-completed") this.completed += 1;
    if (kind === "payment-success" || kind === "payment-failed") this.outcomes += 1;
    this.seq = seq;
    this.status = status;
    if (FINAL.has(status) && !this.final) {
      this.final = status;
      this.finalAt = now();
    }
  }

  connect() {
    this.timer = null;
    this.attempts += 1;
    this.open(0);
  }

  open(tried) {
    const index = this.upstream % urls.length;
    const url = urls[index];
    const socket = io(url, { forceNew: true, reconnection: false, transports: ["websocket"], timeout: 20000 });
    this.socket = socket;
    for (const name of EVENTS) socket.on(name, (data) => this.apply(data, name));
    socket.on("connect", () => {
      this.at = index;
      this.connects += 1;
      this.attempt = 0;
      this.askedMs = null;
      this.serverClosed = false;
      this.track(socket);
    });
    socket.on("connect_error", (err) => {
      if (socket !== this.socket) return;
      socket.removeAllListeners();
      socket.close();
      const code = err?.data?.code;
      const described = err?.description;
      const message = String(described?.message ?? described?.error?.message ?? err?.message ?? "");
      if (code) {
        this.busy += 1;
        this.lastError = `connect_error ${code}`;
        const asked = Number(err.data.retry_after);
        this.askedMs = Number.isFinite(asked) ? asked * 1000 : null;
      } else if (/ECONNREFUSED/.test(message) || described?.code === "ECONNREFUSED" || described?.error?.code === "ECONNREFUSED") {
        if (tried + 1 < urls.length) {
          this.upstream += 1; // the next upstream, as a load balancer does, within this attempt
          this.open(tried + 1);
          return;
        }
        this.noListener += 1;
      } else if (/Unexpected server response: (429|503)/.test(message)) {
        this.httpRefused += 1;
        this.lastError = message;
      } else if (err?.message === "timeout") {
        this.timeouts += 1;
        this.lastError = "connect timeout";
      } else {
        this.otherErrors += 1;
        this.lastError = `connect_error ${message}`.slice(0, 200);
      }
      this.upstream += 1;
      this.retry();
    });
    socket.on("disconnect", (reason, details) => {
      if (socket !== this.socket) return;
      this.disconnects += 1;
      this.disconnectedAt = now();
      socket.removeAllListeners();
      socket.close();
      this.serverClosed = details?.context?.code === 1001 || reason === "io server disconnect";
      this.upstream = this.home;
      this.retry();
    });
  }

  track(socket) {
    socket.timeout(20000).emit("track-payment", { reference: this.reference, last_seq: this.seq || null }, (err, ack) => {
      if (socket !== this.socket || !socket.connected) return;
      if (err) {
        this.timeouts += 1;
        this.lastError = "track timeout";
        socket.disconnect(); // and start again, as a page would
        this.retry();
        return;
      }
      if (!ack?.ok) {
        const code = ack?.error?.code ?? "unknown";
        this.busy += 1;
        this.lastError = `track ${code}`;
        const asked = Number(ack?.error?.retry_after);
        const waitMs = Math.max(backoffMs(0), Number.isFinite(asked) ? asked * 1000 * (1 + Math.random() * 0.5) : 0);
        setTimeout(() => this.socket === socket && socket.connected && this.track(socket), waitMs);
        return;
      }
      if (ack.payment) this.apply(ack.payment, "ack");
      this.trackedAt = now();
      this.tracks += 1;
      if (this.onTracked) {
        const done = this.onTracked;
        this.onTracked = null;
        done(true);
      }
    });
  }

  retry() {
    if (this.timer !== null) return;
    let delay;
    if (this.attempt === 0 && this.serverClosed && policy.kind === "spread") {
      delay = Math.random() * policy.first_window_ms;
    } else {
      delay = backoffMs(this.attempt);
    }
    this.attempt += 1;
    if (this.askedMs !== null) delay = Math.max(delay, this.askedMs * (1 + Math.random() * 0.5));
    this.askedMs = null;
    this.timer = setTimeout(() => this.connect(), delay);
  }
}

async function open({ urls: given, pages: list, concurrency = 100, policy: chosen, timeout_ms = 120000 }) {
  urls = given;
  if (chosen) policy = { ...policy, ...chosen };
  const errors = [];
  let tracked = 0;
  let next = 0;
  const started = pages.length;
  for (const [reference, home] of list) pages.push(new Page(reference, home));
  const deadline = Date.now() + timeout_ms;
  async function lane() {
    while (next < list.length && Date.now() < deadline) {
      const page = pages[started + next++];
      const ok = await new Promise((resolve) => {
        page.onTracked = resolve;
        page.connect();
        setTimeout(() => resolve(false), Math.max(0, deadline - Date.now())).unref();
      });
      if (ok) tracked += 1;
      else if (errors.length < 5) errors.push(`${page.reference}: ${page.lastError || "not tracked in time"}`);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, lane));
  return { tracked, failed: list.length - tracked, errors };
}

function progress({ since_ns }) {
  const since = BigInt(since_ns);
  let hit = 0;
  let retracked = 0;
  let connected = 0;
  for (const page of pages) {
    if (page.disconnectedAt > since) {
      hit += 1;
      if (page.trackedAt > page.disconnectedAt) retracked += 1;
    }
    if (page.socket?.connected) connected += 1;
  }
  return { hit, retracked, connected, pages: pages.length };
}

/** The network drops every page's connection at once: each websocket's TCP connection is destroyed, with no
 * closing handshake, and each page finds out as from a dead network (and reconnects). */
function drop() {
  let dropped = 0;
  for (const page of pages) {
    const ws = page.socket?.connected ? page.socket.io.engine?.transport?.ws : null;
    if (ws && typeof ws.terminate === "function") {
      ws.terminate();
      dropped += 1;
    }
  }
  return { dropped };
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
const commands = { open, progress, drop, report: () => ({ rows: pages.map((p) => p.row()) }) };
for await (const line of rl) {
  const request = JSON.parse(line);
  if (request.cmd === "quit") break;
  let answer;
  try {
    answer = await commands[request.cmd](request);
  } catch (err) {
    answer = { error: `${request.cmd}: ${err?.stack ?? err}` };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
process.exit(0); // no goodbye to thousands of sockets
