// A page for the browser tests of paytrack-react (tests/test_react_browser.py), built with the
// example: one provider under StrictMode, and components the test mounts and unmounts through
// `window.checks`. Query: `server` (default this origin, through Vite's proxy),
// `reconnectDelayMs` and `reconnectDelayMaxMs` (the client's reconnect backoff).
import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { PaytrackProvider, useConnection, usePayment } from "paytrack-react";

const params = new URLSearchParams(window.location.search);
const server = params.get("server") || window.location.origin;
const numberParam = (name, fallback) => (params.has(name) ? Number(params.get(name)) : fallback);
const options = {
  shareAcrossTabs: false,
  reconnectDelayMs: numberParam("reconnectDelayMs", 250),
  reconnectDelayMaxMs: numberParam("reconnectDelayMaxMs", 2000),
};

function Follow({ reference }) {
  const { status, payment, error } = usePayment(reference);
  return (
    <li data-reference={reference} data-status={status} data-seq={payment?.seq ?? ""} data-error={error?.code ?? ""}>
      {reference}: {status}
    </li>
  );
}

function Checks() {
  const [followed, setFollowed] = useState([]);
  const connection = useConnection();
  useEffect(() => {
    // 2 in React's development build under StrictMode (mounted, unmounted, mounted again): the tests check it.
    document.body.dataset.effectRuns = String(Number(document.body.dataset.effectRuns ?? 0) + 1);
    window.checks = {
      follow: (reference) => setFollowed((list) => (list.includes(reference) ? list : [...list, reference])),
      unfollow: (reference) => setFollowed((list) => list.filter((r) => r !== reference)),
    };
    document.body.dataset.ready = "true";
  }, []);
  return (
    <>
      <p id="connection" data-state={connection.state} data-error={connection.error?.code ?? ""} data-next-attempt-at={connection.nextAttemptAt ?? ""}>
        {connection.state} {connection.error?.code}
      </p>
      <ul id="followed">
        {followed.map((reference) => (
          <Follow key={reference} reference={reference} />
        ))}
      </ul>
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <PaytrackProvider url={server} options={options}>
      <Checks />
    </PaytrackProvider>
  </StrictMode>,
);
