import { useEffect, useState } from "react";
import { useConnection } from "paytrack-react";

/** Seconds until `at` (epoch ms), updated every second while there is one. */
function useSecondsUntil(at) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (at === null) return undefined;
    setNow(Date.now());
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [at]);
  return at === null ? null : Math.max(0, Math.ceil((at - now) / 1000));
}

const LABELS = {
  connecting: "connecting…",
  connected: "live",
  reconnecting: "reconnecting",
  polling: "live (polling)",
  offline: "offline",
};

/** The connection as the shopper should see it: live, reconnecting in N s, offline, and why. */
export function ConnectionBadge() {
  const { state, nextAttemptAt, error } = useConnection();
  const seconds = useSecondsUntil(nextAttemptAt);
  const label = state === "reconnecting" && seconds !== null ? `reconnecting in ${seconds} s` : LABELS[state] ?? state;
  return (
    <p className="connection" id="connection" data-state={state} data-error={error?.code ?? ""}>
      <span className={`dot ${state}`} aria-hidden="true" />
      {label}
      {error && state !== "connected" && <span className="why"> ({error.code})</span>}
    </p>
  );
}
