// The hooks in React itself (react-test-renderer, a concurrent root, StrictMode's double render and
// double effects), against a real server.py: one track per reference under StrictMode, the state as
// the server has it, onSuccess once, and nothing left on the server after unmount.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createElement as h, StrictMode, useEffect, useState } from "react";
import { createPaytrackStore, PaytrackProvider, useConnection, useInitiatePayment, usePayment } from "../src/index.js";
import {
  connectionCount,
  connectionReached,
  eventually,
  initiated,
  nextTask,
  observedTrackers,
  paymentBody,
  simulate,
  startServer,
  trackingClients,
} from "./support.mjs";
import { act, create, until } from "./renderer.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

/** Renders a component's latest hook result into `seen.last`, every render into `seen.renders`. */
function Probe({ reference, seen, options }) {
  const result = usePayment(reference, options);
  seen.renders.push(result);
  seen.last = result;
  return h("p", null, `${result.status} ${result.connection.state}`);
}

async function render(element) {
  let renderer;
  await act(async () => {
    renderer = create(element);
  });
  return renderer;
}

test("under StrictMode a mounted usePayment tracks once, shows the server's state and calls onSuccess once", async () => {
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  const keep = store.retain();
  const probe = { renders: [], last: null };
  const successes = [];
  try {
    await connectionReached(store, "connected"); // so a second track would reach the socket
    const reference = await initiated(server.url, "hook-strict");
    const options = { onSuccess: (p) => successes.push(p.seq) };
    let effectRuns = 0;
    function Witness() {
      useEffect(() => {
        effectRuns += 1;
      }, []);
      return null;
    }
    const tree = h(StrictMode, null, h(PaytrackProvider, { store }, h(Witness), h(Probe, { reference, seen: probe, options })));
    const renderer = await render(tree);
    assert.equal(effectRuns, 2, "StrictMode ran the effects twice (React's development build)");
    await until(() => probe.last.status === "PENDING", "PENDING");
    await until(() => seen.count(seen.acks, reference) >= 1, "the track's ack");
    assert.equal(seen.count(seen.tracks, reference), 1);
    assert.equal(seen.count(seen.stops, reference), 0);
    assert.equal(probe.last.connection.state, "connected");
    assert.equal(probe.last.payment.reference, reference);

    await simulate(server.url, reference, "SUCCESSFUL");
    await until(() => probe.last.status === "SUCCESSFUL", "SUCCESSFUL");
    await act(async () => {}); // the effect after the render that shows it
    assert.deepEqual(successes, [2], "onSuccess once, with the final payment");
    assert.equal(seen.count(seen.acks, reference), 1, "one track-payment on the socket");
    assert.equal(renderer.toJSON().children.join(""), "SUCCESSFUL connected");

    await act(async () => renderer.unmount());
    await nextTask();
    assert.equal(seen.count(seen.stops, reference), 1, "stopped once the last user left");
    assert.deepEqual(successes, [2]);
  } finally {
    keep();
    store.close();
  }
});

test("two components on one reference share one track; a changed reference moves the track", async () => {
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  const keep = store.retain();
  try {
    await connectionReached(store, "connected");
    const [first, second] = [await initiated(server.url, "shared-a"), await initiated(server.url, "shared-b")];
    const a = { renders: [], last: null };
    const b = { renders: [], last: null };
    let setReference;
    function Switch() {
      const [reference, set] = useState(first);
      setReference = set;
      return h(Probe, { reference, seen: b });
    }
    const renderer = await render(
      h(StrictMode, null, h(PaytrackProvider, { store }, h(Probe, { reference: first, seen: a }), h(Switch))),
    );
    await until(() => a.last.status === "PENDING" && b.last.status === "PENDING", "both PENDING");
    assert.equal(a.last.payment, b.last.payment, "one state object for both");
    assert.equal(seen.count(seen.tracks, first), 1);

    await act(async () => setReference(second));
    await until(() => b.last.status === "PENDING" && b.last.payment.reference === second, "the second payment");
    await nextTask();
    assert.equal(seen.count(seen.stops, first), 0, "the first still has a user");
    assert.equal(seen.count(seen.tracks, second), 1);
    assert.equal(await trackingClients(server.url, first), 1);
    await act(async () => renderer.unmount());
    await nextTask();
    assert.equal(seen.count(seen.stops, first), 1);
    assert.equal(seen.count(seen.stops, second), 1);
    await eventually(async () => (await trackingClients(server.url, first)) === 0, { what: "first untracked" });
    await eventually(async () => (await trackingClients(server.url, second)) === 0, { what: "second untracked" });
  } finally {
    keep();
    store.close();
  }
});

test("a provider creates one tracker when its children subscribe, and closes it (and its socket) on unmount", async () => {
  const before_ = await connectionCount(server.url);
  const reference = await initiated(server.url, "provider");
  const probe = { renders: [], last: null };
  let connection = null;
  function Banner() {
    connection = useConnection();
    return null;
  }
  const renderer = await render(
    h(StrictMode, null, h(PaytrackProvider, { url: server.url, options: { shareAcrossTabs: false } }, h(Banner), h(Probe, { reference, seen: probe }))),
  );
  await until(() => probe.last.status === "PENDING" && connection.state === "connected", "connected and PENDING");
  assert.equal(await connectionCount(server.url), before_ + 1, "one socket for the provider, StrictMode or not");
  await act(async () => renderer.unmount());
  await nextTask();
  await eventually(async () => (await connectionCount(server.url)) === before_, { what: "the socket closed" });
  assert.equal(await trackingClients(server.url, reference), 0);
});

test("useInitiatePayment starts a payment that usePayment then follows", async () => {
  let initiation = null;
  const probe = { renders: [], last: null };
  function Checkout() {
    initiation = useInitiatePayment();
    return h(Probe, { reference: initiation.reference, seen: probe });
  }
  const renderer = await render(h(StrictMode, null, h(PaytrackProvider, { url: server.url, options: { shareAcrossTabs: false } }, h(Checkout))));
  assert.equal(initiation.state, "idle");
  assert.equal(probe.last.status, "idle");
  const body = paymentBody("hook-initiate");
  let result;
  await act(async () => {
    result = await initiation.initiate(body);
  });
  assert.equal(result.state, "initiated");
  assert.equal(initiation.state, "initiated");
  assert.ok(initiation.payment.ussd_code);
  await until(() => probe.last.status === "PENDING", "PENDING");
  assert.equal(probe.last.payment.reference, initiation.reference);
  await act(async () => renderer.unmount());
});

test("a provider given another url closes the first server's tracker and follows on the new one", async () => {
  const other = await startServer();
  try {
    const reference = await initiated(server.url, "provider-url");
    const baseline = await connectionCount(server.url);
    const probe = { renders: [], last: null };
    const tree = (url) => h(StrictMode, null, h(PaytrackProvider, { url }, h(Probe, { reference, seen: probe })));
    const renderer = await render(tree(server.url));
    await until(() => probe.last.status === "PENDING", "PENDING on the first server");
    assert.equal(await connectionCount(server.url), baseline + 1);

    const before = probe.renders.length;
    await act(async () => renderer.update(tree(other.url)));
    await until(() => probe.last.status === "unknown", "the second server does not know it");
    const shown = probe.renders.slice(before).map((result) => result.status);
    assert.ok(!shown.includes("PENDING"), `the first server's state is not shown for the second: ${shown.join(", ")}`);
    await eventually(async () => (await connectionCount(server.url)) === baseline, { what: "the first tracker closed" });
    assert.equal(await connectionCount(other.url), 1);
    await act(async () => renderer.unmount());
    await eventually(async () => (await connectionCount(other.url)) === 0, { what: "the second tracker closed" });
  } finally {
    await other.kill();
  }
});
