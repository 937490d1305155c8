"""Fixtures: `start_instance` runs a real paytrack server on a free port."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app import create_app
from core.clock import Clock
from observability.logs import make_handler
from payments.service import SERVICE
from realtime.storage.base import STORAGE
from tests import campay_fake
from tests.auth_service import auth_service  # noqa: F401 - fixture
from tests.campay_fake import FakeCampay
from tests.harness import Api, Tracker, make_settings
from tests.merchant_receiver import MerchantReceiver
from tests.partition import PartitionProxy
from tests.redis_cluster import (  # noqa: F401 - fixtures, registered here once (a session's one cluster)
    cluster_nodes,
    redis_cluster,
    shared_redis_cluster,
)
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture (used by name)

pytest_plugins = ["tests.solo"]  # `solo` tests run alone beside the xdist workers


@dataclass
class Instance:
    server: TestServer
    app: web.Application
    api: Api
    trackers: list[Tracker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    @property
    def storage(self):  # type: ignore[no-untyped-def]
        return self.app[STORAGE]

    @property
    def service(self):  # type: ignore[no-untyped-def]
        return self.app[SERVICE]

    async def tracker(self, **connect_kwargs: Any) -> Tracker:
        tracker = Tracker(self.url)
        self.trackers.append(tracker)
        return await tracker.connect(**connect_kwargs)


StartInstance = Callable[..., Awaitable[Instance]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_instance(aiohttp_server, http) -> AsyncIterator[StartInstance]:  # type: ignore[no-untyped-def]
    instances: list[Instance] = []

    async def start(clock: Clock | None = None, **overrides: Any) -> Instance:
        app = create_app(make_settings(**overrides), clock=clock)
        server = await aiohttp_server(app)
        instance = Instance(server=server, app=app, api=Api(http, str(server.make_url("/"))))
        instances.append(instance)
        return instance

    yield start
    for instance in instances:
        for tracker in instance.trackers:
            await tracker.disconnect()


@pytest.fixture
async def instance(start_instance: StartInstance) -> Instance:
    return await start_instance()


@pytest.fixture
async def campay(aiohttp_server) -> FakeCampay:  # type: ignore[no-untyped-def]
    fake = FakeCampay()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/api"))
    yield fake
    if fake.collect_gate is not None:
        fake.collect_gate.set()


@pytest.fixture
async def merchant(aiohttp_server) -> MerchantReceiver:  # type: ignore[no-untyped-def]
    receiver = MerchantReceiver()
    server = await aiohttp_server(receiver.app())
    receiver.url = str(server.make_url("/hooks"))
    yield receiver
    if receiver.gate is not None:
        receiver.gate.set()


def campay_settings(fake: FakeCampay, **overrides: Any) -> dict[str, Any]:
    """Settings for an instance that talks to the fake CamPay (fast retries, reconciler off)."""
    return {
        "PAYMENT_PROVIDER": "campay",
        "CAMPAY_API_URL": fake.url,
        "CAMPAY_USERNAME": campay_fake.USERNAME,
        "CAMPAY_APP_PASSWORD": campay_fake.PASSWORD,
        "CAMPAY_WEBHOOK_KEY": campay_fake.WEBHOOK_KEY,
        "CAMPAY_RETRY_BASE_SECONDS": 0.01,
        "RECONCILE_ENABLED": False,
        **overrides,
    }


@pytest.fixture
def json_log() -> Iterator[list[dict[str, Any]]]:
    """The server's real JSON log handler, writing to a buffer; yields the parsed lines so far."""
    buffer = io.StringIO()
    handler = make_handler(json_lines=True, instance_id="test-instance", stream=buffer)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    class View(list):  # re-parsed on each access so the test sees lines written so far
        def refresh(self) -> View:
            self[:] = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
            return self

    view = View()
    yield view
    root.removeHandler(handler)
    root.setLevel(old_level)


# -- CI guard: under CI=true a skipped Redis, browser, Node, nginx or promtool test is a failure --
# (.ci/run installs redis-server, chromium, the Node client, nginx and prometheus, so a skip there
# means a broken setup.)
_GUARDED = ("redis", "browser", "node", "nginx", "promtool")
_skipped_guarded: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and any(marker in report.keywords for marker in _GUARDED):
        _skipped_guarded.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and _skipped_guarded:
        print(
            f"\nCI: {len(_skipped_guarded)} Redis/browser/Node/nginx/promtool test(s) were skipped; failing the run:",
            *_skipped_guarded,
            sep="\n  ",
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
async def start_redis_instance(redis_server, start_instance: StartInstance) -> StartInstance:  # type: ignore[no-untyped-def]
    """Like `start_instance`, on the test's Redis; instances started by one test share it.

    Depends on `redis_server` before `start_instance`, so Redis outlives the
    servers at teardown and their shutdown is a clean one.
    """

    async def start(clock: Clock | None = None, **overrides: Any) -> Instance:
        settings: dict[str, Any] = {
            "STORAGE_BACKEND": "redis",
            "REDIS_URL": redis_server.url,
            "REDIS_RECONNECT_INTERVAL_SECONDS": 0.1,
            "REDIS_TIMEOUT_SECONDS": 1.0,
        }
        settings.update(overrides)
        return await start_instance(clock, **settings)

    return start


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[PartitionProxy]:
    """A cuttable proxy to the test's Redis (a partition of the instances that use it). Requested before
    the instances, so it outlives them: their shutdown never meets a closed proxy."""
    partition = PartitionProxy(redis_server.port)
    await partition.start()
    yield partition
    await partition.close()


@dataclass
class Backend:
    name: str
    start: StartInstance
    redis: RedisServer | None = None

    async def limit_redis_clients(self, count: int) -> None:
        """Make Redis refuse connections past `count`, as a busy production Redis does."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                await client.config_set("maxclients", count)
            finally:
                await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, start_instance: StartInstance) -> Backend:
    """Instances on memory, or on the test's own Redis: for behaviour that must be the same on both."""
    if request.param == "memory":
        return Backend("memory", start_instance)
    start_redis: StartInstance = request.getfixturevalue("start_redis_instance")

    async def on_redis(clock: Any = None, **settings: Any) -> Instance:
        return await start_redis(clock, **{**settings, "STORAGE_BACKEND": "redis"})

    return Backend("redis", on_redis, request.getfixturevalue("redis_server"))


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """The collector off, so its count only moves with what the code under test allocates and frees."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
