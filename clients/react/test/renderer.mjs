// React's test renderer as the hook tests use it: act() environment on, the renderer's known noise
// quieted, and `until`, which waits outside act (so the socket's callbacks run) and lets React render.
import TestRenderer from "react-test-renderer";

import { eventually } from "./support.mjs";

export const { act, create } = TestRenderer;
globalThis.IS_REACT_ACT_ENVIRONMENT = true;
// react-test-renderer 19 says it is deprecated once per create() (it is still React's own renderer),
// and updates that the socket brings between two act() calls are not wrapped in act(): both said once
// each is enough. Every other console.error passes through.
const warn = console.error;
const QUIET = ["react-test-renderer is deprecated", "was not wrapped in act(", "should be wrapped into act("];
console.error = (...args) => {
  if (typeof args[0] === "string" && QUIET.some((text) => args[0].includes(text))) return;
  warn(...args);
};

/** Waits (outside act, so the socket's callbacks run) until `check()` holds, then lets React render. */
export async function until(check, what) {
  await eventually(async () => {
    await act(async () => {});
    return check();
  }, { what });
}
