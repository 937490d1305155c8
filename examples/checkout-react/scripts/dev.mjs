// `npm start`: the example checkout against a local paytrack development server, in one command.
//
// Starts this repository's `server.py` in development mode (memory storage, sandbox provider,
// simulate endpoint open, no auth) on PAYTRACK_PORT (default 5000), unless a paytrack server
// already answers there, then Vite's dev server (http://127.0.0.1:5173), which proxies /api and
// /socket.io to it. Ctrl-C stops both. With PAYTRACK_URL set, only Vite starts, against that server.
// On a fresh checkout it first installs what is missing (npm ci, the server's virtualenv).
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const EXAMPLE = path.join(ROOT, "examples", "checkout-react");
const venvPython = path.join(ROOT, ".venv", "bin", "python");
const port = Number(process.env.PAYTRACK_PORT ?? 5000);

function run(command, args, cwd) {
  const done = spawnSync(command, args, { cwd, stdio: "inherit" });
  if (done.status !== 0) throw new Error(`${command} ${args.join(" ")} failed in ${cwd}`);
}

/** What a fresh checkout lacks, installed as locked: the client, the binding, this example, and (for server.py) the Quickstart's venv. */
function prepare() {
  for (const dir of ["clients/js", "clients/react", "examples/checkout-react"]) {
    if (!existsSync(path.join(ROOT, dir, "node_modules"))) {
      console.log(`setup: npm ci in ${dir}`);
      run("npm", ["ci", "--no-audit", "--no-fund"], path.join(ROOT, dir));
    }
  }
  if (!process.env.PAYTRACK_URL && !process.env.PAYTRACK_PYTHON && !existsSync(venvPython)) {
    console.log("setup: the server's virtualenv, as README's Quickstart (python3 -m venv .venv, pinned packages)");
    run("python3", ["-m", "venv", ".venv"], ROOT);
    run(venvPython, ["-m", "pip", "install", "-q", "--require-hashes", "-r", "requirements.lock"], ROOT);
  }
}

async function healthy(url) {
  try {
    const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
    return response.ok && (await response.json()).status !== undefined;
  } catch {
    return false;
  }
}

async function startPaytrack() {
  const url = `http://127.0.0.1:${port}`;
  if (await healthy(url)) {
    console.log(`paytrack: using the server already on ${url}`);
    return { url, stop: () => {} };
  }
  console.log(`paytrack: starting ${path.relative(process.cwd(), path.join(ROOT, "server.py"))} on ${url} (development: memory storage, sandbox)`);
  const python = process.env.PAYTRACK_PYTHON ?? venvPython;
  const child = spawn(python, ["server.py", "--host", "127.0.0.1", "--port", String(port)], {
    cwd: ROOT,
    env: { ...process.env, APP_ENV: "development" },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const deadline = Date.now() + 30_000;
  while (!(await healthy(url))) {
    if (child.exitCode !== null) throw new Error(`server.py exited with ${child.exitCode} (see above; is ${python} set up? README "Quickstart")`);
    if (Date.now() > deadline) throw new Error(`server.py did not answer on ${url} within 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return {
    url,
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

prepare();
const paytrack = process.env.PAYTRACK_URL ? { url: process.env.PAYTRACK_URL, stop: () => {} } : await startPaytrack();
process.env.PAYTRACK_URL = paytrack.url; // read by vite.config.js
const { createServer } = await import("vite");
const vite = await createServer({ root: EXAMPLE, configFile: path.join(EXAMPLE, "vite.config.js") });
await vite.listen();
vite.printUrls();
console.log(`checkout: open ${vite.resolvedUrls.local[0]} (paytrack at ${paytrack.url}); Ctrl-C stops both`);

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  await vite.close();
  await paytrack.stop();
  process.exit(0);
}
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
