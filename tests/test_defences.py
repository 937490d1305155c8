"""Defences that held when the server was attacked, kept covered so they keep holding.

(Forged webhook signatures, bad tokens, cross-user access, REST CORS, oversize REST bodies and closed
production surfaces are covered in test_campay_webhook.py, test_auth.py, test_rest_api.py,
test_bad_input_fuzz.py, test_merchant_webhooks.py, test_observability.py and test_test_page.py.)
"""

from __future__ import annotations

import asyncio

from tests.conftest import StartInstance
from tests.harness import WAIT
from tests.test_client_address import connect


async def test_socket_from_a_foreign_origin_is_refused_and_own_and_frontend_origins_connect(
    start_instance: StartInstance,
) -> None:
    instance = await start_instance(FRONTEND_URL="https://shop.example")
    refusal = await connect(instance, headers={"Origin": "https://evil.example"})
    assert refusal is not None and refusal.startswith("handshake refused")
    assert await connect(instance, headers={"Origin": "https://shop.example"}) is None
    own = instance.url.rstrip("/")  # the test page is served by the server itself
    assert await connect(instance, headers={"Origin": own}) is None


async def test_socket_message_over_the_size_limit_closes_the_connection_and_changes_nothing(
    start_instance: StartInstance,
) -> None:
    instance = await start_instance(MAX_BODY_BYTES=2048)
    client = await instance.tracker()
    await client.sio.emit("track-payment", {"reference": "r", "padding": "x" * 4096})
    await asyncio.wait_for(client.disconnected.wait(), WAIT)
    assert await instance.storage.list_clients() == []
