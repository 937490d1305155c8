"""A page that stops tracking a payment right after tracking it (a component that mounts and unmounts
at once, a route left while its track-payment is unanswered) must end up not tracking it.

python-socketio runs each event in a task of its own, so `stop-tracking-payment` runs while
`track-payment` still awaits its storage reads: the stop finds nothing in storage to remove, and the
track's late `storage.track` then registers a socket that no longer follows the payment. It stays
counted (`tracking_clients`, the payment's trackers index) until the socket disconnects.
"""

from __future__ import annotations

import asyncio

from tests.conftest import StartInstance
from tests.harness import WAIT


async def test_a_track_stopped_at_once_leaves_the_socket_untracked(start_redis_instance: StartInstance) -> None:
    instance = await start_redis_instance()
    _, payment, _ = await instance.api.initiate(order_id="o-stop-race")
    reference = payment["reference"]
    page = await instance.tracker()
    # Both go out back to back, as the official client sends them when the page lets go at once.
    tracked, stopped = await asyncio.gather(
        page.sio.call("track-payment", {"reference": reference}, timeout=WAIT),
        page.sio.call("stop-tracking-payment", {"reference": reference}, timeout=WAIT),
    )
    assert tracked["ok"] is True and stopped["ok"] is True
    await page.barrier()
    status, body, _ = await instance.api.request("GET", f"/api/payment/tracking/{reference}")
    assert status == 200
    assert body["tracking_clients"] == 0, "the socket that stopped is still counted as tracking the payment"
