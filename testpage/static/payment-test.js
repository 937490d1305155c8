// paytrack checkout test page, built on the official checkout client (/sdk/paytrack-client.js,
// which runs the official socket.io client underneath): exactly what a merchant's page would
// do. The client keeps the guarantees (seq order, re-track with last_seq after a reconnect,
// REST polling when the socket is down, token refresh); this page only shows what it reports.
//
// Never charging an order twice: once a payment is final, the order-id field gets a new order id,
// so pressing Pay again starts a new order; `order_paid` says the order is already paid and does
// the same. While the server cannot tell whether a first attempt reached CamPay
// (`initiation_unknown`) the client asks again with the same Idempotency-Key; if it gives up, the
// page keeps that key, and Pay with the same fields asks again with it (never with a new one).
//
// Pay by link asks for a CamPay payment link instead of a USSD push: the page shows the link (in the
// sandbox, the server's stand-in for CamPay's page) and tracks the payment while its payer pays there;
// until then it says it is waiting for the payer, and a link nobody paid in time shows EXPIRED. A
// successful sandbox payment can be refunded (a payout back to its phone), whose status is tracked too.
import { PaymentTracker, PaytrackError } from "/sdk/paytrack-client.js";

const $ = (id) => document.getElementById(id);
const simulateEnabled = document.body.dataset.simulate === "true";
const token = () => $("token").value.trim();

let current = null; // { reference, orderId, tracking }
// The Idempotency-Key of an attempt whose outcome is not known (initiation_unknown, network
// failure, ...), with the body it was sent with: Pay with the same fields asks again with it.
let retained = null; // { body: string, key: string }
const OUTCOME_UNKNOWN = new Set(["initiation_unknown", "idempotency_in_progress", "network_error"]);

function randomPart() {
  // getRandomValues works on plain http too (randomUUID needs a secure context).
  return Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function newOrderId() {
  $("order-id").value = `order-${Date.now().toString(36)}-${randomPart()}`;
}

/** An informational line under the form; `code` (data-code) says which case it is. */
function formNote(text, code = "") {
  $("form-note").textContent = text;
  $("form-note").dataset.code = code;
}

function logEvent(name, data) {
  const li = document.createElement("li");
  li.dataset.event = name;
  li.textContent = `${new Date().toISOString().slice(11, 23)} ${name} ${data === undefined ? "" : JSON.stringify(data)}`;
  $("log").prepend(li);
}

/** "400 validation_error: request validation failed" and one line per field the server named. */
function describe(err) {
  const head = [err.status, err.code].filter(Boolean).join(" ");
  const fields = err.fieldMessages && err.fieldMessages.length ? `\n${err.fieldMessages.join("\n")}` : "";
  return `${head}: ${err.message}${fields}`;
}

function showError(err, hint = "") {
  $("form-error").textContent = describe(err) + (hint ? `\n${hint}` : "");
}

function pending() {
  return current !== null && $("status").dataset.status === "PENDING";
}

// Simulating needs the server: over the socket, or over REST while polling. Not while (re)connecting or offline.
const REACHABLE = new Set(["connected", "polling"]);

function updateSimulate() {
  const open =
    REACHABLE.has($("connection").dataset.state) &&
    $("status").dataset.status === "PENDING" &&
    $("status").dataset.known !== "false";
  $("simulate-success").disabled = !open;
  $("simulate-failure").disabled = !open;
}

function setNote(text) {
  $("status-note").textContent = text;
}

/** What the note says of a known, current payment: a link not paid yet waits for its payer. */
function quietNote() {
  return current && current.kind === "link" && $("status").dataset.status === "PENDING" ? "waiting for the payer" : "";
}

function markSynced() {
  $("status").dataset.synced = "true";
  if ($("status").dataset.known !== "false") setNote(quietNote());
}

/** "FAILED (declined by the shopper)"; a reason that only restates the status ("failed") is not repeated. */
function statusText(payment) {
  const reason = payment.reason && payment.reason.toLowerCase() !== payment.status.toLowerCase() ? payment.reason : "";
  return reason ? `${payment.status} (${reason})` : payment.status;
}

function render(payment) {
  if (!current || payment.reference !== current.reference) return;
  $("status").textContent = statusText(payment);
  $("status").dataset.status = payment.status;
  $("status").dataset.known = "true";
  if (payment.ussd_code) $("ussd").textContent = payment.ussd_code;
  markSynced();
  updateSimulate();
  updateRefund();
}

/** A refund is offered for a successful sandbox payment not refunded yet. */
function updateRefund() {
  const open = simulateEnabled && current !== null && $("status").dataset.status === "SUCCESSFUL";
  $("refund-row").hidden = !open;
  $("refund").disabled = !open || current.refunded === true;
}

function unknown({ lastKnown }) {
  $("status").dataset.known = "false";
  $("status").dataset.synced = "true";
  setNote(lastKnown
    ? "server restarted, this payment is no longer known"
    : "the server does not know this payment (yet)");
  updateSimulate();
}

function setConnection(state, { nextAttemptAt } = {}) {
  $("connection").dataset.state = state;
  $("connection").textContent = nextAttemptAt ? `${state} (next attempt at ${new Date(nextAttemptAt).toLocaleTimeString()})` : state;
  if (state !== "connected") $("socket-id").textContent = "";
  if (state === "connected") $("connection").dataset.error = "";
  if ((state === "connecting" || state === "reconnecting" || state === "offline") && pending()) {
    $("status").dataset.synced = "false";
    if ($("status").dataset.known !== "false") setNote("(last known; reconnecting)");
  }
  updateSimulate();
}

const tracker = new PaymentTracker({
  url: window.location.origin,
  token: () => token() || null,
  reconnectDelayMs: 250,
  reconnectDelayMaxMs: 2000,
});
tracker.on("connection", setConnection);
tracker.on("event", (name, data) => {
  logEvent(name, data);
  if (name === "connected" && data && data.socket_id) $("socket-id").textContent = `socket ${data.socket_id}`;
  // A re-track the server answered with the payment confirms what is shown, even if nothing changed.
  if (name === "ack:track-payment" && data.ok && data.payment && current && data.reference === current.reference) markSynced();
});
tracker.on("error", (err) => {
  logEvent("error", { code: err.code, message: err.message, reference: err.reference });
  if (!err.reference) $("connection").dataset.error = err.code; // refused connections: unauthenticated, ...
  else if (current && err.reference === current.reference) showError(err);
});

async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const payload = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = payload.error || {};
    throw new PaytrackError(error.code || `http_${response.status}`, error.message || response.statusText, {
      status: response.status,
      details: error.details,
    });
  }
  return payload;
}

/** The payment of `orderId` is final: Pay must start a new order, not pay this one again. */
function orderFinished(orderId, payment) {
  if ($("order-id").value.trim() !== orderId) return; // the field already holds another order
  newOrderId();
  logEvent("new-order", { finished: orderId, status: payment.status, order_id: $("order-id").value });
  formNote(`Order ${orderId} is ${payment.status}: a new order id was filled in, so Pay starts a new order.`, "new_order");
}

/** Show and follow one payment (a new one, or the one that already paid the order). */
function follow(reference, orderId, seed = {}) {
  if (current) current.tracking.stop();
  if (current && current.refundTracking) current.refundTracking.stop();
  current = { reference, orderId, tracking: null, kind: seed.kind || "collect", refunded: Boolean(seed.refund_reference) };
  $("payment").hidden = false;
  $("reference").textContent = reference;
  $("ussd").textContent = seed.ussd_code || "-";
  $("dial").hidden = current.kind === "link";
  $("link-row").hidden = current.kind !== "link";
  $("link").href = seed.link || "#";
  $("refund-status").textContent = "";
  $("refund-status").dataset.status = "";
  updateRefund();
  $("status").textContent = "";
  $("status").dataset.status = "";
  $("status").dataset.synced = "false";
  $("status").dataset.known = "true";
  setNote("");
  $("simulate").hidden = !simulateEnabled;
  updateSimulate();
  current.tracking = tracker.track(reference, {
    onUpdate: render,
    onUnknown: unknown,
    onSuccess: (payment) => orderFinished(orderId, payment),
    onFailure: (payment) => orderFinished(orderId, payment),
    // A link nobody paid in time: final, and not a failure (never payment-failed).
    onExpired: (payment) => {
      setNote("the payment link expired: nobody paid it");
      orderFinished(orderId, payment);
    },
    onStuck: () => setNote("still pending after 5 minutes: ask the shopper to check their phone, or retry"),
  });
  current.tracking.done.catch(() => {}); // stopped when a new payment starts
}

/** Called by the client before it asks again with the same key. */
function initiateRetry(err, { waitMs }) {
  logEvent("initiate-retry", { code: err.code, wait_ms: waitMs, idempotency_key: err.idempotencyKey });
  const seconds = Math.ceil(waitMs / 1000);
  if (err.code === "initiation_unknown") {
    formNote(`Waiting for CamPay to confirm the first attempt (asking again in ${seconds} s with the same key)…`, err.code);
  } else {
    formNote(`${err.code}: asking again in ${seconds} s with the same key…`, err.code);
  }
}

$("pay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("form-error").textContent = "";
  formNote("");
  $("pay").disabled = true;
  const body = {
    order_id: $("order-id").value.trim(),
    amount: Number($("amount").value),
    phone_number: $("phone").value.trim(),
  };
  const sent = JSON.stringify(body);
  const idempotencyKey = retained && retained.body === sent ? retained.key : undefined;
  try {
    const payment = await tracker.initiate(body, { idempotencyKey, onRetry: initiateRetry });
    retained = null;
    formNote("");
    logEvent("initiated", payment);
    follow(payment.reference, body.order_id, payment);
  } catch (err) {
    formNote("");
    retained = null;
    if (err.code === "order_paid") {
      logEvent("order-paid", { order_id: body.order_id, reference: err.reference });
      if ($("order-id").value.trim() === body.order_id) newOrderId();
      formNote(
        `Order ${body.order_id} is already paid (reference ${err.reference || "unknown"}). ` +
          "A new order id was filled in: press Pay to start a new order.",
        "order_paid",
      );
      if (err.reference) follow(err.reference, body.order_id);
      return;
    }
    if (err.idempotencyKey && (OUTCOME_UNKNOWN.has(err.code) || !err.status || err.status >= 500)) {
      retained = { body: sent, key: err.idempotencyKey }; // its outcome is not known: never a new key
    }
    showError(
      err,
      err.code === "initiation_unknown"
        ? "CamPay has not confirmed the first attempt yet. Press Pay again later: it asks with the same key, so it cannot charge twice."
        : "",
    );
  } finally {
    $("pay").disabled = false;
  }
});

async function simulate(status) {
  $("form-error").textContent = "";
  try {
    const result = await post("/api/payment/test/simulate", { reference: current.reference, status });
    logEvent("simulate", { status, outcome: result.outcome });
  } catch (err) {
    showError(err);
  }
}

/** Pay by link: the same order rules as Pay; the page then waits for the payer on the link's page. */
async function payByLink() {
  $("form-error").textContent = "";
  formNote("");
  $("pay-link").disabled = true;
  const body = { order_id: $("order-id").value.trim(), amount: Number($("amount").value), payment_options: "MOMO,CARD" };
  const sent = JSON.stringify(body);
  const idempotencyKey = retained && retained.body === sent ? retained.key : undefined;
  try {
    const payment = await tracker.payByLink(body, { idempotencyKey, onRetry: initiateRetry });
    retained = null;
    formNote("");
    logEvent("link", payment);
    follow(payment.reference, body.order_id, payment);
  } catch (err) {
    formNote("");
    retained = null;
    if (err.idempotencyKey && (OUTCOME_UNKNOWN.has(err.code) || !err.status || err.status >= 500)) {
      retained = { body: sent, key: err.idempotencyKey }; // its outcome is not known: never a new key
    }
    if (err.code === "order_paid" && $("order-id").value.trim() === body.order_id) newOrderId();
    showError(err);
  } finally {
    $("pay-link").disabled = false;
  }
}

function renderRefund(payout) {
  $("refund-status").textContent = `refund ${payout.reference}: ${payout.status}`;
  $("refund-status").dataset.status = payout.status;
}

/** Pay the successful payment back to its phone (a payout), and follow the payout's status. */
async function refund() {
  $("form-error").textContent = "";
  $("refund").disabled = true;
  const followed = current;
  try {
    const payout = await post(`/api/payment/${encodeURIComponent(followed.reference)}/refund`, {});
    logEvent("refund", payout);
    followed.refunded = true;
    renderRefund(payout);
    followed.refundTracking = tracker.track(payout.reference, { onUpdate: renderRefund });
    followed.refundTracking.done.catch(() => {});
  } catch (err) {
    showError(err);
    updateRefund();
  }
}

$("pay-link").addEventListener("click", payByLink);
$("refund").addEventListener("click", refund);
$("token").addEventListener("change", () => tracker.reconnect());
$("simulate-success").addEventListener("click", () => simulate("SUCCESSFUL"));
$("simulate-failure").addEventListener("click", () => simulate("FAILED"));
newOrderId();
