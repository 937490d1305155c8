"""What the failover tests (Sentinel, Cluster) do and check the same way: settle a payment through an
instance's simulate endpoint while storage may be changing under it, and check the pages afterwards."""

from __future__ import annotations

import asyncio

from tests.conftest import Instance
from tests.harness import Tracker, eventually

WAIT = 30.0


def statuses(page: Tracker) -> list[tuple[int, str]]:
    """(seq, status) of every payment-status the page received, in order."""
    return [(e.data["seq"], e.data["status"]) for e in page.named("payment-status")]


async def settle(instance: Instance, reference: str, status: str) -> None:
    """Simulate the outcome, as a caller would: retried while the instance answers 503 (busy, or storage
    changing under it)."""

    async def done() -> bool:
        code, body, _ = await instance.api.simulate(reference, status)
        assert code in (200, 503), body
        return code == 200

    await eventually(done, timeout=WAIT, interval=0.2)


async def wait_on_truth(pages: list[tuple[str, Tracker]], truth: dict[str, str]) -> None:
    """Until every page has shown its payment's true final status."""
    for reference, page in pages:
        await page.wait_until(
            lambda events, ref=reference: any(
                e.name == "payment-status" and e.data["status"] == truth[ref] for e in events
            ),
            timeout=WAIT,
        )


async def check_pages(pages: list[tuple[str, Tracker]], truth: dict[str, str], instances: list[Instance]) -> None:
    """Once every instance is healthy: no page saw seq go down or another final status, each showed its
    completion once, and storage holds every true status."""
    for instance in instances:
        await eventually(lambda inst=instance: inst.storage.healthy, timeout=WAIT)
    await asyncio.sleep(0)  # let any emit in flight land before the checks below
    for reference, page in pages:
        await page.barrier()
        seen = statuses(page)
        assert [seq for seq, _ in seen] == sorted(seq for seq, _ in seen), (reference, seen)  # seq never down
        finals = [status for _, status in seen if status != "PENDING"]
        assert set(finals) == {truth[reference]}, (reference, seen)  # never another final status
        assert len(page.named("payment-completed")) == 1, (reference, page.named("payment-completed"))
        stored = await instances[0].storage.get_payment(reference)
        assert stored is not None and stored.status.value == truth[reference]
