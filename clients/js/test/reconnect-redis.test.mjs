// Success while the socket is down arrives once after the reconnect: the server process is
// killed, the payment completes through another instance on the same Redis, the server starts
// again on its port, and the client re-tracks with last_seq.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { Recorder, ServerProcess, distinct, rawEvent, simulate, startRedis, stateReached, within } from "./support.mjs";

let redis;
const servers = [];
before(async () => {
  redis = await startRedis();
});
after(async () => {
  for (const server of servers) await server.kill();
  await redis?.stop();
});

function onRedis() {
  const server = new ServerProcess({
    STORAGE_BACKEND: "redis",
    REDIS_URL: redis.url,
    REDIS_RECONNECT_INTERVAL_SECONDS: "0.1",
  });
  servers.push(server);
  return server.start();
}

test("a success applied while the socket was down arrives exactly once after the reconnect", async (t) => {
  const a = await onRedis();
  const b = await onRedis();
  // No REST fallback here: the socket's own catch-up is what is tested.
  const tracker = new PaymentTracker({ url: a.url, fallbackAfterMs: 60_000, reconnectDelayMs: 50, reconnectDelayMaxMs: 200 });
  t.after(() => tracker.close());
  const states = [];
  tracker.on("connection", (s) => states.push(s));
  const events = [];
  tracker.on("event", (name, data) => events.push({ name, data }));

  const payment = await tracker.initiate({ order_id: `redis-${Date.now()}`, amount: 500, phone_number: "237671234567" });
  const rec = new Recorder();
  const firstAck = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === payment.reference);
  const tracking = tracker.track(payment.reference, rec.handlers());
  await firstAck;

  await a.kill();
  await stateReached(tracker, "reconnecting");
  const before = events.length;
  const outcome = await simulate(b.url, payment.reference, "SUCCESSFUL"); // through the other instance
  assert.equal(outcome.outcome, "applied");

  const reAck = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === payment.reference);
  await a.start(); // the same port again
  await stateReached(tracker, "connected");
  const ack = await reAck;
  assert.equal(ack.data.payment.status, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");

  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  // The re-track carried last_seq: the server sent only what was missed, not seq 1 again.
  const replayed = events.slice(before).filter((e) => e.name === "payment-status").map((e) => e.data.seq);
  assert.deepEqual(replayed, [2]);
  assert.deepEqual(distinct(states), ["connected", "reconnecting", "connected"]);
});
