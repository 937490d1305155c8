// Type declarations for paytrack-client.js (the official paytrack checkout client).

export declare const VERSION: string;

export type PaymentStatus = "PENDING" | "SUCCESSFUL" | "FAILED";

/** A payment as the server reports it (REST shape; socket events carry a subset, merged in). */
export interface Payment {
  reference: string;
  order_id: string | null;
  status: PaymentStatus;
  /** Strictly increasing per payment: 1 at creation, +1 for every change the server applied. */
  seq: number;
  amount: number | null;
  currency: string;
  operator: string | null;
  /** FAILED only: why (e.g. "amount_mismatch"). */
  reason?: string | null;
  ussd_code?: string | null;
  phone_number?: string | null;
  description?: string | null;
  provider?: string;
  created_at?: string;
  updated_at?: string;
  completed_at?: string | null;
  operator_reference?: string | null;
  orphan?: boolean;
  timestamp: string;
  [field: string]: unknown;
}

export type ConnectionState = "connecting" | "connected" | "polling" | "offline";

export interface TokenContext {
  /**
   * "connect": a (re)connect or a first REST call; "expiring": the server said the current
   * token expires soon; "rejected": the server refused the last token (ask for a new one).
   */
  reason: "connect" | "expiring" | "rejected";
  /** With "expiring": when the current token expires (ISO 8601). */
  expiresAt: string | null;
}

export interface PaymentTrackerOptions {
  /** The paytrack server, e.g. "https://pay.example.com" (a path prefix is kept). Default: the page's origin. */
  url?: string;
  /** Bearer token for the socket (`auth: {token}`) and REST calls; asked at connect and before expiry. */
  token?: ((context: TokenContext) => string | null | undefined | Promise<string | null | undefined>) | null;
  /** REST polling interval while the socket is down (ms, default 3000; 0 turns polling off). */
  fallbackPollMs?: number;
  /** How long the socket may be down before polling starts (ms, default 4000). */
  fallbackAfterMs?: number;
  /** onStuck fires when a payment is still PENDING this long after track() (ms, default 300000). */
  stuckAfterMs?: number;
  /** How long to wait for an ack (ms, default 5000). */
  ackTimeoutMs?: number;
  /** Reconnect backoff bounds (ms, defaults 500 and 5000, ±50 % jitter). */
  reconnectDelayMs?: number;
  reconnectDelayMaxMs?: number;
  /** socket.io transports (default ["websocket"]: no sticky sessions needed; REST polling covers blocked websockets). */
  transports?: Array<"websocket" | "polling" | "webtransport">;
  /** Socket.IO path on the server (default "/socket.io"). */
  path?: string;
  /** Share what this tracker learns with other tabs of the origin (BroadcastChannel). Default: true in a browser page. */
  shareAcrossTabs?: boolean;
  /** initiate() attempts on network failure, 429, 503 (same Idempotency-Key; default 3). */
  initiateAttempts?: number;
  /** fetch implementation (default globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface UnknownInfo {
  reference: string;
  /** What this page knew before the server said it does not know the payment (null if never known). */
  lastKnown: Payment | null;
}

export interface TrackHandlers {
  /** Every new state, in strictly increasing seq, never PENDING after a final status. */
  onUpdate?: (payment: Payment) => void;
  /** Once, when the payment reaches SUCCESSFUL. */
  onSuccess?: (payment: Payment) => void;
  /** Once, when the payment reaches FAILED. */
  onFailure?: (payment: Payment) => void;
  /** Once, if still not final `stuckAfterMs` after track(). */
  onStuck?: (payment: Payment | null) => void;
  /** The server does not know this payment (not yet, or it lost it after a restart); events may still follow. */
  onUnknown?: (info: UnknownInfo) => void;
  /** Overrides the tracker's stuckAfterMs for this handle. */
  stuckAfterMs?: number;
}

export interface Tracking {
  readonly reference: string;
  /** The latest accepted state, or null before the first. */
  readonly payment: Payment | null;
  /** Resolves once with the final payment; rejects with a PaytrackError (code "forbidden", "stopped", "closed", ...). */
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

export interface InitiateOptions {
  /** Sent as Idempotency-Key; a retry with the same key gets the first answer. Default: a random key per call. */
  idempotencyKey?: string;
}

export declare class PaytrackError extends Error {
  constructor(code: string, message?: string, extra?: { status?: number; reference?: string; details?: unknown; retryAfter?: number; cause?: unknown });
  /** The server's error code ("validation_error", "forbidden", "too_many_tracked", ...) or the client's ("network_error", "stopped", "closed", "timeout"). */
  readonly code: string;
  /** HTTP status, for REST errors. */
  readonly status: number | null;
  readonly reference: string | null;
  /** The server's details, e.g. [{field, message}] for a validation error. */
  readonly details: unknown;
  /** From Retry-After, in ms. */
  readonly retryAfter: number | null;
  /** "field: message" for every field the server named. */
  readonly fieldMessages: string[];
}

export interface PaymentTrackerEvents {
  connection: (state: ConnectionState) => void;
  error: (error: PaytrackError) => void;
  /** Every raw server event, and acks as "ack:track-payment" / "ack:refresh-token", for logging. */
  event: (name: string, data: unknown) => void;
}

export declare class PaymentTracker {
  constructor(options?: PaymentTrackerOptions);
  readonly state: ConnectionState;
  /** Returns a function that removes the listener. */
  on<E extends keyof PaymentTrackerEvents>(event: E, listener: PaymentTrackerEvents[E]): () => void;
  off<E extends keyof PaymentTrackerEvents>(event: E, listener: PaymentTrackerEvents[E]): void;
  track(reference: string, handlers?: TrackHandlers): Tracking;
  /** POST /api/payment/initiate; throws PaytrackError with the server's code, message and details. */
  initiate(body: InitiateBody, options?: InitiateOptions): Promise<Payment>;
  /** Reconnect now, asking token() again (e.g. after the user signed in). */
  reconnect(): void;
  /** Disconnect and stop; pending `done` promises reject with code "closed". */
  close(): void;
}

export default PaymentTracker;
