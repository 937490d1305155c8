// Type declarations for paytrack-react (src/index.js, src/store.js, src/initiate.js).
import type { ReactNode, JSX } from "react";
import type {
  InitiateBody,
  InitiateRetry,
  PayByLinkBody,
  Payment,
  PaymentKind,
  PaymentStatus,
  PaymentTracker,
  PaymentTrackerOptions,
  PaytrackError,
  TokenContext,
} from "paytrack-client";

export { PaytrackError } from "paytrack-client";
export type { Payment, PaymentKind, PaymentStatus, InitiateBody, PayByLinkBody } from "paytrack-client";

export declare const VERSION: string;

/**
 * The client's connection states. "reconnecting" (with `nextAttemptAt`) comes from clients that
 * report it; an older client says "connecting" instead.
 */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "polling" | "offline";

export interface ConnectionSnapshot {
  readonly state: ConnectionState;
  /** Epoch ms of the next reconnect attempt, or null (none scheduled, or a client that does not say). */
  readonly nextAttemptAt: number | null;
  /**
   * The last refusal of the connection (`code` e.g. "origin_not_allowed", "unauthenticated",
   * "unreachable", "rate_limited"), kept until the tracker connects ("unreachable" and
   * "origin_not_allowed" only until REST answers: "polling"); null otherwise.
   */
  readonly error: PaytrackError | null;
}

/**
 * "idle": no reference; "loading": following, no state yet; "unknown": the server does not know
 * the payment (`payment` keeps the last state known); otherwise the payment's own status. A PENDING
 * payment whose `kind` is "link" is waiting for its payer on the link's page until
 * `link_expires_at`; EXPIRED means nobody paid it (final, not a failure).
 */
export type PaymentViewStatus = PaymentStatus | "idle" | "loading" | "unknown";

export interface PaymentSnapshot {
  readonly payment: Payment | null;
  readonly status: PaymentViewStatus;
  /** This payment's last error (e.g. "forbidden", "too_many_tracked", "busy"); cleared by the next update or by the server answering a track of it. */
  readonly error: PaytrackError | null;
}

export interface UsePaymentOptions {
  /** Once per reference, after the render that shows SUCCESSFUL. */
  onSuccess?: (payment: Payment) => void;
  /** Once per reference, after the render that shows FAILED (never for EXPIRED). */
  onFailure?: (payment: Payment) => void;
  /**
   * Once per reference, after the render that shows EXPIRED: a payment link nobody paid in its lifetime.
   * The server's guess, not CamPay's: a link paid after it turns SUCCESSFUL, and onSuccess runs then.
   */
  onExpired?: (payment: Payment) => void;
}

export interface UsePaymentResult extends PaymentSnapshot {
  readonly connection: ConnectionSnapshot;
  /** Ask the server to check with the provider now; resolves with the state after its answer (null when not following). */
  refresh(): Promise<Payment | null>;
}

export type InitiationState = "idle" | "initiating" | "initiated" | "payment_pending" | "order_paid" | "error";

export interface InitiationSnapshot {
  readonly state: InitiationState;
  /** "initiated": the new payment (from usePayByLink: `kind: "link"`, with `link` and `link_expires_at`). */
  readonly payment: Payment | null;
  /** "initiated": the new payment; "payment_pending": the order's PENDING payment; "order_paid": the payment that paid it. */
  readonly reference: string | null;
  /** "error", and the answers "payment_pending" / "order_paid" as the server gave them. */
  readonly error: PaytrackError | null;
  /** The Idempotency-Key of the current (or last) attempt. */
  readonly idempotencyKey: string | null;
}

export interface InitiateCallOptions {
  /** Called before each automatic retry of the client (same key), e.g. while the server says "initiation_unknown". */
  onRetry?: (error: PaytrackError, retry: InitiateRetry) => void;
}

export interface UseInitiatePaymentResult extends InitiationSnapshot {
  /**
   * Initiate `body`. Never rejects: resolves with the state it ends in. The same body after an
   * unsettled answer reuses the attempt's Idempotency-Key; anything else starts a new attempt.
   * A call while one is running returns that call's promise.
   */
  initiate(body: InitiateBody, options?: InitiateCallOptions): Promise<InitiationSnapshot>;
  /** Forget the attempt: back to "idle", and the next initiate gets a fresh key. */
  reset(): void;
}

export interface UsePayByLinkResult extends InitiationSnapshot {
  /**
   * Ask for a payment link for `body` (POST /api/payment/link). Never rejects: resolves with the
   * state it ends in; the same Idempotency-Key rules as useInitiatePayment's `initiate`.
   */
  payByLink(body: PayByLinkBody, options?: InitiateCallOptions): Promise<InitiationSnapshot>;
  /** Forget the attempt: back to "idle", and the next payByLink gets a fresh key. */
  reset(): void;
}

export type TokenSource = string | null | undefined | ((context: TokenContext) => string | null | undefined | Promise<string | null | undefined>);

export interface PaytrackStoreOptions extends Omit<PaymentTrackerOptions, "token"> {
  token?: PaymentTrackerOptions["token"];
  /** How long a reference nobody follows any more, and a tracker whose provider is gone, are kept (ms, default 0: the next macrotask). */
  releaseDelayMs?: number;
}

export interface PaytrackStoreDependencies {
  /** Builds the tracker (default `new PaymentTracker(options)`). */
  createTracker?: (options: PaymentTrackerOptions) => PaymentTracker;
}

export interface PaytrackStore {
  /** The tracker, once something subscribed or initiated in the browser; null before (and always on the server). */
  readonly tracker: PaymentTracker | null;
  /** True once close() was called (for good), and while the tracker is closed after its last holder let go (a later subscription opens a new one). */
  readonly closed: boolean;
  getConnection(): ConnectionSnapshot;
  subscribeConnection(listener: () => void): () => void;
  getPayment(reference: string | null | undefined): PaymentSnapshot;
  subscribePayment(reference: string | null | undefined, listener: () => void): () => void;
  refresh(reference: string | null | undefined): Promise<Payment | null>;
  initiate(body: InitiateBody, options?: { idempotencyKey?: string; onRetry?: InitiateCallOptions["onRetry"] }): Promise<Payment>;
  payByLink(body: PayByLinkBody, options?: { idempotencyKey?: string; onRetry?: InitiateCallOptions["onRetry"] }): Promise<Payment>;
  /**
   * Keep the tracker open; the function returned lets go (the last one closes it after `releaseDelayMs`,
   * or once every initiate()/payByLink() still running has its answer). A call on a store closed that way
   * waits `releaseDelayMs` for a holder to come back, then rejects with `closed`.
   */
  retain(): () => void;
  close(): void;
}

export declare function createPaytrackStore(options?: PaytrackStoreOptions, dependencies?: PaytrackStoreDependencies): PaytrackStore;

export interface PaytrackProviderProps {
  /** The paytrack server (a new url is a new tracker). */
  url?: string;
  /** The shopper's bearer token, or a function asked at each connect (the latest prop is used). */
  token?: TokenSource;
  /** PaymentTracker options (read when the tracker is created) and `releaseDelayMs`. */
  options?: Omit<PaytrackStoreOptions, "url" | "token">;
  /** Use this store instead (its owner closes it). */
  store?: PaytrackStore;
  children?: ReactNode;
}

export declare function PaytrackProvider(props: PaytrackProviderProps): JSX.Element;
export declare function usePaytrackStore(): PaytrackStore;
export declare function useConnection(): ConnectionSnapshot;
export declare function usePayment(reference: string | null | undefined, options?: UsePaymentOptions): UsePaymentResult;
export declare function useInitiatePayment(): UseInitiatePaymentResult;
export declare function usePayByLink(): UsePayByLinkResult;
