// paytrack checkout test page: the integration a merchant's page needs, with the official
// socket.io client. Track with last_seq, re-track on every (re)connect, never trust a
// status shown while disconnected until the server has confirmed it again.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const simulateEnabled = document.body.dataset.simulate === "true";

  let reference = null;
  let lastSeq = 0;

  function logEvent(name, data) {
    const li = document.createElement("li");
    li.dataset.event = name;
    li.textContent = `${new Date().toISOString().slice(11, 23)} ${name} ${data === undefined ? "" : JSON.stringify(data)}`;
    $("log").prepend(li);
  }

  function setConnection(state, detail) {
    $("connection").dataset.state = state;
    $("connection").textContent = detail ? `${state} (${detail})` : state;
    $("socket-id").textContent = state === "connected" && socket.id ? `socket ${socket.id}` : "";
    if (state !== "connected") {
      $("status").dataset.synced = "false";
      if (reference) $("status-note").textContent = "(last known; reconnecting)";
    }
  }

  function render(payment, synced) {
    if (!payment || payment.reference !== reference) return;
    if (typeof payment.seq === "number") {
      if (payment.seq < lastSeq) return; // older than what is shown
      lastSeq = payment.seq;
    }
    $("status").textContent = payment.status + (payment.reason ? ` (${payment.reason})` : "");
    $("status").dataset.status = payment.status;
    if (payment.ussd_code) $("ussd").textContent = payment.ussd_code;
    if (synced) {
      $("status").dataset.synced = "true";
      $("status-note").textContent = "";
    }
    const terminal = payment.status !== "PENDING";
    $("simulate-success").disabled = terminal;
    $("simulate-failure").disabled = terminal;
  }

  const token = () => $("token").value.trim();

  const socket = io({
    transports: ["websocket"],
    // Called on every (re)connect, so a token typed later is used from the next connection on.
    auth: (cb) => cb(token() ? { token: token() } : {}),
    reconnection: true,
    reconnectionDelay: 250,
    reconnectionDelayMax: 2000,
  });

  function track() {
    if (!reference || !socket.connected) return;
    const ref = reference;
    socket.timeout(5000).emit("track-payment", { reference: ref, last_seq: lastSeq }, (err, ack) => {
      if (err) { logEvent("track-payment timeout"); return; }
      logEvent("track-payment ack", ack);
      if (ack.ok && ack.payment && ref === reference) render(ack.payment, true);
    });
  }

  socket.on("connect", () => { setConnection("connected"); track(); });
  socket.on("disconnect", (reason) => {
    setConnection("disconnected", reason);
    // The client reconnects by itself after a transport loss, but not after the
    // server closed the session on purpose (e.g. shutting down): do it here.
    if (reason === "io server disconnect") setTimeout(() => socket.connect(), 500);
  });
  socket.on("connect_error", (err) => setConnection("disconnected", err.message));
  socket.io.on("reconnect_attempt", (n) => setConnection("connecting", `attempt ${n}`));

  socket.onAny((name, data) => {
    logEvent(name, data);
    if (name.startsWith("payment-") && data && data.reference === reference) render(data, true);
  });

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" },
                             token() ? { Authorization: `Bearer ${token()}` } : {}),
      body: JSON.stringify(body),
    });
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = payload.error || {};
      throw new Error(`${response.status} ${error.code || ""}: ${error.message || response.statusText}`);
    }
    return payload;
  }

  $("pay-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("form-error").textContent = "";
    $("pay").disabled = true;
    try {
      const payment = await post("/api/payment/initiate", {
        order_id: $("order-id").value.trim(),
        amount: Number($("amount").value),
        phone_number: $("phone").value.trim(),
      });
      logEvent("initiated", payment);
      reference = payment.reference;
      lastSeq = 0;
      $("payment").hidden = false;
      $("reference").textContent = reference;
      $("ussd").textContent = payment.ussd_code || "-";
      render(payment, socket.connected);
      $("simulate").hidden = !simulateEnabled;
      track();
    } catch (err) {
      $("form-error").textContent = err.message;
    } finally {
      $("pay").disabled = false;
    }
  });

  async function simulate(status) {
    $("form-error").textContent = "";
    try {
      const result = await post("/api/payment/test/simulate", { reference, status });
      logEvent("simulate", { status, outcome: result.outcome });
    } catch (err) {
      $("form-error").textContent = err.message;
    }
  }
  $("token").addEventListener("change", () => { socket.disconnect(); socket.connect(); });
  $("simulate-success").addEventListener("click", () => simulate("SUCCESSFUL"));
  $("simulate-failure").addEventListener("click", () => simulate("FAILED"));

  $("order-id").value = `order-${Date.now().toString(36)}`;
})();
