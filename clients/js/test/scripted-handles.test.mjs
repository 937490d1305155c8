// What a page's handles see, against a scripted server: `done` is settled before any handler runs,
// settled payments are let go, odd acks never end tracking of a payment that may still succeed, and
// another tab's word on a final status is checked with the server first.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";
import v8 from "node:v8";
import vm from "node:vm";

import { PaymentTracker } from "../paytrack-client.js";
import { ack, payment, startScriptedServer } from "./scripted-server.mjs";
import { Recorder, rawEvent, stateReached, within } from "./support.mjs";

let server;
before(async () => {
  server = await startScriptedServer();
});
beforeEach(() => server.reset());
after(() => server?.close());

const reads = (reference) => server.requests.filter((r) => r.path === `/api/payment/tracking/${reference}`);

function newTracker(t, options = {}) {
  const tracker = new PaymentTracker({ url: server.url, reconnectDelayMs: 20, reconnectDelayMaxMs: 100, ...options });
  t.after(() => tracker.close());
  return tracker;
}

test("stop() inside onUpdate of the final state: done resolves and onSuccess still runs", async (t) => {
  server.set(payment("stop-1", "PENDING", 1), { push: false });
  const tracker = newTracker(t);
  const rec = new Recorder();
  const handle = tracker.track("stop-1", {
    ...rec.handlers(),
    onUpdate: (p) => {
      rec.handler("update")(p);
      if (p.status !== "PENDING") handle.stop(); // the page is done with it
    },
  });
  await rec.waitFor("update");
  server.set(payment("stop-1", "SUCCESSFUL", 2));
  const final = await within(handle.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  await rec.waitFor("success");
  assert.equal(rec.named("success").length, 1);
});

test("close() inside onUpdate of the final state: done resolves with it and onSuccess still runs", async (t) => {
  server.set(payment("close-1", "SUCCESSFUL", 2), { push: false });
  const tracker = newTracker(t);
  const rec = new Recorder();
  const handle = tracker.track("close-1", {
    ...rec.handlers(),
    onUpdate: (p) => {
      rec.handler("update")(p);
      if (p.status !== "PENDING") tracker.close(); // a one-payment page leaving
    },
  });
  const final = await within(handle.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.equal(rec.named("success").length, 1);
});

test("settled payments are let go with their handlers, without stop()", async (t) => {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc");
  const tracker = newTracker(t);
  const count = 300;
  const refs = [];
  const handles = [];
  const checkout = (reference) => {
    server.set(payment(reference, "SUCCESSFUL", 2), { push: false });
    const handlers = { onSuccess: () => {}, page: new Uint8Array(16 * 1024) }; // what a page's closures hold
    refs.push(new WeakRef(handlers));
    handles.push(tracker.track(reference, handlers));
  };
  for (let i = 0; i < count; i++) checkout(`settled-${i}`);
  await within(Promise.all(handles.map((h) => h.done)), "every done", 20_000);
  handles.length = 0; // the page keeps nothing
  // deref() keeps its target alive until the end of the job that called it: collect in a job of its own.
  const collectedNow = async () => {
    await new Promise((resolve) => setTimeout(resolve, 0));
    gc();
    await new Promise((resolve) => setTimeout(resolve, 0));
    return refs.filter((r) => r.deref() !== undefined).length;
  };
  let kept = await collectedNow();
  for (let i = 0; i < 4 && kept > 0; i++) kept = await collectedNow();
  assert.equal(kept, 0, `${refs.map((r, i) => (r.deref() ? i : -1)).filter((i) => i >= 0)}: ${kept} of ${count} settled checkouts' handlers are still held`);
});

test("a stuckAfterMs above 2^31-1 ms never fires early", async (t) => {
  server.script.track = ack.never;
  const tracker = newTracker(t, { fallbackAfterMs: 60_000 });
  const late = new Recorder();
  const control = new Recorder();
  tracker.track("stuck-far-1", late.handlers({ stuckAfterMs: 2 ** 31 + 10 }));
  tracker.track("stuck-near-1", control.handlers({ stuckAfterMs: 100 }));
  await control.waitFor("stuck");
  assert.equal(late.named("stuck").length, 0, "fired long before its time");
});

test("a second handle on a payment the server does not know gets onUnknown too", async (t) => {
  const tracker = newTracker(t);
  const first = new Recorder();
  tracker.track("unknown-1", first.handlers());
  await first.waitFor("unknown");
  const second = new Recorder();
  tracker.track("unknown-1", second.handlers());
  await second.waitFor("unknown");
  assert.equal(second.named("unknown")[0].args[0].reference, "unknown-1");
  assert.equal(first.named("unknown").length, 1, "the first handle is not told again");
});

for (const [name, answer] of [
  ["service_unavailable", ack.error("service_unavailable")],
  ["an empty ack", ack.empty],
  ["a code the client does not know", ack.error("brand_new_code")],
]) {
  test(`a track-payment answered with ${name} is asked again, and REST covers the payment meanwhile`, async (t) => {
    const reference = `odd-ack-${name.replace(/\W+/g, "-")}`;
    server.script.track = answer;
    server.set(payment(reference, "PENDING", 1), { push: false });
    const tracker = newTracker(t, { fallbackPollMs: 50 });
    const errors = [];
    tracker.on("error", (err) => errors.push(err));
    const rec = new Recorder();
    const handle = tracker.track(reference, rec.handlers());
    await server.until(() => server.trackCalls.filter((c) => c.reference === reference).length >= 2, "the track asked again");
    await server.until(() => reads(reference).length >= 1, "a REST read of it");
    server.set(payment(reference, "SUCCESSFUL", 2), { push: false }); // the socket would never tell
    const final = await within(handle.done, "done");
    assert.equal(final.status, "SUCCESSFUL");
    assert.equal(rec.named("success").length, 1);
    assert.ok(errors.length >= 1 && errors.every((e) => e.reference === reference), "reported on on('error')");
  });
}

test("a final status another tab claims is applied only once the server confirms it", async (t) => {
  server.set(payment("tab-1", "PENDING", 1), { push: false });
  const tracker = newTracker(t, { shareAcrossTabs: true });
  const rec = new Recorder();
  const handle = tracker.track("tab-1", rec.handlers());
  await rec.waitFor("update");
  const otherTab = new BroadcastChannel(`paytrack:${server.url}`);
  t.after(() => otherTab.close());

  // A stale tab says SUCCESSFUL; the server says PENDING. The socket is up: the client asks it again.
  const tracksBefore = server.trackCalls.filter((c) => c.reference === "tab-1").length;
  const checked = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === "tab-1");
  otherTab.postMessage({ type: "update", reference: "tab-1", payment: payment("tab-1", "SUCCESSFUL", 7) });
  await checked;
  assert.equal(server.trackCalls.filter((c) => c.reference === "tab-1").length, tracksBefore + 1, "checked with the server");
  assert.equal(handle.payment.status, "PENDING");
  assert.deepEqual(rec.named("update").map((c) => c.args[0].status), ["PENDING"], "the unconfirmed claim was never shown");
  assert.equal(rec.named("success").length, 0);

  // Now the server has it (but pushes nothing): the next claim is confirmed, and done resolves with the server's record.
  server.set(payment("tab-1", "SUCCESSFUL", 2), { push: false });
  otherTab.postMessage({ type: "update", reference: "tab-1", payment: payment("tab-1", "SUCCESSFUL", 2) });
  const final = await within(handle.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.equal(final.seq, 2);
  assert.equal(rec.named("success").length, 1);
});

test("with no payment tracked, a tracker that connects is connected", async (t) => {
  const tracker = newTracker(t);
  await stateReached(tracker, "connected");
});
