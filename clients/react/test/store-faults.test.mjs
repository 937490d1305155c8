// The store against the scripted misbehaving server of the client's tests (clients/js/test): what a
// page is shown while the server has trouble, and after.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";
import { createPaytrackStore } from "../src/index.js";
import { ack, payment, startScriptedServer } from "../../js/test/scripted-server.mjs";
import { connectionReached, eventually, observedTrackers, paymentReached } from "./support.mjs";

let server;
before(async () => {
  server = await startScriptedServer();
});
beforeEach(() => server.reset());
after(() => server?.close());

test("a track refused for now shows its error only until the server answers the track", async () => {
  // The second track-payment (the re-track after a reconnect) is answered busy, the third one ok.
  server.script.track = (ctx) => (server.trackCalls.length === 2 ? ack.error("busy", { retry_after: 0 })(ctx) : ack.ok(ctx));
  server.set(payment("busy-1", "PENDING", 1), { push: false });
  const store = createPaytrackStore({ url: server.url, reconnectDelayMs: 20, reconnectDelayMaxMs: 100, fallbackAfterMs: 60_000 }, observedTrackers());
  try {
    const off = store.subscribePayment("busy-1", () => {});
    await paymentReached(store, "busy-1", (s) => s.status === "PENDING", "PENDING");
    server.io.disconnectSockets(true); // e.g. an instance restarting
    const refused = await paymentReached(store, "busy-1", (s) => s.error !== null, "the busy error");
    assert.equal(refused.error.code, "busy");
    await server.until(() => server.trackCalls.length >= 3, "the track asked again and answered");
    const answered = await paymentReached(store, "busy-1", (s) => s.error === null, "the error cleared by the good answer");
    assert.equal(answered.status, "PENDING");
    off();
  } finally {
    store.close();
  }
});

test("behind a proxy without websockets, a network blip's `unreachable` is not shown once REST answers again", async () => {
  server.script.handshake = "refuse"; // the proxy lets no websocket through; REST works
  server.set(payment("blip-1", "PENDING", 1), { push: false });
  const store = createPaytrackStore(
    { url: server.url, reconnectDelayMs: 50, reconnectDelayMaxMs: 200, fallbackAfterMs: 100, fallbackPollMs: 100, fallbackPollMaxMs: 200 },
    observedTrackers(),
  );
  try {
    const off = store.subscribePayment("blip-1", () => {});
    await connectionReached(store, "polling");
    // One blip: a read and the origin check both fail, so the client says `unreachable`.
    server.script.rest = () => "reset";
    server.script.origin = () => "reset";
    await eventually(() => store.getConnection().error?.code === "unreachable", { what: "unreachable shown" });
    assert.equal(store.getConnection().state, "offline");
    server.script.rest = () => "ok";
    server.script.origin = () => ({ accepted: true });
    await connectionReached(store, "polling");
    assert.equal(store.getConnection().error, null, `still shown: ${store.getConnection().error?.code}`);
    off();
  } finally {
    store.close();
  }
});
