// A provider inside React's <Activity> (a tab kept alive, a route a router keeps for "back"): hidden,
// its subtree keeps its state but every effect is destroyed, the provider's included, so the store
// closes its tracker once the release delay has passed; shown again, the effects run again on the same
// store, and the page must follow its payments again (not show "loading" and "offline" for good).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Activity, createElement as h, StrictMode, useState } from "react";
import { PaytrackProvider, useInitiatePayment, usePayment, usePaytrackStore } from "../src/index.js";
import { connectionCount, eventually, initiated, nextTask, paymentBody, simulate, startServer, trackingClients } from "./support.mjs";
import { act, create, until } from "./renderer.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

test("a provider hidden by <Activity> and shown again follows its payment again, on a new socket, and tells onSuccess once", async () => {
  const baseline = await connectionCount(server.url);
  const reference = await initiated(server.url, "activity");
  const successes = [];
  const seen = { last: null, pay: null, store: null };
  function Probe() {
    seen.store = usePaytrackStore();
    seen.pay = useInitiatePayment();
    seen.last = usePayment(reference, { onSuccess: (p) => successes.push(p.seq) });
    return h("p", null, `${seen.last.status} ${seen.last.connection.state}`);
  }
  let setMode;
  function Tabs() {
    const [mode, set] = useState("visible");
    setMode = set;
    return h(Activity, { mode }, h(PaytrackProvider, { url: server.url, options: { shareAcrossTabs: false } }, h(Probe)));
  }
  let renderer;
  await act(async () => {
    renderer = create(h(StrictMode, null, h(Tabs)));
  });
  try {
    await until(() => seen.last.status === "PENDING" && seen.last.connection.state === "connected", "PENDING and connected");
    const initiation = seen.pay.initiate; // the hook's state lives on while hidden

    await act(async () => setMode("hidden"));
    await nextTask(); // past the release delay: the effects are gone, so are the track and the socket
    await eventually(async () => (await trackingClients(server.url, reference)) === 0, { what: "untracked while hidden" });
    await eventually(async () => (await connectionCount(server.url)) === baseline, { what: "no socket while hidden" });

    await act(async () => setMode("visible"));
    await until(() => seen.last.connection.state === "connected", "connected again");
    await until(() => seen.last.status === "PENDING", "PENDING again");
    assert.equal(await trackingClients(server.url, reference), 1);
    assert.equal(seen.pay.initiate, initiation, "the same initiation: an unsettled attempt keeps its Idempotency-Key");

    await simulate(server.url, reference, "SUCCESSFUL");
    await until(() => seen.last.status === "SUCCESSFUL", "SUCCESSFUL");
    await act(async () => {});
    assert.deepEqual(successes, [2], "onSuccess once");
  } finally {
    await act(async () => renderer.unmount());
  }
  await nextTask();
  await eventually(async () => (await connectionCount(server.url)) === baseline, { what: "the socket closed at unmount" });
  // Unmounted for good: a store a component kept opens nothing again (no holder would ever close it).
  await assert.rejects(seen.store.initiate(paymentBody("activity-late")), { code: "closed" });
  assert.equal(seen.store.tracker, null);
});
