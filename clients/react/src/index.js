// paytrack-react: React bindings for paytrack's checkout client (paytrack-client).
//
//   <PaytrackProvider url="https://pay.example.com" token={getToken}>   one tracker, one socket
//     usePayment(reference)   -> { payment, status, connection, error, refresh }
//     useInitiatePayment()    -> { state, payment, reference, error, idempotencyKey, initiate, reset }
//     usePayByLink()          -> { state, payment, reference, error, idempotencyKey, payByLink, reset }
//     useConnection()         -> { state, nextAttemptAt, error }
//
// Built on useSyncExternalStore over the store in store.js: snapshots are stable objects, tracks
// are counted per reference (StrictMode's double mount tracks once), and nothing connects while
// rendering, so server rendering opens no socket. Plain JavaScript, no JSX, no build step; types in
// index.d.ts.
import { createElement, createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { createInitiation, IDLE_INITIATION } from "./initiate.js";
import { createPaytrackStore, IDLE_PAYMENT, INITIAL_CONNECTION, LOADING_PAYMENT } from "./store.js";

export { createPaytrackStore } from "./store.js";
export { PaytrackError } from "paytrack-client";

export const VERSION = "0.3.2";

const PaytrackContext = createContext(null);

function noop() {}

/**
 * One shared PaymentTracker for everything under it, created on the first subscription in the
 * browser and closed when the provider unmounts (after `releaseDelayMs`, so StrictMode's
 * unmount-and-mount-again keeps it). `url` selects the server: a new url is a new tracker.
 * `token` may change freely (the latest is asked at each connect). With `store`, the provider
 * uses that store and leaves its lifetime to its owner.
 */
export function PaytrackProvider({ url, token, options, store: given, children }) {
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const [owned, setOwned] = useState(() => (given ? null : { url, store: makeStore(url, options, tokenRef) }));
  let store = given ?? owned?.store;
  if (!given && (owned === null || owned.url !== url)) {
    const next = { url, store: makeStore(url, options, tokenRef) };
    setOwned(next);
    store = next.store;
  }
  useEffect(() => (given ? undefined : store.retain()), [store, given]);
  return createElement(PaytrackContext.Provider, { value: store }, children);
}

function makeStore(url, options, tokenRef) {
  const token = (context) => {
    const current = tokenRef.current;
    return typeof current === "function" ? current(context) : current ?? null;
  };
  return createPaytrackStore({ ...options, url, token });
}

/** The provider's store (for what the hooks do not cover: `store.tracker`, `store.initiate`). */
export function usePaytrackStore() {
  const store = useContext(PaytrackContext);
  if (store === null) throw new Error("paytrack-react: wrap the component in <PaytrackProvider url=...>");
  return store;
}

/** The connection as a page shows it: `{state, nextAttemptAt, error}`. */
export function useConnection() {
  const store = usePaytrackStore();
  const subscribe = useCallback((listener) => store.subscribeConnection(listener), [store]);
  const get = useCallback(() => store.getConnection(), [store]);
  return useSyncExternalStore(subscribe, get, serverConnection);
}

function serverConnection() {
  return INITIAL_CONNECTION;
}

// The once-callback of each final status. EXPIRED (a link nobody paid) is final, not a failure; but it is
// the server's guess, and a link CamPay reports paid after it becomes SUCCESSFUL: onSuccess then follows.
const SETTLED_HANDLER = { SUCCESSFUL: "onSuccess", FAILED: "onFailure", EXPIRED: "onExpired" };

/**
 * Follow `reference` (nothing while it is null or empty). `status` is the payment's
 * ("PENDING" | "SUCCESSFUL" | "FAILED" | "EXPIRED") or "idle" (no reference), "loading" (no state
 * yet), "unknown" (the server does not know it; `payment` keeps the last known state).
 * `options.onSuccess` / `onFailure` / `onExpired` run once per reference, after the render that shows it
 * (a link paid after it expired: onExpired, then onSuccess).
 */
export function usePayment(reference, options = {}) {
  const store = usePaytrackStore();
  const ref = reference || null;
  const subscribe = useCallback(
    (listener) => (ref ? store.subscribePayment(ref, listener) : noop),
    [store, ref],
  );
  const get = useCallback(() => store.getPayment(ref), [store, ref]);
  const getServer = useCallback(() => (ref ? LOADING_PAYMENT : IDLE_PAYMENT), [ref]);
  const live = useSyncExternalStore(subscribe, get, getServer);
  // What this component last showed for `ref` from this store. The store forgets a reference nobody
  // follows, and its tracker once the provider's effects are gone (<Activity> hiding it); shown again, it
  // starts over at "loading" until the new socket's answer. The page keeps showing the state it knew
  // meanwhile. Another store (a new url: another server) starts from "loading".
  const shown = useRef(null);
  const kept = shown.current;
  const snapshot = live === LOADING_PAYMENT && kept?.ref === ref && kept.store === store ? kept.snapshot : live;
  useEffect(() => {
    if (live !== LOADING_PAYMENT) shown.current = { store, ref, snapshot: live };
    else if (shown.current?.ref !== ref || shown.current.store !== store) shown.current = null;
  }, [store, ref, live]);
  const connection = useConnection();
  const refresh = useCallback(() => store.refresh(ref), [store, ref]);

  const handlers = useRef(options);
  const reported = useRef(null);
  useEffect(() => {
    handlers.current = options;
  });
  useEffect(() => {
    const { status, payment } = snapshot;
    if (ref === null || !Object.hasOwn(SETTLED_HANDLER, status)) return;
    const before = reported.current;
    if (before?.ref === ref && !(before.status === "EXPIRED" && status === "SUCCESSFUL")) return;
    reported.current = { ref, status }; // a ref survives StrictMode's second run of this effect: called once
    const handler = handlers.current[SETTLED_HANDLER[status]];
    if (typeof handler === "function") handler(payment);
  }, [ref, snapshot]);

  return useMemo(
    () => ({ payment: snapshot.payment, status: snapshot.status, connection, error: snapshot.error, refresh }),
    [snapshot, connection, refresh],
  );
}

/**
 * Start payments: `initiate(body)` resolves with the new state and never rejects. The state is
 * "idle" | "initiating" | "initiated" (with `payment`, `reference`) | "payment_pending" (the
 * order's PENDING payment is `reference`: follow it) | "order_paid" (`reference` paid it) |
 * "error" (`error`). Pressing Pay again with the same body after an unsettled answer (network
 * failure, `initiation_unknown`, ...) reuses its Idempotency-Key; a settled attempt (the payment,
 * `order_paid`, `payment_pending`) or another body gets a fresh key; `reset()` forgets the attempt.
 */
export function useInitiatePayment() {
  const { state, start, reset } = useInitiation(false);
  return useMemo(() => ({ ...state, initiate: start, reset }), [state, start, reset]);
}

/**
 * Start payment links (POST /api/payment/link: CamPay's hosted page, mobile money or card):
 * `payByLink(body)` with useInitiatePayment's states and its one Idempotency-Key per attempt.
 * "initiated" has the new link payment (`payment.link` to open, `payment.link_expires_at`); open
 * a window inside the click and point it at the link once it arrives (README, "Pay by link").
 */
export function usePayByLink() {
  const { state, start, reset } = useInitiation(true);
  return useMemo(() => ({ ...state, payByLink: start, reset }), [state, start, reset]);
}

function useInitiation(link) {
  const store = usePaytrackStore();
  const [state, setState] = useState(IDLE_INITIATION);
  // In state, not useMemo: fast refresh re-runs memos, and the unsettled attempt's key must survive it.
  const [holder] = useState(() => ({ store: null, initiation: null }));
  if (holder.store !== store) {
    holder.store = store;
    holder.initiation = createInitiation(store, setState, { link });
  }
  const initiation = holder.initiation;
  const start = useCallback((body, options) => initiation.initiate(body, options), [initiation]);
  const reset = useCallback(() => initiation.reset(), [initiation]);
  return { state, start, reset };
}
