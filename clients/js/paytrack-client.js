// paytrack-client: the official checkout client for paytrack.
//
// One PaymentTracker per page (or per server) follows any number of payments and
// keeps these guarantees whatever the network or the server does:
//   - onUpdate sees each payment's states in strictly increasing `seq`, and never
//     PENDING (or anything else) after a final status, but for SUCCESSFUL, or FAILED
//     amount_mismatch, after EXPIRED: a link the provider reports paid (the amount asked, or
//     another) after the server expired it (CamPay's page stays payable);
//   - onSuccess / onFailure / onExpired and `done` fire exactly once per tracked payment,
//     `done` first; a payment that may still succeed never rejects `done` (only `forbidden`,
//     `invalid_payload`, `stopped` and `closed` do). The one second call: onSuccess (or
//     onFailure, amount_mismatch) after onExpired for such a link (`done` stays resolved with
//     EXPIRED). An EXPIRED link is followed on until the page stops it;
//   - after a disconnect it reconnects with backoff and re-tracks every active
//     payment with its `last_seq`, so what was missed is applied. The backoff starts
//     over only once a connection stayed up for 10 s, so a proxy that accepts
//     sockets and drops them (before or after a track-payment's answer) meets a
//     slower and slower client;
//   - until a connection proved itself, or when a payment's track was refused for
//     now, it reads GET /api/payment/tracking/{reference} (If-None-Match) with
//     jitter, and backs off while those reads fail; every REST call has a timeout;
//   - `token()` is asked at every connect, before the token expires
//     (`token-expiring` -> `refresh-token`), and once per refused token, however many
//     calls were refused with it;
//   - what another tab reports is applied only once the server confirms it.
// Every update, whatever brought it (socket, REST, another tab), goes through one
// rule: PaymentTracker#apply. See docs/CLIENT.md.
//
// ES module with no build step; depends only on socket.io-client 4.x. The server
// serves this file at /sdk/paytrack-client.js with the single import below pointed
// at its copy of socket.io-client's ESM build, so a page can import it as is.
import { io } from "socket.io-client";

export const VERSION = "0.5.0";

const SERVER_EVENTS = new Set([
  "payment-initiated",
  "payment-status",
  "payment-success",
  "payment-failed",
  "payment-expired",
  "payment-completed",
]);
const STATUSES = new Set(["PENDING", "SUCCESSFUL", "FAILED", "EXPIRED"]);
// EXPIRED: a payment link nobody paid within its lifetime, as far as the server knows. It settles `done`
// and is no failure of anyone's money, but it is the server's guess, not the provider's: CamPay's page
// stays payable, and a later SUCCESSFUL (higher seq) is applied, or a FAILED amount_mismatch when the
// payer paid another amount (`afterExpiry`). So SETTLED holds it, FINAL (nothing can change any more:
// the entry is let go) does not.
const SETTLED = new Set(["SUCCESSFUL", "FAILED", "EXPIRED"]);
const FINAL = new Set(["SUCCESSFUL", "FAILED"]);
// What may follow EXPIRED: CamPay's word that the link was paid after it, the amount asked (SUCCESSFUL)
// or another (FAILED, reason amount_mismatch). A plain FAILED after it adds nothing (the server sends none).
const afterExpiry = ({ status, reason }) => status === "SUCCESSFUL" || (status === "FAILED" && reason === "amount_mismatch");
// The final status each handler is for.
const SETTLED_HANDLER = { SUCCESSFUL: "onSuccess", FAILED: "onFailure", EXPIRED: "onExpired" };
// Connect refusals and REST 401 codes that a new token may cure.
const AUTH_CODES = new Set(["unauthenticated", "token_expired", "invalid_token"]);
// track-payment answers that end the tracking of a payment: asking again cannot change them. Any other
// error (busy, rate_limited, timeout, service_unavailable, an empty ack, a code this version does not
// know) is asked again with backoff, and REST covers the payment meanwhile.
const FINAL_ACK_CODES = new Set(["forbidden", "invalid_payload"]);
const RE_READ_MIN_INTERVAL_MS = 1000;
// initiation_unknown is asked again for up to a couple of minutes: never faster than this, whatever Retry-After says.
const UNKNOWN_MIN_WAIT_MS = 250;
// setTimeout takes a signed 32-bit delay: anything longer fires at once.
const MAX_TIMER_MS = 2 ** 31 - 1;
// A connection that stays up this long proved itself even with nothing to track (no ack to wait for).
const PROVEN_AFTER_MS = 10_000;
// Final payments remembered after their handles are let go: a later track() or another tab's question is answered at once.
const FINALS_KEPT = 100;
const INITIATED_KEPT = 50;
const NO_HANDLERS = Object.freeze({});

const DEFAULTS = {
  path: "/socket.io",
  transports: ["websocket"],
  token: null,
  fallbackPollMs: 3000,
  fallbackPollMaxMs: 30_000,
  fallbackAfterMs: 4000,
  stuckAfterMs: 5 * 60 * 1000,
  ackTimeoutMs: 5000,
  requestTimeoutMs: 10_000,
  providerTimeoutMs: 60_000,
  reconnectDelayMs: 500,
  reconnectDelayMaxMs: 5000,
  goingAwayWindowMs: 3000,
  initiateAttempts: 3,
  initiateUnknownWaitMs: 120_000,
};

/** An error from the server (its `code` and `message`) or from the client itself. */
export class PaytrackError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "PaytrackError";
    this.code = code;
    this.reason = extra.reason ?? null;
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

/** The k-th wait of an exponential backoff, ±50 % at random (as socket.io's own reconnection). */
function backoff(attempt, base, max) {
  const exp = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.round(exp * (0.5 + Math.random()));
}

/** Waiting as told, spread over up to half as long again: clients told the same wait do not all come back at once. */
function jittered(ms) {
  return Math.round(ms * (1 + Math.random() * 0.5));
}

/** An interval ±25 % at random, so pages that started together drift apart. */
function spread(ms) {
  return Math.round(ms * (0.75 + Math.random() * 0.5));
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

/**
 * The server refused the Engine.IO handshake for now: 429 (too many sessions from this address that
 * have not connected yet) or 503 (`busy`: more connections coming in at once than the instance can
 * take in, a reconnect storm). `{ status, code, retryAfterMs }`, or null for any other connect error.
 * A polling handshake shows its status and Retry-After header (the XHR is engine.io-client's error
 * context); a websocket handshake shows its status only under Node, in the message of the `ws`
 * package's error, and not at all in a browser, where such a refusal looks like any failed connection.
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
  if (status !== 429 && status !== 503) return null;
  let header = null;
  let code = null;
  try {
    header = typeof err.context?.getResponseHeader === "function" ? err.context.getResponseHeader("Retry-After") : null;
    code = JSON.parse(err.context?.responseText ?? "null")?.error?.code ?? null;
  } catch {
    header ??= null;
  }
  if (typeof code !== "string") code = status === 429 ? "too_many_sessions" : "service_unavailable";
  return { status, code, retryAfterMs: headerMs(header) };
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
    this.handles = new Set();
    // The socket: answered on this connection (acked), refused for good here (restOnly: too_many_tracked),
    // or refused for now (ackFailed: asked again after retryTimer). REST covers it unless acked.
    this.acked = false;
    this.restOnly = false;
    this.ackFailed = false;
    this.tracking = false; // a track-payment awaits its answer
    this.asked = false; // a track-payment went out for it (the server may hold a slot for it)
    this.retryTimer = null;
    this.trackAttempts = 0;
    // REST: one read at a time, and its own polling loop while the socket does not cover it.
    this.reading = null;
    this.polling = false;
    this.pollTimer = null;
    this.pollFailures = 0;
  }
}

/** What `tracker.track()` returns: one page's subscription to one payment. */
class Tracking {
  #tracker;
  #entry;
  #handlers;
  #seen = 0;
  #settled = false;
  #settledAs = null; // the status `done` settled with
  #stopped = false;
  #stuckTimer = null;
  #resolve;
  #reject;

  constructor(tracker, entry, handlers, stuckAfterMs) {
    this.#tracker = tracker;
    this.#entry = entry;
    this.#handlers = handlers ?? NO_HANDLERS;
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
      }, Math.min(stuckAfterMs, MAX_TIMER_MS));
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
  /**
   * Hands the entry's latest state to the page. A final state settles `done` before any handler runs,
   * and its onSuccess/onFailure/onExpired runs even if onUpdate stopped the handle or closed the
   * tracker; the handlers are then let go (the page may keep the handle, not its closures). After
   * EXPIRED they are kept: a SUCCESSFUL after it (a link paid late) runs onUpdate and onSuccess, once, and a
   * FAILED amount_mismatch (paid late, another amount) onUpdate and onFailure, once.
   */
  _deliver() {
    const entry = this.#entry;
    if (this.#stopped || entry.version <= this.#seen || entry.payment === null) return;
    this.#seen = entry.version;
    const payment = entry.payment;
    const handlers = this.#handlers;
    const status = payment.status;
    const paidLate = this.#settledAs === "EXPIRED" && afterExpiry(payment);
    const settling = SETTLED.has(status) && (!this.#settled || paidLate);
    if (settling) {
      if (!this.#settled) this.#resolve(payment);
      this.#settled = true;
      this.#settledAs = status;
      this.#clearStuck();
      if (FINAL.has(status)) this.#handlers = NO_HANDLERS;
    }
    safeCall(handlers.onUpdate, payment);
    if (settling) safeCall(handlers[SETTLED_HANDLER[status]], payment);
  }

  _unknown(lastKnown) {
    if (!this.#stopped && !this.#settled) safeCall(this.#handlers.onUnknown, { reference: this.reference, lastKnown });
  }

  _end(error) {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#clearStuck();
    this.#handlers = NO_HANDLERS;
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
  #initiated = new Map(); // reference -> payment from initiate() or payByLink(), seeds a later track()
  #finals = new Map(); // reference -> final payment, for a later track() and other tabs' questions
  #closed = false;
  #inflight = new Set(); // the AbortControllers of the requests in flight, aborted by close()
  #pauses = new Set(); // initiate()'s waits, ended by close()
  // Connection, as shown to the page.
  #state = "connecting";
  #nextAttemptAt = null; // the reconnect timer's
  #shownAttemptAt = null; // ... as last told to the page
  #lost = false; // a connection attempt failed or a connection dropped since the start
  // The socket. socket.io's own reconnection is off: it starts its backoff over at every connect.
  #socket = null;
  #connecting = false; // an attempt is under way
  #watchdog = null; // ends an attempt the server never answers
  #reconnectTimer = null;
  #reconnectAttempts = 0; // reset only by a connection that stayed up PROVEN_AFTER_MS
  #proven = false; // this connection answered a track-payment (or stayed up PROVEN_AFTER_MS)
  #provenTimer = null;
  // REST fallback.
  #fallbackTimer = null;
  #restMode = false; // the socket did not prove itself within fallbackAfterMs: REST covers every payment
  #restHealthy = null; // the last REST outcome: true answered, false failed, null none yet
  #probing = false; // with nothing to read, the REST mode checks the server is there (GET /api/origin)
  #probeTimer = null;
  #probeFailures = 0;
  #diagnosis = null; // {promise, at}: is the server there, and does it accept this page's origin?
  #reported = new Set(); // connection error codes said once per episode (origin_not_allowed, unreachable, unauthenticated)
  // Tokens: every token is one generation; a refused generation is asked anew once, shared by every caller.
  #tokenReason = "connect";
  #token = null;
  #tokenGen = 0;
  #tokenPromise = null;
  #refusedGen = -1;
  #refusals = 0; // refused generations in a row
  #nextRefreshAt = 0;
  #tokenFailures = 0; // token() calls in a row that threw or did not answer
  #nextTokenAt = 0; // ... REST asks it again no sooner than this
  #tokenTimer = null; // bounds the token() call under way
  #socketTokenGen = -1;
  #socketToken = null; // the token the socket's session holds
  #expiringAnswered = null; // the expires_at of the token-expiring answered on this connection
  // Page.
  #channel = null;
  #lastReRead = 0;
  #lastRetryNow = 0;
  #retryLater = null;
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
    this.#createSocket();
    this.#armFallback();
    this.#attempt();
  }

  /** "connecting" | "connected" | "reconnecting" | "polling" | "offline" */
  get state() {
    return this.#state;
  }

  /** When the next connection attempt starts (epoch ms), or null when none is waiting. */
  get nextAttemptAt() {
    return this.#shownAttemptAt;
  }

  /**
   * Events: "connection" (state, {nextAttemptAt}), "error" (PaytrackError), "event" (name, data):
   * every raw server event and ack, and every REST read that brought something new
   * ("rest:tracking", "rest:status"), for logging.
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
      const seed = this.#finals.get(reference) ?? this.#initiated.get(reference);
      if (seed) this.#apply(entry, seed, "memory");
    }
    const handle = new Tracking(this, entry, handlers, handlers?.stuckAfterMs ?? this.#options.stuckAfterMs);
    entry.handles.add(handle);
    if (fresh && !entry.final) {
      this.#trackOnSocket(entry);
      this.#post({ type: "ask", reference });
      this.#pollDue(); // already on REST: read it now rather than at the next poll
      this.#updateState();
    }
    // After track() returns, so handlers may use the handle they were given.
    queueMicrotask(() => {
      handle._deliver();
      if (!fresh && entry.unknown) handle._unknown(entry.payment); // the others were told when it happened
    });
    return handle;
  }

  /**
   * POST /api/payment/initiate, every attempt with the same Idempotency-Key. Retried on network
   * failure, timeout, 429, 503 and `idempotency_in_progress` (up to `initiateAttempts` attempts), and on
   * `initiation_unknown` (the first attempt may have reached CamPay; its outcome is not known yet)
   * for up to `initiateUnknownWaitMs`. Every error thrown carries the key (`err.idempotencyKey`):
   * asking again later with it is safe, asking with a new one after `initiation_unknown` is not.
   * After close() it asks nothing more and throws `closed`.
   */
  initiate(body, options = {}) {
    return this.#start("/api/payment/initiate", body, options);
  }

  /**
   * POST /api/payment/link: a payment through CamPay's hosted page, where the payer chooses mobile
   * money or a card. Resolves with the payment (`kind: "link"`, PENDING, with the `link` to open and
   * `link_expires_at`); the same Idempotency-Key and retry rules as initiate(), and the same errors
   * (`order_paid`, `payment_pending`, `initiation_unknown`, ...). How a page opens the link without a
   * popup blocker stopping it: docs/CLIENT.md, "Pay by link".
   */
  payByLink(body, options = {}) {
    return this.#start("/api/payment/link", body, options);
  }

  /** One payment started at `path` (initiate or link), every attempt with one Idempotency-Key. */
  async #start(path, body, { idempotencyKey, onRetry } = {}) {
    const key = idempotencyKey ?? randomKey();
    const attempts = Math.max(1, this.#options.initiateAttempts);
    const { reconnectDelayMs, reconnectDelayMaxMs, providerTimeoutMs } = this.#options;
    const withKey = (err) => {
      if (err !== null && typeof err === "object" && !Object.isFrozen(err)) err.idempotencyKey = key;
      return err;
    };
    const pause = (ms) => this.#pause(ms).catch((err) => {
      throw withKey(err);
    });
    let retries = 0; // ordinary retries (network, timeout, 429, 503, idempotency_in_progress), bounded by `attempts`
    let unknownRetries = 0;
    let unknownDeadline = null; // set by the first initiation_unknown
    for (let attempt = 1; ; attempt++) {
      if (this.#closed) throw withKey(this.#closedError());
      let result;
      try {
        result = await this.#request("POST", path, {
          json: body,
          headers: { "Idempotency-Key": key },
          timeoutMs: providerTimeoutMs,
        });
      } catch (err) {
        // A timed-out attempt may have reached the server: asking again with the same key is what makes that safe.
        if (retries + 1 < attempts && (err?.code === "network_error" || err?.code === "timeout")) {
          const wait = backoff(retries++, reconnectDelayMs, reconnectDelayMaxMs);
          safeCall(onRetry, withKey(err), { attempt, waitMs: wait });
          await pause(wait);
          continue;
        }
        throw withKey(err);
      }
      const { response, data } = result;
      if (response.ok) {
        if (data && typeof data.reference === "string") {
          this.#remember(this.#initiated, data.reference, data, INITIATED_KEPT);
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
        await pause(wait);
        continue;
      }
      const retryable = response.status === 429 || response.status === 503 || error.code === "idempotency_in_progress";
      const wait = error.retryAfter ?? backoff(retries, reconnectDelayMs, reconnectDelayMaxMs);
      if (retries + 1 < attempts && retryable && wait <= 10_000) {
        retries++;
        safeCall(onRetry, error, { attempt, waitMs: wait });
        await pause(wait);
        continue;
      }
      throw error; // order_paid, payment_pending, validation errors, ...: final, never retried
    }
  }

  /** Reconnect now, asking token() again (e.g. after the user signed in, so token() has something new to say). */
  reconnect() {
    if (this.#closed || !this.#socket) return;
    this.#tokenReason = "connect";
    this.#refusals = 0;
    this.#nextRefreshAt = 0;
    this.#reported.delete("unauthenticated");
    this.#endAttempt();
    if (this.#socket.connected) this.#socket.disconnect(); // its disconnect event sees "io client disconnect"
    this.#attempt();
  }

  /** Disconnect and stop everything; pending `done` promises reject with code "closed". */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const timer of [this.#fallbackTimer, this.#reconnectTimer, this.#watchdog, this.#provenTimer, this.#probeTimer, this.#tokenTimer, this.#retryLater]) clearTimeout(timer);
    this.#nextAttemptAt = null;
    for (const controller of this.#inflight) controller.abort();
    this.#inflight.clear();
    for (const pause of this.#pauses) pause();
    this.#pauses.clear();
    for (const off of this.#unlisten) off();
    this.#unlisten = [];
    if (this.#socket) {
      this.#socket.removeAllListeners();
      this.#socket.offAny();
      this.#socket.disconnect();
    }
    this.#channel?.close();
    this.#channel = null;
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    for (const entry of entries) {
      this.#clearEntryTimers(entry);
      for (const handle of entry.handles) handle._end(new PaytrackError("closed", "the tracker was closed", { reference: entry.reference }));
      entry.handles.clear();
    }
    this.#setState("offline");
    this.#listeners.clear();
  }

  // -- the one rule --------------------------------------------------------------------
  /**
   * Accept `incoming` for `entry` only if it moves forward: a valid status with a higher
   * seq, and nothing at all once the payment is final; after EXPIRED, only SUCCESSFUL or FAILED
   * amount_mismatch (a link the provider reports paid after the server expired it, the amount asked
   * or another). The one exception: after the server
   * said it no longer knows the payment (it lost its history), a settled status it learns
   * again is accepted even though its count restarted. Nothing from another tab is accepted
   * here (a tab may hold a seq from before the server lost its history, or be a stale version):
   * it makes the tracker ask the server, whose answer comes through here.
   * Returns true if accepted.
   */
  #apply(entry, incoming, source) {
    if (!incoming || typeof incoming !== "object" || incoming.reference !== entry.reference) return false;
    const { seq, status } = incoming;
    if (!Number.isInteger(seq) || seq < 1 || !STATUSES.has(status)) return false;
    if (entry.final) return false;
    if (entry.payment?.status === "EXPIRED" && !afterExpiry(incoming)) return false;
    const relearned = entry.forgotten && SETTLED.has(status);
    if (seq <= entry.seq && !relearned) return false;
    if (source === "tab") {
      this.#confirm(entry); // another tab's word is a reason to ask the server, never the truth itself
      return false;
    }
    const { success, ...fields } = incoming; // payment-completed's flag is implied by the status
    entry.payment = Object.freeze({ ...(entry.payment ?? {}), ...fields });
    entry.seq = Math.max(entry.seq, seq);
    entry.version += 1;
    entry.unknown = false;
    if (FINAL.has(status)) entry.final = true;
    if (source !== "tab" && source !== "memory") this.#post({ type: "update", reference: entry.reference, payment: entry.payment });
    for (const handle of [...entry.handles]) handle._deliver();
    if (entry.final) this.#release(entry);
    return true;
  }

  #markUnknown(entry) {
    if (entry.unknown || entry.final) return;
    entry.unknown = true;
    if (entry.payment !== null) entry.forgotten = true;
    for (const handle of [...entry.handles]) handle._unknown(entry.payment);
  }

  /**
   * A final payment needs nothing more: free its slot on the socket and let it go. Its handles keep
   * what they were given; the tracker keeps only the payment, in a bounded memory of finals. (An
   * EXPIRED one is not final: it stays followed, on the socket or by REST, until its handles stop.)
   */
  #release(entry) {
    this.#clearEntryTimers(entry);
    if (this.#entries.get(entry.reference) === entry) this.#entries.delete(entry.reference);
    entry.handles.clear();
    this.#remember(this.#finals, entry.reference, entry.payment, FINALS_KEPT);
    if (this.#closed) return;
    if (entry.asked && this.#socket?.connected) this.#socket.emit("stop-tracking-payment", { reference: entry.reference });
    this.#pollDue();
    this.#updateState();
  }

  #remember(map, reference, payment, kept) {
    map.delete(reference);
    map.set(reference, payment);
    if (map.size > kept) map.delete(map.keys().next().value);
  }

  #clearEntryTimers(entry) {
    clearTimeout(entry.retryTimer);
    clearTimeout(entry.pollTimer);
    entry.retryTimer = null;
    entry.pollTimer = null;
    entry.polling = false;
  }

  /** Another tab says this payment moved on: ask the server (a re-track if the socket covers it, else a read). */
  #confirm(entry) {
    if (entry.final || entry.tracking || entry.reading) return;
    if (this.#socket?.connected && entry.acked) this.#trackOnSocket(entry);
    else this.#read(entry);
  }

  // -- socket ---------------------------------------------------------------------------
  #createSocket() {
    const socket = io(this.#origin, {
      path: `${this.#basePath}${this.#options.path}`,
      transports: this.#options.transports,
      forceNew: true,
      autoConnect: false,
      reconnection: false, // see #scheduleReconnect
      timeout: this.#options.requestTimeoutMs,
      auth: (cb) => {
        const reason = this.#tokenReason;
        this.#tokenReason = "connect";
        if (!this.#options.token) return cb({});
        this.#freshToken(reason).then(
          ({ token, gen }) => {
            this.#socketTokenGen = gen;
            this.#socketToken = token;
            cb(token ? { token } : {});
          },
          () => cb({}), // said on on("error") by #freshToken; the server decides whether it lets the page in without one
        );
      },
    });
    this.#socket = socket;

    socket.on("connect", () => {
      this.#endAttempt();
      this.#expiringAnswered = null;
      this.#lost = false;
      this.#proven = false;
      this.#diagnosis = null;
      this.#forget("unreachable", "origin_not_allowed");
      if (this.#options.token && this.#socketTokenGen === this.#tokenGen) this.#tokenAccepted();
      clearTimeout(this.#provenTimer);
      this.#provenTimer = setTimeout(() => {
        this.#provenTimer = null;
        this.#proved({ stayedUp: true });
      }, PROVEN_AFTER_MS);
      for (const entry of this.#entries.values()) {
        entry.restOnly = false; // a new connection, new slots
        entry.acked = false;
      }
      this.#updateState();
      for (const entry of this.#entries.values()) this.#trackOnSocket(entry);
    });
    socket.on("disconnect", (reason, details) => {
      if (this.#closed) return;
      clearTimeout(this.#provenTimer);
      this.#provenTimer = null;
      this.#proven = false;
      for (const entry of this.#entries.values()) {
        entry.acked = false;
        clearTimeout(entry.retryTimer); // asked again on the next connection
        entry.retryTimer = null;
      }
      this.#lost = true;
      this.#armFallback();
      this.#pollDue();
      if (reason === "io client disconnect") return this.#updateState(); // ours: reconnect() or a watchdog
      // The server ended the session on purpose: at token expiry, or a shutdown.
      if (reason === "io server disconnect") return this.#scheduleReconnect("expired");
      // Its websocket's closing handshake with 1001, going away: the instance is stopping (a deploy), and
      // every page on it comes back now. Spread over goingAwayWindowMs, they do not all reach the next
      // process in the same half second (issue 38).
      this.#scheduleReconnect("connect", null, details?.context?.code === 1001);
    });
    socket.on("connect_error", (err) => {
      if (this.#closed || !this.#connecting) return;
      this.#endAttempt();
      const code = err?.data?.code;
      let asked = null;
      let reason = "connect";
      if (code && AUTH_CODES.has(code)) {
        reason = "rejected";
        this.#tokenRefused(this.#socketTokenGen);
        this.#say("unauthenticated", `the server refused the token at connect: ${err.message}`, { reason: code, details: err.data.details });
      } else if (code) {
        asked = secondsMs(err.data.retry_after);
        this.#emit("error", new PaytrackError(code, err.message, { details: err.data.details, retryAfter: asked }));
      } else {
        const refused = handshakeRefusal(err);
        if (refused) {
          asked = refused.retryAfterMs;
          this.#emit("error", new PaytrackError(refused.code, `the server refused the connection for now (${refused.status})`, {
            status: refused.status,
            retryAfter: asked,
          }));
        } else if (this.#restHealthy !== true) {
          this.#diagnose(); // a refused origin looks like this in a browser; so does a server that is away
        } // (REST answering says both are fine: a proxy without websockets, most likely)
      }
      socket.disconnect(); // the next attempt is a new handshake
      this.#lost = true;
      this.#armFallback();
      this.#scheduleReconnect(reason, asked);
    });
    socket.onAny((name, data) => {
      this.#emit("event", name, data);
      if (SERVER_EVENTS.has(name)) {
        const entry = data && this.#entries.get(data.reference);
        if (entry) this.#apply(entry, data, "socket");
      }
    });
    socket.on("token-expiring", (data) => {
      // Once per expiry and connection: a refresh that did not move the expiry (a shop handing out its
      // cached token) is warned about again at once, and answering each warning would be a loop of
      // token() calls and refresh-tokens. The server ends the session at expiry; the reconnect asks anew.
      const expiresAt = data?.expires_at ?? null;
      if (expiresAt !== null && expiresAt === this.#expiringAnswered) return;
      this.#expiringAnswered = expiresAt;
      this.#refreshToken(expiresAt);
    });
  }

  /** Start one connection attempt now. */
  #attempt() {
    const socket = this.#socket;
    if (this.#closed || socket.connected || this.#connecting) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#nextAttemptAt = null;
    this.#connecting = true;
    // socket.io bounds the handshake (its `timeout`); nothing bounds the wait for the CONNECT's answer.
    this.#watchdog = setTimeout(() => {
      this.#watchdog = null;
      if (!this.#connecting || socket.connected) return;
      this.#endAttempt();
      socket.disconnect();
      this.#lost = true;
      this.#armFallback();
      this.#scheduleReconnect("connect");
    }, this.#options.requestTimeoutMs + this.#options.ackTimeoutMs);
    socket.connect();
    this.#updateState();
  }

  #endAttempt() {
    this.#connecting = false;
    clearTimeout(this.#watchdog);
    this.#watchdog = null;
  }

  /**
   * Connect again after the backoff, and not before `askedMs` (what the server asked, with jitter) when
   * given, nor before a draw from [0, goingAwayWindowMs] after the server's going-away close (`goingAway`).
   * The backoff grows with every attempt until a connection stays up PROVEN_AFTER_MS (#proved).
   */
  #scheduleReconnect(reason, askedMs = null, goingAway = false) {
    if (this.#closed || this.#reconnectTimer !== null || this.#connecting) return;
    const own = backoff(this.#reconnectAttempts++, this.#options.reconnectDelayMs, this.#options.reconnectDelayMaxMs);
    let delay = askedMs === null ? own : Math.max(own, jittered(askedMs));
    if (goingAway) delay = Math.max(delay, Math.round(Math.random() * this.#options.goingAwayWindowMs));
    if (this.#tokenReason !== "rejected") this.#tokenReason = reason;
    this.#nextAttemptAt = Date.now() + delay;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#attempt();
    }, delay);
    this.#updateState();
  }

  /**
   * Now, not at nextAttemptAt (the browser is back online, the page came back from the back/forward
   * cache). At most once per RE_READ_MIN_INTERVAL_MS: a network that flaps fires `online` after
   * `online`, and each would be a connection attempt outside the backoff; one asked for sooner runs then.
   */
  #retryNow() {
    if (this.#closed) return;
    const wait = this.#lastRetryNow + RE_READ_MIN_INTERVAL_MS - Date.now();
    if (wait > 0) {
      this.#retryLater ??= setTimeout(() => {
        this.#retryLater = null;
        this.#retryNow();
      }, wait);
      return;
    }
    this.#lastRetryNow = Date.now();
    if (!this.#socket.connected) this.#attempt();
    for (const entry of this.#entries.values()) {
      if (entry.pollTimer === null || !this.#due(entry)) continue;
      clearTimeout(entry.pollTimer);
      entry.pollTimer = null;
      this.#pollEntry(entry);
    }
    if (this.#probeTimer !== null) {
      clearTimeout(this.#probeTimer);
      this.#probeNow();
    }
  }

  /**
   * This connection works: a track-payment was answered, or it stayed up PROVEN_AFTER_MS. Now the REST
   * fallback stands down. The backoff starts over only once it stayed up (`stayedUp`): a server that
   * answers a track and then drops every connection must meet a slower and slower client too.
   */
  #proved({ stayedUp = false } = {}) {
    if (this.#closed || !this.#socket?.connected) return;
    if (stayedUp) this.#reconnectAttempts = 0;
    if (this.#proven) return;
    this.#proven = true;
    clearTimeout(this.#fallbackTimer);
    this.#fallbackTimer = null;
    this.#restMode = false;
    this.#pollDue();
    this.#updateState();
  }

  #trackOnSocket(entry) {
    const socket = this.#socket;
    if (!socket?.connected || entry.final || entry.restOnly || this.#entries.get(entry.reference) !== entry) return;
    clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
    entry.tracking = true;
    entry.asked = true;
    const sid = socket.id;
    const payload = { reference: entry.reference, last_seq: entry.seq };
    socket.timeout(this.#options.ackTimeoutMs).emit("track-payment", payload, (err, ack) => {
      entry.tracking = false;
      if (this.#closed) return;
      const current = socket.connected && socket.id === sid;
      if (err && !current) return; // the connection went before the answer: the next one re-tracks
      const answer = err ? { ok: false, error: { code: "timeout", message: "no answer to track-payment" } } : ack;
      this.#emit("event", "ack:track-payment", { reference: entry.reference, ...(answer ?? {}) });
      if (this.#entries.get(entry.reference) !== entry || entry.final) return;
      if (answer?.ok === true) {
        if (answer.payment) this.#apply(entry, answer.payment, "socket");
        else this.#markUnknown(entry);
        if (entry.final || !current) return;
        entry.acked = true;
        entry.ackFailed = false;
        entry.trackAttempts = 0;
        this.#proved();
        this.#pollDue();
        return;
      }
      const error = new PaytrackError(answer?.error?.code ?? "bad_ack", answer?.error?.message ?? "track-payment answered without a result", {
        reference: entry.reference,
        details: answer?.error?.details,
        retryAfter: secondsMs(answer?.error?.retry_after),
      });
      this.#emit("error", error);
      if (FINAL_ACK_CODES.has(error.code)) {
        this.#fail(entry, error); // forbidden, invalid_payload: asking again cannot help
        return;
      }
      if (error.code === "too_many_tracked") {
        entry.restOnly = true; // this connection has no slot for it: REST keeps it current
      } else {
        entry.ackFailed = true; // asked again with backoff; REST covers it meanwhile
        if (current) {
          const own = backoff(entry.trackAttempts++, this.#options.reconnectDelayMs, this.#options.reconnectDelayMaxMs);
          const delay = error.retryAfter === null ? own : Math.max(own, jittered(error.retryAfter)); // not before the server said
          entry.retryTimer = setTimeout(() => this.#trackOnSocket(entry), delay);
        } // otherwise the next connect re-tracks
      }
      this.#pollDue();
      this.#updateState();
    });
  }

  #fail(entry, error) {
    this.#clearEntryTimers(entry);
    this.#entries.delete(entry.reference);
    for (const handle of entry.handles) handle._end(error);
    entry.handles.clear();
    this.#pollDue();
    this.#updateState();
  }

  _detach(entry, handle) {
    entry.handles.delete(handle);
    if (entry.handles.size > 0 || this.#entries.get(entry.reference) !== entry) return;
    this.#entries.delete(entry.reference);
    this.#clearEntryTimers(entry);
    if (this.#closed) return;
    if (!entry.final && this.#socket?.connected) this.#socket.emit("stop-tracking-payment", { reference: entry.reference });
    this.#pollDue();
    this.#updateState();
  }

  // -- tokens --------------------------------------------------------------------------
  /**
   * Ask the page's token() once; concurrent askers share the answer: `{token, gen}`. A token() that
   * throws, or does not answer within requestTimeoutMs (a shop's token endpoint that hangs), fails
   * every asker with `token_unavailable`, said once on on("error"); the next asker calls it anew
   * (a hung call is never waited on again), REST only after a backoff (#restToken).
   */
  #freshToken(reason, expiresAt) {
    if (!this.#options.token) return Promise.resolve({ token: null, gen: this.#tokenGen });
    if (!this.#tokenPromise) {
      const limitMs = this.#options.requestTimeoutMs;
      const late = new Promise((_, reject) => {
        this.#tokenTimer = setTimeout(() => reject(new Error(`no answer within ${limitMs} ms`)), Math.min(limitMs, MAX_TIMER_MS));
      });
      const asked = Promise.resolve().then(() => this.#options.token({ reason, expiresAt: expiresAt ?? null }));
      this.#tokenPromise = Promise.race([asked, late])
        .then(
          (token) => {
            this.#token = typeof token === "string" && token ? token : null;
            this.#tokenGen += 1;
            this.#tokenFailures = 0;
            this.#nextTokenAt = 0;
            return { token: this.#token, gen: this.#tokenGen };
          },
          (err) => {
            this.#tokenFailures += 1;
            const wait = backoff(this.#tokenFailures - 1, this.#options.fallbackPollMs, this.#options.fallbackPollMaxMs);
            this.#nextTokenAt = Date.now() + wait;
            const error = new PaytrackError("token_unavailable", `token() failed: ${err?.message ?? err}`, { cause: err });
            if (!this.#closed) this.#emit("error", error);
            throw error;
          },
        )
        .finally(() => {
          clearTimeout(this.#tokenTimer);
          this.#tokenTimer = null;
          this.#tokenPromise = null;
        });
    }
    return this.#tokenPromise;
  }

  /**
   * The token for a REST call: the current one unless the server refused it; then a new one, asked
   * once for every caller waiting on it, and, when new tokens keep being refused, no sooner than a
   * backoff after the last (meanwhile the call fails as `unauthenticated` without going out).
   */
  #restToken() {
    if (this.#tokenGen > 0 && !this.#tokenPromise && this.#refusedGen !== this.#tokenGen) {
      return Promise.resolve({ token: this.#token, gen: this.#tokenGen });
    }
    if (!this.#tokenPromise && Date.now() < this.#nextTokenAt) {
      return Promise.reject(new PaytrackError("token_unavailable", "token() failed; it is asked again later"));
    }
    if (this.#tokenGen > 0 && !this.#tokenPromise && Date.now() < this.#nextRefreshAt) {
      return Promise.reject(new PaytrackError("unauthenticated", "the server refused the token; token() is asked again later"));
    }
    return this.#freshToken(this.#tokenGen === 0 ? "connect" : "rejected");
  }

  /** The server refused the token of generation `gen`. True when a call refused with it may try again. */
  #tokenRefused(gen) {
    if (gen !== this.#tokenGen) return true; // a newer token exists already
    if (this.#refusedGen === gen) return false;
    this.#refusedGen = gen;
    this.#refusals += 1;
    // The first refusal is asked about at once; a fresh token refused too waits like a failing poll.
    const wait = this.#refusals > 1 ? backoff(this.#refusals - 2, this.#options.fallbackPollMs, this.#options.fallbackPollMaxMs) : 0;
    this.#nextRefreshAt = Date.now() + wait;
    return this.#refusals === 1;
  }

  #tokenAccepted() {
    this.#refusals = 0;
    this.#nextRefreshAt = 0;
    this.#forget("unauthenticated");
  }

  async #refreshToken(expiresAt) {
    let token;
    try {
      ({ token } = await this.#freshToken("expiring", expiresAt));
    } catch {
      return; // said by #freshToken; the reconnect at expiry asks again
    }
    const socket = this.#socket;
    if (!token || this.#closed || !socket.connected) return; // the next connect asks again
    if (token === this.#socketToken) return; // nothing new to say: the session ends at expiry and the reconnect asks again
    socket.timeout(this.#options.ackTimeoutMs).emit("refresh-token", { token }, (err, ack) => {
      if (this.#closed) return;
      const answer = err ? { ok: false, error: { code: "timeout", message: "no answer to refresh-token" } } : ack;
      this.#emit("event", "ack:refresh-token", answer);
      if (answer?.ok && socket.connected) this.#socketToken = token;
      if (!answer?.ok) {
        // The server disconnects at expiry; the reconnect then asks token() again.
        this.#emit("error", new PaytrackError(answer?.error?.code ?? "bad_ack", answer?.error?.message ?? "refresh-token failed"));
      }
    });
  }

  // -- REST ----------------------------------------------------------------------------
  /**
   * One HTTP call, given up after `timeoutMs` (token() included) or at close(). Throws a PaytrackError:
   * `timeout`, `network_error` (a browser also says this for a CORS refusal), `closed`, or
   * `unauthenticated` while a refused token waits to be asked again. A 401 for the token asks token()
   * (once per refused token, see #restToken) and tries once more.
   */
  async #request(method, path, { json, headers = {}, timeoutMs, retried = false, auth = true } = {}) {
    if (this.#closed) throw this.#closedError();
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, Math.min(timeoutMs ?? this.#options.requestTimeoutMs, MAX_TIMER_MS));
    this.#inflight.add(controller);
    const aborted = new Promise((_, reject) => controller.signal.addEventListener("abort", () => reject(new Error("aborted"))));
    aborted.catch(() => {});
    let used = null;
    let response;
    let data = null;
    try {
      const all = { Accept: "application/json", ...headers };
      if (json !== undefined) all["Content-Type"] = "application/json";
      if (auth && this.#options.token) {
        used = await Promise.race([this.#restToken(), aborted]);
        if (used.token) all.Authorization = `Bearer ${used.token}`;
      }
      response = await this.#fetch(`${this.#origin}${this.#basePath}${path}`, {
        method,
        headers: all,
        body: json === undefined ? undefined : JSON.stringify(json),
        cache: "no-store",
        signal: controller.signal,
        ...(auth ? {} : { credentials: "omit" }),
      });
      if (response.status !== 304 && (response.headers.get("Content-Type") || "").includes("json")) {
        data = await Promise.race([response.json().catch(() => null), aborted]);
      }
    } catch (err) {
      if (this.#closed) throw this.#closedError();
      if (timedOut) throw new PaytrackError("timeout", `no answer from the paytrack server within ${timeoutMs ?? this.#options.requestTimeoutMs} ms`);
      if (err instanceof PaytrackError) throw err;
      throw new PaytrackError("network_error", `cannot reach the paytrack server: ${err?.message ?? err}`, { cause: err });
    } finally {
      clearTimeout(timer);
      this.#inflight.delete(controller);
    }
    if (used !== null) {
      if (response.status === 401 && AUTH_CODES.has(data?.error?.code)) {
        const again = this.#tokenRefused(used.gen);
        if (again && !retried) return this.#request(method, path, { json, headers, timeoutMs, retried: true, auth });
      } else if (used.gen === this.#tokenGen) {
        this.#tokenAccepted();
      }
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

  /** GET /tracking/{reference} with If-None-Match; one read at a time per payment. Resolves `{ok, retryAfter}`. */
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
      if (err?.code === "unauthenticated") {
        // Nothing went out: the refused token is asked again at #nextRefreshAt, and every payment reads then.
        this.#restRefused();
        return { ok: false, until: this.#nextRefreshAt };
      }
      if (err?.code === "token_unavailable") {
        // Said once per failed token() call (#freshToken); every payment reads again when it is asked again.
        this.#setRestHealthy(false);
        return { ok: false, until: this.#nextTokenAt };
      }
      if (err?.code !== "closed") this.#restFailed(err?.code === "network_error" || err?.code === "timeout");
      return { ok: false };
    }
    const { response, data } = result;
    if (response.status === 401) {
      this.#restRefused();
      return { ok: false };
    }
    if (response.status === 429 || response.status === 503) {
      // Back-pressure, not an outage: the state stays as it was; ask again when told.
      return { ok: false, retryAfter: retryAfterMs(response.headers, data?.error?.retry_after) };
    }
    if (response.status >= 500) {
      this.#restFailed(false); // "offline" says it; no error event every round
      return { ok: false };
    }
    this.#restAnswered();
    if (this.#entries.get(entry.reference) !== entry || response.status === 304) return { ok: true };
    if (response.ok) {
      entry.etag = response.headers.get("ETag");
      // A 200 only when something changed (If-None-Match): logged like a socket event, 304s are not.
      this.#emit("event", "rest:tracking", { reference: entry.reference, ...data });
      if (data?.payment) this.#apply(entry, data.payment, "rest");
      return { ok: true };
    }
    if (response.status === 404) {
      this.#markUnknown(entry);
      return { ok: true };
    }
    const error = this.#errorFrom(response, data, entry.reference);
    this.#emit("error", error);
    if (response.status === 403) this.#fail(entry, error);
    return { ok: true };
  }

  #restAnswered() {
    this.#forget("unreachable", "origin_not_allowed");
    this.#setRestHealthy(true);
  }

  #restFailed(unreached) {
    if (unreached) this.#diagnose(); // origin refused, or the server away?
    this.#setRestHealthy(false);
  }

  #restRefused() {
    this.#say("unauthenticated", "the server refuses the token for REST calls");
    this.#setRestHealthy(false);
  }

  #setRestHealthy(healthy) {
    this.#restHealthy = healthy;
    this.#updateState();
  }

  /**
   * GET /api/origin: whether the server is there and accepts this page's origin. A browser shows a
   * page neither why a websocket handshake failed nor why a cross-origin fetch did; this one call is
   * answered to any origin, without credentials. Says `origin_not_allowed` or `unreachable` on
   * on("error") (once per episode). Resolves "accepted", "refused", "unreachable" or "reachable" (a
   * server without the endpoint). One check at a time; a verdict is reused for reconnectDelayMaxMs.
   */
  #diagnose({ fresh = false } = {}) {
    const now = Date.now();
    const last = this.#diagnosis;
    if (last && (last.pending || (!fresh && now - last.at < this.#options.reconnectDelayMaxMs))) return last.promise;
    const diagnosis = { pending: true, at: now, promise: null };
    diagnosis.promise = this.#request("GET", "/api/origin", { auth: false })
      .then(({ response, data }) => {
        if (!response.ok) return "reachable";
        return data?.accepted === false ? "refused" : "accepted";
      }, (err) => (err?.code === "closed" ? "closed" : "unreachable"))
      .then((verdict) => {
        diagnosis.pending = false;
        diagnosis.at = Date.now();
        if (verdict === "refused") {
          this.#say("origin_not_allowed", `the paytrack server does not accept pages of ${globalThis.location?.origin ?? "this origin"} (add it to FRONTEND_URL)`);
        } else if (verdict === "unreachable") {
          this.#say("unreachable", `the paytrack server at ${this.#origin} cannot be reached`);
        }
        return verdict;
      });
    this.#diagnosis = diagnosis;
    return diagnosis.promise;
  }

  async _refresh(entry) {
    if (entry.final) return entry.payment;
    if (!entry.payment?.order_id) await this.#read(entry);
    const orderId = entry.payment?.order_id;
    if (!orderId) return entry.payment; // not known (yet), or an orphan without an order: nothing to refresh by
    const { response, data } = await this.#request("GET", `/api/payment/status/${encodeURIComponent(orderId)}?refresh=true`, {
      timeoutMs: this.#options.providerTimeoutMs,
    });
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

  /** A wait inside initiate(); close() ends it with `closed`. */
  #pause(ms) {
    if (this.#closed) return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => {
      const stop = () => {
        clearTimeout(timer);
        reject(this.#closedError());
      };
      const timer = setTimeout(() => {
        this.#pauses.delete(stop);
        resolve();
      }, Math.min(ms, MAX_TIMER_MS));
      this.#pauses.add(stop);
    });
  }

  #closedError() {
    return new PaytrackError("closed", "the tracker was closed");
  }

  // -- polling fallback ----------------------------------------------------------------
  /** After `fallbackAfterMs` (and up to half as long again) without a proven socket, REST covers every payment. */
  #armFallback() {
    if (this.#closed || this.#fallbackTimer !== null || this.#restMode || this.#proven) return;
    this.#fallbackTimer = setTimeout(() => {
      this.#fallbackTimer = null;
      if (this.#proven || this.#closed) return;
      // Connected with nothing to follow: nothing to cover, and track() will prove or fail the socket.
      if (this.#socket?.connected && !this.#hasActive()) return;
      this.#restMode = true;
      this.#restHealthy = null;
      this.#pollDue();
      this.#updateState();
    }, jittered(this.#options.fallbackAfterMs));
  }

  #hasActive() {
    for (const entry of this.#entries.values()) if (!entry.final) return true;
    return false;
  }

  /** Whether REST must keep this payment current: the socket has not answered for it on this connection. */
  #due(entry) {
    if (entry.final || this.#closed || this.#entries.get(entry.reference) !== entry) return false;
    if (entry.restOnly || entry.ackFailed) return true;
    return this.#restMode && !(this.#socket?.connected && entry.acked);
  }

  /** Starts the polling loop of every payment that needs one, stops those no longer needed. */
  #pollDue() {
    if (this.#closed) return;
    const polling = this.#options.fallbackPollMs > 0;
    let anyDue = false;
    for (const entry of this.#entries.values()) {
      if (polling && this.#due(entry)) {
        anyDue = true;
        if (!entry.polling) {
          entry.polling = true;
          this.#pollEntry(entry);
        }
      } else if (entry.polling && entry.pollTimer !== null) {
        clearTimeout(entry.pollTimer);
        entry.pollTimer = null;
        entry.polling = false;
        entry.pollFailures = 0;
      }
    }
    const probe = polling && this.#restMode && !anyDue && !this.#socket?.connected;
    if (probe && !this.#probing) {
      this.#probing = true;
      this.#probeNow();
    } else if (!probe && this.#probing && this.#probeTimer !== null) {
      clearTimeout(this.#probeTimer);
      this.#probeTimer = null;
      this.#probing = false;
    }
  }

  /** One payment's polling loop: read, then wait the interval (jittered) or, after failures, the backoff. */
  async #pollEntry(entry) {
    entry.pollTimer = null;
    if (!this.#due(entry)) {
      entry.polling = false;
      entry.pollFailures = 0;
      return;
    }
    const outcome = await this.#read(entry);
    if (!entry.polling || entry.pollTimer !== null) return; // stopped, or restarted meanwhile
    if (!this.#due(entry)) {
      entry.polling = false;
      entry.pollFailures = 0;
      return;
    }
    const { fallbackPollMs, fallbackPollMaxMs } = this.#options;
    entry.pollFailures = outcome.ok ? 0 : entry.pollFailures + 1;
    let delay = entry.pollFailures === 0 ? spread(fallbackPollMs) : backoff(entry.pollFailures, fallbackPollMs, fallbackPollMaxMs);
    if (outcome.retryAfter) delay = Math.max(delay, jittered(outcome.retryAfter));
    if (outcome.until) delay = Math.max(0, outcome.until - Date.now()); // together, on one new token
    entry.pollTimer = setTimeout(() => this.#pollEntry(entry), Math.min(delay, MAX_TIMER_MS));
  }

  /** With no payment to read, REST mode still learns whether the server answers (polling) or not (offline). */
  async #probeNow() {
    this.#probeTimer = null;
    const verdict = await this.#diagnose({ fresh: true });
    if (this.#closed || !this.#probing || this.#probeTimer !== null) return;
    const answered = verdict === "accepted" || verdict === "reachable";
    if (!this.#restMode || this.#socket?.connected || this.#hasDue()) {
      this.#probing = false;
      return;
    }
    this.#setRestHealthy(answered);
    this.#probeFailures = answered ? 0 : this.#probeFailures + 1;
    const { fallbackPollMs, fallbackPollMaxMs } = this.#options;
    const delay = answered ? spread(fallbackPollMs) : backoff(this.#probeFailures, fallbackPollMs, fallbackPollMaxMs);
    this.#probeTimer = setTimeout(() => this.#probeNow(), delay);
  }

  #hasDue() {
    for (const entry of this.#entries.values()) if (this.#due(entry)) return true;
    return false;
  }

  // -- page: visibility, focus, network, back/forward cache, other tabs -----------------
  #setupPageEvents() {
    const doc = globalThis.document;
    const win = globalThis.window;
    if (!doc || !win || typeof win.addEventListener !== "function") return;
    const reRead = (force = false) => {
      if (doc.visibilityState === "hidden") return;
      const now = Date.now();
      if (!force && now - this.#lastReRead < RE_READ_MIN_INTERVAL_MS) return; // focus and visibilitychange come together
      this.#lastReRead = now;
      for (const entry of [...this.#entries.values()]) {
        if (entry.final) continue;
        if (this.#socket?.connected && entry.acked) this.#trackOnSocket(entry); // its ack brings the current state
        else this.#read(entry);
      }
    };
    const onVisible = () => reRead();
    const onOnline = () => this.#retryNow();
    const onPageShow = (event) => {
      if (!event.persisted) return; // back from the back/forward cache: timers and sockets were frozen
      // The browser closed the socket when it froze the page but tells the page only after this event
      // (and one it kept open may be long gone at the server): a socket that looks connected is
      // replaced now, or its late close would leave the page waiting for the backoff's next attempt.
      if (this.#socket?.connected) this.#socket.disconnect();
      this.#retryNow();
      reRead(true);
    };
    doc.addEventListener("visibilitychange", onVisible);
    win.addEventListener("focus", onVisible);
    win.addEventListener("online", onOnline);
    win.addEventListener("pageshow", onPageShow);
    this.#unlisten.push(
      () => doc.removeEventListener("visibilitychange", onVisible),
      () => win.removeEventListener("focus", onVisible),
      () => win.removeEventListener("online", onOnline),
      () => win.removeEventListener("pageshow", onPageShow),
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
      if (message.type === "update" && entry) this.#apply(entry, message.payment, "tab");
      else if (message.type === "ask") {
        const known = entry?.payment ?? this.#finals.get(message.reference);
        if (known) this.#post({ type: "update", reference: message.reference, payment: known });
      }
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

  // -- state and events ----------------------------------------------------------------
  /** What the page is shown, from what the tracker knows now. */
  #updateState() {
    if (this.#closed) return;
    const connected = Boolean(this.#socket?.connected);
    let state;
    if (connected && (this.#proven || !this.#restMode || !this.#hasActive())) state = "connected";
    else if (this.#restMode && this.#options.fallbackPollMs > 0 && this.#restHealthy === true) state = "polling";
    else if (connected) state = "connected";
    else if (this.#restMode && (this.#restHealthy === false || !(this.#options.fallbackPollMs > 0))) state = "offline";
    else state = this.#lost ? "reconnecting" : "connecting";
    this.#setState(state);
  }

  #setState(state) {
    const nextAttemptAt = this.#closed ? null : this.#nextAttemptAt;
    if (state === this.#state && nextAttemptAt === this.#shownAttemptAt) return;
    this.#state = state;
    this.#shownAttemptAt = nextAttemptAt;
    this.#emit("connection", state, { nextAttemptAt });
  }

  /** An error about the connection, said once until the condition clears (#forget). */
  #say(code, message, extra = {}) {
    if (this.#reported.has(code)) return;
    this.#reported.add(code);
    this.#emit("error", new PaytrackError(code, message, extra));
  }

  #forget(...codes) {
    for (const code of codes) this.#reported.delete(code);
  }

  #emit(event, ...args) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) safeCall(listener, ...args);
  }
}

export default PaymentTracker;
