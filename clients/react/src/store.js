// The store behind the hooks: one PaymentTracker, created on first use in the browser, shared by
// every component under one <PaytrackProvider>, with snapshots shaped for useSyncExternalStore.
//
// Why a store and not a tracker per hook: React mounts, unmounts and mounts again (StrictMode's
// double effects, fast refresh, a reference that changes), and every one of those would otherwise
// be a track-payment and a stop-tracking-payment on the socket. Here each reference is counted:
// the first user tracks it, the last one to leave stops it, and the stop waits `releaseDelayMs`
// (a macrotask by default) so that an unmount that is immediately followed by a mount again
// (StrictMode) neither stops nor tracks twice. The tracker itself is closed the same way, once its
// last holder (the provider) let go; a subscription after that opens a new one: React destroys every
// effect of a subtree that <Activity> hides (a tab or a route kept for later) and runs them again on
// the same store when it is shown. Only close() is for good.
//
// Nothing here runs on the server: the tracker is created only by subscribe() (called from
// effects) and initiate() (called from event handlers), never while rendering.
import { PaymentTracker, PaytrackError } from "paytrack-client";

const FINAL = new Set(["SUCCESSFUL", "FAILED", "EXPIRED"]);
// Our own doing: the store stopped the handle or closed the tracker. Not an error to show.
const OWN_ENDINGS = new Set(["stopped", "closed"]);
// Connection errors that a REST answer shows are over: the server is there and takes this page's origin.
const ANSWERED_BY_REST = new Set(["unreachable", "origin_not_allowed"]);

/** What server rendering and the first client render show: no socket yet. */
export const INITIAL_CONNECTION = Object.freeze({ state: "connecting", nextAttemptAt: null, error: null });
/** No reference to follow. */
export const IDLE_PAYMENT = Object.freeze({ payment: null, status: "idle", error: null });
/** Following a reference whose first state has not arrived yet. */
export const LOADING_PAYMENT = Object.freeze({ payment: null, status: "loading", error: null });

function noop() {}

/**
 * The connection snapshot for a state, reading `nextAttemptAt` from the event's info or the tracker
 * (a client without it: null).
 */
function connectionOf(state, info, tracker, error) {
  const at = info && "nextAttemptAt" in info ? info.nextAttemptAt : tracker?.nextAttemptAt;
  return Object.freeze({ state, nextAttemptAt: Number.isFinite(at) ? at : null, error: error ?? null });
}

function sameConnection(a, b) {
  return a.state === b.state && a.nextAttemptAt === b.nextAttemptAt && a.error === b.error;
}

/** One reference as the store follows it: its users, its tracker handle and its current snapshot. */
class Entry {
  constructor(reference) {
    this.reference = reference;
    this.users = 0;
    this.handle = null;
    this.snapshot = LOADING_PAYMENT;
    this.listeners = new Set();
    this.releaseTimer = null;
  }
}

/**
 * A store for one paytrack server. `options` are PaymentTracker's (url, token, fallbackPollMs, ...)
 * plus `releaseDelayMs` (how long a reference nobody uses any more, or the tracker once the provider
 * is gone, is kept before it is stopped; default 0: the next macrotask). `createTracker` builds the
 * tracker (default `new PaymentTracker(options)`), for a page that needs its own.
 */
export function createPaytrackStore(options = {}, { createTracker = (trackerOptions) => new PaymentTracker(trackerOptions) } = {}) {
  const { releaseDelayMs = 0, ...trackerOptions } = options;
  let tracker = null;
  let closed = false; // the tracker is closed: by close() (for good), or after its last holder let go
  let ended = false; // close() was called: nothing opens a tracker again
  let connection = INITIAL_CONNECTION;
  const connectionListeners = new Set();
  const entries = new Map();
  let holders = 0; // providers (or others) that keep the tracker open; see retain()
  let closeTimer = null;
  let calls = 0; // initiate()/payByLink() calls not answered yet; see call()
  let closeDue = false; // the last holder let go while calls ran: close once they are answered
  let unlisten = [];

  function setConnection(next) {
    if (sameConnection(connection, next)) return;
    connection = next;
    for (const listener of [...connectionListeners]) listener();
  }

  function ensureTracker() {
    if (tracker !== null || ended) return tracker;
    closed = false; // shown again after its last holder let go (<Activity>): a new tracker, a new socket
    tracker = createTracker(trackerOptions);
    const offConnection = tracker.on("connection", (state, info) => {
      // A connection made is the answer to the last refusal; REST answering (polling: e.g. behind a proxy
      // without websockets) is the answer to `unreachable` and `origin_not_allowed`; anything else keeps it.
      const disproved = state === "connected" || (state === "polling" && ANSWERED_BY_REST.has(connection.error?.code));
      const error = disproved ? null : connection.error;
      setConnection(connectionOf(state, info, tracker, error));
    });
    const offError = tracker.on("error", (error) => {
      if (error?.reference) {
        const entry = entries.get(error.reference);
        if (entry && entry.handle) setPayment(entry, { ...entry.snapshot, error });
      } else {
        setConnection(connectionOf(tracker.state, null, tracker, error));
      }
    });
    // A payment's error from a track refused for now (busy, rate_limited, a timeout) is over once the
    // server answers a track of it: the page must not keep showing it while the payment is followed.
    const offEvent = tracker.on("event", (name, data) => {
      if (name !== "ack:track-payment" || data?.ok !== true) return;
      const entry = entries.get(data.reference);
      if (entry && entry.handle && entry.snapshot.error !== null) setPayment(entry, { ...entry.snapshot, error: null });
    });
    unlisten = [offConnection, offError, offEvent];
    setConnection(connectionOf(tracker.state, null, tracker, null));
    return tracker;
  }

  /**
   * The tracker for a call (initiate, payByLink). Closed after its last holder let go, the store opens a
   * new one only for a holder (a provider shown again): a component that kept the store of a provider
   * gone for good would otherwise open a socket nobody closes. A holder coming back within
   * `releaseDelayMs` counts: React runs a subtree's effects children first, so a child's effect that
   * calls here when <Activity> shows it again runs before its provider's retain.
   */
  async function trackerForCall() {
    if (closed && holders === 0 && !ended) await new Promise((resolve) => setTimeout(resolve, releaseDelayMs));
    if (ended || (closed && holders === 0)) return null;
    return ensureTracker();
  }

  /**
   * One call through the tracker. The tracker stays open until every call has its answer, even if its
   * last holder let go meanwhile (Pay pressed, then the tab hidden by <Activity>): closing it would abort
   * a POST that may have started the payment, and the page would show `closed` for it.
   */
  async function call(method, body, callOptions) {
    const live = await trackerForCall();
    if (live === null) throw new PaytrackError("closed", "this paytrack store is closed");
    calls += 1;
    try {
      return await live[method](body, callOptions);
    } finally {
      calls -= 1;
      if (calls === 0 && holders === 0 && closeDue) shutDown();
    }
  }

  function setPayment(entry, next) {
    const current = entry.snapshot;
    if (current.payment === next.payment && current.status === next.status && current.error === next.error) return;
    entry.snapshot = Object.freeze({ payment: next.payment, status: next.status, error: next.error });
    for (const listener of [...entry.listeners]) listener();
  }

  function start(entry) {
    const live = ensureTracker();
    if (live === null) return;
    let handle;
    try {
      handle = live.track(entry.reference, {
        onUpdate: (payment) => setPayment(entry, { payment, status: payment.status, error: null }),
        onUnknown: ({ lastKnown }) => {
          if (FINAL.has(entry.snapshot.status)) return;
          setPayment(entry, { payment: lastKnown ?? entry.snapshot.payment, status: "unknown", error: null });
        },
      });
    } catch (error) {
      setPayment(entry, { ...entry.snapshot, error });
      return;
    }
    entry.handle = handle;
    handle.done.catch((error) => {
      if (entry.handle === handle && !OWN_ENDINGS.has(error?.code)) setPayment(entry, { ...entry.snapshot, error });
    });
  }

  function stop(entry) {
    entries.delete(entry.reference);
    const handle = entry.handle;
    entry.handle = null;
    handle?.stop();
  }

  function release(entry) {
    entry.users -= 1;
    if (entry.users > 0 || entry.releaseTimer !== null) return;
    entry.releaseTimer = setTimeout(() => {
      entry.releaseTimer = null;
      if (entry.users === 0 && entries.get(entry.reference) === entry) stop(entry);
    }, releaseDelayMs);
  }

  /** Close the tracker and let every reference go; a later subscription opens a new tracker unless `ended`. */
  function shutDown() {
    closeDue = false;
    if (closed) return;
    closed = true;
    clearTimeout(closeTimer);
    closeTimer = null;
    for (const entry of entries.values()) {
      clearTimeout(entry.releaseTimer);
      entry.releaseTimer = null;
      entry.handle = null;
    }
    entries.clear();
    for (const off of unlisten) off();
    unlisten = [];
    tracker?.close();
    tracker = null;
    // For good: offline. After the last holder let go, the next one to look (a provider shown again by
    // <Activity>) opens a new tracker at once: it reads "connecting", not a flash of "offline".
    setConnection(Object.freeze({ state: ended ? "offline" : "connecting", nextAttemptAt: null, error: connection.error }));
  }

  function close() {
    ended = true;
    if (closed) setConnection(Object.freeze({ ...connection, state: "offline", nextAttemptAt: null }));
    shutDown();
  }

  return {
    /** The tracker while one is open (never on the server), else null. */
    get tracker() {
      return tracker;
    },

    /** True once close() was called, and while the tracker is closed after its last holder let go. */
    get closed() {
      return closed;
    },

    getConnection() {
      return connection;
    },

    subscribeConnection(listener) {
      ensureTracker();
      connectionListeners.add(listener);
      return () => connectionListeners.delete(listener);
    },

    /** The snapshot for `reference`: the same object until something about it changes. */
    getPayment(reference) {
      if (!reference) return IDLE_PAYMENT;
      return entries.get(reference)?.snapshot ?? LOADING_PAYMENT;
    },

    /** Follow `reference` for as long as the returned function has not been called. */
    subscribePayment(reference, listener) {
      if (!reference || ended) return noop;
      let entry = entries.get(reference);
      if (entry === undefined) {
        entry = new Entry(reference);
        entries.set(reference, entry);
      }
      clearTimeout(entry.releaseTimer);
      entry.releaseTimer = null;
      entry.users += 1;
      entry.listeners.add(listener);
      if (entry.handle === null) start(entry);
      let subscribed = true;
      return () => {
        if (!subscribed) return;
        subscribed = false;
        entry.listeners.delete(listener);
        release(entry);
      };
    },

    /** Ask the server to check with the provider now (Tracking.refresh); null if `reference` is not followed. */
    refresh(reference) {
      const handle = reference ? entries.get(reference)?.handle : null;
      return handle ? handle.refresh() : Promise.resolve(null);
    },

    /** POST /api/payment/initiate through the shared tracker (PaymentTracker.initiate). */
    initiate(body, initiateOptions) {
      return call("initiate", body, initiateOptions);
    },

    /** POST /api/payment/link through the shared tracker (PaymentTracker.payByLink). */
    payByLink(body, linkOptions) {
      return call("payByLink", body, linkOptions);
    },

    /** Keep the tracker open (a mounted provider). Undone by the function returned. */
    retain() {
      holders += 1;
      clearTimeout(closeTimer);
      closeTimer = null;
      closeDue = false;
      let held = true;
      return () => {
        if (!held) return;
        held = false;
        holders -= 1;
        if (holders > 0 || closed) return;
        clearTimeout(closeTimer);
        closeTimer = setTimeout(() => {
          closeTimer = null;
          if (holders > 0) return;
          if (calls > 0) closeDue = true;
          else shutDown();
        }, releaseDelayMs);
      };
    },

    /** Stop everything now and for good: every reference, the tracker and its socket. */
    close,
  };
}
