// The REST polling fallback, through a proxy that refuses websocket upgrades, and the return
// to the socket once upgrades pass again.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { Recorder, distinct, eventually, paymentBody, rawEvent, simulate, startProxy, startServer, stateReached, within } from "./support.mjs";

let server;
let proxy;
before(async () => {
  server = await startServer();
  proxy = await startProxy(server.url);
});
after(async () => {
  await proxy?.close();
  await server?.kill();
});

const trackingReads = (reference) => proxy.requests.filter((r) => r.url === `/api/payment/tracking/${reference}`);

test("with websockets refused it polls with If-None-Match, then goes back to the socket", async (t) => {
  const reads = []; // the tracker's own REST calls, counted when made (not when the proxy sees them)
  const tracker = new PaymentTracker({
    url: proxy.url,
    fetch: (url, init) => {
      reads.push(String(url));
      return fetch(url, init);
    },
    fallbackAfterMs: 100,
    fallbackPollMs: 100,
    reconnectDelayMs: 50,
    reconnectDelayMaxMs: 200,
  });
  t.after(() => tracker.close());
  const states = [];
  tracker.on("connection", (s) => states.push(s));
  const restReads = []; // what the "event" stream reports of REST, for a page's log
  tracker.on("event", (name, data) => {
    if (name === "rest:tracking") restReads.push(data);
  });
  await stateReached(tracker, "polling");
  await eventually(() => proxy.upgrades >= 1, { what: "the socket to try and be refused" });

  // A payment followed over REST only.
  const first = await tracker.initiate(paymentBody("poll"));
  const rec = new Recorder();
  const tracking = tracker.track(first.reference, rec.handlers());
  await eventually(() => trackingReads(first.reference).some((r) => r.ifNoneMatch && r.status === 304), {
    what: "a conditional read answered 304",
  });
  await simulate(server.url, first.reference, "SUCCESSFUL");
  const final = await within(tracking.done, "done");
  assert.equal(final.status, "SUCCESSFUL");
  assert.deepEqual(rec.named("update").map((c) => [c.args[0].status, c.args[0].seq]), [["PENDING", 1], ["SUCCESSFUL", 2]]);
  assert.equal(rec.named("success").length, 1);
  assert.ok(!states.includes("connected"));
  // Each 200 read is reported once, with its body (a 304 brought nothing and is not): the change REST brought is there.
  const firstReads = restReads.filter((d) => d.reference === first.reference);
  assert.equal(firstReads.length, trackingReads(first.reference).filter((r) => r.status === 200).length);
  assert.equal(firstReads.at(-1).payment.status, "SUCCESSFUL");

  // A second payment, tracked while polling; then the proxy lets websockets through.
  const second = await tracker.initiate(paymentBody("poll"));
  const rec2 = new Recorder();
  const tracking2 = tracker.track(second.reference, rec2.handlers());
  await rec2.waitFor("update");
  const reTracked = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === second.reference);
  let readsAtConnect = null;
  tracker.on("connection", (s) => {
    if (s === "connected") readsAtConnect = reads.length;
  });
  proxy.allowUpgrades = true;
  await stateReached(tracker, "connected");
  await reTracked;

  const live = rawEvent(tracker, (name, data) => name === "payment-status" && data.reference === second.reference && data.seq === 2);
  await simulate(server.url, second.reference, "SUCCESSFUL");
  await live; // pushed on the socket
  await within(tracking2.done, "done");
  assert.equal(rec2.named("success").length, 1);
  assert.equal(reads.length, readsAtConnect, "no REST call once the socket is back");
  assert.deepEqual(distinct(states).slice(-2), ["polling", "connected"]);
});

test("when the server cannot be reached over the socket or REST the state is offline", async (t) => {
  const unreachable = await startProxy("http://127.0.0.1:9"); // nothing listens on the discard port
  t.after(() => unreachable.close());
  const tracker = new PaymentTracker({ url: unreachable.url, fallbackAfterMs: 50, fallbackPollMs: 50, reconnectDelayMs: 50, reconnectDelayMaxMs: 100 });
  t.after(() => tracker.close());
  tracker.track("0b6a3c52-0000-4000-8000-000000000002");
  await stateReached(tracker, "offline");
});
