"""Every Socket.IO call is answered: an ack that says ok, or an error with a code the client can act on.

A call that gets no ack leaves the client's `call` (or the official client's ack timeout) waiting for
nothing. python-socketio sends no ack when a handler raises, so every way a call can fail has to end in
an answer: a socket over its call rate gets `rate_limited` with `retry_after`, a busy store `busy`, and
anything unforeseen `internal_error`.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest
import socketio

from app import create_app
from core.clock import SystemClock
from realtime.calls import CallWindows
from realtime.storage.memory import MemoryStorage
from tests.conftest import StartInstance
from tests.harness import WAIT, Api, Tracker, make_settings
from tests.redis_server import RedisServer
from tests.test_server_process import free_port, run_server, wait_healthy

CALLS = 1_000
ANSWER_WAIT = 30.0  # seconds for every call to be answered (the issue saw 135 of 1,000 unanswered after 20 s)
CLEAR_REFUSALS = {"busy", "rate_limited"}  # the codes a flood of calls may meet besides ok


async def start_server_process(log: Path, **env: str) -> tuple[asyncio.subprocess.Process, int]:
    """`server.py` on a free port, its output in `log` (a pipe nobody reads could stall the server)."""
    port = free_port()
    with log.open("wb") as out:
        proc = await run_server(
            "--host", "127.0.0.1", "--port", str(port), stdout=out, stderr=asyncio.subprocess.STDOUT,
            **{"LOG_LEVEL": "WARNING", **env},
        )  # fmt: skip
    await wait_healthy(port, proc)
    return proc, port


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT * 3)


async def answers_to_a_flood(url: str, references: list[str]) -> list[Any]:
    """CALLS `track-payment` calls on one websocket, all sent at once; each one's ack, or the exception
    its `call` ended with (TimeoutError for a call never answered)."""
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
    try:
        calls = [
            client.call("track-payment", {"reference": references[i % len(references)]}, timeout=ANSWER_WAIT)
            for i in range(CALLS)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await client.disconnect()


def outcome(answer: Any) -> str:
    if isinstance(answer, BaseException):
        return f"no answer ({type(answer).__name__})"
    if isinstance(answer, dict) and answer.get("ok") is True:
        return "ok"
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("code"))
    return f"unexpected ack {answer!r:.80}"


async def assert_every_call_answered(tmp_path: Path, http: Any, **env: str) -> None:
    log = tmp_path / "server.log"
    proc, port = await start_server_process(log, APP_ENV="development", PAYMENT_PROVIDER="sandbox", **env)
    url = f"http://127.0.0.1:{port}"
    try:
        api = Api(http, url)
        references = []
        for i in range(10):
            status, payment, _ = await api.initiate(order_id=f"flood-{i}")
            assert status == 201, payment
            references.append(payment["reference"])

        answers = await answers_to_a_flood(url, references)
    finally:
        await stop_process(proc)

    tally = collections.Counter(outcome(answer) for answer in answers)
    unclear = {name: count for name, count in tally.items() if name != "ok" and name not in CLEAR_REFUSALS}
    assert unclear == {}, f"{dict(tally)}; server log tail:\n{log.read_text()[-3000:]}"
    assert tally["ok"] > 0, dict(tally)
    for answer in answers:
        if outcome(answer) == "rate_limited":
            assert answer["error"]["retry_after"] >= 1, answer  # when to ask again, as the REST 429 says


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.redis
async def test_a_thousand_calls_on_one_socket_are_all_answered_on_redis(
    redis_server: RedisServer, tmp_path: Path, http: Any
) -> None:
    await assert_every_call_answered(tmp_path, http, STORAGE_BACKEND="redis", REDIS_URL=redis_server.url)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_thousand_calls_on_one_socket_are_all_answered_on_memory(tmp_path: Path, http: Any) -> None:
    await assert_every_call_answered(tmp_path, http, STORAGE_BACKEND="memory")


async def unforeseen_failure(socket_id: str, reference: str) -> None:
    raise RuntimeError("an unforeseen failure")


async def test_a_call_whose_handler_fails_unexpectedly_is_answered_internal_error(
    aiohttp_server: Any, http: Any
) -> None:
    settings = make_settings()
    storage = MemoryStorage(SystemClock(), payment_ttl=3600, client_ttl=3600, event_log_max=100)
    storage.track = unforeseen_failure  # type: ignore[method-assign]  # recording a tracker fails, as nobody foresaw
    server = await aiohttp_server(create_app(settings, storage=storage))
    url = str(server.make_url("/"))
    _, payment, _ = await Api(http, url).initiate(order_id="unforeseen")
    page = await Tracker(url).connect()
    try:
        ack = await page.track(payment["reference"])
        assert ack["ok"] is False and ack["error"]["code"] == "internal_error", ack
        assert "unforeseen" not in ack["error"]["message"]  # no internals reach the page
        # The socket is still served: the next call is answered too.
        assert (await page.call("stop-tracking-payment", {"reference": payment["reference"]}))["ok"] is True
    finally:
        await page.disconnect()


async def test_a_socket_over_its_call_rate_is_answered_rate_limited_and_nothing_is_done(
    start_instance: StartInstance,
) -> None:
    live = await start_instance(RATE_LIMIT_CALLS_PER_SOCKET="3/minute")
    references = []
    for i in range(4):
        _, payment, _ = await live.api.initiate(order_id=f"rate-{i}")
        references.append(payment["reference"])
    page = await live.tracker()
    for reference in references[:3]:
        assert (await page.track(reference))["ok"] is True
    refused = await page.track(references[3])
    assert refused["ok"] is False and refused["error"]["code"] == "rate_limited", refused
    assert 1 <= refused["error"]["retry_after"] <= 60, refused
    status, body, _ = await live.api.request("GET", f"/api/payment/tracking/{references[3]}")
    assert status == 200 and body["tracking_clients"] == 0  # the refused call was not run
    other = await live.tracker()  # the rate is per socket: another page of the same address is served
    assert (await other.track(references[3]))["ok"] is True


def test_a_sockets_call_window_is_exact_and_says_when_to_come_back() -> None:
    """A moving window of 3 calls a minute per socket: the 4th within the minute is refused with the
    seconds until the oldest leaves; another socket is counted apart; once the oldest call is a minute
    old, one more is let in."""
    clock = [1000.0]
    windows = CallWindows("3/minute", now=lambda: clock[0])
    for _ in range(3):
        assert windows.hit("a") == 0
        clock[0] += 1.0  # calls at 1000, 1001, 1002
    clock[0] = 1020.5
    assert windows.hit("a") == 40  # the first call leaves the window at 1060: 39.5 s from now, rounded up
    assert windows.hit("b") == 0  # per socket
    clock[0] = 1060.0
    assert windows.hit("a") == 0  # the first call has left; the refused one was never counted
    assert windows.hit("a") == 1  # the second leaves at 1061


def test_a_sockets_call_window_is_let_go_when_the_socket_goes() -> None:
    """Counts die with their socket (limits' memory store kept one key per socket for the whole period,
    and walked every key after each hit)."""
    windows = CallWindows("120/10 seconds")
    for sid in ("a", "b", "c"):
        windows.hit(sid)
    windows.forget("b")
    windows.forget("never-called")
    assert len(windows) == 2


def test_a_sockets_call_window_holds_only_the_last_period() -> None:
    """A generous rate (the bench's 100,000,000 a minute) must not make a socket keep every call it ever made."""
    clock = [0.0]
    windows = CallWindows("100000000/minute", now=lambda: clock[0])
    for _ in range(1000):
        assert windows.hit("a") == 0
        clock[0] += 1.0
    assert windows.held("a") == 60  # the calls of the last minute, not all 1,000
