"""Two instances on a Redis Cluster (REDIS_CLUSTER=true, deploy/redis-cluster.sh's three primaries and
three replicas), with the primary that serves one instance's shard channel failing over in the middle of
the payments: planned (CLUSTER FAILOVER), and killed -9 (its replica takes over by itself).

Each payment is initiated on instance a and tracked by a page on instance b, so its updates reach the page
through b's shard channel. The listener must notice that it lost the subscription, subscribe again on the
new primary and resync; updates made after that reach b by pub/sub again. Every page ends on the truth,
none goes backwards or sees seq go down, each shows its completion once, and the cluster holds every
final status."""

from __future__ import annotations

from typing import Any

import pytest

from realtime.server import SIO
from tests.conftest import StartInstance
from tests.failover_pages import WAIT, check_pages, settle, wait_on_truth
from tests.harness import eventually
from tests.redis_cluster import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]
PAYMENTS = 12


async def _serving(cluster: RedisCluster, channel: str) -> int:
    """The port of the primary serving `channel`'s slot."""
    client = cluster.client()
    try:
        await client.initialize()
        return int(client.get_node_from_key(channel).port)
    finally:
        await client.aclose()


@pytest.mark.parametrize("kill", [False, True], ids=["planned", "primary-killed"])
async def test_pages_keep_their_truth_when_the_primary_serving_an_instance_channel_fails_over(
    redis_cluster: RedisCluster, start_instance: StartInstance, kill: bool
) -> None:
    settings: dict[str, Any] = {
        "STORAGE_BACKEND": "redis",
        "REDIS_URL": redis_cluster.url,
        "REDIS_CLUSTER": True,
        "REDIS_RECONNECT_INTERVAL_SECONDS": 0.1,
        "REDIS_TIMEOUT_SECONDS": 1.0,
        # A kill -9 can lose what the replica had not received yet: with a WAIT, such a write is known and
        # written back once the failover is seen (without one it would be gone, and its page with it).
        "REDIS_WAIT_REPLICAS": 1,
        "REDIS_WAIT_TIMEOUT_MS": 100,
    }
    a = await start_instance(**settings, INSTANCE_ID="a")
    b = await start_instance(**settings, INSTANCE_ID="b")
    listener = b.app[SIO].manager
    await eventually(listener.listening.is_set, timeout=WAIT)
    pages, truth = [], {}
    for i in range(PAYMENTS):
        status, payment, _ = await a.api.initiate(order_id=f"o-cluster-{i}")
        assert status == 201, payment
        reference = payment["reference"]
        page = await b.tracker()
        await page.track(reference)
        pages.append((reference, page))
        truth[reference] = "SUCCESSFUL" if i % 3 else "FAILED"
    first, second = pages[: PAYMENTS // 2], pages[PAYMENTS // 2 :]
    for reference, _ in first:
        await settle(a, reference, truth[reference])
    await eventually(lambda: listener.received_payments >= len(first), timeout=WAIT)  # by pub/sub, a to b

    subscribed = listener.subscriptions
    primary = await _serving(redis_cluster, listener.route_channel)
    replica = await redis_cluster.replica_of(primary)
    if kill:
        await redis_cluster.kill(primary)
        await redis_cluster.wait_role(replica, "master")  # the cluster promotes it by itself
    else:
        await redis_cluster.failover(replica)
    await redis_cluster.wait_ok()
    # The subscription was lost with the primary: b noticed, subscribed again on the replica, and resynced.
    await eventually(lambda: listener.subscriptions > subscribed and listener.listening.is_set(), timeout=WAIT)
    assert await _serving(redis_cluster, listener.route_channel) == replica

    async def all_stored() -> bool:
        return all([await a.storage.get_payment(reference) is not None for reference, _ in pages])

    await eventually(all_stored, timeout=WAIT)  # a payment the failover lost is back from its instance's copy
    received = listener.received_payments
    for reference, _ in second:
        await settle(a, reference, truth[reference])
    await wait_on_truth(pages, truth)
    assert listener.received_payments > received  # cross-instance delivery resumed on the new primary
    await check_pages(pages, truth, [a, b])
