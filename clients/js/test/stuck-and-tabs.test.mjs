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

test("a tracker without a socket learns a completion from another one on the same origin, confirmed over REST", async (t) => {
  const first = new PaymentTracker({ url: server.url, shareAcrossTabs: true });
  t.after(() => first.close());
  const payment = await first.initiate(paymentBody("tabs"));
  const firstRec = new Recorder();
  first.track(payment.reference, firstRec.handlers());
  await firstRec.waitFor("update");

  // The second tracker has no socket (its path does not exist) and polls REST only every ten minutes:
  // a completion reaches it at once only through its sibling (the channel is named after the server
  // URL), and is shown only once the server confirmed it with a read.
  const reads = [];
  const counted = (url, init) => {
    reads.push({ url: String(url), at: Date.now() });
    return fetch(url, init);
  };
  const second = new PaymentTracker({ url: server.url, shareAcrossTabs: true, fetch: counted, fallbackAfterMs: 0, fallbackPollMs: 600_000, path: "/nothing-here" });
  t.after(() => second.close());
  const states = [];
  second.on("connection", (state) => states.push(state));
  const rec = new Recorder();
  const tracking = second.track(payment.reference, rec.handlers());
  await rec.waitFor("update");
  assert.equal(tracking.payment.status, "PENDING");
  await stateReached(second, "polling");
  const trackingReads = () => reads.filter((r) => r.url.includes("/tracking/")).length;
  const readsBefore = trackingReads();

  await simulate(server.url, payment.reference, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.ok(trackingReads() > readsBefore, "the sibling's word was checked with the server");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  assert.ok(!states.includes("connected"), "it never had a socket");
});
