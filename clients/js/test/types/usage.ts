// Compiled (not run) by `npm run typecheck`: the declarations describe the documented usage.
import PaymentTrackerDefault, {
  PaymentTracker,
  PaytrackError,
  VERSION,
  type ConnectionInfo,
  type ConnectionState,
  type Payment,
  type PaymentKind,
  type PaymentStatus,
} from "paytrack-client";

const tracker: PaymentTracker = new PaymentTracker({
  url: "https://pay.example.com",
  token: async ({ reason }) => (reason === "rejected" || reason === "expired" ? "fresh" : "cached"),
  fallbackPollMs: 3000,
  fallbackPollMaxMs: 30_000,
  requestTimeoutMs: 10_000,
  providerTimeoutMs: 60_000,
  stuckAfterMs: 120_000,
  initiateAttempts: 3,
  initiateUnknownWaitMs: 120_000,
});
const also: PaymentTracker = new PaymentTrackerDefault();
const off: () => void = tracker.on("connection", (state: ConnectionState, info: ConnectionInfo) => {
  const next: number | null = info.nextAttemptAt;
  if (state === "reconnecting" && next !== null) console.log(`again in ${Math.round((next - Date.now()) / 1000)} s`);
});
const shown: [ConnectionState, number | null] = [tracker.state, tracker.nextAttemptAt];
void shown;
tracker.on("error", (err: PaytrackError) => {
  if (err.code === "origin_not_allowed" || err.code === "unreachable") console.log(err.message);
  if (err.code === "unauthenticated") console.log(err.reason);
  console.log(err.code, err.message, err.fieldMessages, err.status);
});
tracker.on("event", (name: string, data: unknown) => void [name, data]);
off();

async function checkout(): Promise<void> {
  const payment: Payment = await tracker.initiate({ order_id: "o-1", amount: 500, phone_number: "237671234567" }, { idempotencyKey: "k" });
  const t = tracker.track(payment.reference, {
    onUpdate: (p) => console.log(p.status, p.seq),
    onSuccess: (p) => console.log(p.operator_reference),
    onFailure: (p) => console.log(p.reason),
    onStuck: (p) => console.log(p?.status),
    onUnknown: ({ reference, lastKnown }) => console.log(reference, lastKnown?.seq),
  });
  const final: Payment = await t.done;
  const now: Payment | null = await t.refresh();
  console.log(final.status === "SUCCESSFUL", now, t.payment, t.reference, VERSION, also.state);
  console.log(final.duplicate_of, final.duplicate_payments?.length);
  t.stop();
  tracker.reconnect();
  tracker.close();
}
void checkout;

async function payOnce(key?: string): Promise<Payment | string> {
  try {
    return await tracker.initiate(
      { order_id: "o-2", amount: 500, phone_number: "237671234567" },
      {
        idempotencyKey: key,
        onRetry: (err: PaytrackError, { attempt, waitMs }) => console.log(err.code, err.idempotencyKey, attempt, waitMs),
      },
    );
  } catch (err) {
    if (err instanceof PaytrackError && err.code === "order_paid") return `paid: ${err.reference ?? ""}`;
    if (err instanceof PaytrackError && err.code === "initiation_unknown") {
      const again: string | null = err.idempotencyKey;
      return again ?? "";
    }
    throw err;
  }
}
void payOnce;

async function payByLink(): Promise<void> {
  // Opened inside the click, so no popup blocker stops it; pointed at the link once it arrives.
  const opened: Window | null = window.open("", "_blank");
  const payment: Payment = await tracker.payByLink(
    { order_id: "o-3", amount: 500, payment_options: "MOMO,CARD", redirect_url: "https://shop.example/back" },
    { idempotencyKey: "k-link", onRetry: (err, { waitMs }) => console.log(err.code, waitMs) },
  );
  const kind: PaymentKind | undefined = payment.kind;
  const link: string | null | undefined = payment.link;
  const until: string | null | undefined = payment.link_expires_at;
  if (opened && link) opened.location.href = link;
  const waitingForPayer = kind === "link" && payment.status === "PENDING";
  const t = tracker.track(payment.reference, {
    onSuccess: (p) => console.log(p.operator ?? "card"),
    onExpired: (p: Payment) => console.log(p.status === "EXPIRED", p.link_expires_at),
  });
  const final: Payment = await t.done;
  const status: PaymentStatus = final.status;
  console.log(waitingForPayer, until, status === "EXPIRED", final.app_amount, final.refund_reference, final.refund_of);
}
void payByLink;
