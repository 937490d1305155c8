// A misbehaving server cannot break the client's guarantees. The real server no longer replays
// old events, so this one case uses a tiny socket.io server (the official Node package) that
// replays an older seq, a PENDING after a final status, duplicates and contradictions.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";
import { Server } from "socket.io";

import { PaymentTracker } from "../paytrack-client.js";
import { Recorder, distinct, rawEvent, within } from "./support.mjs";

const at = (reference, status, seq, extra = {}) => ({
  reference,
  order_id: `order-${reference}`,
  status,
  amount: 500,
  currency: "XAF",
  operator: "MTN",
  seq,
  timestamp: new Date().toISOString(),
  ...(status === "FAILED" ? { reason: "failed" } : {}),
  ...extra,
});

// The three events the server sends for one change, in its order.
function change(socket, payment) {
  socket.emit("payment-status", payment);
  if (payment.status !== "PENDING") {
    const success = payment.status === "SUCCESSFUL";
    const named = { SUCCESSFUL: "payment-success", EXPIRED: "payment-expired" }[payment.status] ?? "payment-failed";
    socket.emit(named, payment);
    socket.emit("payment-completed", { ...payment, success });
  }
}

const scenarios = {
  // Success, then replays of everything and a contradiction after the final status.
  replay(socket, data, ack) {
    const ref = data.reference;
    ack({ ok: true, payment: at(ref, "PENDING", 1) });
    change(socket, at(ref, "SUCCESSFUL", 2));
    change(socket, at(ref, "PENDING", 1)); // older seq
    change(socket, at(ref, "SUCCESSFUL", 2)); // the same change again
    socket.emit("payment-completed", { ...at(ref, "SUCCESSFUL", 2), success: true });
    socket.emit("payment-success", at(ref, "SUCCESSFUL", 2));
    change(socket, at(ref, "FAILED", 3)); // a contradiction with a higher seq
    change(socket, at(ref, "PENDING", 4)); // PENDING after a final status
    socket.emit("test-barrier", { reference: ref });
  },
  // While PENDING: an older seq, a duplicate, then a failure and a same-seq contradiction.
  older(socket, data, ack) {
    const ref = data.reference;
    ack({ ok: true, payment: at(ref, "PENDING", 1) });
    change(socket, at(ref, "PENDING", 3));
    change(socket, at(ref, "PENDING", 2)); // older
    change(socket, at(ref, "PENDING", 3)); // duplicate
    socket.emit("payment-status", { ...at(ref, "SUCCESSFUL", 9), seq: "9" }); // malformed seq
    socket.emit("payment-status", { ...at(ref, "WEIRD", 10) }); // unknown status
    socket.emit("payment-status", { ...at("someone-else", "SUCCESSFUL", 11) }); // another payment
    change(socket, at(ref, "FAILED", 4, { reason: "amount_mismatch" }));
    change(socket, at(ref, "SUCCESSFUL", 4)); // same seq, other final status
    change(socket, at(ref, "PENDING", 5));
    socket.emit("test-barrier", { reference: ref });
  },
  // A link the server expired, then CamPay reported paid (issue 37): only a newer SUCCESSFUL leaves EXPIRED.
  expired(socket, data, ack) {
    const ref = data.reference;
    ack({ ok: true, payment: at(ref, "PENDING", 1, { kind: "link" }) });
    change(socket, at(ref, "EXPIRED", 2, { kind: "link" }));
    change(socket, at(ref, "EXPIRED", 3, { kind: "link" })); // a re-announcement: nothing new
    change(socket, at(ref, "PENDING", 4, { kind: "link" })); // PENDING after a final status
    change(socket, at(ref, "FAILED", 5, { kind: "link" })); // a failure after the expiry adds nothing
    change(socket, at(ref, "SUCCESSFUL", 2, { kind: "link" })); // not newer than the expiry
    change(socket, at(ref, "SUCCESSFUL", 6, { kind: "link" })); // paid after the expiry
    change(socket, at(ref, "EXPIRED", 7, { kind: "link" })); // and never back
    change(socket, at(ref, "SUCCESSFUL", 8, { kind: "link" })); // final now: nothing more
    socket.emit("test-barrier", { reference: ref });
  },
  // A link the server expired, then CamPay reported paid another amount than asked: FAILED amount_mismatch
  // (CamPay's figures) is the other newer state that leaves EXPIRED; a plain FAILED never does.
  mismatch(socket, data, ack) {
    const ref = data.reference;
    const link = { kind: "link" };
    ack({ ok: true, payment: at(ref, "PENDING", 1, link) });
    change(socket, at(ref, "EXPIRED", 2, link));
    change(socket, at(ref, "FAILED", 3, link)); // a plain failure after the expiry adds nothing
    change(socket, at(ref, "FAILED", 2, { ...link, reason: "amount_mismatch" })); // not newer than the expiry
    change(socket, at(ref, "FAILED", 4, { ...link, reason: "amount_mismatch" }));
    change(socket, at(ref, "SUCCESSFUL", 5, link)); // final now: nothing more
    change(socket, at(ref, "EXPIRED", 6, link)); // and never back
    socket.emit("test-barrier", { reference: ref });
  },
  // The server drops the connection; the client must come back with last_seq and ignore the replay.
  reconnect(socket, data, ack, seen) {
    const ref = data.reference;
    if (seen.length === 1) {
      ack({ ok: true, payment: at(ref, "PENDING", 1) });
      setTimeout(() => socket.disconnect(true), 10); // "io server disconnect": no automatic reconnect
      return;
    }
    ack({ ok: true, payment: at(ref, "PENDING", 1) });
    change(socket, at(ref, "PENDING", 1)); // a server that ignores last_seq and replays from the start
    change(socket, at(ref, "SUCCESSFUL", 2));
    change(socket, at(ref, "PENDING", 1));
    change(socket, at(ref, "SUCCESSFUL", 2));
    socket.emit("test-barrier", { reference: ref });
  },
  // A server that lost its history (memory storage, restarted): it answers null, then learns the
  // outcome again from the provider with its own count restarted at seq 1.
  forgot(socket, data, ack, seen) {
    const ref = data.reference;
    if (seen.length === 1) {
      ack({ ok: true, payment: at(ref, "PENDING", 3) });
      setTimeout(() => socket.disconnect(true), 10);
      return;
    }
    ack({ ok: true, payment: null });
    setTimeout(() => {
      change(socket, at(ref, "PENDING", 1)); // not news: still PENDING
      change(socket, at(ref, "SUCCESSFUL", 1, { orphan: true }));
      change(socket, at(ref, "FAILED", 2)); // after the final status, nothing
      change(socket, at(ref, "PENDING", 3));
      socket.emit("test-barrier", { reference: ref });
    }, 10);
  },
  // review37: a link expired, the connection dropped, and the re-track's answer is the late SUCCESSFUL; the
  // server then sends it live too, a stale SUCCESSFUL (not newer than the expiry) and the expiry again.
  expiredback(socket, data, ack, seen) {
    const ref = data.reference;
    if (seen.length === 1) {
      ack({ ok: true, payment: at(ref, "PENDING", 1, { kind: "link" }) });
      change(socket, at(ref, "EXPIRED", 2, { kind: "link" }));
      socket.emit("test-expired", { reference: ref });
      setTimeout(() => socket.disconnect(true), 10);
      return;
    }
    ack({ ok: true, payment: at(ref, "SUCCESSFUL", 3, { kind: "link" }) });
    change(socket, at(ref, "SUCCESSFUL", 3, { kind: "link" })); // the same success, live
    change(socket, at(ref, "SUCCESSFUL", 2, { kind: "link" })); // stale
    change(socket, at(ref, "EXPIRED", 4, { kind: "link" })); // never back
    change(socket, at(ref, "SUCCESSFUL", 5, { kind: "link" })); // a later merge: nothing new for the page
    socket.emit("test-barrier", { reference: ref });
  },
};

let io;
let url;
const trackCalls = [];
before(async () => {
  const httpServer = http.createServer();
  io = new Server(httpServer, { transports: ["websocket"] });
  io.on("connection", (socket) => {
    socket.on("track-payment", (data, ack) => {
      trackCalls.push(data);
      const seen = trackCalls.filter((c) => c.reference === data.reference);
      scenarios[data.reference.split("-")[0]](socket, data, ack, seen);
    });
    socket.on("stop-tracking-payment", (data, ack) => ack?.({ ok: true }));
  });
  await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${httpServer.address().port}`;
});
after(() => io?.close());

function newTracker(t) {
  const tracker = new PaymentTracker({ url, reconnectDelayMs: 20, reconnectDelayMaxMs: 100 });
  t.after(() => tracker.close());
  return tracker;
}

test("a replayed older seq or a PENDING after the final status never reaches onUpdate", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const second = new Recorder();
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "replay-1");
  const tracking = tracker.track("replay-1", rec.handlers());
  const again = tracker.track("replay-1", second.handlers()); // two handles on one payment
  let resolved = 0;
  tracking.done.then(() => resolved++, () => {});
  again.done.then(() => resolved++, () => {});
  await barrier;
  await within(Promise.all([tracking.done, again.done]), "done");

  for (const r of [rec, second]) {
    assert.deepEqual(r.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
    assert.equal(r.named("success").length, 1);
    assert.equal(r.named("failure").length, 0);
  }
  assert.equal(resolved, 2, "each done resolved exactly once");
  assert.equal(tracking.payment.status, "SUCCESSFUL");
  assert.equal("success" in tracking.payment, false, "payment-completed's flag is not part of the payment");
});

test("while PENDING, an older or malformed event is ignored and the first final status wins", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "older-1");
  const tracking = tracker.track("older-1", rec.handlers());
  await barrier;
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "FAILED");
  assert.equal(final.reason, "amount_mismatch");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["PENDING", 3], ["FAILED", 4]]);
  assert.equal(rec.named("failure").length, 1);
  assert.equal(rec.named("success").length, 0);
});

test("after the server drops the connection the client re-tracks with last_seq and applies only what is new", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const states = [];
  tracker.on("connection", (s) => states.push(s));
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "reconnect-1");
  const tracking = tracker.track("reconnect-1", rec.handlers());
  await barrier;
  await within(tracking.done, "done");
  const calls = trackCalls.filter((c) => c.reference === "reconnect-1");
  assert.deepEqual(calls.map((c) => c.last_seq), [0, 1], "the re-track carried the last seq seen");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  assert.deepEqual(distinct(states), ["connected", "reconnecting", "connected"]);
});

test("after the server forgot a payment, the final status it learns again is accepted once, and nothing after it", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "forgot-1");
  const tracking = tracker.track("forgot-1", rec.handlers());
  await barrier;
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.deepEqual(rec.named("unknown").map((c) => c.args[0].lastKnown.seq), [3]);
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 3], ["SUCCESSFUL", 1]]);
  assert.equal(rec.named("success").length, 1);
  assert.equal(rec.named("failure").length, 0);
});

test("after EXPIRED only a newer SUCCESSFUL is applied: done stays EXPIRED, onSuccess runs once after onExpired", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const late = new Recorder();
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "expired-1");
  const tracking = tracker.track("expired-1", rec.handlers({ onExpired: rec.handler("expired") }));
  const settled = await within(tracking.done, "done");
  assert.equal(settled.status, "EXPIRED");
  await barrier;
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["EXPIRED", 2], ["SUCCESSFUL", 6]]);
  assert.deepEqual([rec.named("expired").length, rec.named("success").length, rec.named("failure").length], [1, 1, 0]);
  const order = rec.calls.filter((c) => c.name === "expired" || c.name === "success").map((c) => c.name);
  assert.deepEqual(order, ["expired", "success"]);
  assert.equal(tracking.payment.status, "SUCCESSFUL");
  assert.equal((await tracking.done).status, "EXPIRED", "done settled once, with the first final status");
  const expiredTracks = trackCalls.filter((c) => c.reference === "expired-1");
  assert.equal(expiredTracks.length, 1, "followed on the same socket after EXPIRED, never re-tracked");
  // A handle made after the success: settled SUCCESSFUL at once, from the tracker's memory of finals.
  const again = tracker.track("expired-1", late.handlers({ onExpired: late.handler("expired") }));
  assert.equal((await within(again.done, "done again")).status, "SUCCESSFUL");
  await late.waitFor("success");
  assert.equal(late.named("expired").length, 0);
});

test("after EXPIRED a newer FAILED amount_mismatch is applied: onFailure runs once after onExpired, a plain FAILED never", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "mismatch-1");
  const tracking = tracker.track("mismatch-1", rec.handlers({ onExpired: rec.handler("expired") }));
  assert.equal((await within(tracking.done, "done")).status, "EXPIRED");
  await barrier;
  const updates = rec.named("update").map((c) => [c.args[0].status, c.args[0].seq, c.args[0].reason]);
  assert.deepEqual(updates, [["PENDING", 1, undefined], ["EXPIRED", 2, undefined], ["FAILED", 4, "amount_mismatch"]]);
  assert.deepEqual([rec.named("expired").length, rec.named("failure").length, rec.named("success").length], [1, 1, 0]);
  const order = rec.calls.filter((c) => c.name === "expired" || c.name === "failure").map((c) => c.name);
  assert.deepEqual(order, ["expired", "failure"]);
  assert.equal(rec.named("failure")[0].args[0].reason, "amount_mismatch");
  assert.equal(tracking.payment.status, "FAILED");
  assert.equal((await tracking.done).status, "EXPIRED", "done settled once, with the first final status");
});

test("review37: an EXPIRED link re-tracked after a reconnect gets its late SUCCESSFUL once, stale ones ignored", async (t) => {
  const tracker = newTracker(t);
  const rec = new Recorder();
  const expired = rawEvent(tracker, (name, data) => name === "test-expired" && data.reference === "expiredback-1");
  const barrier = rawEvent(tracker, (name, data) => name === "test-barrier" && data.reference === "expiredback-1");
  const tracking = tracker.track("expiredback-1", rec.handlers({ onExpired: rec.handler("expired") }));
  await expired;
  await barrier;
  assert.equal((await within(tracking.done, "done")).status, "EXPIRED");
  const calls = trackCalls.filter((c) => c.reference === "expiredback-1");
  assert.deepEqual(calls.map((c) => c.last_seq), [0, 2], "an EXPIRED link is re-tracked with the expiry's seq");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["EXPIRED", 2], ["SUCCESSFUL", 3]]);
  assert.deepEqual([rec.named("expired").length, rec.named("success").length, rec.named("failure").length], [1, 1, 0]);
  assert.equal(tracking.payment.status, "SUCCESSFUL");
});
