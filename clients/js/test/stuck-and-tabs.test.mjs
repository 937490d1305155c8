// onStuck with a short stuckAfterMs, and sharing between trackers through BroadcastChannel
// (Node has it too; in a browser these are tabs of one origin).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { Recorder, paymentBody, simulate, startServer, stateReached, within } from "./support.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

test("onStuck fires once when a payment stays PENDING past stuckAfterMs, and not after it settles", async (t) => {
  const tracker = new PaymentTracker({ url: server.url, stuckAfterMs: 150 });
  t.after(() => tracker.close());
  const payment = await tracker.initiate(paymentBody("stuck"));
  const rec = new Recorder();
  const tracking = tracker.track(payment.reference, rec.handlers());
  await rec.waitFor("stuck");
  const [stuck] = rec.named("stuck");
  assert.equal(stuck.args[0].status, "PENDING");
  assert.equal(stuck.args[0].reference, payment.reference);

  // A handle with its own, longer bound, on a payment that settles first: never stuck.
  const other = new Recorder();
  const second = await tracker.initiate(paymentBody("stuck"));
  const settling = tracker.track(second.reference, other.handlers({ stuckAfterMs: 60_000 }));
  await other.waitFor("update");
  await simulate(server.url, second.reference, "SUCCESSFUL");
  await within(settling.done, "done");

  await simulate(server.url, payment.reference, "SUCCESSFUL");
  await within(tracking.done, "done");
  assert.equal(rec.named("stuck").length, 1);
  assert.equal(other.named("stuck").length, 0);
});

test("a tracker that cannot reach the server learns a completion from another one on the same origin", async (t) => {
  const first = new PaymentTracker({ url: server.url, shareAcrossTabs: true });
  t.after(() => first.close());
  const payment = await first.initiate(paymentBody("tabs"));
  const firstRec = new Recorder();
  first.track(payment.reference, firstRec.handlers());
  await firstRec.waitFor("update");

  // The second tracker reaches nothing: its socket path does not exist and its fetch fails.
  // It can learn only from its sibling (the channel is named after the server URL).
  let fetches = 0;
  const blocked = () => {
    fetches += 1;
    return Promise.reject(new TypeError("blocked by the test"));
  };
  const second = new PaymentTracker({ url: server.url, shareAcrossTabs: true, fetch: blocked, fallbackAfterMs: 0, fallbackPollMs: 50, path: "/nothing-here" });
  t.after(() => second.close());
  const states = [];
  second.on("connection", (state) => states.push(state));
  await stateReached(second, "polling");
  const rec = new Recorder();
  const tracking = second.track(payment.reference, rec.handlers());
  await rec.waitFor("update"); // answered by the first tracker: it asked on the channel
  assert.equal(tracking.payment.status, "PENDING");

  await simulate(server.url, payment.reference, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  assert.ok(!states.includes("connected"), "it never had a socket");
  assert.ok(fetches > 0, "it did try REST");
});
