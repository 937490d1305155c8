// Payment links (issue 37) through the hooks, in React's test renderer under StrictMode, against
// real server.py processes on the sandbox provider (its stand-in for CamPay's hosted page is where
// the payer pays): usePayByLink starts a link that usePayment follows to SUCCESSFUL (a card: no
// operator), a link nobody paid ends EXPIRED with onExpired once (never onFailure), one paid after
// it expired turns SUCCESSFUL with onSuccess after onExpired, and
// usePayByLink keeps one Idempotency-Key per attempt, as useInitiatePayment does.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createElement as h, StrictMode } from "react";
import { PaytrackProvider, usePayByLink, usePayment } from "../src/index.js";
import { api, freePort, orderId, payLink, ServerProcess, startServer } from "./support.mjs";
import { act, create, until } from "./renderer.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

async function render(element) {
  let renderer;
  await act(async () => {
    renderer = create(element);
  });
  return renderer;
}

/** A checkout on usePayByLink and usePayment; every outcome callback is recorded in `calls`. */
function checkout(seen, calls) {
  return function Checkout() {
    const link = usePayByLink();
    const followed = usePayment(link.reference, {
      onSuccess: (p) => calls.push(["success", p.status, p.operator]),
      onFailure: (p) => calls.push(["failure", p.status]),
      onExpired: (p) => calls.push(["expired", p.status]),
    });
    seen.link = link;
    seen.payment = followed;
    const waiting = followed.status === "PENDING" && followed.payment?.kind === "link";
    return h("p", null, waiting ? "waiting for the payer" : followed.status);
  };
}

function provider(url, child, options = {}) {
  return h(StrictMode, null, h(PaytrackProvider, { url, options: { shareAcrossTabs: false, ...options } }, h(child)));
}

test("usePayByLink starts a link that usePayment follows; paid by card, onSuccess runs once with operator null", async () => {
  const seen = {};
  const calls = [];
  const renderer = await render(provider(server.url, checkout(seen, calls)));
  assert.equal(seen.link.state, "idle");
  let result;
  await act(async () => {
    result = await seen.link.payByLink({ order_id: orderId("react-link"), amount: 1000, payment_options: "CARD" });
  });
  assert.equal(result.state, "initiated", JSON.stringify(result.error));
  assert.equal(seen.link.reference, result.payment.reference);
  assert.ok(seen.link.payment.link.startsWith(`${server.url}/payment-test/link/`), seen.link.payment.link);
  await until(() => seen.payment.status === "PENDING", "PENDING");
  assert.equal(renderer.toJSON().children.join(""), "waiting for the payer");

  assert.equal((await payLink(seen.link.payment.link, "CARD")).status, "SUCCESSFUL");
  await until(() => seen.payment.status === "SUCCESSFUL", "SUCCESSFUL");
  await act(async () => {}); // the effect after the render that shows it
  assert.equal(seen.payment.payment.operator, null);
  assert.deepEqual(calls, [["success", "SUCCESSFUL", null]], "onSuccess once (StrictMode), nothing else");
  await act(async () => renderer.unmount());
});

test("a link nobody paid: usePayment shows EXPIRED and calls onExpired once, never onFailure", async () => {
  const short = await startServer({
    LINK_LIFETIME_SECONDS: "2",
    RECONCILE_AFTER_SECONDS: "0",
    RECONCILE_INTERVAL_SECONDS: "0.2",
    LINK_RECONCILE_INTERVAL_SECONDS: "0.2",
  });
  try {
    const seen = {};
    const calls = [];
    const renderer = await render(provider(short.url, checkout(seen, calls)));
    await act(async () => {
      await seen.link.payByLink({ order_id: orderId("react-expiry"), amount: 500 });
    });
    await until(() => seen.payment.status === "PENDING", "PENDING");
    await until(() => seen.payment.status === "EXPIRED", "EXPIRED");
    await act(async () => {});
    assert.equal(seen.payment.payment.status, "EXPIRED");
    assert.deepEqual(calls, [["expired", "EXPIRED"]]);
    assert.equal(renderer.toJSON().children.join(""), "EXPIRED");
    await act(async () => renderer.unmount());
  } finally {
    await short.kill();
  }
});

test("a link paid after it expired: usePayment shows SUCCESSFUL and calls onSuccess once after onExpired", async () => {
  // CamPay is never told a link's lifetime: its page stays payable past the server's expiry, and the
  // server makes the link SUCCESSFUL when CamPay reports the payment (issue 37).
  const short = await startServer({
    LINK_LIFETIME_SECONDS: "2",
    RECONCILE_AFTER_SECONDS: "0",
    RECONCILE_INTERVAL_SECONDS: "0.2",
    LINK_RECONCILE_INTERVAL_SECONDS: "0.2",
  });
  try {
    const seen = {};
    const calls = [];
    const renderer = await render(provider(short.url, checkout(seen, calls)));
    await act(async () => {
      await seen.link.payByLink({ order_id: orderId("react-late"), amount: 500 });
    });
    await until(() => seen.payment.status === "EXPIRED", "EXPIRED");
    assert.deepEqual(calls, [["expired", "EXPIRED"]]);
    assert.equal((await payLink(seen.link.payment.link, "MOMO")).status, "SUCCESSFUL");
    await until(() => seen.payment.status === "SUCCESSFUL", "SUCCESSFUL");
    await act(async () => {});
    assert.deepEqual(calls, [["expired", "EXPIRED"], ["success", "SUCCESSFUL", "MTN"]]);
    assert.equal(renderer.toJSON().children.join(""), "SUCCESSFUL");
    await act(async () => renderer.unmount());
  } finally {
    await short.kill();
  }
});

test("usePayByLink: Pay again after a network failure carries the attempt's key; a settled attempt gets a new one", async () => {
  const late = new ServerProcess({}, await freePort()); // not started yet: the first call finds nobody
  try {
    const seen = {};
    const renderer = await render(provider(late.url, checkout(seen, []), { initiateAttempts: 1 }));
    const body = { order_id: orderId("react-link-retry"), amount: 500 };
    let failed;
    await act(async () => {
      failed = await seen.link.payByLink(body);
    });
    assert.equal(failed.state, "error");
    assert.equal(failed.error.code, "network_error");
    const key = failed.idempotencyKey;
    assert.ok(key);

    await late.start();
    let paid;
    await act(async () => {
      paid = await seen.link.payByLink({ ...body }); // Pay pressed again: the same attempt
    });
    assert.equal(paid.state, "initiated", JSON.stringify(paid.error));
    assert.equal(paid.idempotencyKey, key, "the same key as the attempt whose answer never came");
    const byKey = await fetch(`${late.url}/api/payment/link`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify(body),
    });
    assert.equal(byKey.status, 201);
    assert.equal(byKey.headers.get("Idempotent-Replayed"), "true", "the server stored the answer under this key");
    assert.equal((await byKey.json()).reference, paid.reference);

    let again;
    await act(async () => {
      again = await seen.link.payByLink(body); // a new attempt: the PENDING link holds its order
    });
    assert.notEqual(again.idempotencyKey, key);
    assert.equal(again.state, "payment_pending");
    assert.equal(again.reference, paid.reference);
    const order = await api(late.url, "GET", `/api/payment/status/${body.order_id}`);
    assert.equal(order.body.reference, paid.reference, "one link for the order");
    await act(async () => renderer.unmount());
  } finally {
    await late.kill();
  }
});
