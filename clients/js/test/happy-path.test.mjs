// The happy path against a real server process: initiate, track, success live, exactly once.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { Recorder, api, eventually, paymentBody, rawEvent, simulate, startServer, stateReached, within } from "./support.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

test("a tracked payment reports PENDING then SUCCESSFUL once, and done resolves with it", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  const states = [];
  tracker.on("connection", (s) => states.push(s));
  await stateReached(tracker, "connected");

  const payment = await tracker.initiate(paymentBody("happy"));
  assert.equal(payment.status, "PENDING");
  const rec = new Recorder();
  const tracking = tracker.track(payment.reference, rec.handlers());
  await rec.waitFor("update");
  assert.equal(tracking.payment.status, "PENDING");
  assert.equal(tracking.payment.ussd_code, payment.ussd_code, "the initiate response seeds the state");

  await simulate(server.url, payment.reference, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.equal(final.seq, 2);

  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  assert.equal(rec.named("failure").length, 0);
  assert.equal(rec.named("stuck").length, 0);
  assert.deepEqual(states, ["connected"]);
});

test("a failure reaches onFailure once with its reason", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  const payment = await tracker.initiate(paymentBody("fail"));
  const rec = new Recorder();
  const tracking = tracker.track(payment.reference, rec.handlers());
  await stateReached(tracker, "connected");
  await simulate(server.url, payment.reference, "FAILED", { reason: "amount_mismatch" });
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "FAILED");
  assert.equal(final.reason, "amount_mismatch");
  assert.equal(rec.named("failure").length, 1);
  assert.equal(rec.named("success").length, 0);
});

test("initiate replays the first answer under the same Idempotency-Key", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  const body = paymentBody("idem");
  const first = await tracker.initiate(body, { idempotencyKey: `key-${body.order_id}` });
  const again = await tracker.initiate(body, { idempotencyKey: `key-${body.order_id}` });
  assert.equal(again.reference, first.reference);
});

test("server errors reach the error event and the caller with their code, message and fields", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));

  await assert.rejects(tracker.initiate({ order_id: "bad", amount: 500, phone_number: "12" }), (err) => {
    assert.equal(err.status, 400);
    assert.equal(err.code, "validation_error");
    assert.ok(err.fieldMessages.some((m) => m.startsWith("phone_number:")), err.fieldMessages);
    return true;
  });

  await stateReached(tracker, "connected");
  const tracking = tracker.track("not a reference!");
  await assert.rejects(within(tracking.done, "done"), (err) => err.code === "invalid_payload");
  assert.deepEqual(errors.map((e) => e.code), ["invalid_payload"]);
  assert.ok(errors[0].message, "the server's message is kept");
  assert.equal(errors[0].reference, "not a reference!");
});

test("a payment the server does not know is reported unknown, not as an update", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected");
  const rec = new Recorder();
  // A reference nobody initiated: the server acks {payment: null}.
  const tracking = tracker.track("0b6a3c52-0000-4000-8000-000000000001", rec.handlers());
  await rec.waitFor("unknown");
  assert.deepEqual(rec.named("unknown")[0].args[0], { reference: tracking.reference, lastKnown: null });
  assert.equal(tracking.payment, null);
  assert.equal(rec.named("update").length, 0);
});

test("stop() rejects done with 'stopped' and frees the server's slot", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  const payment = await tracker.initiate(paymentBody("stop"));
  const acked = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === payment.reference);
  const tracking = tracker.track(payment.reference);
  await acked;
  const during = await api(server.url, "GET", `/api/payment/tracking/${payment.reference}`);
  assert.equal(during.body.tracking_clients, 1);
  tracking.stop();
  await assert.rejects(tracking.done, (err) => err.code === "stopped");
  // The tracker's socket left the room.
  await eventually(async () => (await api(server.url, "GET", `/api/payment/tracking/${payment.reference}`)).body.tracking_clients === 0, {
    what: "tracking_clients to drop to 0",
  });
});
