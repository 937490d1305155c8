// The provider's own store (no `store` prop) across React's remounts: a route change in one commit,
// <Activity> hiding and showing, calls made around a close. What the page shows and what the server
// holds (sockets, tracks), counted on the server.
import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, test } from "node:test";
import { Activity, createElement as h, StrictMode, useEffect, useState } from "react";
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

const OPTIONS = { shareAcrossTabs: false };

let baselineSockets = 0;
beforeEach(async () => {
  baselineSockets = await connectionCount(server.url);
});
afterEach(async () => {
  await nextTask();
  await eventually(async () => (await connectionCount(server.url)) === baselineSockets, { what: "no socket left after the test" });
});

test("a route change in one commit under StrictMode keeps the provider's socket and track, and shows no loading", async () => {
  const baseline = await connectionCount(server.url);
  const reference = await initiated(server.url, "route");
  const seen = { store: null, statuses: [], successes: [] };
  function Payment({ name }) {
    seen.store = usePaytrackStore();
    const { status } = usePayment(reference, { onSuccess: (p) => seen.successes.push([name, p.seq]) });
    seen.statuses.push(`${name}:${status}`);
    return h("p", null, status);
  }
  function RouteA() {
    return h(Payment, { name: "a" });
  }
  function RouteB() {
    return h("div", null, h(Payment, { name: "b" }));
  }
  let go;
  function App() {
    const [route, set] = useState("a");
    go = set;
    return h(PaytrackProvider, { url: server.url, options: OPTIONS }, route === "a" ? h(RouteA) : h(RouteB));
  }
  let renderer;
  await act(async () => {
    renderer = create(h(StrictMode, null, h(App)));
  });
  try {
    await until(() => seen.statuses.at(-1) === "a:PENDING" && seen.store.getConnection().state === "connected", "PENDING");
    const tracker = seen.store.tracker;
    seen.statuses.length = 0;
    await act(async () => go("b"));
    await nextTask();
    await act(async () => {});
    assert.equal(seen.store.tracker, tracker, "the same tracker");
    assert.deepEqual([...new Set(seen.statuses)], ["b:PENDING"]);
    assert.equal(await connectionCount(server.url), baseline + 1);
    assert.equal(await trackingClients(server.url, reference), 1);
    await simulate(server.url, reference, "SUCCESSFUL");
    await until(() => seen.statuses.at(-1) === "b:SUCCESSFUL", "SUCCESSFUL");
    await act(async () => {});
    assert.deepEqual(seen.successes, [["b", 2]]);
  } finally {
    await act(async () => renderer.unmount());
  }
  await nextTask();
  await eventually(async () => (await connectionCount(server.url)) === baseline, { what: "no socket left" });
});

/** A provider under <Activity>, with a probe that records every status it renders. */
function activityTree(reference, seen, extra = null) {
  function Probe() {
    seen.store = usePaytrackStore();
    seen.pay = useInitiatePayment();
    const result = usePayment(reference, { onSuccess: (p) => seen.successes.push(p.seq) });
    seen.last = result;
    seen.statuses.push(result.status);
    seen.connections?.push(result.connection.state);
    return h("p", null, `${result.status} ${result.connection.state}`);
  }
  function Tabs() {
    const [mode, set] = useState("visible");
    seen.setMode = set;
    return h(Activity, { mode }, h(PaytrackProvider, { url: server.url, options: OPTIONS }, extra, h(Probe)));
  }
  return h(StrictMode, null, h(Tabs));
}

/** Mounts `activityTree` and waits until it shows the payment PENDING on a connected socket. */
async function mountedPending(reference, seen, extra = null) {
  let renderer;
  await act(async () => {
    renderer = create(activityTree(reference, seen, extra));
  });
  try {
    await until(() => seen.last?.status === "PENDING" && seen.last.connection.state === "connected", "PENDING");
  } catch (error) {
    await act(async () => renderer.unmount());
    throw error;
  }
  return renderer;
}

/** Hides the provider and waits until the server counts no tracker of `reference`. */
async function hiddenUntracked(seen, reference) {
  await act(async () => seen.setMode("hidden"));
  await nextTask();
  await eventually(async () => (await trackingClients(server.url, reference)) === 0, { what: "untracked while hidden" });
}

test("shown again after <Activity> hid it, usePayment shows the state it had, not loading, while it re-tracks", async () => {
  const reference = await initiated(server.url, "activity-kept");
  const seen = { statuses: [], successes: [] };
  const renderer = await mountedPending(reference, seen);
  try {
    await hiddenUntracked(seen, reference);
    seen.statuses.length = 0;
    await act(async () => seen.setMode("visible"));
    await until(() => seen.last.connection.state === "connected" && seen.last.status === "PENDING", "connected again");
    assert.ok(!seen.statuses.includes("loading"), `statuses after show: ${seen.statuses.join(", ")}`);
  } finally {
    await act(async () => renderer.unmount());
  }
});

test("shown again after <Activity> hid it, the connection reads connecting, then connected, never offline", async () => {
  const reference = await initiated(server.url, "activity-connection");
  const seen = { statuses: [], successes: [], connections: [] };
  const renderer = await mountedPending(reference, seen);
  try {
    await hiddenUntracked(seen, reference);
    seen.connections.length = 0;
    await act(async () => seen.setMode("visible"));
    await until(() => seen.last.connection.state === "connected", "connected again");
    assert.ok(!seen.connections.includes("offline"), `connection states after show: ${seen.connections.join(", ")}`);
  } finally {
    await act(async () => renderer.unmount());
  }
});

test("a payment completed while hidden: shown again, SUCCESSFUL and onSuccess once", async () => {
  const reference = await initiated(server.url, "activity-done");
  const seen = { statuses: [], successes: [] };
  const renderer = await mountedPending(reference, seen);
  try {
    await hiddenUntracked(seen, reference);
    await simulate(server.url, reference, "SUCCESSFUL");
    await act(async () => seen.setMode("visible"));
    await until(() => seen.last.status === "SUCCESSFUL", "SUCCESSFUL");
    await act(async () => {});
    // Hidden and shown once more: the same final state, onSuccess not again.
    await act(async () => seen.setMode("hidden"));
    await nextTask();
    await act(async () => seen.setMode("visible"));
    await until(() => seen.last.status === "SUCCESSFUL" && seen.last.connection.state === "connected", "SUCCESSFUL again");
    await act(async () => {});
    assert.deepEqual(seen.successes, [2]);
  } finally {
    await act(async () => renderer.unmount());
  }
});

test("a component that initiates in an effect when shown again gets its payment, not `closed`", async () => {
  const reference = await initiated(server.url, "activity-effect");
  const seen = { statuses: [], successes: [], outcomes: [] };
  let armed = false;
  function AutoPay() {
    const store = usePaytrackStore();
    useEffect(() => {
      if (!armed) return;
      armed = false;
      store.initiate(paymentBody("activity-effect-auto")).then(
        (payment) => seen.outcomes.push(payment.status),
        (error) => seen.outcomes.push(error.code),
      );
    });
    return null;
  }
  // AutoPay first: its effect runs before the probe's subscription and the provider's retain.
  const renderer = await mountedPending(reference, seen, h(AutoPay));
  try {
    await hiddenUntracked(seen, reference);
    armed = true;
    await act(async () => seen.setMode("visible"));
    await until(() => seen.outcomes.length === 1, "the initiation's outcome");
    assert.deepEqual(seen.outcomes, ["PENDING"]);
  } finally {
    await act(async () => renderer.unmount());
  }
});

test("Pay pressed, then the tab hidden before the answer: shown again, the initiation is the payment, not an error", async () => {
  const reference = await initiated(server.url, "activity-inflight");
  const seen = { statuses: [], successes: [] };
  const renderer = await mountedPending(reference, seen);
  try {
    let pending;
    await act(async () => {
      pending = seen.pay.initiate(paymentBody("activity-inflight-pay"));
      seen.setMode("hidden");
    });
    const outcome = await pending;
    await act(async () => seen.setMode("visible"));
    await until(() => seen.last.connection.state === "connected", "connected again");
    assert.equal(outcome.state, "initiated", `${outcome.state} ${outcome.error?.code}`);
  } finally {
    await act(async () => renderer.unmount());
  }
});

test("unmounted for good: no socket left on the server, even with a call in flight", async () => {
  const baseline = await connectionCount(server.url);
  const reference = await initiated(server.url, "gone");
  const seen = { statuses: [], successes: [] };
  const renderer = await mountedPending(reference, seen);
  let pending;
  await act(async () => {
    pending = seen.pay.initiate(paymentBody("gone-pay"));
    renderer.unmount();
  });
  await pending;
  await nextTask();
  await eventually(async () => (await connectionCount(server.url)) === baseline, { what: "no socket left" });
  assert.equal(seen.store.tracker, null);
});
