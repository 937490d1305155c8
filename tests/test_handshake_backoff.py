"""A handshake refused 429 says when to come back, in a way a browser page can read.

Behind carrier-grade NAT or an office proxy many pages share one address, and a reconnect storm
(every page of a restarted instance at once) meets MAX_ANONYMOUS_SESSIONS_PER_IP. The official
client waits as long as `Retry-After` says (clients/js/test/backoff.test.mjs); a page on another
origin can read that header only if the response exposes it (CORS: it is not a safelisted header).
"""

from __future__ import annotations

from tests.conftest import StartInstance

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
PAGE = "http://localhost:3000"  # a page on this machine: accepted in development


async def test_a_429_handshake_exposes_its_retry_after_to_a_cross_origin_page(start_instance: StartInstance) -> None:
    instance = await start_instance(MAX_ANONYMOUS_SESSIONS_PER_IP=1, SOCKET_CONNECT_TIMEOUT_SECONDS=7)
    http = instance.api.session
    async with http.get(instance.url.rstrip("/") + HANDSHAKE, headers={"Origin": PAGE}) as first:
        assert first.status == 200  # the address's one session that has not connected
    async with http.get(instance.url.rstrip("/") + HANDSHAKE, headers={"Origin": PAGE}) as refused:
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "7"  # its sessions are all gone by then
        assert refused.headers["Access-Control-Allow-Origin"] == PAGE
        exposed = {h.strip().lower() for h in refused.headers.get("Access-Control-Expose-Headers", "").split(",")}
        assert "retry-after" in exposed, refused.headers
