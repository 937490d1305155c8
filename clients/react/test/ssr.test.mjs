// Server rendering: renderToString of a page with the provider and every hook renders the
// "no state yet" snapshots and opens nothing: no tracker, no socket on the paytrack server.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createElement as h, StrictMode } from "react";
import { renderToString } from "react-dom/server";
import { createPaytrackStore, PaytrackProvider, useConnection, useInitiatePayment, usePayment } from "../src/index.js";
import { api, connectionCount, observedTrackers, paymentBody, startServer } from "./support.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.kill();
});

function Checkout({ reference }) {
  const { status, payment, connection } = usePayment(reference);
  const { state } = useInitiatePayment();
  const { state: link } = useConnection();
  return h("p", null, `${status}|${payment === null}|${connection.state}|${link}|${state}`);
}

test("renderToString renders the loading state and opens no socket", async () => {
  const { body } = await api(server.url, "POST", "/api/payment/initiate", paymentBody("ssr"));
  const before_ = await connectionCount(server.url);
  const seen = observedTrackers();
  const store = createPaytrackStore({ url: server.url }, seen);
  const html = renderToString(
    h(StrictMode, null, h(PaytrackProvider, { store }, h(Checkout, { reference: body.reference }), h(Checkout, { reference: null }))),
  );
  assert.equal(html, "<p>loading|true|connecting|connecting|idle</p><p>idle|true|connecting|connecting|idle</p>");
  assert.equal(seen.trackers.length, 0, "no tracker created while rendering");
  assert.equal(store.tracker, null);
  assert.equal(await connectionCount(server.url), before_, "no socket reached the server");
});

test("a provider given only a url renders on the server without creating a tracker", () => {
  const html = renderToString(h(PaytrackProvider, { url: server.url }, h(Checkout, { reference: "ref-1" })));
  assert.equal(html, "<p>loading|true|connecting|connecting|idle</p>");
});
