import { useCallback, useState } from "react";
import { useInitiatePayment, usePayment } from "paytrack-react";
import { ConnectionBadge } from "./ConnectionBadge.jsx";
import { serverUrl, simulateEnabled } from "./config.js";

function newOrderId() {
  const random = Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `order-${Date.now().toString(36)}-${random}`;
}

/** "400 validation_error: ..." and one line per field the server named. */
function describe(error) {
  const head = [error.status, error.code].filter(Boolean).join(" ");
  return [`${head}: ${error.message}`, ...(error.fieldMessages ?? [])].join("\n");
}

const STATUS_TEXT = {
  idle: "",
  loading: "…",
  PENDING: "Waiting for your confirmation",
  SUCCESSFUL: "Paid",
  FAILED: "Not paid",
  unknown: "The server does not know this payment",
};

export function Checkout() {
  const [form, setForm] = useState(() => ({ orderId: newOrderId(), amount: "500", phone: "237671234567" }));
  const [completions, setCompletions] = useState([]);
  const [simulateError, setSimulateError] = useState("");
  const pay = useInitiatePayment();
  const onFinal = useCallback((p) => setCompletions((list) => [...list, { reference: p.reference, status: p.status, reason: p.reason }]), []);
  const { payment, status, connection, error } = usePayment(pay.reference, { onSuccess: onFinal, onFailure: onFinal });

  const body = { order_id: form.orderId.trim(), amount: Number(form.amount), phone_number: form.phone.trim() };
  const waiting = pay.state === "initiating" || status === "loading" || status === "PENDING";
  const reachable = connection.state === "connected" || connection.state === "polling";

  function field(name) {
    return { value: form[name], onChange: (e) => setForm((f) => ({ ...f, [name]: e.target.value })) };
  }

  function startNewOrder() {
    pay.reset();
    setForm((f) => ({ ...f, orderId: newOrderId() }));
  }

  async function simulate(outcome) {
    setSimulateError("");
    const response = await fetch(`${serverUrl}/api/payment/test/simulate`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reference: pay.reference, status: outcome }),
    }).catch((err) => ({ ok: false, status: 0, statusText: String(err) }));
    if (!response.ok) setSimulateError(`simulate failed: ${response.status} ${response.statusText}`);
  }

  return (
    <main>
      <header>
        <h1>Checkout</h1>
        <ConnectionBadge />
      </header>

      <form
        onSubmit={(e) => {
          e.preventDefault();
          pay.initiate(body);
        }}
      >
        <label>
          Order <input id="order-id" {...field("orderId")} disabled={waiting} />
        </label>
        <label>
          Amount (XAF) <input id="amount" inputMode="numeric" {...field("amount")} disabled={waiting} />
        </label>
        <label>
          Phone <input id="phone" inputMode="tel" {...field("phone")} disabled={waiting} />
        </label>
        <button id="pay" type="submit" disabled={waiting || status === "SUCCESSFUL" || status === "FAILED"}>
          {pay.state === "initiating" ? "Starting…" : "Pay"}
        </button>
      </form>

      <section id="initiation" data-state={pay.state}>
        {pay.state === "error" && (
          <pre id="form-error" role="alert">
            {describe(pay.error)}
          </pre>
        )}
        {pay.state === "order_paid" && <p id="order-note">This order is already paid.</p>}
        {pay.state === "payment_pending" && <p id="order-note">This order already has a payment waiting: showing it.</p>}
      </section>

      {pay.reference && (
        <section className="payment">
          <p>
            Payment <code id="reference">{pay.reference}</code>
          </p>
          {payment?.ussd_code && status === "PENDING" && (
            <p className="ussd">
              Dial <strong id="ussd">{payment.ussd_code}</strong> on your phone and confirm.
            </p>
          )}
          <p id="status" data-status={status} className={`status ${status}`}>
            {STATUS_TEXT[status] ?? status}
            {status === "FAILED" && payment?.reason && payment.reason.toLowerCase() !== "failed" && ` (${payment.reason})`}
          </p>
          {error && (
            <p id="payment-error" role="alert">
              {error.code}: {error.message}
            </p>
          )}

          {status === "FAILED" && (
            <button id="retry" type="button" onClick={() => pay.initiate(body)} disabled={pay.state === "initiating"}>
              Try again
            </button>
          )}
          {(status === "SUCCESSFUL" || pay.state === "order_paid") && (
            <button id="new-order" type="button" onClick={startNewOrder}>
              New order
            </button>
          )}

          {simulateEnabled && status === "PENDING" && (
            <div className="simulate">
              <span>Sandbox:</span>
              <button id="simulate-success" type="button" disabled={!reachable} onClick={() => simulate("SUCCESSFUL")}>
                Simulate success
              </button>
              <button id="simulate-failure" type="button" disabled={!reachable} onClick={() => simulate("FAILED")}>
                Simulate failure
              </button>
              {simulateError && <span id="simulate-error">{simulateError}</span>}
            </div>
          )}
        </section>
      )}

      <ol id="completions" aria-label="Completed payments">
        {completions.map((c) => (
          <li key={c.reference} data-status={c.status} data-reference={c.reference}>
            {c.status === "SUCCESSFUL" ? "Payment received" : "Payment failed"} · {c.reference}
          </li>
        ))}
      </ol>
    </main>
  );
}
