"""deploy/nginx.conf as shipped (TLS and all, a self-signed pair standing in for the certificate) in
front of a backend that echoes what reaches it, and in front of a real instance: the client's own
forwarding headers never survive, and the real address, Host and scheme arrive at every location."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio
from aiohttp import web

from tests.conftest import StartInstance
from tests.harness import WAIT
from tests.nginx_site import NGINX, SITE, NginxSite

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.timeout(60),
    pytest.mark.skipif(NGINX is None, reason="nginx not found (Debian package nginx; CI installs it via .ci/run)"),
]

# What a client may send to pick its own address, host or scheme, or to forge a log correlation id.
FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "X-Request-ID": "forged-id",
}

StartSite = Callable[[list[int]], Awaitable[NginxSite]]


@pytest.fixture
async def start_site() -> AsyncIterator[StartSite]:
    sites: list[NginxSite] = []

    async def start(upstreams: list[int]) -> NginxSite:
        site = NginxSite(upstreams)
        sites.append(site)
        return await site.start()

    yield start
    for site in sites:
        await site.stop()


def echo_app() -> web.Application:
    """Answers any request with the headers (every copy of each) and the TCP peer it saw."""

    async def echo(request: web.Request) -> web.Response:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        return web.json_response({"peer": request.remote, "headers": headers})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.mark.parametrize(
    "path",
    ["/api/payment/status/r-1", "/socket.io/?EIO=4&transport=polling"],
    ids=["location /", "location /socket.io/"],
)
async def test_forwarding_headers_are_nginx_s_own_at_every_location(
    aiohttp_server: Any, start_site: StartSite, path: str
) -> None:
    backend = await aiohttp_server(echo_app())
    site = await start_site([backend.port])
    async with site.session() as http, http.get(f"{site.origin}{path}", headers=FORGED) as resp:
        assert resp.status == 200, await resp.text()
        seen = (await resp.json())["headers"]
    host = f"{SITE}:{site.https_port}"  # as the browser sent it, port included
    assert seen["x-forwarded-for"] == ["127.0.0.1"]  # the client's address, the forged one gone
    assert seen["host"] == [host]
    assert seen["x-forwarded-host"] == [host]
    assert seen["x-forwarded-proto"] == ["https"]
    assert len(seen["x-request-id"]) == 1 and re.fullmatch(r"[0-9a-f]{32}", seen["x-request-id"][0])


async def test_an_instance_behind_the_recipe_sees_each_shopper_and_its_own_origin(
    start_instance: StartInstance, start_site: StartSite
) -> None:
    """TRUST_FORWARDED_FOR=true as the recipe says: a forged X-Forwarded-For picks no new address (the
    per-address limit still counts the shopper), and a page served through nginx connects its websocket
    (its Origin is the site's own address, which the instance learns from Host and X-Forwarded-Proto)."""
    instance = await start_instance(
        TRUST_FORWARDED_FOR=True, RATE_LIMIT_INITIATE_PER_IP="2/minute", FRONTEND_URL="https://shop.example"
    )
    site = await start_site([instance.server.port])
    async with site.session() as http:
        statuses = []
        for i in range(3):
            async with http.post(
                f"{site.origin}/api/payment/initiate",
                json={"order_id": f"o-proxy-{i}", "amount": 500, "phone_number": "237671234567"},
                headers={**FORGED, "X-Forwarded-For": f"6.6.6.{i}"},
            ) as resp:
                statuses.append(resp.status)
        assert statuses == [201, 201, 429]

        page = socketio.AsyncClient(reconnection=False, http_session=http)
        try:
            await page.connect(
                site.origin, headers={"Origin": site.origin}, transports=["websocket"], wait_timeout=WAIT
            )
            assert page.transport() == "websocket"
        finally:
            await page.disconnect()

        stranger = socketio.AsyncClient(reconnection=False, http_session=http)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await stranger.connect(
                site.origin,
                headers={"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"},
                transports=["websocket"],
                wait_timeout=WAIT,
            )


async def test_plain_http_is_sent_to_https(aiohttp_server: Any, start_site: StartSite) -> None:
    backend = await aiohttp_server(echo_app())
    site = await start_site([backend.port])
    async with (
        site.session() as http,
        http.get(f"http://{SITE}:{site.http_port}/payment-test?x=1", allow_redirects=False) as resp,
    ):
        assert resp.status == 301
        assert resp.headers["Location"] == f"https://{SITE}/payment-test?x=1"


async def test_the_origin_check_behind_the_recipe_agrees_with_the_handshake(
    start_instance: StartInstance, start_site: StartSite
) -> None:
    """`GET /api/origin` through nginx: the site's own pages (their Origin is the address nginx was
    reached at, learnt from Host and X-Forwarded-Proto) and FRONTEND_URL's shop are accepted, a stranger
    is refused even when it forges X-Forwarded-Host, and the open CORS and no-store headers arrive."""
    instance = await start_instance(TRUST_FORWARDED_FOR=True, FRONTEND_URL="https://shop.example")
    site = await start_site([instance.server.port])
    cases = [
        (site.origin, {}, True),
        ("https://shop.example", {}, True),
        ("https://evil.example", {"X-Forwarded-Host": "evil.example"}, False),
        (f"http://{SITE}:{site.https_port}", {}, False),  # the site's address over plain http: not its origin
    ]
    async with site.session() as http:
        for origin, extra, expected in cases:
            async with http.get(f"{site.origin}/api/origin", headers={"Origin": origin, **extra}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"origin": origin, "accepted": expected}, origin
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert "Access-Control-Allow-Credentials" not in resp.headers
                assert resp.headers["Cache-Control"] == "no-store"
            page = socketio.AsyncClient(reconnection=False, http_session=http)
            try:
                await page.connect(
                    site.origin, headers={"Origin": origin, **extra}, transports=["websocket"], wait_timeout=WAIT
                )
                handshake = True
            except socketio.exceptions.ConnectionError:
                handshake = False
            finally:
                await page.disconnect()
            assert handshake is expected, origin
