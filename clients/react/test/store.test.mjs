// The store behind the hooks, against a real server.py (memory storage, sandbox provider):
// one track per reference however often React subscribes and lets go, snapshots that stay the
// same object until something changes, and a tracker that lives exactly as long as its holders.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createPaytrackStore } from "../src/index.js";
import {
  api,
  connectionCount,
  connectionReached,
  eventually,
  initiated,
  jwt,
  JWT_SECRET,
  nextTask,
  observedTrackers,
  paymentBody,
  paymentReached,
  simulate,
  startServer,
  trackingClients,
} from "./support.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

/** Waits until the server acked every track-payment sent so far: a later track's ack comes after theirs. */
async function barrier(store, seen) {
  const reference = `barrier-${Math.random().toString(36).slice(2)}`;
  const off = store.subscribePayment(reference, () => {});
  await eventually(() => seen.count(seen.acks, reference) === 1, { what: "the barrier's ack" });
  off();
}

test("subscribe, let go and subscribe again in one task (StrictMode's double mount) tracks once and never stops", async () => {
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  const keep = store.retain();
  try {
    await connectionReached(store, "connected");
    const reference = await initiated(server.url, "strict");
    const changes = [];
    const first = store.subscribePayment(reference, () => changes.push("first"));
    first(); // StrictMode: the effect's cleanup, then its second run, before any task
    const second = store.subscribePayment(reference, () => changes.push("second"));
    await nextTask();
    await paymentReached(store, reference, (s) => s.status === "PENDING", "PENDING");
    await barrier(store, seen);
    assert.equal(seen.count(seen.tracks, reference), 1, "one track() for the reference");
    assert.equal(seen.count(seen.acks, reference), 1, "one track-payment on the socket");
    assert.equal(seen.count(seen.stops, reference), 0, "never stopped in between");
    assert.equal(await trackingClients(server.url, reference), 1);
    assert.ok(!changes.includes("first"), "the released listener hears nothing");
    second();
  } finally {
    keep();
    store.close();
  }
});

test("the last user leaving stops the reference after a task, and the server stops tracking it", async () => {
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  try {
    await connectionReached(store, "connected");
    const reference = await initiated(server.url, "last-user");
    const a = store.subscribePayment(reference, () => {});
    const b = store.subscribePayment(reference, () => {});
    await eventually(() => seen.count(seen.acks, reference) === 1, { what: "the track's ack" });
    a();
    await nextTask();
    assert.equal(seen.count(seen.stops, reference), 0, "one user left: still tracked");
    assert.equal(await trackingClients(server.url, reference), 1);
    b();
    assert.equal(seen.count(seen.stops, reference), 0, "not stopped in the same task");
    await nextTask();
    assert.equal(seen.count(seen.stops, reference), 1);
    await eventually(async () => (await trackingClients(server.url, reference)) === 0, { what: "the server to stop tracking" });
    assert.equal(store.getPayment(reference).status, "loading", "a reference nobody follows has no state kept");
    assert.equal(seen.count(seen.tracks, reference), 1);
  } finally {
    store.close();
  }
});

test("a snapshot is the same object until the payment changes, and follows it to its final state", async () => {
  const store = createPaytrackStore({ url: server.url }, observedTrackers());
  const renders = [];
  try {
    const reference = await initiated(server.url, "snap");
    assert.equal(store.getPayment(null).status, "idle");
    assert.equal(store.getPayment(reference).status, "loading");
    const off = store.subscribePayment(reference, () => renders.push(store.getPayment(reference)));
    const pending = await paymentReached(store, reference, (s) => s.status === "PENDING", "PENDING");
    assert.equal(store.getPayment(reference), pending, "read twice without a change: the same object");
    assert.equal(pending.payment.reference, reference);
    assert.ok(pending.payment.ussd_code, "the initiate's USSD code is in the tracked state");
    assert.ok(Object.isFrozen(pending));
    await simulate(server.url, reference, "SUCCESSFUL");
    const paid = await paymentReached(store, reference, (s) => s.status === "SUCCESSFUL", "SUCCESSFUL");
    assert.notEqual(paid, pending);
    assert.equal(paid.payment.seq, 2);
    assert.equal(paid.error, null);
    assert.deepEqual(
      renders.map((s) => s.status),
      ["PENDING", "SUCCESSFUL"],
      "one notification per change",
    );
    off();
  } finally {
    store.close();
  }
});

test("a payment the server does not know reads as unknown", async () => {
  const store = createPaytrackStore({ url: server.url }, observedTrackers());
  try {
    const snapshot = await paymentReached(store, "no-such-reference", (s) => s.status === "unknown", "unknown");
    assert.equal(snapshot.payment, null);
  } finally {
    store.close();
  }
});

test("the connection snapshot follows the tracker, stays the same object, and no socket exists before a subscription", async () => {
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  try {
    const before = await connectionCount(server.url);
    assert.equal(store.tracker, null);
    assert.equal(store.getConnection().state, "connecting");
    assert.equal(seen.trackers.length, 0, "reading snapshots creates nothing");
    await connectionReached(store, "connected");
    assert.equal(seen.trackers.length, 1);
    const snapshot = store.getConnection();
    assert.equal(store.getConnection(), snapshot);
    assert.deepEqual({ ...snapshot }, { state: "connected", nextAttemptAt: null, error: null });
    await eventually(async () => (await connectionCount(server.url)) === before + 1, { what: "one connection" });
  } finally {
    store.close();
  }
});

test("the tracker is closed after its last holder lets go, not when a holder comes back within the task", async () => {
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  const first = store.retain();
  await connectionReached(store, "connected");
  first();
  const again = store.retain(); // StrictMode: the provider's effect runs again
  await nextTask();
  assert.equal(store.closed, false);
  assert.equal(store.getConnection().state, "connected");
  again();
  assert.equal(store.closed, false, "not in the same task");
  await nextTask();
  assert.equal(store.closed, true);
  assert.equal(seen.trackers.length, 1, "one tracker for the store's whole life");
  // Closed until someone looks again, who opens a new tracker at once: what they see first is connecting.
  assert.equal(store.getConnection().state, "connecting");
  store.close();
  assert.equal(store.getConnection().state, "offline", "closed for good");
});

test("another user's payment: the snapshot carries the server's forbidden, tracking ends", async () => {
  const authServer = await startServer({ AUTH_MODE: "jwt", JWT_SECRET });
  const store = createPaytrackStore({ url: authServer.url, token: () => jwt("intruder", 600) }, observedTrackers());
  try {
    const { status, body } = await api(authServer.url, "POST", "/api/payment/initiate", paymentBody("owned"), jwt("owner", 600));
    assert.equal(status, 201);
    const refused = await paymentReached(store, body.reference, (s) => s.error !== null, "an error");
    assert.equal(refused.error.code, "forbidden");
    assert.equal(refused.payment, null, "nothing of the payment reached the intruder");
  } finally {
    store.close();
    await authServer.kill();
  }
});
