// More misbehaviour, found in review (issue 36): a token() that hangs or throws, another tab that
// claims more than the server said, a server that answers a track and then drops the socket.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { ack, payment, startScriptedServer } from "./scripted-server.mjs";
import { Recorder, eventually, stateReached, within } from "./support.mjs";

let server;
before(async () => {
  server = await startScriptedServer();
});
beforeEach(() => server.reset());
after(() => server?.close());

const reads = (reference) => server.requests.filter((r) => r.path === `/api/payment/tracking/${reference}`);

test("a token() that hangs once does not wedge the tracker: the next attempt asks token() again", async (t) => {
  server.script.refuseConnect = (auth) => (auth.token ? null : { code: "unauthenticated", message: "a token is required" });
  server.script.restAuth = (token) => token !== null;
  server.set(payment("hang-token-1", "SUCCESSFUL", 2), { push: false });
  const reasons = [];
  const tracker = new PaymentTracker({
    url: server.url,
    token: ({ reason }) => {
      reasons.push(reason);
      return reasons.length === 1 ? new Promise(() => {}) : "good"; // the shop's token endpoint hangs once
    },
    requestTimeoutMs: 300,
    ackTimeoutMs: 200,
    reconnectDelayMs: 50,
    reconnectDelayMaxMs: 200,
    fallbackAfterMs: 100,
    fallbackPollMs: 100,
  });
  t.after(() => tracker.close());
  const handle = tracker.track("hang-token-1");
  const final = await within(handle.done, "done, once token() answers again", 8_000);
  assert.equal(final.status, "SUCCESSFUL");
  assert.ok(reasons.length >= 2, `token() asked ${reasons.length} time(s)`);
});

test("a token() that keeps failing is asked once per connect attempt and once per shared REST round, not once per read", async (t) => {
  server.script.refuseConnect = (auth) => (auth.token ? null : { code: "unauthenticated", message: "a token is required" });
  server.script.restAuth = (token) => token !== null;
  const payments = 20;
  let tokens = 0;
  const tracker = new PaymentTracker({
    url: server.url,
    token: () => {
      tokens += 1;
      throw new Error("the shop's token endpoint is down");
    },
    reconnectDelayMs: 50,
    reconnectDelayMaxMs: 400,
    fallbackAfterMs: 100,
    fallbackPollMs: 100,
    fallbackPollMaxMs: 400,
  });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  for (let i = 0; i < payments; i++) tracker.track(`token-down-${i}`);
  await server.until(() => server.connections.length >= 8, "eight refused connects", 30_000);
  const connects = server.connections.length;
  // As for a refused token (scripted-rest.test.mjs): the socket's attempts ask it, and REST shares one
  // ask per backoff step between all its payments rather than asking for every payment's read.
  assert.ok(tokens <= 2 * connects + 4, `${tokens} token() calls for ${connects} connects and ${payments} payments`);
  const unavailable = errors.filter((e) => e.code === "token_unavailable").length;
  assert.ok(unavailable <= 2 * connects + 4, `${unavailable} token_unavailable errors for ${connects} connects`);
});

test("another tab's claim of a seq the server never gave is not shown and does not hide the server's final status", async (t) => {
  // E.g. a tab still holding a payment from before the server lost its history answers this tab's
  // "ask" with its old, higher seq; or a stale client version in another tab.
  server.set(payment("tab-seq-1", "PENDING", 1), { push: false });
  const tracker = new PaymentTracker({ url: server.url, reconnectDelayMs: 20, reconnectDelayMaxMs: 100, shareAcrossTabs: true });
  t.after(() => tracker.close());
  const rec = new Recorder();
  const handle = tracker.track("tab-seq-1", rec.handlers());
  await rec.waitFor("update");
  const otherTab = new BroadcastChannel(`paytrack:${server.url}`);
  t.after(() => otherTab.close());
  otherTab.postMessage({ type: "update", reference: "tab-seq-1", payment: payment("tab-seq-1", "PENDING", 9, { amount: 1 }) });
  await server.until(() => server.trackCalls.filter((c) => c.reference === "tab-seq-1").length >= 2, "the claim checked with the server");
  server.set(payment("tab-seq-1", "SUCCESSFUL", 2)); // the truth, pushed on the socket
  const final = await within(handle.done, "done with the server's final status");
  assert.equal(final.status, "SUCCESSFUL");
  assert.deepEqual(rec.named("update").map((c) => c.args[0].seq), [1, 2], "only what the server said was shown");
});

test("a server that answers the track and then drops the socket: the backoff still grows", async (t) => {
  // An instance that fails right after its first answer, a proxy that cuts every connection after a
  // few frames: each connection answers a track-payment, none stays up.
  server.script.connect = "drop-after-ack";
  server.set(payment("ack-drop-1", "PENDING", 1), { push: false });
  const base = 50;
  const max = 800;
  const tracker = new PaymentTracker({ url: server.url, reconnectDelayMs: base, reconnectDelayMaxMs: max });
  t.after(() => tracker.close());
  tracker.track("ack-drop-1");
  await server.until(() => server.connections.length >= 6, "six connections", 20_000);
  // As for a server that drops before answering (scripted-connection.test.mjs): the wait before
  // connection k+1 is at least half the backoff's k-th step; an ack resetting it keeps every gap near `base`.
  const at = server.connections.map((c) => c.at);
  for (let k = 1; k < 5; k++) {
    const least = Math.min(max, base * 2 ** k) * 0.5;
    assert.ok(at[k + 1] - at[k] >= least - 2, `gap ${k}: ${at[k + 1] - at[k]} ms < ${least} ms: the backoff was reset by an answered track`);
  }
});

/** A page's window and document, as far as the tracker listens to them, for the trackers made in `fn`. */
function asPage(fn) {
  const window = new EventTarget();
  const document = Object.assign(new EventTarget(), { visibilityState: "visible" });
  const saved = [globalThis.window, globalThis.document];
  globalThis.window = window;
  globalThis.document = document;
  try {
    return { ...fn(), window, document };
  } finally {
    [globalThis.window, globalThis.document] = saved;
  }
}

test("a storm of `online` events is not a connection attempt each: the immediate retry is bounded", async (t) => {
  server.script.handshake = "refuse"; // every attempt fails at once, as while the network flaps
  const { tracker, window } = asPage(() => ({
    tracker: new PaymentTracker({ url: server.url, shareAcrossTabs: false, reconnectDelayMs: 60_000, reconnectDelayMaxMs: 60_000 }),
  }));
  t.after(() => tracker.close());
  tracker.on("error", () => {});
  const handshakes = () => server.requests.filter((r) => r.path === "/socket.io/").length;
  await server.until(() => handshakes() >= 1, "the first attempt");
  const started = Date.now();
  const before = handshakes();
  // 60 `online` events over ~1.2 s; the backoff's own next attempt is a minute away.
  for (let i = 0; i < 60; i++) {
    window.dispatchEvent(new Event("online"));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await server.until(() => handshakes() > before, "the immediate retry");
  const seconds = (Date.now() - started) / 1000;
  const attempts = handshakes() - before;
  assert.ok(attempts <= Math.ceil(seconds) + 1, `${attempts} connection attempts in ${seconds} s of online events`);
});

test("a server that warns again after every refresh-token (the expiry unchanged): token() is asked once per expiry", async (t) => {
  // paytrack before its fix, or any server re-arming its warning inside the window: each answer to a
  // warning brought the next warning at once, a loop of token() calls and refresh-tokens.
  const expiresAt = new Date(Date.now() + 30_000).toISOString();
  const refreshes = [];
  const warnAgain = (socket) =>
    socket.on("refresh-token", () => {
      refreshes.push(Date.now());
      socket.emit("token-expiring", { expires_at: expiresAt });
    });
  server.io.on("connection", warnAgain);
  t.after(() => server.io.off("connection", warnAgain));
  const asked = [];
  let issued = 0;
  const tracker = new PaymentTracker({
    url: server.url,
    token: ({ reason }) => {
      asked.push(reason);
      return `token-${++issued}`; // a new token every time: the refresh always has something to send
    },
  });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected");
  for (const socket of await server.io.fetchSockets()) socket.emit("token-expiring", { expires_at: expiresAt });
  await eventually(() => refreshes.length >= 1, { what: "the refresh-token" });
  const settled = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 500)); // a loop would have gone round many times by now
  assert.deepEqual(asked, ["connect", "expiring"], `token() asked ${asked.length} times`);
  assert.equal(refreshes.length, 1, `${refreshes.length} refresh-tokens in ${Date.now() - settled} ms`);
});
