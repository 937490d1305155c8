// Test support for paytrack-react: the client's own (real server.py processes on free ports,
// bounded waits), plus a way to see what the store asks of its tracker and what the server acks.
import assert from "node:assert/strict";
import { PaymentTracker } from "paytrack-client";
import { api, paymentBody, within, WAIT_MS } from "../../js/test/support.mjs";

export * from "../../js/test/support.mjs";

/**
 * A createTracker for createPaytrackStore that builds a real PaymentTracker and counts, per
 * reference, the store's track() calls and stop() calls on their handles, and the server's acks
 * of track-payment (one per track-payment the socket sent).
 */
export function observedTrackers() {
  const seen = { trackers: [], tracks: new Map(), stops: new Map(), acks: new Map() };
  const bump = (map, key) => map.set(key, (map.get(key) ?? 0) + 1);
  seen.createTracker = (options) => {
    const tracker = new PaymentTracker({ shareAcrossTabs: false, ...options });
    tracker.on("event", (name, data) => {
      if (name === "ack:track-payment") bump(seen.acks, data.reference);
    });
    const track = tracker.track.bind(tracker);
    tracker.track = (reference, handlers) => {
      bump(seen.tracks, reference);
      const handle = track(reference, handlers);
      const stop = handle.stop.bind(handle);
      handle.stop = () => {
        bump(seen.stops, reference);
        stop();
      };
      return handle;
    };
    seen.trackers.push(tracker);
    return tracker;
  };
  seen.count = (map, reference) => map.get(reference) ?? 0;
  return seen;
}

/** Resolves once `store`'s connection snapshot says `state`. */
export function connectionReached(store, state, timeoutMs = WAIT_MS) {
  return within(
    new Promise((resolve) => {
      const check = () => {
        if (store.getConnection().state === state) {
          off();
          resolve();
        }
      };
      const off = store.subscribeConnection(check);
      check();
    }),
    `connection ${state}`,
    timeoutMs,
  );
}

/** Resolves with `reference`'s snapshot once `predicate(snapshot)` holds. */
export function paymentReached(store, reference, predicate, what = "a payment snapshot", timeoutMs = WAIT_MS) {
  return within(
    new Promise((resolve) => {
      const check = () => {
        const snapshot = store.getPayment(reference);
        if (predicate(snapshot)) {
          off();
          resolve(snapshot);
        }
      };
      const off = store.subscribePayment(reference, check);
      check();
    }),
    what,
    timeoutMs,
  );
}

/** The server's count of sockets that track `reference` (GET /tracking). */
export async function trackingClients(baseUrl, reference) {
  const response = await fetch(`${baseUrl}/api/payment/tracking/${encodeURIComponent(reference)}`);
  const body = await response.json();
  return body.tracking_clients;
}

/** Open Socket.IO connections the server holds (the development debug view). */
export async function connectionCount(baseUrl) {
  const response = await fetch(`${baseUrl}/api/payment/debug/connections`);
  return (await response.json()).count;
}

/** A macrotask later: past the store's default releaseDelayMs (0). */
export function nextTask() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** A sandbox payment initiated on the server at `baseUrl`; its reference. */
export async function initiated(baseUrl, prefix) {
  const { status, body } = await api(baseUrl, "POST", "/api/payment/initiate", paymentBody(prefix));
  assert.equal(status, 201, JSON.stringify(body));
  return body.reference;
}
