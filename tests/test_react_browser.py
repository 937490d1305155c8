"""The React binding and the example checkout in a real browser (headless Chromium, playwright).

The example (examples/checkout-react) is built with `vite build` once per module (as it ships,
and with React's development build, where StrictMode acts), served by a real `vite preview` process that proxies /api and /socket.io to a real `server.py` process (the
development server: sandbox provider, simulate open), and driven as a shopper would: a payment
that succeeds, one that fails and is paid on the retry, and a server restart mid-payment that
ends on the truth with one completion shown. The build's second page (checks/) mounts
`usePayment` components under StrictMode on demand; every Socket.IO frame between page and
server passes through a relay (playwright's WebSocket routing), which counts what the page sent
and can hold back or cut what the server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal as signals
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from tests.harness import WAIT, eventually, npm_installed
from tests.redis_server import RedisServer
from tests.test_browser import MS, page  # noqa: F401 - the Chromium page fixture
from tests.test_server_process import clean_env, free_port, run_server, wait_healthy

pytestmark = [pytest.mark.browser, pytest.mark.node]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "checkout-react"

# What Chromium logs by itself while the server is away (not the page's doing).
NETWORK_NOISE = ("WebSocket connection to", "Failed to load resource")


def vite(command: str, *args: str) -> list[str]:
    """`vite <command> <args>` in the example, as the tests run it: beside the same command of another
    xdist worker on the same project, which Vite 8 refuses unless told not to lock (each test builds to
    and serves from a directory of its own, so nothing is shared but the project's sources)."""
    return ["node", "node_modules/vite/bin/vite.js", command, *args, "--bypass-lock"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example built twice by `vite build`, both with the sandbox's simulate buttons: as it
    ships ("production"), and with React's development build ("development", NODE_ENV=development),
    the only one in which StrictMode mounts, unmounts and mounts again: the checks page needs it."""
    npm_installed(ROOT / "clients" / "js", "socket.io-client", "React example")
    npm_installed(ROOT / "clients" / "react", "react", "React example")
    npm_installed(EXAMPLE, "vite", "React example")
    outputs = {}
    for mode in ("production", "development"):
        out = tmp_path_factory.mktemp(f"checkout-react-{mode}") / "dist"
        done = subprocess.run(
            vite("build", "--outDir", str(out), "--emptyOutDir", "--logLevel", "warn"),
            cwd=EXAMPLE,
            env={**os.environ, "VITE_PAYTRACK_SIMULATE": "true", "NODE_ENV": mode},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert (out / "index.html").exists() and (out / "checks" / "index.html").exists()
        outputs[mode] = out
    return outputs


class Paytrack:
    """A real `server.py` (development settings plus `env`) on a port that survives a restart."""

    def __init__(self, log: IO[bytes], **env: str) -> None:
        self.port = free_port()
        self.env = {"LOG_LEVEL": "WARNING", **env}
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Paytrack:
        self.proc = await run_server(
            "--host", "127.0.0.1", "--port", str(self.port), stdout=self.log, stderr=self.log, **self.env
        )
        await wait_healthy(self.port, self.proc)
        return self

    async def kill(self) -> None:
        """SIGKILL: an outage, nothing closed gracefully."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), WAIT)
        self.proc = None


class Preview:
    """`vite preview` serving the build, proxying /api and /socket.io to `paytrack_url`."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def serve(built: dict[str, Path], tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await serve(build, **paytrack_env)`: a paytrack process, and the example's `build`
    ("production" or "development") in front of it."""
    log = (tmp_path / "processes.log").open("wb")
    started: list[Any] = []

    async def start(build: str = "production", **env: str) -> tuple[Paytrack, Preview]:
        paytrack = await Paytrack(log, **env).start()
        started.append(paytrack)
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *vite("preview", "--outDir", str(built[build]), "--host", "127.0.0.1", "--port", str(port), "--strictPort"),
            cwd=EXAMPLE,
            env={**os.environ, "PAYTRACK_URL": paytrack.url},
            stdout=log,
            stderr=log,
        )
        preview = Preview(proc, port)
        started.append(preview)
        async with aiohttp.ClientSession() as http:

            async def serving() -> bool:
                assert proc.returncode is None, f"vite preview exited with {proc.returncode}"
                try:
                    async with http.get(preview.url + "/") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(serving, timeout=WAIT * 4, interval=0.05)
        return paytrack, preview

    yield start
    for item in reversed(started):
        if isinstance(item, Paytrack):
            await item.kill()
        elif item.proc.returncode is None:
            item.proc.kill()
            await item.proc.wait()
    log.close()


class Relay:
    """Every Socket.IO websocket of the page, through playwright: what the page sent, in order;
    server messages a predicate holds back until `release()`; `cut()` closes the live ones."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.hold: Callable[[str], bool] = lambda message: False
        self.held: list[tuple[Any, str]] = []
        self.routes: list[Any] = []

    async def install(self, page: Any) -> Relay:
        def route(ws: Any) -> None:
            server = ws.connect_to_server()
            self.routes.append(ws)

            def from_page(message: str | bytes) -> None:
                self.sent.append(message if isinstance(message, str) else message.decode())
                server.send(message)

            def from_server(message: str | bytes) -> None:
                text = message if isinstance(message, str) else message.decode()
                if self.hold(text):
                    self.held.append((ws, text))
                else:
                    ws.send(message)

            ws.on_message(from_page)
            server.on_message(from_server)

        await page.route_web_socket(lambda url: "/socket.io/" in url, route)
        return self

    def calls(self, event: str, reference: str) -> int:
        """How many `event` calls for `reference` the page sent (Socket.IO EVENT packets)."""
        return sum(1 for m in self.sent if m.startswith("42") and _call(m) == (event, reference))

    def release(self) -> None:
        held, self.held = self.held, []
        self.hold = lambda message: False
        for ws, text in held:
            ws.send(text)

    async def cut(self) -> None:
        routes, self.routes = self.routes, []
        for ws in routes:
            await ws.close()


def _call(packet: str) -> tuple[str, str | None]:
    body = packet[2:].lstrip("0123456789")
    try:
        name, *args = json.loads(body)
    except (ValueError, TypeError):
        return ("", None)
    data = args[0] if args and isinstance(args[0], dict) else {}
    return (name, data.get("reference"))


async def initiate(http: aiohttp.ClientSession, base: str, order_id: str) -> str:
    body = {"order_id": order_id, "amount": 500, "phone_number": "237671234567"}
    async with http.post(f"{base}/api/payment/initiate", json=body) as resp:
        payment = await resp.json()
        assert resp.status == 201, payment
    return str(payment["reference"])


async def tracking_clients(http: aiohttp.ClientSession, base: str, reference: str) -> int:
    async with http.get(f"{base}/api/payment/tracking/{reference}") as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return int(body["tracking_clients"])


def page_errors(page: Any) -> list[str]:
    return [e for e in page.console_errors if not any(noise in e for noise in NETWORK_NOISE)]


# -- the example checkout ------------------------------------------------------------------------


async def test_example_checkout_pays_and_shows_one_completion(serve, http, page) -> None:  # type: ignore[no-untyped-def]
    paytrack, preview = await serve()
    await page.goto(preview.url + "/")
    await page.wait_for_selector('#connection[data-state="connected"]')
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"]')
    reference = await page.text_content("#reference")
    assert reference and (await page.text_content("#ussd") or "").startswith("*")
    assert await page.get_attribute("#initiation", "data-state") == "initiated"

    await page.click("#simulate-success")
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"]')
    assert await page.locator("#simulate-success").count() == 0
    completions = page.locator("#completions li")
    assert await completions.count() == 1
    assert await completions.first.get_attribute("data-status") == "SUCCESSFUL"
    async with http.get(f"{paytrack.url}/api/payment/tracking/{reference}") as resp:
        assert (await resp.json())["payment"]["status"] == "SUCCESSFUL"  # what the page shows is the server's truth
    assert page_errors(page) == [], page.console_errors


async def test_example_failure_then_retry_pays_the_same_order(serve, http, page) -> None:  # type: ignore[no-untyped-def]
    paytrack, preview = await serve()
    await page.goto(preview.url + "/")
    await page.wait_for_selector('#connection[data-state="connected"]')
    order_id = await page.input_value("#order-id")
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"]')
    failed = await page.text_content("#reference")
    await page.click("#simulate-failure")
    await page.wait_for_selector('#status[data-status="FAILED"]')
    assert await page.is_disabled("#pay")

    await page.click("#retry")  # a new attempt for the same order: a fresh Idempotency-Key
    shown = "document.getElementById('reference')?.textContent"
    await page.wait_for_function(f"{shown} && {shown} !== {json.dumps(failed)}")
    await page.wait_for_selector('#status[data-status="PENDING"]')
    paid = await page.text_content("#reference")
    assert paid and paid != failed
    await page.click("#simulate-success")
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"]')

    shown = [
        (await li.get_attribute("data-reference"), await li.get_attribute("data-status"))
        for li in await page.locator("#completions li").all()
    ]
    assert shown == [(failed, "FAILED"), (paid, "SUCCESSFUL")]
    async with http.get(f"{paytrack.url}/api/payment/status/{order_id}") as resp:
        order = await resp.json()
    assert resp.status == 200 and order["reference"] == paid and order["status"] == "SUCCESSFUL", order
    assert page_errors(page) == [], page.console_errors


@pytest.mark.redis
async def test_example_rides_out_a_server_restart_mid_payment_and_ends_on_the_truth_once(  # type: ignore[no-untyped-def]
    redis_server: RedisServer,
    serve,
    http,
    page,
) -> None:
    """Redis keeps the payment across the restart, as in production. The payment succeeds while the
    page's socket is gone; the page learns it from the restarted server, shows it once, and a second
    restart after that adds nothing."""
    paytrack, preview = await serve(STORAGE_BACKEND="redis", REDIS_URL=redis_server.url)
    relay = await Relay().install(page)
    await page.goto(preview.url + "/")
    await page.wait_for_selector('#connection[data-state="connected"]')
    await page.click("#pay")
    await page.wait_for_selector('#status[data-status="PENDING"]')
    reference = await page.text_content("#reference")
    assert reference

    await paytrack.kill()
    await page.wait_for_selector('#connection:not([data-state="connected"])')
    await paytrack.start()
    async with http.post(
        f"{paytrack.url}/api/payment/test/simulate", json={"reference": reference, "status": "SUCCESSFUL"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    await page.wait_for_selector('#status[data-status="SUCCESSFUL"]', timeout=3 * MS)
    await page.wait_for_selector('#connection[data-state="connected"]', timeout=3 * MS)
    assert await page.locator("#completions li").count() == 1

    # Once more: a reconnect after the final status brings nothing new, and shows nothing twice.
    tracks = relay.calls("track-payment", reference)
    await paytrack.kill()
    await page.wait_for_selector('#connection:not([data-state="connected"])')
    await paytrack.start()
    await page.wait_for_selector('#connection[data-state="connected"]', timeout=3 * MS)
    assert relay.calls("track-payment", reference) == tracks, "a final payment is not tracked again"
    assert await page.locator("#completions li").count() == 1
    assert await page.get_attribute("#status", "data-status") == "SUCCESSFUL"
    assert page_errors(page) == [], page.console_errors


async def test_the_readme_command_starts_the_checkout_and_ctrl_c_stops_it(http, page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The example's README gives one command that starts it: run as written (from the repository's
    root, in a shell), it starts paytrack's development server and Vite's dev server, the page it names
    pays with the sandbox's simulate button, and Ctrl-C (SIGINT to the foreground process group, as a
    terminal sends it) stops both."""
    npm_installed(ROOT / "clients" / "js", "socket.io-client", "React example")
    npm_installed(ROOT / "clients" / "react", "react", "React example")
    npm_installed(EXAMPLE, "vite", "React example")
    (block,) = re.findall(r"## Run it\n.*?```sh\n(.*?)\n```", (EXAMPLE / "README.md").read_text(), re.S)
    (command,) = [line for line in block.splitlines() if line.strip()]
    assert "npm start" in command, command

    paytrack_port = free_port()
    paytrack = f"http://127.0.0.1:{paytrack_port}"
    output = tmp_path / "npm-start.log"
    with output.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=ROOT,
            env=clean_env(PAYTRACK_PORT=str(paytrack_port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the terminal's, which Ctrl-C signals
        )
    try:

        def opened() -> str | None:
            assert proc.returncode is None, f"npm start exited with {proc.returncode}: {output.read_text()[-3000:]}"
            found = re.search(r"checkout: open (http://\S+)", output.read_text())
            return found[1] if found else None

        url = await eventually(opened, timeout=WAIT * 6, interval=0.1)
        assert f"(paytrack at {paytrack})" in output.read_text()

        await page.goto(url, timeout=6 * MS)  # the dev server's first load optimizes dependencies
        await page.wait_for_selector('#connection[data-state="connected"]', timeout=6 * MS)
        await page.click("#pay")
        await page.wait_for_selector('#status[data-status="PENDING"]')
        reference = await page.text_content("#reference")
        await page.click("#simulate-success")  # shown by the dev server without any build flag
        await page.wait_for_selector('#status[data-status="SUCCESSFUL"]')
        assert await page.locator("#completions li").count() == 1
        async with http.get(f"{paytrack}/api/payment/tracking/{reference}") as resp:
            assert (await resp.json())["payment"]["status"] == "SUCCESSFUL"  # the server the command started
        assert page_errors(page) == [], page.console_errors

        os.killpg(proc.pid, signals.SIGINT)
        await asyncio.wait_for(proc.wait(), WAIT * 3)

        async def stopped(address: str) -> bool:
            try:
                async with http.get(address, timeout=aiohttp.ClientTimeout(total=WAIT)):
                    return False
            except aiohttp.ClientConnectionError:
                return True

        for address in (paytrack, url):
            await eventually(lambda address=address: stopped(address), timeout=WAIT * 3, interval=0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left: server.py, Vite
            os.killpg(proc.pid, signals.SIGKILL)
        if proc.returncode is None:
            await proc.wait()


async def test_two_workers_build_and_preview_the_example_side_by_side(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The suite runs on several xdist workers, and each builds the example (the `built` fixture is per
    worker) and serves it with `vite preview` (one per test) while another worker may do the same. Vite 8
    refuses a second build or preview of one project while the first runs ("Found another Vite build
    process for this project"), which made these tests fail or pass by the workers' timing."""
    started = [
        await asyncio.create_subprocess_exec(
            *vite("build", "--outDir", str(tmp_path / f"dist-{n}"), "--emptyOutDir", "--logLevel", "warn"),
            cwd=EXAMPLE,
            env={**os.environ, "VITE_PAYTRACK_SIMULATE": "true"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for n in range(2)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(proc.communicate() for proc in started)), WAIT * 20)
    assert [proc.returncode for proc in started] == [0, 0], [out.decode()[-2000:] for out, _ in outputs]
    first = await serve()
    second = await serve()  # a second `vite preview` of the project while the first serves
    assert first[1].proc.returncode is None and second[1].proc.returncode is None


# -- the binding, on the checks page ---------------------------------------------------------------


async def open_checks(page: Any, preview: Preview, query: str = "") -> None:
    await page.goto(f"{preview.url}/checks/{query}")
    await page.wait_for_selector('body[data-ready="true"]')


async def follow(page: Any, reference: str) -> None:
    await page.evaluate("reference => window.checks.follow(reference)", reference)


async def unfollow(page: Any, reference: str) -> None:
    await page.evaluate("reference => window.checks.unfollow(reference)", reference)


async def barrier(page: Any, relay: Relay, name: str) -> None:
    """A track the server answers (an unknown reference) after everything sent before it."""
    await follow(page, name)
    await page.wait_for_selector(f'#followed li[data-reference="{name}"][data-status="unknown"]')
    assert relay.calls("track-payment", name) == 1


async def test_strict_mode_double_mount_tracks_once(serve, http, page) -> None:  # type: ignore[no-untyped-def]
    paytrack, preview = await serve("development")
    relay = await Relay().install(page)
    await open_checks(page, preview)
    assert await page.get_attribute("body", "data-effect-runs") == "2", "StrictMode mounts twice in this build"
    # Connected first: a second track or a stop would now reach the socket, not wait for it.
    await page.wait_for_selector('#connection[data-state="connected"]')
    reference = await initiate(http, paytrack.url, "react-strict-1")
    await follow(page, reference)  # mounted under StrictMode: effects run, are cleaned up, run again
    await page.wait_for_selector(f'#followed li[data-reference="{reference}"][data-status="PENDING"]')
    await barrier(page, relay, "barrier-strict")
    assert relay.calls("track-payment", reference) == 1
    assert relay.calls("stop-tracking-payment", reference) == 0
    assert await tracking_clients(http, paytrack.url, reference) == 1
    assert page_errors(page) == [], page.console_errors


async def test_unmount_during_a_pending_ack_leaves_no_track(serve, http, page) -> None:  # type: ignore[no-untyped-def]
    paytrack, preview = await serve("development")
    relay = await Relay().install(page)
    await open_checks(page, preview)
    await page.wait_for_selector('#connection[data-state="connected"]')
    reference = await initiate(http, paytrack.url, "react-unmount-1")
    relay.hold = lambda message: message.startswith("43") and reference in message  # its ack
    await follow(page, reference)
    assert await eventually(lambda: relay.held != [])  # the server tracks it and has answered
    assert await tracking_clients(http, paytrack.url, reference) == 1
    await page.wait_for_selector(f'#followed li[data-reference="{reference}"]')

    await unfollow(page, reference)  # the component goes while its track-payment is unanswered
    await page.wait_for_selector(f'#followed li[data-reference="{reference}"]', state="detached")

    async def untracked() -> bool:
        return await tracking_clients(http, paytrack.url, reference) == 0

    await eventually(untracked)
    relay.release()  # the late ack arrives after all
    await barrier(page, relay, "barrier-unmount")
    assert await tracking_clients(http, paytrack.url, reference) == 0
    assert relay.calls("track-payment", reference) == 1, "the late ack did not bring a re-track"
    assert relay.calls("stop-tracking-payment", reference) == 1
    assert page_errors(page) == [], page.console_errors


async def test_a_refused_origin_surfaces_origin_not_allowed(serve, page) -> None:  # type: ignore[no-untyped-def]
    """The page talks to paytrack directly from an origin FRONTEND_URL does not list."""
    paytrack, preview = await serve("development", FRONTEND_URL="https://shop.example")
    await open_checks(page, preview, f"?server={paytrack.url}")
    await page.wait_for_selector('#connection[data-error="origin_not_allowed"]', timeout=3 * MS)
    assert await page.get_attribute("#connection", "data-state") != "connected"


async def test_online_and_pageshow_from_the_back_forward_cache_retrack_at_once(serve, http, page) -> None:  # type: ignore[no-untyped-def]
    """With a reconnect backoff of a minute, only the page's own signals can bring the socket back
    within the test's wait: the browser's `online` event, and `pageshow` from the back/forward cache."""
    paytrack, preview = await serve("development")
    relay = await Relay().install(page)
    await open_checks(page, preview, "?reconnectDelayMs=60000&reconnectDelayMaxMs=60000")
    await page.wait_for_selector('#connection[data-state="connected"]')
    reference = await initiate(http, paytrack.url, "react-online-1")
    await follow(page, reference)
    await page.wait_for_selector(f'#followed li[data-reference="{reference}"][data-status="PENDING"]')

    signals = [
        "window.dispatchEvent(new Event('online'))",
        "window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: true }))",
    ]
    for n, signal in enumerate(signals, start=2):
        await relay.cut()
        await page.wait_for_selector('#connection[data-state="reconnecting"]')
        assert await page.get_attribute("#connection", "data-next-attempt-at")  # the backoff's next attempt, shown
        await page.evaluate(signal)
        await page.wait_for_selector('#connection[data-state="connected"]')
        await eventually(lambda n=n: relay.calls("track-payment", reference) == n)
        assert await tracking_clients(http, paytrack.url, reference) == 1


# -- fast refresh ------------------------------------------------------------------------------------

REFRESH_MAIN = """\
import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { PaytrackProvider, useConnection } from "paytrack-react";
import { Follow } from "./Follow.jsx";

function Page() {
  const [followed, setFollowed] = useState([]);
  const { state } = useConnection();
  useEffect(() => {
    window.checks = { follow: (reference) => setFollowed((list) => [...list, reference]) };
    document.body.dataset.ready = "true";
  }, []);
  return (
    <>
      <p id="connection" data-state={state}>{state}</p>
      <ul id="followed">{followed.map((reference) => <Follow key={reference} reference={reference} />)}</ul>
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode><PaytrackProvider url={window.location.origin} options={{ shareAcrossTabs: false }}><Page /></PaytrackProvider></StrictMode>,
);
"""
REFRESH_FOLLOW = """\
import { usePayment } from "paytrack-react";

export function Follow({ reference }) {
  const { status } = usePayment(reference);
  return <li data-reference={reference} data-status={status} data-version="VERSION">{reference}: {status}</li>;
}
"""
REFRESH_SERVER = """\
// Vite's dev server (with React's fast refresh) on this directory, proxying paytrack.
import react from "@vitejs/plugin-react";
import { createServer } from "vite";

const [root, port, paytrack, repository] = process.argv.slice(2);
const server = await createServer({
  root,
  configFile: false,
  cacheDir: `${root}/.vite-cache`,
  logLevel: "warn",
  plugins: [react()],
  resolve: { dedupe: ["react", "react-dom"] },
  server: {
    host: "127.0.0.1",
    port: Number(port),
    strictPort: true,
    fs: { allow: [root, repository] },
    proxy: { "/api": { target: paytrack }, "/socket.io": { target: paytrack, ws: true } },
  },
});
await server.listen();
console.log("listening");
"""


async def test_fast_refresh_of_a_following_component_tracks_once(built, tmp_path, http, page) -> None:  # type: ignore[no-untyped-def]
    """Editing the component that follows a payment, under Vite's dev server: React's fast refresh
    runs its effects again (a new subscription), and the payment is neither stopped nor tracked again."""
    app = tmp_path / "refresh-app"
    app.mkdir()
    (app / "node_modules").symlink_to(EXAMPLE / "node_modules")  # react, vite, paytrack-react as the example has them
    (app / "index.html").write_text(
        '<!doctype html><html><head><link rel="icon" href="data:,"></head><body><div id="root"></div>'
        '<script type="module" src="/main.jsx"></script></body></html>'
    )
    (app / "main.jsx").write_text(REFRESH_MAIN)
    (app / "Follow.jsx").write_text(REFRESH_FOLLOW.replace("VERSION", "1"))
    (app / "serve.mjs").write_text(REFRESH_SERVER)

    with (tmp_path / "processes.log").open("wb") as log:
        paytrack = await Paytrack(log).start()
        port = free_port()
        dev = await asyncio.create_subprocess_exec(
            "node", "serve.mjs", str(app), str(port), paytrack.url, str(ROOT), cwd=app, stdout=log, stderr=log
        )
        try:
            async with aiohttp.ClientSession() as probe:

                async def serving() -> bool:
                    assert dev.returncode is None, f"vite exited with {dev.returncode}"
                    try:
                        async with probe.get(f"http://127.0.0.1:{port}/") as resp:
                            return resp.status == 200
                    except aiohttp.ClientConnectionError:
                        return False

                await eventually(serving, timeout=WAIT * 4, interval=0.05)
            relay = await Relay().install(page)
            await page.goto(f"http://127.0.0.1:{port}/", timeout=6 * MS)  # the first load optimizes dependencies
            await page.wait_for_selector('body[data-ready="true"]', timeout=6 * MS)
            await page.wait_for_selector('#connection[data-state="connected"]')
            reference = await initiate(http, paytrack.url, "react-refresh-1")
            await follow(page, reference)
            await page.wait_for_selector(f'li[data-reference="{reference}"][data-status="PENDING"][data-version="1"]')

            await page.evaluate("window.beforeTheEdit = true")  # a full reload would lose it
            (app / "Follow.jsx").write_text(REFRESH_FOLLOW.replace("VERSION", "2"))  # the developer saves an edit
            await page.wait_for_selector(f'li[data-reference="{reference}"][data-status="PENDING"][data-version="2"]')
            await barrier(page, relay, "barrier-refresh")
            assert relay.calls("track-payment", reference) == 1
            assert relay.calls("stop-tracking-payment", reference) == 0
            assert await tracking_clients(http, paytrack.url, reference) == 1
            assert await page.evaluate("window.beforeTheEdit") is True, "a fast refresh, not a reload"
            assert page_errors(page) == [], page.console_errors
        finally:
            if dev.returncode is None:
                dev.kill()
                await dev.wait()
            await paytrack.kill()
