// The store shows `reconnecting` with the next attempt's time while the server is away, and
// `connected` with no error and no time once it is back (paytrack-client's connection states).
import assert from "node:assert/strict";
import { test } from "node:test";
import { createPaytrackStore } from "../src/index.js";
import { connectionReached, observedTrackers, ServerProcess, within } from "./support.mjs";

/** Resolves once the connection snapshot satisfies `predicate`. */
function connectionWhere(store, predicate, what) {
  return within(
    new Promise((resolve) => {
      const check = () => {
        const snapshot = store.getConnection();
        if (predicate(snapshot)) {
          off();
          resolve(snapshot);
        }
      };
      const off = store.subscribeConnection(check);
      check();
    }),
    what,
  );
}

async function serverGoesAndComesBack() {
  const server = await new ServerProcess().start();
  const store = createPaytrackStore({ url: server.url, reconnectDelayMs: 300, reconnectDelayMaxMs: 600 }, observedTrackers());
  try {
    await connectionReached(store, "connected");
    await server.kill();
    const away = await connectionWhere(store, (s) => s.state === "reconnecting" && s.nextAttemptAt !== null, "reconnecting with a time");
    assert.ok(away.nextAttemptAt > Date.now() - 1000, "the next attempt's epoch ms");
    await server.start();
    const back = await connectionWhere(store, (s) => s.state === "connected", "connected again");
    assert.deepEqual({ ...back }, { state: "connected", nextAttemptAt: null, error: null });
  } finally {
    store.close();
    await server.kill();
  }
}

test("a server away reads as reconnecting with the next attempt's time, then connected", async () => {
  await serverGoesAndComesBack();
});
