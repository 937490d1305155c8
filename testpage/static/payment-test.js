// paytrack checkout test page, built on the official checkout client (/sdk/paytrack-client.js,
// which runs the official socket.io client underneath): exactly what a merchant's page would
// do. The client keeps the guarantees (seq order, re-track with last_seq after a reconnect,
// REST polling when the socket is down, token refresh); this page only shows what it reports.
import { PaymentTracker, PaytrackError } from "/sdk/paytrack-client.js";

const $ = (id) => document.getElementById(id);
const simulateEnabled = document.body.dataset.simulate === "true";
const token = () => $("token").value.trim();

let current = null; // { reference, tracking }

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

function showError(err) {
  $("form-error").textContent = describe(err);
}

function pending() {
  return current !== null && $("status").dataset.status === "PENDING";
}

function updateSimulate() {
  const open = $("status").dataset.status === "PENDING" && $("status").dataset.known !== "false";
  $("simulate-success").disabled = !open;
  $("simulate-failure").disabled = !open;
}

function setNote(text) {
  $("status-note").textContent = text;
}

function markSynced() {
  $("status").dataset.synced = "true";
  if ($("status").dataset.known !== "false") setNote("");
}

function render(payment) {
  if (!current || payment.reference !== current.reference) return;
  $("status").textContent = payment.status + (payment.reason ? ` (${payment.reason})` : "");
  $("status").dataset.status = payment.status;
  $("status").dataset.known = "true";
  if (payment.ussd_code) $("ussd").textContent = payment.ussd_code;
  markSynced();
  updateSimulate();
}

function unknown({ lastKnown }) {
  $("status").dataset.known = "false";
  $("status").dataset.synced = "true";
  setNote(lastKnown
    ? "server restarted, this payment is no longer known"
    : "the server does not know this payment (yet)");
  updateSimulate();
}

function setConnection(state) {
  $("connection").dataset.state = state;
  $("connection").textContent = state;
  if (state !== "connected") $("socket-id").textContent = "";
  if (state === "connected") $("connection").dataset.error = "";
  if ((state === "connecting" || state === "offline") && pending()) {
    $("status").dataset.synced = "false";
    if ($("status").dataset.known !== "false") setNote("(last known; reconnecting)");
  }
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

$("pay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("form-error").textContent = "";
  $("pay").disabled = true;
  try {
    const payment = await tracker.initiate({
      order_id: $("order-id").value.trim(),
      amount: Number($("amount").value),
      phone_number: $("phone").value.trim(),
    });
    logEvent("initiated", payment);
    if (current) current.tracking.stop();
    current = { reference: payment.reference, tracking: null };
    $("payment").hidden = false;
    $("reference").textContent = payment.reference;
    $("ussd").textContent = payment.ussd_code || "-";
    $("status").dataset.known = "true";
    $("simulate").hidden = !simulateEnabled;
    current.tracking = tracker.track(payment.reference, {
      onUpdate: render,
      onUnknown: unknown,
      onStuck: () => setNote("still pending after 5 minutes: ask the shopper to check their phone, or retry"),
    });
    current.tracking.done.catch(() => {}); // stopped when a new payment starts
  } catch (err) {
    showError(err);
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

$("token").addEventListener("change", () => tracker.reconnect());
$("simulate-success").addEventListener("click", () => simulate("SUCCESSFUL"));
$("simulate-failure").addEventListener("click", () => simulate("FAILED"));
$("order-id").value = `order-${Date.now().toString(36)}`;
