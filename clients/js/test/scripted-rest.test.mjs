// REST against a scripted server: every call is bounded in time, one hung read holds up no other
// payment, polling backs off while it fails and pages do not poll in lockstep, and one refused
// token costs one token() call however many payments wait on it.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, beforeEach, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { payment, startScriptedServer } from "./scripted-server.mjs";
import { Recorder, eventually, stateReached, within } from "./support.mjs";

let server;
before(async () => {
  server = await startScriptedServer();
});
beforeEach(() => server.reset());
after(() => server?.close());

const reads = (reference) => server.requests.filter((r) => r.path === `/api/payment/tracking/${reference}`);
const noSocket = (s) => {
  s.script.handshake = "refuse";
};

test("a read that never answers holds up no other payment", async (t) => {
  noSocket(server);
  server.script.rest = ({ reference }) => (reference === "hung-1" ? "hang" : "ok");
  server.set(payment("live-1", "PENDING", 1), { push: false });
  const tracker = new PaymentTracker({ url: server.url, fallbackAfterMs: 50, fallbackPollMs: 50, requestTimeoutMs: 60_000 });
  t.after(() => tracker.close());
  tracker.track("hung-1");
  const rec = new Recorder();
  const live = tracker.track("live-1", rec.handlers());
  await rec.waitFor("update");
  await server.until(() => reads("hung-1").length >= 1, "the hung read");
  server.set(payment("live-1", "SUCCESSFUL", 2), { push: false }); // only a later read can bring it
  const final = await within(live.done, "live-1 settled while hung-1's read hangs");
  assert.equal(final.status, "SUCCESSFUL");
});

test("a read that never answers is given up after requestTimeoutMs and asked again", async (t) => {
  noSocket(server);
  server.script.rest = () => "hang";
  const tracker = new PaymentTracker({ url: server.url, fallbackAfterMs: 50, fallbackPollMs: 50, requestTimeoutMs: 200 });
  t.after(() => tracker.close());
  tracker.track("hung-2");
  await server.until(() => reads("hung-2").length >= 2, "a second read of the payment whose first read hangs");
});

test("refresh() and initiate() end with `timeout` when the server never answers", async (t) => {
  noSocket(server);
  server.set(payment("refresh-1", "PENDING", 1), { push: false });
  server.script.status = () => "hang";
  server.script.initiate = () => "hang";
  const tracker = new PaymentTracker({ url: server.url, providerTimeoutMs: 300, initiateAttempts: 2, reconnectDelayMs: 20 });
  t.after(() => tracker.close());
  const handle = tracker.track("refresh-1");
  await assert.rejects(within(handle.refresh(), "refresh()"), (err) => err.code === "timeout");
  let key;
  await assert.rejects(within(tracker.initiate({ order_id: "o-1", amount: 500, phone_number: "237671234567" }), "initiate()"), (err) => {
    key = err.idempotencyKey;
    return err.code === "timeout" && typeof key === "string";
  });
  const attempts = server.requests.filter((r) => r.path === "/api/payment/initiate");
  assert.equal(attempts.length, 2, "asked again once, with the same key, as after a network failure");
});

test("initiate() stops asking again once the tracker is closed", async (t) => {
  server.script.initiate = () => ({ status: 503, body: { error: { code: "busy", message: "busy" } }, headers: { "Retry-After": "5" } });
  const tracker = new PaymentTracker({ url: server.url, initiateAttempts: 10 });
  t.after(() => tracker.close());
  const pending = tracker.initiate({ order_id: "o-2", amount: 500, phone_number: "237671234567" }, { onRetry: () => tracker.close() });
  await assert.rejects(within(pending, "initiate() after close()"), (err) => err.code === "closed");
  assert.equal(server.requests.filter((r) => r.path === "/api/payment/initiate").length, 1);
});

test("while REST fails, each payment's polling backs off", async (t) => {
  noSocket(server);
  server.script.rest = () => ({ status: 500, body: { error: { code: "internal_error", message: "scripted" } } });
  const base = 50;
  const max = 800;
  const tracker = new PaymentTracker({ url: server.url, fallbackAfterMs: 0, fallbackPollMs: base, fallbackPollMaxMs: max });
  t.after(() => tracker.close());
  tracker.track("failing-1");
  await server.until(() => reads("failing-1").length >= 6, "six failed reads", 20_000);
  const at = reads("failing-1").map((r) => r.at);
  // After k failures in a row the next read waits at least half of min(max, base * 2^k) (jitter ±50 %).
  for (let k = 1; k < 6; k++) {
    const least = Math.min(max, base * 2 ** k) * 0.5;
    assert.ok(at[k] - at[k - 1] >= least - 2, `gap after failure ${k}: ${at[k] - at[k - 1]} ms < ${least} ms`);
  }
});

test("pages that lost their sockets together neither start polling nor poll in lockstep", async (t) => {
  noSocket(server);
  const pages = 20;
  const interval = 1000;
  for (let i = 0; i < pages; i++) server.set(payment(`lockstep-${i}`, "PENDING", 1), { push: false });
  for (let i = 0; i < pages; i++) {
    const tracker = new PaymentTracker({ url: server.url, fallbackAfterMs: interval, fallbackPollMs: interval, shareAcrossTabs: false });
    t.after(() => tracker.close());
    tracker.track(`lockstep-${i}`);
  }
  const nth = (n) => Array.from({ length: pages }, (_, i) => reads(`lockstep-${i}`)[n]?.at);
  await server.until(() => nth(2).every(Number.isFinite), "three reads by every page", 30_000);
  const spread = (values) => Math.max(...values) - Math.min(...values);
  const first = nth(0);
  const gaps = nth(2).map((at, i) => at - nth(1)[i]);
  assert.ok(spread(first) >= interval / 10, `first reads within ${spread(first)} ms of each other`);
  assert.ok(spread(gaps) >= interval / 10, `poll intervals within ${spread(gaps)} ms of each other`);
});

test("a server that refuses every token: one token() call per refusal, shared, and the state says offline", async (t) => {
  server.script.refuseConnect = () => ({ code: "invalid_token", message: "scripted: every token is refused" });
  server.script.restAuth = () => false;
  const payments = 20;
  let tokens = 0;
  const tracker = new PaymentTracker({
    url: server.url,
    token: () => `token-${++tokens}`,
    reconnectDelayMs: 50,
    reconnectDelayMaxMs: 400,
    fallbackAfterMs: 100,
    fallbackPollMs: 100,
    fallbackPollMaxMs: 400,
  });
  t.after(() => tracker.close());
  const states = [];
  tracker.on("connection", (state) => states.push(state));
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  for (let i = 0; i < payments; i++) tracker.track(`storm-${i}`);
  const restReads = () => server.requests.filter((r) => r.path.startsWith("/api/payment/tracking/")).length;
  await stateReached(tracker, "offline");
  await server.until(() => server.connections.length >= 8, "eight refused connects", 30_000);
  const connects = server.connections.length;
  const reads = restReads();
  // Every socket connect asks token() (documented); REST asks once per refused token, shared by every
  // payment's read (and not at all while the socket's newest token was refused too), not once per read.
  assert.ok(tokens <= connects + Math.ceil(reads / payments) + 2, `${tokens} token() calls for ${connects} connects and ${reads} reads`);
  assert.ok(!states.includes("polling"), `states: ${states}: REST answered nothing usable`);
  assert.equal(tracker.state, "offline");
  assert.ok(errors.some((e) => e.code === "unauthenticated"), `errors: ${errors.map((e) => e.code)}`);
});

test("token() is asked only for the reasons its type declares", async (t) => {
  const declared = /reason: ((?:"[a-z]+"(?: \| )?)+);/.exec(readFileSync(new URL("../paytrack-client.d.ts", import.meta.url), "utf8"));
  const documented = new Set([...declared[1].matchAll(/"([a-z]+)"/g)].map((m) => m[1]));
  const asked = [];
  let refused = 1;
  server.script.refuseConnect = () => (refused-- > 0 ? { code: "token_expired", message: "expired" } : null);
  server.set(payment("reasons-1", "PENDING", 1), { push: false });
  const tracker = new PaymentTracker({
    url: server.url,
    reconnectDelayMs: 20,
    token: ({ reason }) => {
      asked.push(reason);
      return `token-${asked.length}`;
    },
  });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected"); // connect, then rejected
  const rec = new Recorder();
  tracker.track("reasons-1", rec.handlers());
  await rec.waitFor("update");
  const before = asked.length;
  for (const socket of await server.io.fetchSockets()) socket.emit("token-expiring", { expires_at: new Date(Date.now() + 60_000).toISOString() });
  await eventually(() => asked.length > before, { what: "token() for token-expiring" });
  const reconnected = asked.length;
  server.io.disconnectSockets(true); // the server ends the session, as it does when the token expires
  await eventually(() => asked.length > reconnected, { what: "token() for the reconnect" });
  await stateReached(tracker, "connected");
  assert.deepEqual(new Set(asked), new Set(asked.filter((r) => documented.has(r))), `asked ${asked}, declared ${[...documented]}`);
  assert.ok(asked.includes("rejected") && asked.includes("expiring"), `asked ${asked}`);
});
