// The example checkout's Vite setup. In development (`npm run dev`, `npm start`) and in
// `vite preview`, Vite proxies the paytrack API and its Socket.IO endpoint to PAYTRACK_URL
// (default http://127.0.0.1:5000, where `python server.py` listens), so the page and paytrack
// share one origin: no CORS, no FRONTEND_URL to set.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const paytrack = process.env.PAYTRACK_URL ?? "http://127.0.0.1:5000";
const proxy = {
  "/api": { target: paytrack },
  "/socket.io": { target: paytrack, ws: true },
};

export default defineConfig({
  plugins: [react()],
  // paytrack-react is linked from clients/react, which has its own React for its tests: one React only.
  resolve: { dedupe: ["react", "react-dom"] },
  server: { host: "127.0.0.1", proxy },
  preview: { host: "127.0.0.1", proxy },
  build: {
    rollupOptions: {
      // The checkout, and the page the browser tests drive the binding with (checks/).
      input: { checkout: "index.html", checks: "checks/index.html" },
    },
  },
});
