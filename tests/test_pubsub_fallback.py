"""The Redis Socket.IO manager when Redis cannot be reached: local delivery never depends on it.

No redis-server needed: the instance points at a port nobody listens on.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from payments.model import Payment, PaymentStatus
from payments.schemas import InitiateRequest
from realtime.delivery import message_for
from realtime.server import SIO
from tests.conftest import StartInstance
from tests.harness import WAIT
from tests.redis_server import free_port


async def _unreachable_instance(start_instance: StartInstance):  # type: ignore[no-untyped-def]
    return await start_instance(
        STORAGE_BACKEND="redis",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        REDIS_RECONNECT_INTERVAL_SECONDS=0.1,
        REDIS_TIMEOUT_SECONDS=0.5,
    )


async def test_without_redis_updates_still_reach_clients_on_the_same_instance(start_instance: StartInstance) -> None:
    instance = await _unreachable_instance(start_instance)
    status, body, _ = await instance.api.request("GET", "/health")
    assert body["status"] == "degraded" and body["storage"]["redis_reachable"] is False

    # (over HTTP, initiate fails closed while the rate-limit counters in Redis are unreachable)
    result = await instance.service.initiate(
        InitiateRequest(order_id="order-1", amount=500, phone_number="237671234567"), None
    )
    ref = result.body["reference"]
    client = await instance.tracker()
    await client.track(ref)
    status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True
    await client.wait_for("payment-completed")
    assert [e.name for e in client.payment_events()] == [
        "payment-status",
        "payment-status",
        "payment-success",
        "payment-completed",
    ]
    assert instance.app[SIO].manager.dropped_publishes >= 1  # one publish per change, not per event


async def test_payment_message_reaches_local_sockets_when_the_publish_fails(start_instance: StartInstance) -> None:
    """Local delivery happens before, and never depends on, the publish for other instances."""
    instance = await _unreachable_instance(start_instance)
    manager = instance.app[SIO].manager
    client = await instance.tracker()
    ack = await client.track("ref-x")
    assert ack == {"ok": True, "payment": None}
    now = datetime.now(UTC)
    payment = Payment(reference="ref-x", status=PaymentStatus.SUCCESSFUL, seq=7, created_at=now, updated_at=now)
    await asyncio.wait_for(manager.publish_payment(message_for(payment)), WAIT)
    received = await client.wait_for("payment-completed")
    assert received[-1].data["seq"] == 7 and received[-1].data["success"] is True
    assert manager.dropped_publishes >= 1
