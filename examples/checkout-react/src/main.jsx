import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { PaytrackProvider } from "paytrack-react";
import { Checkout } from "./Checkout.jsx";
import { serverUrl } from "./config.js";
import "./checkout.css";

// The development server runs with AUTH_MODE=none: no token. With auth, pass the shopper's token:
// <PaytrackProvider url={serverUrl} token={() => fetch("/my-backend/paytrack-token").then((r) => r.text())}>
createRoot(document.getElementById("root")).render(
  <StrictMode>
    <PaytrackProvider url={serverUrl} options={{ reconnectDelayMs: 250, reconnectDelayMaxMs: 2000 }}>
      <Checkout />
    </PaytrackProvider>
  </StrictMode>,
);
