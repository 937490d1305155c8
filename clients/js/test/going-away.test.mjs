// A deploy stops an instance with every page on it (issue 38): the server closes each websocket with 1001,
// going away, and every page comes back at once. socket.io's own first retry lands 0.25 to 0.75 s after
// the close, so 10,000 pages arrive at the new process within half a second. After a close the server
// started, the official client draws its first retry from a wider window (`goingAwayWindowMs`, 0 to 3 s),
// and keeps its usual backoff after any other close.
import assert from "node:assert/strict";
import { test } from "node:test";

import { PaymentTracker } from "../paytrack-client.js";
import { ServerProcess, stateReached } from "./support.mjs";

/**
 * A tracker connected to a real server, then the server stopped by `stop(server)`: the delay the tracker
 * scheduled for its first retry (the first `reconnecting`'s nextAttemptAt, less when it was shown), with
 * every random draw at 90 % of its window.
 */
async function firstRetryAfter(t, stop) {
  const server = await new ServerProcess().start();
  t.after(() => server.kill());
  const tracker = new PaymentTracker({ url: server.url, goingAwayWindowMs: 20_000, fallbackAfterMs: 60_000 });
  t.after(() => tracker.close());
  await stateReached(tracker, "connected");
  const shown = new Promise((resolve) => {
    const listener = (state, info) => {
      if (state !== "reconnecting") return;
      tracker.off("connection", listener);
      resolve(info.nextAttemptAt - Date.now());
    };
    tracker.on("connection", listener);
  });
  const random = Math.random;
  Math.random = () => 0.9;
  try {
    await stop(server);
    return await shown;
  } finally {
    Math.random = random;
  }
}

test("after the server's going-away close the first retry is drawn from goingAwayWindowMs, not the short backoff", async (t) => {
  const delay = await firstRetryAfter(t, (server) => server.terminate());
  // The backoff's first wait is 500 ms x (0.5 + 0.9) = 700 ms; the going-away window's draw is 18,000 ms.
  assert.ok(delay > 17_000 && delay <= 18_000, `first retry after ${delay} ms`);
});

test("after any other close (a crash: no closing handshake) the first retry is the usual short backoff", async (t) => {
  const delay = await firstRetryAfter(t, (server) => server.kill());
  assert.ok(delay <= 700, `first retry after ${delay} ms`);
});
