// Compiled by `npm run typecheck` (tsc, noEmit): the README's usage must type-check against index.d.ts,
// and the misuses marked @ts-expect-error must not.
import { StrictMode, useState } from "react";
import {
  createPaytrackStore,
  PaytrackError,
  PaytrackProvider,
  useConnection,
  useInitiatePayment,
  usePayByLink,
  usePayment,
  usePaytrackStore,
  VERSION,
  type ConnectionState,
  type InitiationSnapshot,
  type Payment,
  type PaymentKind,
} from "paytrack-react";

const version: string = VERSION;

function Status({ reference }: { reference: string | null }) {
  const { payment, status, connection, error, refresh } = usePayment(reference, {
    onSuccess: (p: Payment) => console.log(p.reference),
    onFailure: (p) => console.log(p.reason),
  });
  const state: ConnectionState = connection.state;
  const at: number | null = connection.nextAttemptAt;
  const refused: string | undefined = connection.error?.code;
  const code: string | undefined = error?.code;
  const shown: string = status === "loading" ? "…" : status === "unknown" ? "?" : status;
  void refresh().then((p: Payment | null) => p?.seq);
  // @ts-expect-error not a status the hook reports
  const never: typeof status = "CANCELLED";
  return <p data-state={state} data-at={at ?? ""}>{shown} {payment?.ussd_code} {refused} {code} {never}</p>;
}

function Checkout() {
  const pay = useInitiatePayment();
  const [orderId] = useState("order-42");
  async function onPay() {
    const result: InitiationSnapshot = await pay.initiate({ order_id: orderId, amount: 500, phone_number: "237671234567" });
    if (result.state === "order_paid" || result.state === "payment_pending") console.log(result.reference);
    if (result.state === "error" && result.error instanceof PaytrackError) console.log(result.error.fieldMessages);
    // @ts-expect-error amount is a number
    await pay.initiate({ order_id: orderId, amount: "500", phone_number: "237671234567" });
  }
  const link = useConnection();
  const store = usePaytrackStore();
  void store.tracker?.reconnect();
  return (
    <>
      <button onClick={onPay} disabled={pay.state === "initiating"}>Pay</button>
      <button onClick={pay.reset}>New attempt</button>
      <Status reference={pay.reference} />
      <span>{link.state} {pay.idempotencyKey}</span>
    </>
  );
}

export function App({ token }: { token: () => Promise<string> }) {
  return (
    <StrictMode>
      <PaytrackProvider url="https://pay.example.com" token={token} options={{ fallbackPollMs: 3000, releaseDelayMs: 0 }}>
        <Checkout />
      </PaytrackProvider>
      <PaytrackProvider url="https://pay.example.com" token="a-token">
        <Status reference="ref-1" />
      </PaytrackProvider>
      <PaytrackProvider store={createPaytrackStore({ url: "https://pay.example.com" })}>
        <Status reference={null} />
      </PaytrackProvider>
    </StrictMode>
  );
}

void version;

function PayByLink({ orderId, amount }: { orderId: string; amount: number }) {
  const link = usePayByLink();
  const { payment, status } = usePayment(link.reference, {
    onExpired: (p: Payment) => console.log(p.status === "EXPIRED", p.link_expires_at),
  });
  async function pay() {
    const payer = window.open("", "_blank");
    if (payer) payer.opener = null;
    const result: InitiationSnapshot = await link.payByLink(
      { order_id: orderId, amount, payment_options: "CARD", redirect_url: "https://shop.example/back" },
      { onRetry: (err) => console.log(err.code) },
    );
    if (result.state !== "initiated") payer?.close();
    else if (payer && result.payment?.link) payer.location.href = result.payment.link;
    // @ts-expect-error payment_options is "MOMO", "CARD" or "MOMO,CARD"
    await link.payByLink({ order_id: orderId, amount, payment_options: "CASH" });
  }
  const kind: PaymentKind | undefined = payment?.kind;
  const waiting = status === "PENDING" && kind === "link";
  const expired: boolean = status === "EXPIRED";
  return (
    <button onClick={pay} disabled={link.state === "initiating"}>
      {waiting ? "Waiting for the payer" : expired ? "New link" : "Pay"} {link.idempotencyKey}
    </button>
  );
}
void PayByLink;
