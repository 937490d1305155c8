// initiate() against the answers that say whether asking again is safe: `initiation_unknown` (the
// first attempt may have reached CamPay: ask again with the SAME key until the server learns the
// outcome), `order_paid` (final: never asked again). A tiny scripted HTTP server plays the paytrack
// server, so these run without the Python one and each answer is exactly the one under test.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { PaymentTracker, PaytrackError } from "../paytrack-client.js";
import { within } from "./support.mjs";

const TEST_TIMEOUT_MS = 15_000;

const payment = (reference, extra = {}) => ({
  reference,
  order_id: `order-${reference}`,
  status: "PENDING",
  seq: 1,
  amount: 500,
  currency: "XAF",
  operator: "MTN",
  ussd_code: "*126#",
  timestamp: new Date().toISOString(),
  ...extra,
});

const unknown = (seconds) => ({
  status: 409,
  headers: { "Retry-After": String(seconds) },
  body: { error: { code: "initiation_unknown", message: "the first attempt's outcome is not known yet", retry_after: seconds } },
});

/**
 * Answers POST /api/payment/initiate with `script(n)` for its n-th request (1, 2, ...), each
 * `{status, headers?, body}`, and records every request; anything else is a 404 (the tracker's
 * socket.io connection attempts included: they only fail and retry in the background).
 */
async function scriptedServer(t, script) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      if (req.method !== "POST" || req.url !== "/api/payment/initiate") {
        res.writeHead(404, { "Content-Type": "application/json" }).end(JSON.stringify({ error: { code: "not_found" } }));
        return;
      }
      requests.push({ key: req.headers["idempotency-key"], body: JSON.parse(Buffer.concat(chunks).toString() || "null"), at: Date.now() });
      const answer = script(requests.length);
      res.writeHead(answer.status, { "Content-Type": "application/json", ...(answer.headers ?? {}) });
      res.end(JSON.stringify(answer.body));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });
  return { url: `http://127.0.0.1:${server.address().port}`, requests };
}

function newTracker(t, url, options = {}) {
  const tracker = new PaymentTracker({ url, fallbackPollMs: 0, shareAcrossTabs: false, ...options });
  t.after(() => tracker.close());
  return tracker;
}

const body = { order_id: "order-42", amount: 500, phone_number: "237671234567" };

test("initiation_unknown is asked again with the same key after Retry-After, until the replayed 201", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const replayed = payment("ref-first");
  const server = await scriptedServer(t, (n) =>
    n <= 2 ? unknown(1) : { status: 201, headers: { "Idempotent-Replayed": "true" }, body: replayed },
  );
  // initiateAttempts: 1 leaves no ordinary retry at all: initiation_unknown has a budget of its own.
  const tracker = newTracker(t, server.url, { initiateAttempts: 1 });
  const retries = [];
  const started = Date.now();
  const result = await within(
    tracker.initiate(body, { onRetry: (err, info) => retries.push({ code: err.code, key: err.idempotencyKey, ...info }) }),
    "initiate",
  );

  assert.deepEqual(result, replayed, "the result is the replayed 201 body");
  assert.equal(server.requests.length, 3);
  const [{ key }] = server.requests;
  assert.ok(typeof key === "string" && key.length > 0, "a key was generated");
  assert.deepEqual(server.requests.map((r) => r.key), [key, key, key], "one key for every attempt");
  assert.deepEqual(server.requests.map((r) => r.body), [body, body, body]);
  for (let i = 1; i < 3; i++) {
    assert.ok(server.requests[i].at - server.requests[i - 1].at >= 950, "Retry-After (1 s) honoured between attempts");
  }
  assert.ok(Date.now() - started < 5000);
  assert.deepEqual(retries, [
    { code: "initiation_unknown", key, attempt: 1, waitMs: 1000 },
    { code: "initiation_unknown", key, attempt: 2, waitMs: 1000 },
  ]);
});

test("order_paid is thrown at once, never retried, with the paid payment's reference", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await scriptedServer(t, () => ({
    status: 409,
    body: { error: { code: "order_paid", message: "order order-42 is already paid", reference: "ref-paid" } },
  }));
  const tracker = newTracker(t, server.url);
  const retries = [];
  await assert.rejects(
    within(tracker.initiate(body, { idempotencyKey: "key-paid", onRetry: (err) => retries.push(err.code) }), "initiate"),
    (err) => {
      assert.ok(err instanceof PaytrackError);
      assert.equal(err.code, "order_paid");
      assert.equal(err.status, 409);
      assert.equal(err.reference, "ref-paid");
      assert.equal(err.message, "order order-42 is already paid");
      assert.equal(err.idempotencyKey, "key-paid");
      return true;
    },
  );
  assert.equal(server.requests.length, 1, "asked once");
  assert.deepEqual(retries, []);
});

test("payment_pending also names the order's payment on the error", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await scriptedServer(t, () => ({
    status: 409,
    body: { error: { code: "payment_pending", message: "order order-42 already has a pending payment", reference: "ref-pending" } },
  }));
  const tracker = newTracker(t, server.url);
  let key;
  await assert.rejects(within(tracker.initiate(body), "initiate"), (err) => {
    assert.equal(err.code, "payment_pending");
    assert.equal(err.reference, "ref-pending");
    key = err.idempotencyKey;
    return true;
  });
  assert.equal(server.requests.length, 1);
  assert.ok(key && server.requests[0].key === key, "the generated key is on the error");
});

test("initiation_unknown past initiateUnknownWaitMs throws with its code and key; the same key later gets the payment", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  let learned = false; // the server has not learned the first attempt's outcome yet
  const later = payment("ref-late");
  const server = await scriptedServer(t, () => (learned ? { status: 201, headers: { "Idempotent-Replayed": "true" }, body: later } : unknown(0)));
  const tracker = newTracker(t, server.url, { initiateUnknownWaitMs: 600 });
  const started = Date.now();
  let thrown;
  await assert.rejects(within(tracker.initiate(body, { idempotencyKey: "key-unknown" }), "initiate"), (err) => {
    thrown = err;
    return true;
  });
  const elapsed = Date.now() - started;
  assert.ok(thrown instanceof PaytrackError);
  assert.equal(thrown.code, "initiation_unknown");
  assert.equal(thrown.status, 409);
  assert.equal(thrown.idempotencyKey, "key-unknown");
  assert.equal(thrown.retryAfter, 0);
  assert.ok(elapsed >= 550 && elapsed < 3000, `bounded by the budget (${elapsed} ms)`);
  // Retry-After: 0 is not a busy loop: a floor between attempts.
  assert.ok(server.requests.length >= 2 && server.requests.length <= 5, `${server.requests.length} attempts`);
  assert.ok(server.requests.every((r) => r.key === "key-unknown"), "never a new key");

  // The page asks again later with the key on the error, and gets the first attempt's payment.
  learned = true;
  const result = await within(tracker.initiate(body, { idempotencyKey: thrown.idempotencyKey }), "initiate again");
  assert.deepEqual(result, later);
  assert.equal(server.requests.at(-1).key, "key-unknown");
});

test("every error initiate() throws carries its key: a refusal, and a server it cannot reach", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const server = await scriptedServer(t, () => ({
    status: 400,
    body: { error: { code: "validation_error", message: "request validation failed", details: [{ field: "phone_number", message: "bad" }] } },
  }));
  const tracker = newTracker(t, server.url);
  await assert.rejects(within(tracker.initiate(body, { idempotencyKey: "key-bad" }), "initiate"), (err) => {
    assert.equal(err.code, "validation_error");
    assert.equal(err.idempotencyKey, "key-bad");
    return true;
  });

  // Nothing listens on the port any more: network_error, after initiateAttempts attempts.
  const closed = http.createServer();
  await new Promise((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const deadUrl = `http://127.0.0.1:${closed.address().port}`;
  await new Promise((resolve) => closed.close(resolve));
  const offline = newTracker(t, deadUrl, { initiateAttempts: 2, reconnectDelayMs: 10, reconnectDelayMaxMs: 20 });
  const retries = [];
  await assert.rejects(
    within(offline.initiate(body, { onRetry: (err) => retries.push([err.code, err.idempotencyKey]) }), "initiate"),
    (err) => {
      assert.equal(err.code, "network_error");
      assert.ok(typeof err.idempotencyKey === "string" && err.idempotencyKey.length > 0);
      assert.deepEqual(retries, [["network_error", err.idempotencyKey]], "one retry, with the same key");
      return true;
    },
  );
});
