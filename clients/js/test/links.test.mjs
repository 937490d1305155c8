// Payment links (issue 37) against real server.py processes on the sandbox provider, whose
// stand-in for CamPay's hosted page (/payment-test/link/<reference>) the payer pays on: a link paid
// by card, a link nobody paid (EXPIRED: never a failure), one paid after it expired (SUCCESSFUL
// after EXPIRED: onSuccess after onExpired), payByLink's retry after an answer
// lost on the way back (the same Idempotency-Key, one payment), and a link paid while the tracker
// was disconnected (caught up by the re-track on reconnect).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker, PaytrackError } from "../paytrack-client.js";
import {
  Recorder,
  api,
  orderId,
  payLink,
  rawEvent,
  startProxy,
  startServer,
  stateReached,
  within,
} from "./support.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

function newTracker(t, url, options = {}) {
  const tracker = new PaymentTracker({ url, shareAcrossTabs: false, ...options });
  t.after(() => tracker.close());
  return tracker;
}

/** Handlers that record onExpired too. */
function recorded() {
  const rec = new Recorder();
  return { rec, handlers: rec.handlers({ onExpired: rec.handler("expired") }) };
}

test("a link paid by card: payByLink answers the link, onSuccess runs once with operator null", async (t) => {
  const tracker = newTracker(t, server.url);
  const order = orderId("link-card");
  const payment = await tracker.payByLink({ order_id: order, amount: 1000, payment_options: "CARD" });
  assert.equal(payment.kind, "link");
  assert.equal(payment.status, "PENDING");
  assert.ok(payment.link.startsWith(`${server.url}/payment-test/link/`), payment.link);
  assert.ok(Date.parse(payment.link_expires_at) > Date.now(), payment.link_expires_at);
  assert.equal(payment.operator, null);
  assert.equal(payment.phone_number, null);
  assert.equal(payment.ussd_code, null);

  const { rec, handlers } = recorded();
  const tracking = tracker.track(payment.reference, handlers);
  await rec.waitFor("update");
  assert.equal(tracking.payment.link, payment.link, "payByLink's answer seeds the state");

  assert.equal((await payLink(payment.link, "CARD")).status, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.equal(final.operator, null, "a card payment has no operator");
  assert.equal(final.kind, "link");
  await rec.waitFor("success");
  assert.equal(rec.named("success").length, 1);
  assert.equal(rec.named("success")[0].args[0].operator, null);
  assert.deepEqual([rec.named("failure").length, rec.named("expired").length], [0, 0]);

  // The order is paid: a second link for it is refused at once, naming the payment that paid it.
  await assert.rejects(within(tracker.payByLink({ order_id: order, amount: 1000 }), "payByLink"), (err) => {
    assert.ok(err instanceof PaytrackError);
    assert.equal(err.code, "order_paid");
    assert.equal(err.reference, payment.reference);
    assert.ok(err.idempotencyKey);
    return true;
  });
});

test("a link nobody paid: onExpired once and done resolves EXPIRED, never onFailure, on the socket and over REST", async (t) => {
  const short = await startServer({
    LINK_LIFETIME_SECONDS: "2",
    RECONCILE_AFTER_SECONDS: "0",
    RECONCILE_INTERVAL_SECONDS: "0.2",
    LINK_RECONCILE_INTERVAL_SECONDS: "0.2",
  });
  t.after(() => short.kill());
  const proxy = await startProxy(short.url); // refuses websockets: its tracker is on REST alone
  t.after(() => proxy.close());
  const { status, body: link } = await api(short.url, "POST", "/api/payment/link", { order_id: orderId("link-never"), amount: 500 });
  assert.equal(status, 201, JSON.stringify(link));

  const live = newTracker(t, short.url);
  const rest = newTracker(t, proxy.url, { fallbackAfterMs: 50, fallbackPollMs: 200, reconnectDelayMs: 1000 });
  const restStates = [];
  rest.on("connection", (state) => restStates.push(state));
  const events = [];
  live.on("event", (name, data) => events.push([name, data?.status]));
  const socketSide = recorded();
  const restSide = recorded();
  const liveTracking = live.track(link.reference, socketSide.handlers);
  const restTracking = rest.track(link.reference, restSide.handlers);

  for (const [tracking, { rec }] of [[liveTracking, socketSide], [restTracking, restSide]]) {
    const final = await within(tracking.done, "done", 20_000);
    assert.equal(final.status, "EXPIRED");
    assert.equal(final.kind, "link");
    await rec.waitFor("expired");
    assert.equal(rec.named("expired").length, 1);
    assert.equal(rec.named("expired")[0].args[0].status, "EXPIRED");
    assert.deepEqual([rec.named("failure").length, rec.named("success").length], [0, 0]);
    assert.deepEqual(rec.named("update").map((c) => c.args[0].status), ["PENDING", "EXPIRED"]);
  }
  assert.ok(events.some(([name]) => name === "payment-expired"), "the server said payment-expired");
  assert.ok(!events.some(([name]) => name === "payment-failed"));
  assert.ok(restStates.includes("polling") && !restStates.includes("connected"), `the second tracker read it over REST: ${restStates}`);

  // A later track() of the settled payment is answered from memory: EXPIRED at once.
  const later = recorded();
  const again = live.track(link.reference, later.handlers);
  assert.equal((await within(again.done, "done again")).status, "EXPIRED");
  await later.rec.waitFor("expired");
});

test("a link paid after it expired: onSuccess runs once after onExpired, done stays EXPIRED, on the socket and over REST", async (t) => {
  // CamPay is never told a link's lifetime, so its page stays payable past the server's expiry; the
  // server makes the link SUCCESSFUL when CamPay reports the payment (issue 37), at a higher seq.
  const short = await startServer({
    LINK_LIFETIME_SECONDS: "2",
    RECONCILE_AFTER_SECONDS: "0",
    RECONCILE_INTERVAL_SECONDS: "0.2",
    LINK_RECONCILE_INTERVAL_SECONDS: "0.2",
  });
  t.after(() => short.kill());
  const proxy = await startProxy(short.url); // refuses websockets: its tracker is on REST alone
  t.after(() => proxy.close());
  const { status, body: link } = await api(short.url, "POST", "/api/payment/link", { order_id: orderId("link-late"), amount: 500 });
  assert.equal(status, 201, JSON.stringify(link));

  const live = newTracker(t, short.url);
  const rest = newTracker(t, proxy.url, { fallbackAfterMs: 50, fallbackPollMs: 200, reconnectDelayMs: 1000 });
  const events = [];
  live.on("event", (name, data) => events.push([name, data?.status]));
  const sides = [recorded(), recorded()];
  const trackings = [live.track(link.reference, sides[0].handlers), rest.track(link.reference, sides[1].handlers)];
  for (const tracking of trackings) assert.equal((await within(tracking.done, "done", 20_000)).status, "EXPIRED");

  assert.equal((await payLink(link.link, "MOMO")).status, "SUCCESSFUL"); // the payer paid on the still open page
  for (const [i, { rec }] of sides.entries()) {
    await rec.waitFor("success", 1, 20_000);
    assert.deepEqual(rec.named("update").map((c) => c.args[0].status), ["PENDING", "EXPIRED", "SUCCESSFUL"], `tracker ${i}`);
    assert.deepEqual([rec.named("expired").length, rec.named("success").length, rec.named("failure").length], [1, 1, 0]);
    assert.equal(rec.named("success")[0].args[0].operator, "MTN");
    assert.ok(rec.named("success")[0].args[0].seq > rec.named("expired")[0].args[0].seq);
    assert.equal(trackings[i].payment.status, "SUCCESSFUL");
    assert.equal((await trackings[i].done).status, "EXPIRED", "done settled once, with the first final status");
  }
  const told = events.filter(([name]) => name === "payment-completed").map(([, s]) => s);
  assert.deepEqual(told, ["EXPIRED", "SUCCESSFUL"], "the server completed the payment again, once");
});

test("payByLink whose answer was lost asks again with the same key and gets the same payment", async (t) => {
  const proxy = await startProxy(server.url);
  t.after(() => proxy.close());
  let lost = 0;
  proxy.loseAnswer = (entry) => entry.method === "POST" && entry.url === "/api/payment/link" && lost++ === 0;
  const tracker = newTracker(t, proxy.url, { reconnectDelayMs: 50, reconnectDelayMaxMs: 100 });
  const order = orderId("link-lost");
  const retries = [];
  const payment = await within(
    tracker.payByLink({ order_id: order, amount: 500 }, { onRetry: (err, info) => retries.push([err.code, err.idempotencyKey, info.attempt]) }),
    "payByLink",
  );

  const posts = proxy.requests.filter((r) => r.method === "POST" && r.url === "/api/payment/link");
  assert.equal(posts.length, 2);
  assert.ok(posts[0].lost && posts[0].status === 201, "the first attempt reached the server, its answer was lost");
  const key = posts[0].idempotencyKey;
  assert.ok(key);
  assert.deepEqual(posts.map((p) => p.idempotencyKey), [key, key], "one key for both attempts");
  assert.ok(posts[1].replayed, "the server answered the retry with the first attempt's payment");
  assert.deepEqual(retries, [["network_error", key, 1]]);
  const stored = await api(server.url, "GET", `/api/payment/status/${order}`);
  assert.equal(stored.body.reference, payment.reference, "one payment for the order: the one payByLink returned");
  assert.equal(payment.kind, "link");
});

test("a link paid while the tracker was disconnected is caught up by the re-track on reconnect", async (t) => {
  const proxy = await startProxy(server.url);
  t.after(() => proxy.close());
  proxy.allowUpgrades = true;
  // No REST polling: the socket's own catch-up (a re-track with last_seq) is what is tested.
  const tracker = newTracker(t, proxy.url, { fallbackPollMs: 0, reconnectDelayMs: 50, reconnectDelayMaxMs: 200 });
  const events = [];
  tracker.on("event", (name, data) => events.push({ name, data }));
  const payment = await tracker.payByLink({ order_id: orderId("link-away"), amount: 700 });
  const { rec, handlers } = recorded();
  const acked = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === payment.reference);
  const tracking = tracker.track(payment.reference, handlers);
  assert.equal((await acked).data.payment.status, "PENDING");

  proxy.allowUpgrades = false;
  proxy.cut();
  await stateReached(tracker, "reconnecting");
  const before = events.length;
  assert.equal((await payLink(payment.link, "MOMO", { phone_number: "237691234567" })).status, "SUCCESSFUL");
  assert.equal(tracking.payment.status, "PENDING", "nothing reached the disconnected tracker");

  const reAck = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === payment.reference);
  proxy.allowUpgrades = true;
  const ack = await reAck;
  assert.equal(ack.data.payment.status, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.equal(final.operator, "ORANGE", "paid by Orange Money on the link's page");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  // The re-track carried last_seq 1: the server sent what was missed, not the PENDING state again.
  const replayed = events.slice(before).filter((e) => e.name === "payment-status").map((e) => e.data.seq);
  assert.deepEqual(replayed, [2]);
});
