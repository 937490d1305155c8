// Admission under a reconnect storm (issue 38): an instance taking in more connections than it can at
// once (SOCKET_MAX_CONNECTING) answers a session's CONNECT `busy` with `retry_after`, and past as many
// refused sessions again answers the handshake itself 503 with Retry-After. Either way the official
// client waits as long as the server asks (with jitter) instead of coming back on its own short backoff.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { startProxy, startServer, stateReached } from "./support.mjs";

const CONNECT_TIMEOUT_S = 2; // sessions that never send CONNECT hold their place this long

let server;
let proxy;
before(async () => {
  server = await startServer({
    SOCKET_MAX_CONNECTING: "1",
    MAX_ANONYMOUS_SESSIONS_PER_IP: "50",
    SOCKET_CONNECT_TIMEOUT_SECONDS: String(CONNECT_TIMEOUT_S),
  });
  proxy = await startProxy(server.url);
});
after(async () => {
  await proxy?.close();
  await server?.kill();
});

/** A polling handshake that never sends CONNECT (its place is freed after the connect timeout). */
async function handshake() {
  const response = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
  await response.text();
  return response;
}

const handshakes = () => proxy.requests.filter((r) => r.url.startsWith("/socket.io/") && !r.url.includes("sid="));

test("a polling handshake refused 503 busy waits the Retry-After the server sent, then connects", async (t) => {
  const before = handshakes().length;
  assert.equal((await handshake()).status, 200, "the one place being taken in");
  assert.equal((await handshake()).status, 200, "the one session opened to be refused at its CONNECT");
  const overloaded = await handshake();
  assert.equal(overloaded.status, 503, "past both: the handshake itself is refused");
  const header = Number(overloaded.headers.get("Retry-After"));
  assert.ok(header >= 1 && header <= 3, `Retry-After ${header}`);

  const tracker = new PaymentTracker({
    url: proxy.url,
    transports: ["polling"],
    reconnectDelayMs: 50, // its own backoff would come back about 20 times before the places are freed
    reconnectDelayMaxMs: 100,
    fallbackAfterMs: 60_000,
  });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  await stateReached(tracker, "connected", 30_000);

  const seen = handshakes().slice(before);
  const refused = seen.filter((r) => r.status === 503);
  assert.ok(refused.length >= 1, `the first handshake met the 503: ${JSON.stringify(seen)}`);
  // Each refusal asks for 1 to 3 s; the places are free after CONNECT_TIMEOUT_S. A client that waits as
  // told is refused two or three times at most; one on its own 50-100 ms backoff about twenty.
  assert.ok(refused.length <= 4, `${refused.length} handshakes refused 503: the client did not wait as told`);
  const told = errors.filter((err) => err.status === 503);
  assert.ok(told.length >= 1, `the page is told why it is not connected yet: ${errors.map((e) => e.code)}`);
  assert.equal(told[0].code, "busy");
  assert.ok(told[0].retryAfter >= 1000 && told[0].retryAfter <= 3000, `retryAfter ${told[0].retryAfter}`);
});

test("a CONNECT answered busy is tried again after its retry_after, then connects", async (t) => {
  assert.equal((await handshake()).status, 200, "the one place being taken in");
  const tracker = new PaymentTracker({
    url: server.url,
    reconnectDelayMs: 50,
    reconnectDelayMaxMs: 100,
    fallbackAfterMs: 60_000,
  });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (err) => errors.push(err));
  await stateReached(tracker, "connected", 30_000);
  const busy = errors.filter((err) => err.code === "busy");
  assert.ok(busy.length >= 1, `the first CONNECT met the busy refusal: ${errors.map((e) => e.code)}`);
  assert.ok(busy[0].retryAfter >= 1000 && busy[0].retryAfter <= 3000, `retryAfter ${busy[0].retryAfter}`);
  assert.ok(busy.length <= 3, `${busy.length} refusals: the client did not wait retry_after`);
});
