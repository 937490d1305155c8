"""Two instances on Redis behind Sentinel (deploy/redis-sentinel.sh), with the primary failing over in
the middle of the payments: a planned failover, and the primary killed -9. Every page ends on the truth
(the sandbox's outcome), none goes backwards or sees seq go down, each shows its completion once, and
the new primary holds every final status."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.campay_fake import FakeCampay
from tests.conftest import StartInstance, campay_settings
from tests.failover_pages import check_pages, settle, statuses, wait_on_truth
from tests.harness import eventually
from tests.redis_sentinel import RedisSentinel, redis_sentinel  # noqa: F401 - fixture (used by name)

pytestmark = [pytest.mark.redis, pytest.mark.slow]
PAYMENTS = 12


@pytest.mark.parametrize("kill", [False, True], ids=["planned", "primary-killed"])
async def test_pages_keep_their_truth_through_a_sentinel_failover(
    redis_sentinel: RedisSentinel, start_instance: StartInstance, kill: bool
) -> None:
    settings: dict[str, Any] = {
        "STORAGE_BACKEND": "redis",
        "REDIS_URL": redis_sentinel.url,
        "REDIS_RECONNECT_INTERVAL_SECONDS": 0.1,
        "REDIS_TIMEOUT_SECONDS": 1.0,
    }
    a = await start_instance(**settings, INSTANCE_ID="a")
    b = await start_instance(**settings, INSTANCE_ID="b")
    pages, truth = [], {}
    for i in range(PAYMENTS):
        status, payment, _ = await (a if i % 2 else b).api.initiate(order_id=f"o-sentinel-{i}")
        assert status == 201, payment
        reference = payment["reference"]
        page = await (b if i % 2 else a).tracker()  # each page on the other instance
        await page.track(reference)
        pages.append((reference, page))
        truth[reference] = "SUCCESSFUL" if i % 3 else "FAILED"
    first, second = pages[: PAYMENTS // 2], pages[PAYMENTS // 2 :]
    for i, (reference, _) in enumerate(first):
        await settle(a if i % 2 else b, reference, truth[reference])

    old = await redis_sentinel.primary()
    new = await redis_sentinel.failover(kill=kill)
    assert new != old
    for i, (reference, _) in enumerate(second):
        await settle(a if i % 2 else b, reference, truth[reference])

    await wait_on_truth(pages, truth)
    await check_pages(pages, truth, [a, b])


def _waiting_for_the_replica(campay: FakeCampay, sentinel: RedisSentinel, **overrides: Any) -> dict[str, Any]:
    """An instance on CamPay's fake and the Sentinel Redis, waiting for the replica after each payment write."""
    return campay_settings(
        campay,
        STORAGE_BACKEND="redis",
        REDIS_URL=sentinel.url,
        REDIS_RECONNECT_INTERVAL_SECONDS=0.1,
        REDIS_TIMEOUT_SECONDS=1.0,
        REDIS_WAIT_REPLICAS=1,
        REDIS_WAIT_TIMEOUT_MS=100,
        **overrides,
    )


async def test_a_status_the_failover_lost_is_brought_back_from_campay_without_a_page_going_back(
    redis_sentinel: RedisSentinel, start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """Issue 33: the replica is frozen, CamPay's SUCCESSFUL is stored (acknowledged by the primary alone),
    the primary is killed and the stale replica promoted: the write is gone, and only the reconciler's
    sweep (after RECONCILE_AFTER_SECONDS, ten minutes here) would have found it. With REDIS_WAIT_REPLICAS
    the write is known not to have reached a replica; once the instance has seen the failover it asks
    CamPay again, and a page that re-tracks ahead of the stored record keeps what it saw."""
    settings = _waiting_for_the_replica(
        campay,
        redis_sentinel,
        RECONCILE_ENABLED=True,
        RECONCILE_AFTER_SECONDS=600,
        RECONCILE_INTERVAL_SECONDS=0.2,
    )
    a = await start_instance(**settings, INSTANCE_ID="a")
    status, payment, _ = await a.api.initiate(order_id="o-lost-write")
    assert status == 201
    reference = payment["reference"]
    page = await a.tracker()
    await page.track(reference)

    frozen = await redis_sentinel.pid(await redis_sentinel.replica())
    os.kill(frozen, signal.SIGSTOP)  # the replica falls behind ...
    try:
        await redis_sentinel.fill_replication_stream(20_000_000)  # ... further than its socket buffers hold
        campay.set_status(reference, "SUCCESSFUL")
        assert (await campay.send_webhook(http, a.url, reference))[0] == 200
        await page.wait_for("payment-completed")
        primary = await redis_sentinel.primary()
        os.kill(await redis_sentinel.pid(primary), signal.SIGKILL)  # the write dies with the primary
    finally:
        os.kill(frozen, signal.SIGCONT)
    await eventually(lambda: _promoted(redis_sentinel, primary), timeout=30)

    async def settled() -> bool:
        stored = await a.storage.get_payment(reference)
        return stored is not None and stored.status.value == "SUCCESSFUL" and a.storage.healthy

    await eventually(settled, timeout=30)  # brought back, not by the sweep
    # This instance's copy was written back over the stale one: a seq above what any page saw.
    assert (await a.storage.get_payment(reference)).seq > 2
    again = await a.tracker()
    ack = await again.track(reference, last_seq=2)  # a page that saw SUCCESSFUL comes back
    await again.barrier()
    assert ack["ok"] and all(seq > 2 and status == "SUCCESSFUL" for seq, status in statuses(again))
    assert again.named("payment-completed") == []  # it was told the outcome already
    await page.barrier()
    seen = statuses(page)
    assert [seq for seq, _ in seen] == sorted(seq for seq, _ in seen)
    assert [status for _, status in seen][-1] == "SUCCESSFUL" and len(page.named("payment-completed")) == 1


async def _promoted(sentinel: RedisSentinel, old: int) -> bool:
    return await sentinel.primary() != old


async def test_writes_a_planned_failover_lost_are_written_back_by_the_instance_that_made_them(
    redis_sentinel: RedisSentinel, start_instance: StartInstance, campay: FakeCampay
) -> None:
    """Found in review: a planned failover lost a third of the payments created while it ran (the old
    primary took writes until it was made a replica), and the instance saw no outage (its client
    reconnected to the new primary within one retry), so nothing was written back or asked again. The
    watcher now notices that the primary changed."""
    settings = _waiting_for_the_replica(
        campay,
        redis_sentinel,
        RATE_LIMIT_INITIATE_PER_USER="100000/minute",
        RATE_LIMIT_INITIATE_PER_IP="100000/minute",
    )
    a = await start_instance(**settings, INSTANCE_ID="a")
    created: list[str] = []
    stop = asyncio.Event()

    async def shoppers() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            status, payment, _ = await a.api.initiate(order_id=f"o-planned-{n}")
            if status == 201:
                created.append(payment["reference"])
            await asyncio.sleep(0.01)

    running = asyncio.create_task(shoppers())
    await eventually(lambda: len(created) >= 10, timeout=10)
    new = await redis_sentinel.failover()
    await eventually(lambda: len(created) >= 40, timeout=20)
    stop.set()
    await running
    primary = aioredis.Redis(host="127.0.0.1", port=new, decode_responses=True)
    keys = a.storage.primary._ctx.keys
    try:

        async def all_there() -> bool:
            return all([await primary.exists(keys.payment(reference)) for reference in created])

        await eventually(all_there, timeout=15)
    finally:
        await primary.aclose()
