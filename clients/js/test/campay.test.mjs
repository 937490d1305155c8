// Against a real server talking to the CamPay fake (tests/campay_fake.py, as a process):
// refresh() asks CamPay now; and a payment the server forgot (memory storage, restarted)
// is reported unknown. (How a final status learned again afterwards is accepted: seq-guard.test.mjs.)
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { Recorder, ServerProcess, paymentBody, rawEvent, startCampayFake, stateReached, within } from "./support.mjs";

let campay;
let server;
before(async () => {
  campay = await startCampayFake();
  server = await new ServerProcess(campay.settings).start();
});
after(async () => {
  await server?.kill();
  await campay?.stop();
});

test("refresh() asks the server to check with CamPay now and applies the answer once", async (t) => {
  const tracker = new PaymentTracker({ url: server.url });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected");
  const payment = await tracker.initiate(paymentBody("refresh"));
  const rec = new Recorder();
  const tracking = tracker.track(payment.reference, rec.handlers());
  await rec.waitFor("update");

  await campay.setStatus(payment.reference, "SUCCESSFUL"); // no webhook, reconciler off: only refresh() can learn it
  const pushed = rawEvent(tracker, (name, data) => name === "payment-completed" && data.reference === payment.reference);
  const refreshed = await tracking.refresh();
  assert.equal(refreshed.status, "SUCCESSFUL");
  assert.equal(refreshed.seq, 2);
  await pushed; // the same change also arrived on the socket
  await within(tracking.done, "done");
  assert.equal(rec.named("success").length, 1);
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
});

test("a payment forgotten by a restarted server (memory storage) is reported unknown with what was last known", async (t) => {
  const tracker = new PaymentTracker({ url: server.url, fallbackAfterMs: 60_000, reconnectDelayMs: 50, reconnectDelayMaxMs: 200 });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected");
  const payment = await tracker.initiate(paymentBody("forgot"));
  const rec = new Recorder();
  const tracking = tracker.track(payment.reference, rec.handlers());
  await rec.waitFor("update");

  await server.kill();
  await server.start(); // memory storage: it no longer knows the payment
  await rec.waitFor("unknown");
  assert.deepEqual(rec.named("unknown").map((c) => [c.args[0].reference, c.args[0].lastKnown.status]), [[payment.reference, "PENDING"]]);
  assert.equal(tracking.payment.status, "PENDING", "the last known state stays readable");
  assert.equal(rec.named("update").length, 1);
  assert.equal(tracker.state, "connected");
});
