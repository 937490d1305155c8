// useInitiatePayment's and usePayByLink's logic, without React: which Idempotency-Key a call
// carries, and which answers are states rather than errors. A payment link (store.payByLink) follows
// the same rules as a collect (store.initiate): the server answers both alike.
//
// One *attempt* is one intent to pay for one body. Every call for it carries the same
// Idempotency-Key, so pressing Pay again after an answer that was lost or not final (a network
// failure, `initiation_unknown`, `busy`, ...) can never start a second collect. An attempt ends
// with an answer that settles it: the payment (201), `order_paid`, `payment_pending`,
// `initiation_expired` (the server says a new key starts afresh), or a call with another body;
// the next call is a new attempt with a fresh key (e.g. a retry after the payment FAILED, which
// the old key would only answer with the failed payment again).

/** Answers that settle an attempt: the next initiate, even with the same body, is a new attempt. */
const SETTLING = new Set(["order_paid", "payment_pending", "initiation_expired", "idempotency_key_reused"]);
/** Answers that are a state of the order, not a failure of the call. */
export const ANSWER_STATES = new Set(["order_paid", "payment_pending"]);

export const IDLE_INITIATION = Object.freeze({ state: "idle", payment: null, reference: null, error: null, idempotencyKey: null });

/** A random Idempotency-Key (a page on plain http has getRandomValues but no randomUUID). */
export function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  if (c && typeof c.getRandomValues === "function") {
    return Array.from(c.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

/** A body's identity: the same fields and values in any order. */
function bodyKey(body) {
  const sorted = (value) =>
    value && typeof value === "object" && !Array.isArray(value)
      ? Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]))
      : value;
  return JSON.stringify(sorted(body));
}

/**
 * Initiations through `store`, reporting each state to `onState`: each goes to `store.initiate`, or
 * with `{link: true}` to `store.payByLink`. `initiate()` never rejects: every outcome is a state.
 */
export function createInitiation(store, onState, { newKey = randomKey, link = false } = {}) {
  let attempt = null; // { body: string, key: string } of the attempt not yet settled
  let inflight = null;
  let current = IDLE_INITIATION;

  function set(next) {
    current = Object.freeze({ ...IDLE_INITIATION, ...next });
    onState(current);
    return current;
  }

  async function run(body, key, onRetry) {
    try {
      const options = { idempotencyKey: key, onRetry };
      const payment = await (link ? store.payByLink(body, options) : store.initiate(body, options));
      attempt = null;
      return set({ state: "initiated", payment, reference: payment?.reference ?? null, idempotencyKey: key });
    } catch (error) {
      const code = error?.code;
      if (SETTLING.has(code)) attempt = null;
      if (ANSWER_STATES.has(code)) return set({ state: code, reference: error.reference ?? null, error, idempotencyKey: key });
      return set({ state: "error", error, idempotencyKey: key });
    }
  }

  return {
    get current() {
      return current;
    },

    /** Initiate `body`: the unsettled attempt's key again for the same body, else a fresh one. */
    initiate(body, { onRetry } = {}) {
      if (inflight !== null) return inflight;
      const identity = bodyKey(body);
      if (attempt === null || attempt.body !== identity) attempt = { body: identity, key: newKey() };
      const key = attempt.key;
      set({ state: "initiating", idempotencyKey: key });
      inflight = run(body, key, onRetry).finally(() => {
        inflight = null;
      });
      return inflight;
    },

    /** Forget the attempt: the next initiate starts a new one whatever its body. */
    reset() {
      attempt = null;
      if (inflight === null) set({});
    },
  };
}
