// Tokens against a real server with JWT auth: refreshed on token-expiring before the old one
// runs out (the socket stays up), a refused connect is retried with a fresh token, and
// another user's payment is refused with the server's code.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { JWT_SECRET, Recorder, eventually, jwt, rawEvent, simulate, startServer, stateReached, within } from "./support.mjs";

const WARNING_SECONDS = 2;
let server;
before(async () => {
  server = await startServer({
    AUTH_MODE: "jwt",
    JWT_SECRET,
    TOKEN_EXPIRY_WARNING_SECONDS: String(WARNING_SECONDS),
  });
});
after(async () => {
  await server?.kill();
});

test("the token is refreshed on token-expiring and the socket outlives the first token", async (t) => {
  const asked = [];
  let firstExpiry = 0;
  let thirdAsk;
  const thirdAsked = new Promise((resolve) => {
    thirdAsk = resolve;
  });
  const token = async (context) => {
    asked.push(context.reason);
    // The first token expires in about 3 s; the next ones last long enough that their own
    // warning (WARNING_SECONDS before expiry) comes after the first token's expiry.
    const ttl = asked.length === 1 ? 3 : 7;
    const issued = jwt("shopper-1", ttl);
    if (asked.length === 1) firstExpiry = (Math.floor(Date.now() / 1000) + ttl) * 1000;
    if (asked.length === 3) thirdAsk();
    return issued;
  };
  const tracker = new PaymentTracker({ url: server.url, token });
  t.after(() => tracker.close());
  const states = [];
  tracker.on("connection", (s) => states.push(s));
  const errors = [];
  tracker.on("error", (e) => errors.push(e));
  const refreshed = rawEvent(tracker, (name, data) => name === "ack:refresh-token" && data.ok);

  await stateReached(tracker, "connected");
  const ack = await refreshed;
  assert.ok(Date.parse(ack.data.expires_at) > firstExpiry, "the server took the new token's expiry");
  await within(thirdAsked, "the second token-expiring");
  assert.ok(Date.now() > firstExpiry, "the first token has expired by now");

  // Same socket, past the first token's expiry: a live update still arrives.
  const payment = await tracker.initiate({ order_id: `token-${Date.now()}`, amount: 500, phone_number: "237671234567" });
  const rec = new Recorder();
  const tracking = tracker.track(payment.reference, rec.handlers());
  await rec.waitFor("update");
  await simulate(server.url, payment.reference, "SUCCESSFUL");
  await within(tracking.done, "done");
  assert.deepEqual(asked, ["connect", "expiring", "expiring"]);
  assert.deepEqual(states, ["connected"], "never disconnected");
  assert.deepEqual(errors, []);
});

test("a connect refused for its token is retried with a fresh one", async (t) => {
  const asked = [];
  const tracker = new PaymentTracker({
    url: server.url,
    reconnectDelayMs: 20,
    reconnectDelayMaxMs: 100,
    token: (context) => {
      asked.push(context.reason);
      return asked.length === 1 ? jwt("shopper-2", 60, "a-secret-the-server-does-not-know-0123456789") : jwt("shopper-2", 60);
    },
  });
  t.after(() => tracker.close());
  const errors = [];
  tracker.on("error", (e) => errors.push(e));
  await stateReached(tracker, "connected");
  assert.deepEqual(asked, ["connect", "rejected"]);
  // A refused token is `unauthenticated` for the page, with the server's code as the reason.
  assert.deepEqual(errors.map((e) => [e.code, e.reason]), [["unauthenticated", "invalid_token"]]);
  assert.ok(errors[0].message);
});

test("tracking another user's payment is refused with the server's code", async (t) => {
  const owner = new PaymentTracker({ url: server.url, token: () => jwt("owner", 60) });
  const other = new PaymentTracker({ url: server.url, token: () => jwt("someone-else", 60) });
  t.after(() => {
    owner.close();
    other.close();
  });
  const payment = await owner.initiate({ order_id: `owned-${Date.now()}`, amount: 500, phone_number: "237671234567" });
  const errors = [];
  other.on("error", (e) => errors.push(e));
  await stateReached(other, "connected");
  const tracking = other.track(payment.reference);
  await assert.rejects(within(tracking.done, "done"), (err) => err.code === "forbidden");
  assert.deepEqual(errors.map((e) => [e.code, e.reference]), [["forbidden", payment.reference]]);
  assert.equal(tracking.payment, null, "nothing of it was shown");
});

test("a shop that hands out its cached token until it expires: one token() call per token-expiring, no loop", async (t) => {
  // The shop's backend keeps one token for its whole life (a common cache). Refreshing with it changes
  // nothing on the server, whose warning time has passed already.
  const ttl = WARNING_SECONDS + 2;
  let cached = null;
  const asked = [];
  const token = ({ reason }) => {
    asked.push(reason);
    if (!cached || cached.expiresAt - Date.now() < 500) cached = { token: jwt("shopper-cache", ttl), expiresAt: Date.now() + ttl * 1000 };
    return cached.token;
  };
  const tracker = new PaymentTracker({ url: server.url, token });
  t.after(() => tracker.close());
  const refreshes = [];
  tracker.on("event", (name, data) => name === "ack:refresh-token" && refreshes.push(data));
  await stateReached(tracker, "connected");
  await eventually(() => asked.includes("expiring"), { what: "the first token-expiring" });
  const firstWarning = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 1000)); // inside the warning window, before expiry
  const inWindow = asked.slice(asked.indexOf("expiring"));
  assert.ok(inWindow.length <= 2, `${inWindow.length} token() calls (${refreshes.length} refresh-token) in the ${Date.now() - firstWarning} ms after the first token-expiring`);
});
