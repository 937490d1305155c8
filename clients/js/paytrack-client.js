// paytrack-client: the official checkout client for paytrack.
//
// One PaymentTracker per page (or per server) follows any number of payments and
// keeps these guarantees whatever the network or the server does:
//   - onUpdate sees each payment's states in strictly increasing `seq`, and never
//     PENDING (or anything else) after a final status;
//   - onSuccess / onFailure and `done` fire exactly once per tracked payment;
//   - after a disconnect it reconnects with backoff and re-tracks every active
//     payment with its `last_seq`, so what was missed is applied;
//   - when the socket cannot connect, or stays down past `fallbackAfterMs`, it polls
//     GET /api/payment/tracking/{reference} (If-None-Match) and returns to the
//     socket as soon as it connects again;
//   - `token()` is asked at every connect and before the token expires
//     (`token-expiring` -> `refresh-token`); an auth refusal reconnects with a fresh one.
// Every update, whatever brought it (socket, REST, another tab), goes through one
// rule: PaymentTracker#apply. See docs/CLIENT.md.
//
// ES module with no build step; depends only on socket.io-client 4.x. The server
// serves this file at /sdk/paytrack-client.js with the single import below pointed
// at its copy of socket.io-client's ESM build, so a page can import it as is.
import { io } from "socket.io-client";

export const VERSION = "0.1.0";

const SERVER_EVENTS = ["payment-initiated", "payment-status", "payment-success", "payment-failed", "payment-completed"];
const STATUSES = new Set(["PENDING", "SUCCESSFUL", "FAILED"]);
const FINAL = new Set(["SUCCESSFUL", "FAILED"]);
// connect_error / refresh codes that a new token may cure.
const AUTH_CODES = new Set(["unauthenticated", "token_expired", "invalid_token"]);
// Ack error codes worth asking again for, after a pause.
const RETRY_CODES = new Set(["busy", "rate_limited", "auth_unavailable", "timeout", "internal_error"]);
const RE_READ_MIN_INTERVAL_MS = 1000;
// initiation_unknown is asked again for up to a couple of minutes: never faster than this, whatever Retry-After says.
const UNKNOWN_MIN_WAIT_MS = 250;

const DEFAULTS = {
  path: "/socket.io",
  transports: ["websocket"],
  token: null,
  fallbackPollMs: 3000,
  fallbackAfterMs: 4000,
  stuckAfterMs: 5 * 60 * 1000,
  ackTimeoutMs: 5000,
  reconnectDelayMs: 500,
  reconnectDelayMaxMs: 5000,
  initiateAttempts: 3,
  initiateUnknownWaitMs: 120_000,
};

/** An error from the server (its `code` and `message`) or from the client itself. */
export class PaytrackError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "PaytrackError";
    this.code = code;
    this.status = extra.status ?? null;
    this.reference = extra.reference ?? null;
    this.details = extra.details ?? null;
    this.retryAfter = extra.retryAfter ?? null;
    this.idempotencyKey = extra.idempotencyKey ?? null;
    if (extra.cause !== undefined) this.cause = extra.cause;
  }

  /** `phone_number: must be 237 and 9 digits` style lines for each field the server named. */
  get fieldMessages() {
    if (!Array.isArray(this.details)) return [];
    return this.details.filter((d) => d && d.field).map((d) => `${d.field}: ${d.message}`);
  }
}

const report = typeof globalThis.reportError === "function"
  ? (err) => globalThis.reportError(err)
  : (err) => console.error(err); // eslint-disable-line no-console

function safeCall(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (err) {
    report(err); // a page's handler must not break tracking
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function backoff(attempt, base, max) {
  const exp = Math.min(max, base * 2 ** Math.min(attempt, 16));
  return Math.round(exp * (0.5 + Math.random())); // ±50 % jitter, as socket.io's own reconnection
}

function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  if (c && typeof c.getRandomValues === "function") {
    return Array.from(c.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

function retryAfterMs(headers, bodySeconds) {
  const value = headers && headers.get("Retry-After");
  if (!value) return secondsMs(bodySeconds);
  return headerMs(value);
}

/** A Retry-After header's value (seconds or an HTTP date) in ms, or null. */
function headerMs(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : null;
}

/** A `retry_after` in seconds (an ack's, a connect refusal's) in ms, or null. */
function secondsMs(seconds) {
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null;
}

/** Waiting as told, spread over up to half as long again: clients told the same wait do not all come back at once. */
function jittered(ms) {
  return Math.round(ms * (1 + Math.random() * 0.5));
}

/**
 * The server refused the Engine.IO handshake with 429 (too many sessions from this address that have
 * not connected yet): `{ retryAfterMs }`, or null for any other connect error. A polling handshake
 * shows its status and Retry-After header (the XHR is engine.io-client's error context); a websocket
 * handshake shows its status only under Node, in the message of the `ws` package's error, and not at
 * all in a browser, where such a refusal looks like any failed connection.
 */
function handshakeRefusal(err) {
  if (err?.type !== "TransportError") return null;
  const described = err.description;
  let status = typeof described === "number" ? described : null;
  if (status === null) {
    const message = String(described?.message ?? described?.error?.message ?? "");
    const match = /Unexpected server response: (\d{3})/.exec(message);
    if (match) status = Number(match[1]);
  }
  if (status !== 429) return null;
  let header = null;
  try {
    header = typeof err.context?.getResponseHeader === "function" ? err.context.getResponseHeader("Retry-After") : null;
  } catch {
    header = null;
  }
  return { retryAfterMs: headerMs(header) };
}

/** One payment as this tracker knows it, shared by every handle that tracks it. */
class Entry {
  constructor(reference) {
    this.reference = reference;
    this.payment = null; // the latest accepted state (frozen)
    this.seq = 0; // highest seq accepted
    this.version = 0; // +1 per accepted update; handles deliver each version once
    this.final = false;
    this.unknown = false; // the server's last word: it does not know this payment
    this.forgotten = false; // ... after it had known it (server lost its history)
    this.etag = null; // of the last REST read
    this.restOnly = false; // the socket refused to track it (too_many_tracked): REST keeps it current
    this.handles = new Set();
    this.retryTimer = null;
    this.trackAttempts = 0;
    this.reading = null; // in-flight REST read
  }
}

/** What `tracker.track()` returns: one page's subscription to one payment. */
class Tracking {
  #tracker;
  #entry;
  #handlers;
  #seen = 0;
  #settled = false;
  #stopped = false;
  #stuckTimer = null;
  #resolve;
  #reject;

  constructor(tracker, entry, handlers, stuckAfterMs) {
    this.#tracker = tracker;
    this.#entry = entry;
    this.#handlers = handlers;
    this.reference = entry.reference;
    this.done = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {}); // a page that never awaits `done` gets no unhandled rejection on stop()
    if (!entry.final && stuckAfterMs > 0 && Number.isFinite(stuckAfterMs)) {
      this.#stuckTimer = setTimeout(() => {
        this.#stuckTimer = null;
        if (!this.#settled && !this.#stopped && !this.#entry.final) safeCall(this.#handlers.onStuck, this.#entry.payment);
      }, stuckAfterMs);
    }
  }

  /** The latest state accepted for this payment, or null before the first. */
  get payment() {
    return this.#entry.payment;
  }

  /** Ask the server to check with the provider now, and apply the answer by the same rules. */
  refresh() {
    return this.#tracker._refresh(this.#entry);
  }

  /** Stop following this payment; `done` rejects with code "stopped" if it had not settled. */
  stop() {
    if (this.#stopped) return;
    this._end(new PaytrackError("stopped", "tracking was stopped", { reference: this.reference }));
    this.#tracker._detach(this.#entry, this);
  }

  // -- called by the tracker -------------------------------------------------------------
  _deliver() {
    const entry = this.#entry;
    if (this.#stopped || entry.version <= this.#seen || entry.payment === null) return;
    this.#seen = entry.version;
    const payment = entry.payment;
    safeCall(this.#handlers.onUpdate, payment);
    if (entry.final && !this.#settled) {
      this.#settled = true;
      this.#clearStuck();
      safeCall(payment.status === "SUCCESSFUL" ? this.#handlers.onSuccess : this.#handlers.onFailure, payment);
      this.#resolve(payment);
    }
  }

  _unknown(lastKnown) {
    if (!this.#stopped) safeCall(this.#handlers.onUnknown, { reference: this.reference, lastKnown });
  }

  _end(error) {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#clearStuck();
    if (!this.#settled) {
      this.#settled = true;
      this.#reject(error);
    }
  }

  #clearStuck() {
    if (this.#stuckTimer !== null) clearTimeout(this.#stuckTimer);
    this.#stuckTimer = null;
  }
}

export class PaymentTracker {
  #options;
  #origin;
  #basePath;
  #fetch;
  #listeners = new Map();
  #entries = new Map();
  #initiated = new Map(); // reference -> payment from initiate(), seeds a later track()
  #socket = null;
  #state = "connecting";
  #closed = false;
  #everConnected = false;
  #fallbackTimer = null;
  #polling = false;
  #pollTimer = null;
  #reconnectTimer = null;
  #reconnectAttempts = 0;
  #tokenReason = "connect";
  #token = null; // the last token token() gave, for REST calls
  #tokenPromise = null;
  #channel = null;
  #lastReRead = 0;
  #unlisten = [];

  /**
   * @param {object} options see paytrack-client.d.ts (PaymentTrackerOptions)
   */
  constructor(options = {}) {
    const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
    this.#options = { ...DEFAULTS, ...given };
    const base = options.url ?? globalThis.location?.origin;
    if (!base) throw new TypeError("PaymentTracker: `url` (the paytrack server) is required outside a browser page");
    const url = new URL(base, globalThis.location?.href);
    this.#origin = url.origin;
    this.#basePath = url.pathname.replace(/\/+$/, "");
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (!this.#fetch) throw new TypeError("PaymentTracker: no fetch() available; pass `fetch`");
    this.#setupSharing();
    this.#setupPageEvents();
    this.#connect();
    this.#armFallback();
  }

  /** "connecting" | "connected" | "polling" | "offline" */
  get state() {
    return this.#state;
  }

  /**
   * Events: "connection" (state), "error" (PaytrackError), "event" (name, data): every raw
   * server event and ack, and every REST read that brought something new ("rest:tracking",
   * "rest:status"), for logging.
   */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** Follow one payment. Tracking the same reference twice gives two handles on one state. */
  track(reference, handlers = {}) {
    if (this.#closed) throw new PaytrackError("closed", "this tracker is closed");
    if (typeof reference !== "string" || reference.length === 0) {
      throw new TypeError("track(reference): reference must be a non-empty string");
    }
    let entry = this.#entries.get(reference);
    const fresh = entry === undefined;
    if (fresh) {
      entry = new Entry(reference);
      this.#entries.set(reference, entry);
      const seed = this.#initiated.get(reference);
      if (seed) this.#apply(entry, seed, "initiate");
    }
    const handle = new Tracking(this, entry, handlers, handlers.stuckAfterMs ?? this.#options.stuckAfterMs);
    entry.handles.add(handle);
    if (fresh) {
      this.#trackOnSocket(entry);
      this.#post({ type: "ask", reference });
      // Already on REST: read the state now rather than at the next poll.
      if (this.#state === "polling" || this.#state === "offline") this.#read(entry);
    }
    // After track() returns, so handlers may use the handle they were given.
    queueMicrotask(() => handle._deliver());
    return handle;
  }

  /**
   * POST /api/payment/initiate, every attempt with the same Idempotency-Key. Retried on network
   * failure, 429, 503 and `idempotency_in_progress` (up to `initiateAttempts` attempts), and on
   * `initiation_unknown` (the first attempt may have reached CamPay; its outcome is not known yet)
   * for up to `initiateUnknownWaitMs`. Every error thrown carries the key (`err.idempotencyKey`):
   * asking again later with it is safe, asking with a new one after `initiation_unknown` is not.
   */
  async initiate(body, { idempotencyKey, onRetry } = {}) {
    const key = idempotencyKey ?? randomKey();
    const attempts = Math.max(1, this.#options.initiateAttempts);
    const { reconnectDelayMs, reconnectDelayMaxMs } = this.#options;
    const withKey = (err) => {
      if (err !== null && typeof err === "object" && !Object.isFrozen(err)) err.idempotencyKey = key;
      return err;
    };
    let retries = 0; // ordinary retries (network, 429, 503, idempotency_in_progress), bounded by `attempts`
    let unknownRetries = 0;
    let unknownDeadline = null; // set by the first initiation_unknown
    for (let attempt = 1; ; attempt++) {
      let result;
      try {
        result = await this.#request("POST", "/api/payment/initiate", { json: body, headers: { "Idempotency-Key": key } });
      } catch (err) {
        if (retries + 1 < attempts && err?.code === "network_error") {
          const wait = backoff(retries++, reconnectDelayMs, reconnectDelayMaxMs);
          safeCall(onRetry, withKey(err), { attempt, waitMs: wait });
          await sleep(wait);
          continue;
        }
        throw withKey(err);
      }
      const { response, data } = result;
      if (response.ok) {
        if (data && typeof data.reference === "string") {
          this.#initiated.set(data.reference, data);
          if (this.#initiated.size > 50) this.#initiated.delete(this.#initiated.keys().next().value);
          const entry = this.#entries.get(data.reference);
          if (entry) this.#apply(entry, data, "initiate");
        }
        return data;
      }
      const error = this.#errorFrom(response, data, undefined, key);
      // Normal for tens of seconds (until CamPay's webhook tells the server); never a new key. Once
      // in that wait, a replay still being prepared (idempotency_in_progress) counts against it too.
      if (error.code === "initiation_unknown" || (unknownDeadline !== null && error.code === "idempotency_in_progress")) {
        unknownDeadline ??= Date.now() + Math.max(0, this.#options.initiateUnknownWaitMs);
        const left = unknownDeadline - Date.now();
        if (left <= 0) throw error;
        const asked = error.retryAfter ?? backoff(unknownRetries, reconnectDelayMs, reconnectDelayMaxMs);
        const wait = Math.min(left, Math.max(UNKNOWN_MIN_WAIT_MS, asked));
        unknownRetries++;
        safeCall(onRetry, error, { attempt, waitMs: wait });
        await sleep(wait);
        continue;
      }
      const retryable = response.status === 429 || response.status === 503 || error.code === "idempotency_in_progress";
      const wait = error.retryAfter ?? backoff(retries, reconnectDelayMs, reconnectDelayMaxMs);
      if (retries + 1 < attempts && retryable && wait <= 10_000) {
        retries++;
        safeCall(onRetry, error, { attempt, waitMs: wait });
        await sleep(wait);
        continue;
      }
      throw error; // order_paid, payment_pending, validation errors, ...: final, never retried
    }
  }

  /** Reconnect now (e.g. after the user signed in, so token() has something new to say). */
  reconnect() {
    if (this.#closed || !this.#socket) return;
    this.#tokenReason = "connect";
    this.#socket.disconnect();
    this.#socket.connect();
  }

  /** Disconnect and stop everything; pending `done` promises reject with code "closed". */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#fallbackTimer);
    clearTimeout(this.#pollTimer);
    clearTimeout(this.#reconnectTimer);
    for (const off of this.#unlisten) off();
    this.#unlisten = [];
    if (this.#socket) {
      this.#socket.removeAllListeners();
      this.#socket.offAny();
      this.#socket.disconnect();
    }
    this.#channel?.close();
    this.#channel = null;
    for (const entry of this.#entries.values()) {
      clearTimeout(entry.retryTimer);
      for (const handle of entry.handles) handle._end(new PaytrackError("closed", "the tracker was closed", { reference: entry.reference }));
    }
    this.#entries.clear();
    this.#setState("offline");
    this.#listeners.clear();
  }

  // -- the one rule --------------------------------------------------------------------
  /**
   * Accept `incoming` for `entry` only if it moves forward: a valid status with a higher
   * seq, and nothing at all once the payment is final. The one exception: after the server
   * said it no longer knows the payment (it lost its history), a final status it learns
   * again is accepted even though its count restarted. Returns true if accepted.
   */
  #apply(entry, incoming, source) {
    if (!incoming || typeof incoming !== "object" || incoming.reference !== entry.reference) return false;
    const { seq, status } = incoming;
    if (!Number.isInteger(seq) || seq < 1 || !STATUSES.has(status)) return false;
    if (entry.final) return false;
    const relearned = entry.forgotten && FINAL.has(status);
    if (seq <= entry.seq && !relearned) return false;
    const { success, ...fields } = incoming; // payment-completed's flag is implied by the status
    entry.payment = Object.freeze({ ...(entry.payment ?? {}), ...fields });
    entry.seq = Math.max(entry.seq, seq);
    entry.version += 1;
    entry.unknown = false;
    if (FINAL.has(status)) entry.final = true;
    for (const handle of entry.handles) handle._deliver();
    if (entry.final) this.#settle(entry);
    if (source !== "tab") this.#post({ type: "update", reference: entry.reference, payment: entry.payment });
    return true;
  }

  #markUnknown(entry) {
    if (entry.unknown || entry.final) return;
    entry.unknown = true;
    if (entry.payment !== null) entry.forgotten = true;
    for (const handle of entry.handles) handle._unknown(entry.payment);
  }

  /** A final payment needs nothing more from the server: free its slot on the socket. */
  #settle(entry) {
    clearTimeout(entry.retryTimer);
    if (this.#socket?.connected) this.#socket.emit("stop-tracking-payment", { reference: entry.reference });
  }

  // -- socket ---------------------------------------------------------------------------
  #connect() {
    const socket = io(this.#origin, {
      path: `${this.#basePath}${this.#options.path}`,
      transports: this.#options.transports,
      forceNew: true,
      reconnection: true,
      reconnectionDelay: this.#options.reconnectDelayMs,
      reconnectionDelayMax: this.#options.reconnectDelayMaxMs,
      randomizationFactor: 0.5,
      auth: (cb) => {
        const reason = this.#tokenReason;
        this.#tokenReason = "connect";
        if (!this.#options.token) return cb({});
        this.#freshToken(reason).then(
          (token) => cb(token ? { token } : {}),
          (err) => {
            this.#emit("error", new PaytrackError("token_unavailable", `token() failed: ${err?.message ?? err}`, { cause: err }));
            cb({});
          },
        );
      },
    });
    this.#socket = socket;

    socket.on("connect", () => {
      this.#everConnected = true;
      this.#reconnectAttempts = 0;
      clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = null;
      for (const entry of this.#entries.values()) entry.restOnly = false; // a new connection, new slots
      this.#stopPolling();
      this.#setState("connected");
      for (const entry of this.#entries.values()) {
        entry.trackAttempts = 0;
        this.#trackOnSocket(entry);
      }
    });
    socket.on("disconnect", (reason) => {
      if (this.#closed) return;
      if (this.#polling) {
        this.#setState("polling"); // already polling for rest-only payments: now for all
      } else {
        this.#setState("connecting");
        this.#armFallback();
      }
      // The client reconnects by itself after a transport loss; after the server closed the
      // session (token expiry, shutdown) it does not: do it here.
      if (!socket.active) this.#scheduleReconnect(reason === "io server disconnect" ? "expired" : "connect");
    });
    socket.on("connect_error", (err) => {
      if (this.#closed) return;
      const code = err?.data?.code;
      const refused = code ? null : handshakeRefusal(err);
      if (code) {
        const retryAfter = secondsMs(err.data.retry_after);
        this.#emit("error", new PaytrackError(code, err.message, { details: err.data.details, retryAfter }));
        if (AUTH_CODES.has(code)) this.#token = null;
      } else if (refused) {
        this.#emit("error", new PaytrackError("too_many_sessions", "the server refused the connection for now (429)", {
          status: 429,
          retryAfter: refused.retryAfterMs,
        }));
      }
      this.#armFallback();
      if (refused) {
        // socket.io would try again after its own delay, whatever the server asked: take the retry over.
        socket.disconnect();
        this.#scheduleReconnect("connect", refused.retryAfterMs);
      } else if (!socket.active) {
        this.#scheduleReconnect(AUTH_CODES.has(code) ? "rejected" : "connect", secondsMs(err?.data?.retry_after));
      }
    });
    socket.onAny((name, data) => {
      this.#emit("event", name, data);
      if (SERVER_EVENTS.includes(name)) {
        const entry = data && this.#entries.get(data.reference);
        if (entry) this.#apply(entry, data, "socket");
      }
    });
    socket.on("token-expiring", (data) => this.#refreshToken(data?.expires_at));
  }

  /** Connect again after the backoff, and not before `askedMs` (what the server asked, with jitter) when given. */
  #scheduleReconnect(reason, askedMs = null) {
    if (this.#closed || this.#reconnectTimer !== null) return;
    const ownDelay = backoff(this.#reconnectAttempts++, this.#options.reconnectDelayMs, this.#options.reconnectDelayMaxMs);
    const delay = askedMs === null ? ownDelay : Math.max(ownDelay, jittered(askedMs));
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (this.#closed || this.#socket.connected || this.#socket.active) return;
      this.#tokenReason = reason;
      this.#socket.connect();
    }, delay);
  }

  #trackOnSocket(entry) {
    const socket = this.#socket;
    if (!socket?.connected || entry.final || entry.restOnly || !this.#entries.has(entry.reference)) return;
    clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
    const sid = socket.id;
    const payload = { reference: entry.reference, last_seq: entry.seq };
    socket.timeout(this.#options.ackTimeoutMs).emit("track-payment", payload, (err, ack) => {
      if (this.#closed) return;
      const answer = err ? { ok: false, error: { code: "timeout", message: "no answer to track-payment" } } : ack;
      this.#emit("event", "ack:track-payment", { reference: entry.reference, ...answer });
      if (this.#entries.get(entry.reference) !== entry || entry.final) return;
      if (answer?.ok) {
        entry.trackAttempts = 0;
        if (answer.payment) this.#apply(entry, answer.payment, "socket");
        else this.#markUnknown(entry);
        return;
      }
      const error = new PaytrackError(answer?.error?.code ?? "bad_ack", answer?.error?.message ?? "track-payment failed", {
        reference: entry.reference,
        details: answer?.error?.details,
        retryAfter: secondsMs(answer?.error?.retry_after),
      });
      this.#emit("error", error);
      if (error.code === "too_many_tracked") {
        entry.restOnly = true; // REST keeps it current; see #pollingWanted
        this.#startPolling();
      } else if (RETRY_CODES.has(error.code)) {
        if (socket.connected && socket.id === sid) {
          const own = backoff(entry.trackAttempts++, this.#options.reconnectDelayMs, this.#options.reconnectDelayMaxMs);
          const asked = secondsMs(answer?.error?.retry_after); // rate_limited, busy: not before the server said
          const delay = asked === null ? own : Math.max(own, jittered(asked));
          entry.retryTimer = setTimeout(() => this.#trackOnSocket(entry), delay);
        } // otherwise the next connect re-tracks
      } else {
        this.#fail(entry, error); // forbidden, invalid_payload: asking again cannot help
      }
    });
  }

  #fail(entry, error) {
    clearTimeout(entry.retryTimer);
    this.#entries.delete(entry.reference);
    for (const handle of entry.handles) handle._end(error);
    entry.handles.clear();
  }

  _detach(entry, handle) {
    entry.handles.delete(handle);
    if (entry.handles.size > 0 || this.#entries.get(entry.reference) !== entry) return;
    this.#entries.delete(entry.reference);
    clearTimeout(entry.retryTimer);
    if (!entry.final && this.#socket?.connected) this.#socket.emit("stop-tracking-payment", { reference: entry.reference });
  }

  // -- tokens --------------------------------------------------------------------------
  /** Ask the page's token() once; concurrent askers share the answer. */
  #freshToken(reason, expiresAt) {
    if (!this.#options.token) return Promise.resolve(null);
    if (!this.#tokenPromise) {
      this.#tokenPromise = Promise.resolve()
        .then(() => this.#options.token({ reason, expiresAt: expiresAt ?? null }))
        .then((token) => {
          this.#token = typeof token === "string" && token ? token : null;
          return this.#token;
        })
        .finally(() => {
          this.#tokenPromise = null;
        });
    }
    return this.#tokenPromise;
  }

  async #refreshToken(expiresAt) {
    let token;
    try {
      token = await this.#freshToken("expiring", expiresAt);
    } catch (err) {
      this.#emit("error", new PaytrackError("token_unavailable", `token() failed: ${err?.message ?? err}`, { cause: err }));
      return;
    }
    const socket = this.#socket;
    if (!token || this.#closed || !socket.connected) return; // the next connect asks again
    socket.timeout(this.#options.ackTimeoutMs).emit("refresh-token", { token }, (err, ack) => {
      if (this.#closed) return;
      const answer = err ? { ok: false, error: { code: "timeout", message: "no answer to refresh-token" } } : ack;
      this.#emit("event", "ack:refresh-token", answer);
      if (!answer?.ok) {
        // The server disconnects at expiry; the reconnect then asks token() again.
        this.#emit("error", new PaytrackError(answer?.error?.code ?? "bad_ack", answer?.error?.message ?? "refresh-token failed"));
      }
    });
  }

  // -- REST ----------------------------------------------------------------------------
  async #request(method, path, { json, headers = {}, retried = false } = {}) {
    const all = { Accept: "application/json", ...headers };
    if (json !== undefined) all["Content-Type"] = "application/json";
    let token = null;
    if (this.#options.token) {
      token = this.#token ?? (await this.#freshToken("connect"));
      if (token) all.Authorization = `Bearer ${token}`;
    }
    let response;
    try {
      response = await this.#fetch(`${this.#origin}${this.#basePath}${path}`, {
        method,
        headers: all,
        body: json === undefined ? undefined : JSON.stringify(json),
        cache: "no-store",
      });
    } catch (err) {
      throw new PaytrackError("network_error", `cannot reach the paytrack server: ${err?.message ?? err}`, { cause: err });
    }
    let data = null;
    if (response.status !== 304 && (response.headers.get("Content-Type") || "").includes("json")) {
      data = await response.json().catch(() => null);
    }
    if (response.status === 401 && this.#options.token && !retried && AUTH_CODES.has(data?.error?.code)) {
      this.#token = null;
      await this.#freshToken("rejected");
      return this.#request(method, path, { json, headers, retried: true });
    }
    return { response, data };
  }

  #errorFrom(response, data, reference, idempotencyKey) {
    const error = data?.error ?? {};
    return new PaytrackError(error.code ?? `http_${response.status}`, error.message ?? response.statusText, {
      status: response.status,
      // The payment the call was about, else the one the server named (payment_pending, order_paid).
      reference: reference ?? (typeof error.reference === "string" ? error.reference : undefined),
      details: error.details,
      retryAfter: retryAfterMs(response.headers, error.retry_after),
      idempotencyKey,
    });
  }

  /** GET /tracking/{reference} with If-None-Match; one read at a time per payment. Resolves true if the server answered. */
  #read(entry) {
    if (!entry.reading) {
      entry.reading = this.#readOnce(entry).finally(() => {
        entry.reading = null;
      });
    }
    return entry.reading;
  }

  async #readOnce(entry) {
    const headers = entry.etag ? { "If-None-Match": entry.etag } : {};
    let result;
    try {
      result = await this.#request("GET", `/api/payment/tracking/${encodeURIComponent(entry.reference)}`, { headers });
    } catch (err) {
      return false;
    }
    const { response, data } = result;
    if (this.#entries.get(entry.reference) !== entry) return true;
    if (response.status === 304) return true;
    if (response.ok) {
      entry.etag = response.headers.get("ETag");
      // A 200 only when something changed (If-None-Match): logged like a socket event, 304s are not.
      this.#emit("event", "rest:tracking", { reference: entry.reference, ...data });
      if (data?.payment) this.#apply(entry, data.payment, "rest");
      return true;
    }
    if (response.status >= 500) return false; // "offline" says it; no error event every round
    if (response.status === 404) {
      this.#markUnknown(entry);
      return true;
    }
    const error = this.#errorFrom(response, data, entry.reference);
    this.#emit("error", error);
    if (response.status === 403) this.#fail(entry, error);
    return true;
  }

  async _refresh(entry) {
    if (entry.final) return entry.payment;
    if (!entry.payment?.order_id) await this.#read(entry);
    const orderId = entry.payment?.order_id;
    if (!orderId) return entry.payment; // not known (yet), or an orphan without an order: nothing to refresh by
    const { response, data } = await this.#request("GET", `/api/payment/status/${encodeURIComponent(orderId)}?refresh=true`);
    if (!response.ok) throw this.#errorFrom(response, data, entry.reference);
    this.#emit("event", "rest:status", data);
    if (data?.reference === entry.reference) this.#apply(entry, data, "rest");
    else await this.#read(entry); // the order has a newer payment; read ours
    const outcome = response.headers.get("X-Provider-Refresh") || "";
    if (outcome.startsWith("failed")) {
      const code = outcome.split(";")[1]?.trim() || "provider_refresh_failed";
      this.#emit("error", new PaytrackError(code, "the server could not ask the provider; showing the stored state", { reference: entry.reference }));
    }
    return entry.payment;
  }

  // -- polling fallback ----------------------------------------------------------------
  /** After `fallbackAfterMs` without a socket, poll over REST. */
  #armFallback() {
    if (this.#closed || this.#fallbackTimer !== null || this.#polling) return;
    this.#fallbackTimer = setTimeout(() => {
      this.#fallbackTimer = null;
      if (!this.#socket?.connected) this.#startPolling();
    }, this.#options.fallbackAfterMs);
  }

  #pollingWanted() {
    if (this.#closed) return false;
    if (!this.#socket?.connected) return true;
    for (const entry of this.#entries.values()) if (entry.restOnly && !entry.final) return true;
    return false;
  }

  #startPolling() {
    if (this.#closed || this.#polling) return;
    if (!(this.#options.fallbackPollMs > 0)) {
      if (!this.#socket?.connected) this.#setState("offline");
      return;
    }
    this.#polling = true;
    if (!this.#socket?.connected) this.#setState("polling");
    this.#pollRound();
  }

  #stopPolling() {
    clearTimeout(this.#fallbackTimer);
    this.#fallbackTimer = null;
    if (this.#pollingWanted() && this.#polling) return; // rest-only payments still need it
    this.#polling = false;
    clearTimeout(this.#pollTimer);
    this.#pollTimer = null;
  }

  async #pollRound() {
    this.#pollTimer = null;
    if (!this.#polling || !this.#pollingWanted()) {
      this.#polling = false;
      return;
    }
    const connected = this.#socket?.connected;
    const due = [...this.#entries.values()].filter((e) => !e.final && (!connected || e.restOnly));
    let reached = false;
    for (const result of await Promise.all(due.map((e) => this.#read(e)))) reached ||= result;
    if (!this.#polling || this.#closed) return;
    // With nothing to ask, the last answer stands.
    if (due.length > 0 && !this.#socket?.connected) this.#setState(reached ? "polling" : "offline");
    this.#pollTimer = setTimeout(() => this.#pollRound(), this.#options.fallbackPollMs);
  }


  // -- page: visibility, focus, other tabs -----------------------------------------------
  #setupPageEvents() {
    const doc = globalThis.document;
    const win = globalThis.window;
    if (!doc || !win || typeof win.addEventListener !== "function") return;
    const reRead = () => {
      if (doc.visibilityState === "hidden") return;
      const now = Date.now();
      if (now - this.#lastReRead < RE_READ_MIN_INTERVAL_MS) return; // focus and visibilitychange come together
      this.#lastReRead = now;
      for (const entry of this.#entries.values()) if (!entry.final) this.#read(entry);
    };
    doc.addEventListener("visibilitychange", reRead);
    win.addEventListener("focus", reRead);
    this.#unlisten.push(
      () => doc.removeEventListener("visibilitychange", reRead),
      () => win.removeEventListener("focus", reRead),
    );
  }

  #setupSharing() {
    const wanted = this.#options.shareAcrossTabs ?? (typeof globalThis.document !== "undefined");
    if (!wanted || typeof globalThis.BroadcastChannel !== "function") return;
    const channel = new BroadcastChannel(`paytrack:${this.#origin}${this.#basePath}`);
    channel.onmessage = (event) => {
      const message = event.data;
      if (!message || typeof message.reference !== "string") return;
      const entry = this.#entries.get(message.reference);
      if (!entry) return;
      if (message.type === "update") this.#apply(entry, message.payment, "tab");
      else if (message.type === "ask" && entry.payment) this.#post({ type: "update", reference: entry.reference, payment: entry.payment });
    };
    channel.unref?.(); // Node: an open channel must not keep the process alive
    this.#channel = channel;
  }

  #post(message) {
    try {
      this.#channel?.postMessage(message);
    } catch (err) {
      report(err);
    }
  }

  // -- events --------------------------------------------------------------------------
  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("connection", state);
  }

  #emit(event, ...args) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) safeCall(listener, ...args);
  }
}

export default PaymentTracker;
