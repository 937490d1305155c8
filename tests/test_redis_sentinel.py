"""Two instances on Redis behind Sentinel (deploy/redis-sentinel.sh), with the primary failing over in
the middle of the payments: a planned failover, and the primary killed -9. Every page ends on the truth
(the sandbox's outcome), none goes backwards or sees seq go down, each shows its completion once, and
the new primary holds every final status."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Instance, StartInstance
from tests.harness import Tracker, eventually
from tests.redis_sentinel import RedisSentinel, redis_sentinel  # noqa: F401 - fixture (used by name)

pytestmark = [pytest.mark.redis, pytest.mark.slow]
PAYMENTS = 12


def _statuses(page: Tracker) -> list[tuple[int, str]]:
    """(seq, status) of every payment-status the page received, in order."""
    return [(e.data["seq"], e.data["status"]) for e in page.named("payment-status")]


async def _settle(instance: Instance, reference: str, status: str) -> None:
    """Simulate the outcome, as a caller would: retried while the instance answers 503 (busy, or storage
    changing under it)."""

    async def done() -> bool:
        code, body, _ = await instance.api.simulate(reference, status)
        assert code in (200, 503), body
        return code == 200

    await eventually(done, timeout=30, interval=0.2)


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
        await _settle(a if i % 2 else b, reference, truth[reference])

    old = await redis_sentinel.primary()
    new = await redis_sentinel.failover(kill=kill)
    assert new != old
    for i, (reference, _) in enumerate(second):
        await _settle(a if i % 2 else b, reference, truth[reference])

    for reference, page in pages:
        await page.wait_until(
            lambda events, ref=reference: any(
                e.name == "payment-status" and e.data["status"] == truth[ref] for e in events
            ),
            timeout=30,
        )
    for instance in (a, b):
        await eventually(lambda inst=instance: inst.storage.healthy, timeout=30)
    await asyncio.sleep(0)  # let any emit in flight land before the checks below
    for reference, page in pages:
        await page.barrier()
        seen = _statuses(page)
        assert [seq for seq, _ in seen] == sorted(seq for seq, _ in seen), (reference, seen)  # seq never down
        finals = [status for _, status in seen if status != "PENDING"]
        assert set(finals) == {truth[reference]}, (reference, seen)  # never another final status
        assert len(page.named("payment-completed")) == 1, (reference, page.named("payment-completed"))
        stored = await a.storage.get_payment(reference)
        assert stored is not None and stored.status.value == truth[reference]
