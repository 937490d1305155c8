"""Which pages may talk to the server: one rule for Socket.IO handshakes and REST CORS alike.

FRONTEND_URL's origins and the server's own; in development with FRONTEND_URL unset, any page served
from this machine (localhost, 127.0.0.0/8 or [::1], any port, http or https), which is where a
developer's checkout runs (`npm run dev` on localhost:5173, a page on 127.0.0.1:3000).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.settings import SettingsError, load_settings
from tests.conftest import Instance, StartInstance
from tests.harness import PRODUCTION
from tests.test_client_address import connect

LOOPBACK_PAGES = [
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.2:8080",
    "http://[::1]:5173",
    "https://localhost",
    "http://LOCALHOST:4000",
]
OTHER_PAGES = [
    "https://evil.example",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io:3000",
    "http://192.168.1.20:3000",
    "http://10.0.0.1",
    "file://localhost",
    "null",
    "http://localhost:3000/path",
    "http://user@localhost:3000",
]


async def accepted(instance: Instance, origin: str) -> tuple[bool, bool]:
    """(a websocket from `origin` gets past the origin check, a CORS preflight from `origin` is allowed)."""
    refusal = await connect(instance, headers={"Origin": origin})
    socket_ok = refusal is None or not refusal.startswith("handshake refused")  # e.g. no token, in production
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    status, _, headers = await instance.api.request("OPTIONS", "/api/payment/initiate", headers=preflight)
    cors_ok = status == 200 and headers.get("Access-Control-Allow-Origin") == origin
    return socket_ok, cors_ok


@pytest.mark.parametrize("origin", LOOPBACK_PAGES)
async def test_development_accepts_any_page_on_this_machine(start_instance: StartInstance, origin: str) -> None:
    instance = await start_instance()  # development, FRONTEND_URL unset
    assert await accepted(instance, origin) == (True, True)


@pytest.mark.parametrize("origin", OTHER_PAGES)
async def test_development_refuses_pages_elsewhere(start_instance: StartInstance, origin: str) -> None:
    instance = await start_instance()
    assert await accepted(instance, origin) == (False, False)


@pytest.mark.parametrize(
    "settings",
    [{"FRONTEND_URL": "http://localhost:3000"}, PRODUCTION],
    ids=["frontend-url-set", "production"],
)
async def test_a_set_frontend_url_or_production_accepts_only_what_it_names(
    start_instance: StartInstance, settings: dict[str, Any]
) -> None:
    """FRONTEND_URL, once set, says exactly which pages (plus the server's own); production has no loopback rule."""
    instance = await start_instance(**settings)
    named = settings.get("FRONTEND_URL")
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000"):
        assert await accepted(instance, origin) == (False, False), origin
    if named:
        assert await accepted(instance, named) == (True, True)


@pytest.mark.parametrize(
    "entry",
    ["https://shop.example/checkout", "https://shop.example/?from=mail", "https://buyer@shop.example"],
    ids=["a-page-url", "a-query", "user-info"],
)
def test_a_frontend_url_entry_no_page_could_send_as_its_origin_is_refused_at_start(entry: str) -> None:
    """A browser's Origin is `scheme://host[:port]`; an entry with a path, a query or user info is never
    equal to one, so the policy drops it without a word and the page it was meant for is refused (socket and
    CORS alike) by a server that started fine. The name invites a page URL: refused at start, saying why."""
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, FRONTEND_URL=f"https://erp.example,{entry}")
    (problem,) = refused.value.problems
    assert problem.variable == "FRONTEND_URL" and entry in str(problem), problem


async def origin_check(instance: Instance, origin: str | None) -> tuple[int, Any, Any]:
    return await instance.api.request("GET", "/api/origin", headers={"Origin": origin} if origin else {})


@pytest.mark.parametrize(
    "settings",
    [{}, {"FRONTEND_URL": "http://localhost:3000"}, PRODUCTION],
    ids=["development", "frontend-url-set", "production"],
)
async def test_the_origin_check_tells_any_page_whether_its_handshakes_are_accepted(
    start_instance: StartInstance, settings: dict[str, Any]
) -> None:
    """A browser shows a page neither why a websocket handshake failed nor why a cross-origin fetch did, so
    a refused origin looks like a server that is down. `GET /api/origin` is readable by every page (`*`,
    without credentials, no token even in production) and says what the handshake's origin check says."""
    instance = await start_instance(**settings)
    for origin in [*LOOPBACK_PAGES, *OTHER_PAGES, "http://localhost:3000"]:
        socket_ok, _ = await accepted(instance, origin)
        status, body, headers = await origin_check(instance, origin)
        assert status == 200 and body == {"origin": origin, "accepted": socket_ok}, (origin, body)
        assert headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in headers
        assert headers["Cache-Control"] == "no-store" and headers["Vary"] == "Origin"


async def test_the_origin_check_accepts_the_servers_own_origin_and_a_request_without_one(
    start_instance: StartInstance,
) -> None:
    instance = await start_instance(**PRODUCTION)
    own = instance.api.base_url  # a page served by the server itself (the test page, a proxied checkout)
    assert (await origin_check(instance, own))[1] == {"origin": own, "accepted": True}
    assert (await origin_check(instance, None))[1] == {"origin": None, "accepted": True}  # not a browser page
    status, body, _ = await origin_check(instance, "x" * 5000)
    assert status == 200 and body["accepted"] is False and len(body["origin"]) == 256  # echoed, bounded
