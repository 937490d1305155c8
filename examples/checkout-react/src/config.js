// Where paytrack is, and whether to offer the sandbox's simulate buttons.
//
// By default the page talks to its own origin, which Vite proxies to paytrack (vite.config.js).
// `?server=https://pay.example.com` talks to that server directly instead (it must list this page's
// origin in FRONTEND_URL). The simulate buttons call the development server's
// POST /api/payment/test/simulate: shown in `npm run dev`, and in a build made with
// VITE_PAYTRACK_SIMULATE=true (the browser tests build that way); a production build has none.
const params = new URLSearchParams(window.location.search);

export const serverUrl = (params.get("server") || window.location.origin).replace(/\/+$/, "");
export const simulateEnabled = import.meta.env.DEV || import.meta.env.VITE_PAYTRACK_SIMULATE === "true";
