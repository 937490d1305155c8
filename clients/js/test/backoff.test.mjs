// Refusals that say "not now": the client waits as long as the server asks, with jitter, instead of
// coming back at once. A reconnect storm behind one address (carrier-grade NAT, an office) meets the
// server's cap on handshakes per address (429 too_many_sessions, MAX_ANONYMOUS_SESSIONS_PER_IP); a
// page over its call rate meets rate_limited acks.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { api, paymentBody, rawEvent, startProxy, startServer, stateReached } from "./support.mjs";

const CONNECT_TIMEOUT_S = 2; // the server's Retry-After on a 429 handshake: its SOCKET_CONNECT_TIMEOUT_SECONDS

let server;
let proxy;
before(async () => {
  server = await startServer({
    MAX_ANONYMOUS_SESSIONS_PER_IP: "1",
    SOCKET_CONNECT_TIMEOUT_SECONDS: String(CONNECT_TIMEOUT_S),
    RATE_LIMIT_CALLS_PER_SOCKET: "2/3 seconds",
  });
  proxy = await startProxy(server.url);
  proxy.allowUpgrades = true;
});
after(async () => {
  await proxy?.close();
  await server?.kill();
});

/** Takes this address's one anonymous session: a handshake that never sends CONNECT (freed after the timeout). */
async function takeTheAddressSlot() {
  const response = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
  assert.equal(response.status, 200, "the slot was free");
  await response.text();
  const refused = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
  assert.equal(refused.status, 429, "the address is at its cap");
  assert.equal(refused.headers.get("Retry-After"), String(CONNECT_TIMEOUT_S));
  await refused.text();
}

const handshakes = () => proxy.requests.filter((r) => r.url.startsWith("/socket.io/") && !r.url.includes("sid="));

test("a polling handshake refused 429 waits the Retry-After the server sent, then connects", async (t) => {
  const before = handshakes().length;
  await takeTheAddressSlot();
  const tracker = new PaymentTracker({
    url: proxy.url,
    transports: ["polling"],
    reconnectDelayMs: 50, // socket.io's own reconnection would come back within 100 ms, about 20 times in 2 s
    reconnectDelayMaxMs: 100,
    fallbackAfterMs: 60_000,
  });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  await stateReached(tracker, "connected", 20_000);

  const seen = handshakes().slice(before);
  const refused = seen.filter((r) => r.status === 429);
  assert.ok(refused.length >= 1, `the first handshake met the cap: ${JSON.stringify(seen)}`);
  // Honouring Retry-After, the next handshake comes after the slot was freed. A second refusal is only
  // possible on a machine so loaded that the server's timer fired late.
  assert.ok(refused.length <= 2, `${refused.length} handshakes refused: the client did not wait as told`);
  assert.equal(seen.at(-1).status, 200);
  const told = errors.filter((err) => err.code === "too_many_sessions");
  assert.ok(told.length >= 1, "the page is told why it is not connected yet");
  assert.equal(told[0].status, 429);
  assert.equal(told[0].retryAfter, CONNECT_TIMEOUT_S * 1000);
});

test("a websocket handshake refused 429 is reported and backed off, then connects", async (t) => {
  await takeTheAddressSlot();
  const upgradesBefore = proxy.upgrades;
  const tracker = new PaymentTracker({ url: proxy.url, reconnectDelayMs: 50, reconnectDelayMaxMs: 100, fallbackAfterMs: 60_000 });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  await stateReached(tracker, "connected", 20_000);
  assert.ok(proxy.upgrades - upgradesBefore >= 2, "connected after at least one refusal");
  // A websocket handshake's response headers are out of a client's reach (a browser does not even show
  // its status): the client backs off on its own jittered delays.
  const told = errors.filter((err) => err.code === "too_many_sessions");
  assert.ok(told.length >= 1, `the page is told why: ${errors.map((e) => e.code)}`);
  assert.equal(told[0].status, 429);
  assert.equal(told[0].retryAfter, null);
});

test("a track-payment answered rate_limited is asked again after its retry_after", async (t) => {
  const references = [];
  for (let i = 0; i < 3; i++) references.push((await api(server.url, "POST", "/api/payment/initiate", paymentBody("rate"))).body.reference);
  const tracker = new PaymentTracker({ url: server.url, reconnectDelayMs: 50, reconnectDelayMaxMs: 100 });
  t.after(() => tracker.close());
  const acks = [];
  tracker.on("event", (name, data) => {
    if (name === "ack:track-payment") acks.push(data);
  });
  await stateReached(tracker, "connected");
  const last = references[2];
  const trackedAtLast = rawEvent(tracker, (name, data) => name === "ack:track-payment" && data.reference === last && data.ok, 20_000);
  for (const reference of references) tracker.track(reference, {});
  await trackedAtLast;

  const forLast = acks.filter((a) => a.reference === last);
  const refused = forLast.filter((a) => a.error?.code === "rate_limited");
  assert.ok(refused.length >= 1, `the third call met the socket's rate: ${JSON.stringify(forLast)}`);
  assert.ok(refused[0].error.retry_after >= 1);
  // Its own 50-100 ms backoff would have asked about 30 times before the window let it through.
  assert.ok(refused.length <= 2, `${refused.length} refusals: the client did not wait retry_after`);
});

test("a connect refused rate_limited is tried again after its retry_after", async (t) => {
  const limited = await startServer({ RATE_LIMIT_CONNECT_PER_IP: "1/2 seconds" });
  t.after(() => limited.kill());
  const first = new PaymentTracker({ url: limited.url });
  t.after(() => first.close());
  await stateReached(first, "connected"); // this address's one connect for 2 s
  const second = new PaymentTracker({ url: limited.url, reconnectDelayMs: 50, reconnectDelayMaxMs: 100, fallbackAfterMs: 60_000 });
  t.after(() => second.close());
  const errors = [];
  second.on("error", (err) => errors.push(err));
  await stateReached(second, "connected", 20_000);
  const refused = errors.filter((err) => err.code === "rate_limited");
  assert.ok(refused.length >= 1, `the second page met the connect rate: ${errors.map((e) => e.code)}`);
  assert.ok(refused[0].retryAfter >= 1000, `retryAfter ${refused[0].retryAfter}`);
  // Its own 50-100 ms backoff would have been refused about 20 times in the window.
  assert.ok(refused.length <= 2, `${refused.length} refusals: the client did not wait retry_after`);
});
