// Type declarations for paytrack-client.js (the official paytrack checkout client).

export declare const VERSION: string;

/**
 * PENDING, then one final status: SUCCESSFUL, FAILED, or EXPIRED (a payment link nobody paid within
 * its lifetime). EXPIRED is no failure of the payer's money: nobody paid, nothing was taken, and the
 * order is free for a new attempt. A final status never changes, with one exception: EXPIRED is the
 * server's guess (CamPay is never told the lifetime, so its page stays payable), and a link CamPay
 * reports paid after it becomes SUCCESSFUL, at a higher seq (or FAILED, reason "amount_mismatch", when
 * the payer paid another amount than asked).
 */
export type PaymentStatus = "PENDING" | "SUCCESSFUL" | "FAILED" | "EXPIRED";

/**
 * "collect": a USSD push to a known phone (initiate()); "link": a payment through CamPay's hosted page
 * (payByLink()), paid by mobile money or by card; "payout": money out (a refund or a merchant's payout).
 */
export type PaymentKind = "collect" | "link" | "payout";

/** A payment as the server reports it (REST shape; socket events carry a subset, merged in). */
export interface Payment {
  reference: string;
  /** null for a payout. */
  order_id: string | null;
  /**
   * A link (`kind === "link"`) is PENDING from its creation until its payer has paid on the link's
   * page: while PENDING and `link_expires_at` is ahead, it is waiting for the payer (show that, not
   * "check your phone"). Nobody paid by `link_expires_at`: EXPIRED.
   */
  status: PaymentStatus;
  /** Strictly increasing per payment: 1 at creation, +1 for every change the server applied. */
  seq: number;
  amount: number | null;
  currency: string;
  /**
   * "MTN" or "ORANGE"; null for a card payment (CamPay reports no operator for a card), and for a
   * link until its payer has paid.
   */
  operator: string | null;
  /** FAILED only: why (e.g. "amount_mismatch"). Never set for EXPIRED. */
  reason?: string | null;
  /** A collect's code to dial; null for a link and a payout. */
  ussd_code?: string | null;
  /** Masked except in initiate()'s answer; null for a link until a mobile-money payer has paid, and for a card. */
  phone_number?: string | null;
  /** Absent in events of a collect (the default). */
  kind?: PaymentKind;
  /** A link: the page to open (a new window, or a redirect) where the payer pays; null otherwise. */
  link?: string | null;
  /** A link: until when it can be paid (ISO 8601); past it, a link nobody paid is EXPIRED. */
  link_expires_at?: string | null;
  /** What the merchant receives after CamPay's fee, once CamPay said. */
  app_amount?: number | null;
  /** A refunded payment: its refund's payout. */
  refund_reference?: string | null;
  /** A refund's payout: the payment it pays back. */
  refund_of?: string | null;
  description?: string | null;
  provider?: string;
  created_at?: string;
  updated_at?: string;
  completed_at?: string | null;
  operator_reference?: string | null;
  orphan?: boolean;
  /** A duplicate successful payment of its order: the reference of the payment it duplicates (the merchant refunds this one). */
  duplicate_of?: string | null;
  /** GET /status/{order_id}: the order's other successful payments, which the merchant should refund. */
  duplicate_payments?: string[];
  timestamp: string;
  [field: string]: unknown;
}

/**
 * - "connecting": the first connection attempt is under way;
 * - "connected": the socket is up (while REST still covers the payments, until the connection
 *   answered a track-payment, "polling" is shown instead);
 * - "reconnecting": the socket is down and is tried again at `nextAttemptAt`; REST has not taken over yet;
 * - "polling": the socket is down (or not proven), REST answers: updates still arrive, a few seconds late;
 * - "offline": neither the socket nor REST answers (server away, origin refused, every token refused), or closed.
 */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "polling" | "offline";

export interface ConnectionInfo {
  /** When the next connection attempt starts (epoch ms), or null when none is waiting. */
  nextAttemptAt: number | null;
}

export interface TokenContext {
  /**
   * "connect": a (re)connect or a first REST call; "expiring": the server said the current
   * token expires soon; "rejected": the server refused the last token (ask for a new one);
   * "expired": the server ended the session, as it does when the token runs out (give a fresh one).
   */
  reason: "connect" | "expiring" | "rejected" | "expired";
  /** With "expiring": when the current token expires (ISO 8601). */
  expiresAt: string | null;
}

export interface PaymentTrackerOptions {
  /** The paytrack server, e.g. "https://pay.example.com" (a path prefix is kept). Default: the page's origin. */
  url?: string;
  /** Bearer token for the socket (`auth: {token}`) and REST calls; asked at connect and before expiry. A call that throws or does not answer within `requestTimeoutMs` is `token_unavailable`. */
  token?: ((context: TokenContext) => string | null | undefined | Promise<string | null | undefined>) | null;
  /** REST polling interval per payment while the socket does not cover it (ms, default 3000, ±25 % at random; 0 turns polling off). */
  fallbackPollMs?: number;
  /** The longest wait between reads while they fail (ms, default 30000): the interval doubles per failure up to it. */
  fallbackPollMaxMs?: number;
  /** How long the socket may be down, or up without answering a track-payment, before polling starts (ms, default 4000, plus up to half as long again at random). */
  fallbackAfterMs?: number;
  /** onStuck fires when a payment is still PENDING this long after track() (ms, default 300000). */
  stuckAfterMs?: number;
  /** How long to wait for an ack (ms, default 5000). */
  ackTimeoutMs?: number;
  /** Timeout of a REST read (GET /tracking, GET /api/origin) and of a socket handshake (ms, default 10000). */
  requestTimeoutMs?: number;
  /** Timeout of the calls that may wait for CamPay: initiate() and payByLink() attempts, and refresh() (ms, default 60000). */
  providerTimeoutMs?: number;
  /** Reconnect backoff bounds (ms, defaults 500 and 5000, ±50 % jitter); it starts over only once a connection answered a track-payment. */
  reconnectDelayMs?: number;
  reconnectDelayMaxMs?: number;
  /** After the server closes the websocket going away (1001: the instance is stopping), the first retry is drawn from [0, this] (ms, default 3000), so an instance's pages do not all reach the next one at once. */
  goingAwayWindowMs?: number;
  /** socket.io transports (default ["websocket"]: no sticky sessions needed; REST polling covers blocked websockets). */
  transports?: Array<"websocket" | "polling" | "webtransport">;
  /** Socket.IO path on the server (default "/socket.io"). */
  path?: string;
  /** Share what this tracker learns with other tabs of the origin (BroadcastChannel). Default: true in a browser page. */
  shareAcrossTabs?: boolean;
  /** initiate() and payByLink() attempts on network failure, timeout, 429, 503, `idempotency_in_progress` (same Idempotency-Key; default 3). */
  initiateAttempts?: number;
  /**
   * How long initiate() and payByLink() keep asking again (same Idempotency-Key, after each Retry-After) while the
   * server answers `initiation_unknown`: the first attempt may have reached CamPay and its outcome is
   * not known yet (ms from the first such answer, default 120000). Past it, they throw that
   * error; ask again later with `err.idempotencyKey`, never with a new key.
   */
  initiateUnknownWaitMs?: number;
  /** fetch implementation (default globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface UnknownInfo {
  reference: string;
  /** What this page knew before the server said it does not know the payment (null if never known). */
  lastKnown: Payment | null;
}

export interface TrackHandlers {
  /** Every new state, in strictly increasing seq, never PENDING after a final status (and after EXPIRED, only SUCCESSFUL or FAILED "amount_mismatch"). */
  onUpdate?: (payment: Payment) => void;
  /** Once, when the payment reaches SUCCESSFUL (for a link paid after it expired: after onExpired). */
  onSuccess?: (payment: Payment) => void;
  /** Once, when the payment reaches FAILED (for a link paid another amount after it expired: "amount_mismatch", after onExpired). Never for EXPIRED. */
  onFailure?: (payment: Payment) => void;
  /**
   * Once, when a payment link reaches EXPIRED: nobody paid it within its lifetime. Final (`done`
   * resolves with it), but not a failure: no money moved; offer a new link (the order is free). The
   * link stays followed: if CamPay reports it paid after all, onUpdate and onSuccess run with SUCCESSFUL
   * (the new link's order is then paid twice; the server names the duplicate to refund), or, paid
   * another amount than asked, onUpdate and onFailure with FAILED "amount_mismatch".
   */
  onExpired?: (payment: Payment) => void;
  /** Once, if still not final `stuckAfterMs` after track(). */
  onStuck?: (payment: Payment | null) => void;
  /** The server does not know this payment (not yet, or it lost it after a restart); events may still follow. A handle tracking it later is told too. */
  onUnknown?: (info: UnknownInfo) => void;
  /** Overrides the tracker's stuckAfterMs for this handle. */
  stuckAfterMs?: number;
}

export interface Tracking {
  readonly reference: string;
  /** The latest accepted state, or null before the first. */
  readonly payment: Payment | null;
  /**
   * Resolves once with the final payment (SUCCESSFUL, FAILED or EXPIRED), before onSuccess/onFailure/onExpired run (a
   * SUCCESSFUL or FAILED "amount_mismatch" after EXPIRED comes by onUpdate and onSuccess or onFailure: `done` stays resolved
   * with EXPIRED); rejects with a PaytrackError
   * only for "forbidden", "invalid_payload", "stopped" and "closed" (never for a payment that may still succeed).
   */
  readonly done: Promise<Payment>;
  /** Stop following; `done` rejects with code "stopped" if it had not settled. */
  stop(): void;
  /** Ask the server to check with the provider now; resolves with the state after applying its answer. */
  refresh(): Promise<Payment | null>;
}

export interface InitiateBody {
  order_id: string;
  amount: number;
  phone_number: string;
  currency?: string;
  description?: string;
  [field: string]: unknown;
}

/** POST /api/payment/link's body: no phone (the payer gives theirs, or a card, on the link's page). */
export interface PayByLinkBody {
  order_id: string;
  amount: number;
  currency?: string;
  description?: string;
  /** What the link's page offers (default both). */
  payment_options?: "MOMO" | "CARD" | "MOMO,CARD";
  /** Where CamPay's page sends the payer after paying (http(s)). */
  redirect_url?: string;
  /** Where it sends the payer after a failed payment. */
  failure_redirect_url?: string;
  [field: string]: unknown;
}

export interface InitiateRetry {
  /** The attempt (1, 2, ...) whose answer is being retried. */
  attempt: number;
  /** How long initiate() waits before the next attempt (ms). */
  waitMs: number;
}

export interface InitiateOptions {
  /** Sent as Idempotency-Key; a retry with the same key gets the first answer. Default: a random key per call. */
  idempotencyKey?: string;
  /**
   * Called before each automatic retry with the answer that caused it (`error.code` e.g.
   * "initiation_unknown": waiting for CamPay to confirm the first attempt; "idempotency_in_progress",
   * "rate_limited", "busy", "network_error").
   */
  onRetry?: (error: PaytrackError, retry: InitiateRetry) => void;
}

export declare class PaytrackError extends Error {
  constructor(
    code: string,
    message?: string,
    extra?: { reason?: string; status?: number; reference?: string; details?: unknown; retryAfter?: number; idempotencyKey?: string; cause?: unknown },
  );
  /**
   * The server's error code ("validation_error", "forbidden", "too_many_tracked", "order_paid",
   * "initiation_unknown", ...) or the client's ("network_error", "stopped", "closed", "timeout").
   * Connection errors on `on("error")`: "origin_not_allowed" (the server refuses this page's origin),
   * "unauthenticated" (the token was refused; `reason` says how), "unreachable" (the server cannot be reached).
   */
  readonly code: string;
  /** A finer reason where `code` is a category: for "unauthenticated", the server's code ("invalid_token", "token_expired", ...). */
  readonly reason: string | null;
  /** HTTP status, for REST errors. */
  readonly status: number | null;
  /**
   * The payment concerned: the tracked one, or the one the server named (`payment_pending`: the
   * order's PENDING payment; `order_paid`: its SUCCESSFUL payment).
   */
  readonly reference: string | null;
  /** The server's details, e.g. [{field, message}] for a validation error. */
  readonly details: unknown;
  /** When the server said to come back (Retry-After, or an ack's or connect refusal's retry_after), in ms. */
  readonly retryAfter: number | null;
  /** Errors thrown by initiate() and payByLink(): the Idempotency-Key it sent; ask again with it (e.g. after "initiation_unknown"). */
  readonly idempotencyKey: string | null;
  /** "field: message" for every field the server named. */
  readonly fieldMessages: string[];
}

export interface PaymentTrackerEvents {
  connection: (state: ConnectionState, info: ConnectionInfo) => void;
  error: (error: PaytrackError) => void;
  /** Every raw server event, acks as "ack:track-payment" / "ack:refresh-token", and REST reads that
   * brought something new as "rest:tracking" (GET /tracking's body) / "rest:status" (refresh()'s GET /status body), for logging. */
  event: (name: string, data: unknown) => void;
}

export declare class PaymentTracker {
  constructor(options?: PaymentTrackerOptions);
  readonly state: ConnectionState;
  /** When the next connection attempt starts (epoch ms), or null when none is waiting (as the last "connection" event said). */
  readonly nextAttemptAt: number | null;
  /** Returns a function that removes the listener. */
  on<E extends keyof PaymentTrackerEvents>(event: E, listener: PaymentTrackerEvents[E]): () => void;
  off<E extends keyof PaymentTrackerEvents>(event: E, listener: PaymentTrackerEvents[E]): void;
  track(reference: string, handlers?: TrackHandlers): Tracking;
  /**
   * POST /api/payment/initiate; throws PaytrackError with the server's code, message and details, and
   * `idempotencyKey`. "order_paid" (with `reference`) is thrown at once; "initiation_unknown" only
   * after `initiateUnknownWaitMs` of asking again with the same key.
   */
  initiate(body: InitiateBody, options?: InitiateOptions): Promise<Payment>;
  /**
   * POST /api/payment/link: the payment (`kind: "link"`, PENDING, `link` to open, `link_expires_at`,
   * `operator` and `phone_number` null until the payer has paid). The same Idempotency-Key, retries and
   * errors as initiate(). Open `link` in a window the page opened inside the click, or redirect to it
   * (docs/CLIENT.md, "Pay by link"), then track the reference.
   */
  payByLink(body: PayByLinkBody, options?: InitiateOptions): Promise<Payment>;
  /** Reconnect now, asking token() again (e.g. after the user signed in). */
  reconnect(): void;
  /** Disconnect and stop; pending `done` promises reject with code "closed", and initiate() asks nothing more. */
  close(): void;
}

export default PaymentTracker;
