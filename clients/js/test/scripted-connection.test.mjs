// The connection against servers that misbehave as scripted (scripted-server.mjs): a connection only
// counts once it proved itself, the REST fallback covers the payments until then, and the page is told
// where the connection stands (`state`, `nextAttemptAt`) and why it cannot connect (`on("error")`).
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { payment, ack, startScriptedServer } from "./scripted-server.mjs";
import { Recorder, freePort, stateReached, within } from "./support.mjs";

let server;
before(async () => {
  server = await startScriptedServer();
});
beforeEach(() => server.reset());
after(() => server?.close());

const reads = (reference) => server.requests.filter((r) => r.path === `/api/payment/tracking/${reference}`);

test("a server that accepts every socket and drops it at once: backoff keeps growing and REST settles the payment", async (t) => {
  server.script.connect = "drop";
  server.set(payment("drop-1", "SUCCESSFUL", 2), { push: false });
  let tokens = 0;
  const base = 50;
  const max = 800;
  const tracker = new PaymentTracker({
    url: server.url,
    token: () => `token-${++tokens}`,
    reconnectDelayMs: base,
    reconnectDelayMaxMs: max,
    fallbackAfterMs: 300,
    fallbackPollMs: 200,
  });
  t.after(() => tracker.close());
  const rec = new Recorder();
  const tracking = tracker.track("drop-1", rec.handlers());
  const final = await within(tracking.done, "done, from REST", 20_000);
  assert.equal(final.status, "SUCCESSFUL");
  assert.equal(rec.named("success").length, 1);
  assert.ok(reads("drop-1").length >= 1, "REST answered it");

  await server.until(() => server.connections.length >= 6, "six connections");
  // Each connection was accepted, so none proved itself: the wait before connection k+1 is the backoff's
  // k-th step, at least half of min(max, base * 2^k) (its jitter is ±50 %). A reset on every connect
  // would keep every gap near `base`.
  const at = server.connections.map((c) => c.at);
  for (let k = 1; k < 6; k++) {
    const least = Math.min(max, base * 2 ** k) * 0.5;
    assert.ok(at[k + 1] === undefined || at[k + 1] - at[k] >= least - 2, `gap ${k}: ${at[k + 1] - at[k]} ms < ${least} ms: the backoff was reset by a connect`);
  }
  assert.ok(tokens <= server.connections.length, `${tokens} token() calls for ${server.connections.length} connections`);
});

test("polling goes on after a connect until a track ack proves the connection, and stops then", async (t) => {
  server.script.track = ack.never; // connected, but nothing answers track-payment
  server.set(payment("proof-1", "SUCCESSFUL", 2), { push: false });
  server.set(payment("proof-2", "PENDING", 1), { push: false });
  const fetched = [];
  const tracker = new PaymentTracker({
    url: server.url,
    fetch: (url, init) => {
      fetched.push(String(url));
      return fetch(url, init);
    },
    ackTimeoutMs: 150,
    reconnectDelayMs: 50,
    fallbackAfterMs: 200,
    fallbackPollMs: 100,
  });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected");
  const first = tracker.track("proof-1");
  const final = await within(first.done, "done, from REST while the socket was connected");
  assert.equal(final.status, "SUCCESSFUL");
  assert.ok(reads("proof-1").length >= 1);

  const rec = new Recorder();
  const second = tracker.track("proof-2", rec.handlers());
  await server.until(() => reads("proof-2").length >= 1, "proof-2 covered by REST");
  let fetchesAtProof = null;
  const proved = within(
    new Promise((resolve) => {
      const off = tracker.on("event", (name, data) => {
        if (name !== "ack:track-payment" || !data.ok || data.reference !== "proof-2") return;
        fetchesAtProof = fetched.filter((u) => u.includes("/tracking/")).length;
        off();
        resolve();
      });
    }),
    "a good ack",
  );
  server.script.track = ack.ok; // the next track-payment is answered
  await proved;
  assert.equal(tracker.state, "connected");
  server.set(payment("proof-2", "SUCCESSFUL", 2)); // pushed on the socket
  await within(second.done, "done, from the socket");
  assert.equal(fetched.filter((u) => u.includes("/tracking/")).length, fetchesAtProof, "no REST read after the good ack");
});

test("states: connecting, reconnecting with the next attempt's time, offline with `unreachable`, then connected", async (t) => {
  const port = await freePort(); // nothing listens yet
  const url = `http://127.0.0.1:${port}`;
  const tracker = new PaymentTracker({ url, reconnectDelayMs: 100, reconnectDelayMaxMs: 400, fallbackAfterMs: 200, fallbackPollMs: 100 });
  t.after(() => tracker.close());
  assert.equal(tracker.state, "connecting");
  assert.equal(tracker.nextAttemptAt, null);
  const seen = [];
  const errors = [];
  tracker.on("connection", (state, info) => seen.push({ state, info, at: Date.now(), current: [tracker.state, tracker.nextAttemptAt] }));
  tracker.on("error", (err) => errors.push(err));
  tracker.track("states-1");

  await stateReached(tracker, "offline");
  const reconnecting = seen.find((s) => s.state === "reconnecting");
  assert.ok(reconnecting, `reconnecting was shown: ${seen.map((s) => s.state)}`);
  assert.ok(Number.isFinite(reconnecting.info.nextAttemptAt) && reconnecting.info.nextAttemptAt >= reconnecting.at, "with the next attempt's time");
  for (const s of seen) assert.deepEqual(s.current, [s.state, s.info.nextAttemptAt], "tracker.state and nextAttemptAt agree with the event");
  assert.deepEqual(errors.filter((e) => e.code === "unreachable").length, 1, `errors: ${errors.map((e) => e.code)}`);

  const live = await startScriptedServer({ port });
  t.after(() => live.close());
  live.set(payment("states-1", "PENDING", 1), { push: false });
  await stateReached(tracker, "connected", 15_000);
  assert.equal(tracker.nextAttemptAt, null);
  assert.deepEqual(seen.at(-1).info, { nextAttemptAt: null });
});

test("a token refused at connect reaches on('error') as `unauthenticated`, with the server's reason", async (t) => {
  server.script.refuseConnect = (auth) => (auth.token === "good" ? null : { code: "invalid_token", message: "bad signature" });
  const asked = [];
  const tracker = new PaymentTracker({
    url: server.url,
    reconnectDelayMs: 20,
    token: ({ reason }) => {
      asked.push(reason);
      return asked.length === 1 ? "bad" : "good";
    },
  });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  await stateReached(tracker, "connected");
  assert.deepEqual(asked, ["connect", "rejected"]);
  assert.deepEqual(errors.map((e) => [e.code, e.reason]), [["unauthenticated", "invalid_token"]]);
});

test("a server that refuses the page's origin: on('error') says `origin_not_allowed`, not `unreachable`", async (t) => {
  server.script.handshake = "refuse"; // a browser sees a refused origin as a failed websocket, nothing more
  server.script.origin = () => ({ accepted: false });
  server.script.rest = () => "reset"; // and REST's CORS refusal is a failed fetch: no answer either
  const tracker = new PaymentTracker({ url: server.url, reconnectDelayMs: 50, fallbackAfterMs: 100, fallbackPollMs: 100 });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  tracker.track("origin-1");
  await within(new Promise((resolve) => tracker.on("error", (err) => err.code === "origin_not_allowed" && resolve())), "origin_not_allowed");
  await stateReached(tracker, "offline");
  assert.ok(!errors.some((e) => e.code === "unreachable"), `errors: ${errors.map((e) => e.code)}`);
  assert.equal(errors.filter((e) => e.code === "origin_not_allowed").length, 1, "said once");
});
