// useInitiatePayment's logic (createInitiation over the store) against real server.py processes:
// one Idempotency-Key per attempt, kept across a retry whose first answer never came, a fresh
// one for the next attempt, and the order's answers (payment_pending, order_paid) as states.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createPaytrackStore } from "../src/index.js";
import { createInitiation } from "../src/initiate.js";
import { api, freePort, paymentBody, ServerProcess, simulate, startServer } from "./support.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

function initiation(url) {
  const store = createPaytrackStore({ url, initiateAttempts: 1 });
  const states = [];
  return { store, states, initiation: createInitiation(store, (s) => states.push(s)) };
}

test("a retry of one attempt carries its Idempotency-Key: the server answers it as that key's request", async () => {
  const late = new ServerProcess({}, await freePort()); // not started yet: the first call finds nobody
  const { store, states, initiation: pay } = initiation(late.url);
  try {
    const body = paymentBody("retry");
    const failed = await pay.initiate(body);
    assert.equal(failed.state, "error");
    assert.equal(failed.error.code, "network_error");
    assert.deepEqual(states.map((s) => s.state), ["initiating", "error"]);
    const key = failed.idempotencyKey;
    assert.ok(key);

    await late.start();
    const paid = await pay.initiate({ ...body }); // Pay pressed again: the same attempt
    assert.equal(paid.state, "initiated", JSON.stringify(paid.error));
    assert.equal(paid.idempotencyKey, key, "the same key as the attempt whose answer never came");
    const replay = await api(late.url, "POST", "/api/payment/initiate", body, undefined);
    assert.equal(replay.status, 409, "without the key: the order already has this payment");
    const byKey = await fetch(`${late.url}/api/payment/initiate`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify(body),
    });
    assert.equal(byKey.status, 201);
    assert.equal(byKey.headers.get("Idempotent-Replayed"), "true", "the server stored the answer under this key");
    assert.equal((await byKey.json()).reference, paid.reference);
  } finally {
    store.close();
    await late.kill();
  }
});

test("after the payment, the next initiate is a new attempt: a fresh key, and the order's answers are states", async () => {
  const { store, initiation: pay } = initiation(server.url);
  try {
    const body = paymentBody("attempts");
    const first = await pay.initiate(body);
    assert.equal(first.state, "initiated");

    const again = await pay.initiate(body);
    assert.notEqual(again.idempotencyKey, first.idempotencyKey, "a new attempt, a new key (the old one would replay the 201)");
    assert.equal(again.state, "payment_pending");
    assert.equal(again.reference, first.reference, "the order's PENDING payment, to follow");
    assert.equal(again.error.code, "payment_pending");

    await simulate(server.url, first.reference, "FAILED");
    const retry = await pay.initiate(body); // the retry path after FAILED: a new payment for the order
    assert.equal(retry.state, "initiated");
    assert.notEqual(retry.reference, first.reference);
    assert.notEqual(retry.idempotencyKey, again.idempotencyKey);

    await simulate(server.url, retry.reference, "SUCCESSFUL");
    const paidAlready = await pay.initiate(body);
    assert.equal(paidAlready.state, "order_paid");
    assert.equal(paidAlready.reference, retry.reference, "the payment that paid the order");
  } finally {
    store.close();
  }
});

test("a second call while one runs returns the same promise; reset() forgets the attempt", async () => {
  const { store, states, initiation: pay } = initiation(server.url);
  try {
    const body = paymentBody("double-click");
    const one = pay.initiate(body);
    const two = pay.initiate(body);
    assert.equal(one, two, "a double click initiates once");
    const result = await one;
    assert.equal(result.state, "initiated");
    assert.equal(states.filter((s) => s.state === "initiating").length, 1);
    pay.reset();
    assert.equal(pay.current.state, "idle");
    assert.equal(pay.current.idempotencyKey, null);
  } finally {
    store.close();
  }
});

test("a refused body is an error state, never an exception", async () => {
  const { store, initiation: pay } = initiation(server.url);
  try {
    const refused = await pay.initiate({ order_id: "bad-phone", amount: 500, phone_number: "12" });
    assert.equal(refused.state, "error");
    assert.equal(refused.error.code, "validation_error");
    assert.ok(refused.error.fieldMessages.some((line) => line.startsWith("phone_number: ")));
  } finally {
    store.close();
  }
});
