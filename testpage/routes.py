"""`/payment-test`: a live checkout page on the official checkout client (`/sdk/`).

For developers: start a sandbox payment, watch its events arrive, simulate
the provider's answer. Served in development, or anywhere with
`TEST_PAGE_ENABLED=true`; otherwise 404 like an unknown route. The page's
script and styles are separate files so a strict Content-Security-Policy
(no inline script) can be sent with it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from aiohttp import web

from core.settings import SETTINGS

routes = web.RouteTableDef()

STATIC = Path(__file__).parent / "static"
# The only files served, by name: nothing the URL says can reach another path.
_ASSETS = {
    "payment-test.js": ("payment-test.js", "application/javascript"),
    "payment-test.css": ("payment-test.css", "text/css"),
}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:]+\](:\d{1,5})?")


def _require_enabled(request: web.Request) -> None:
    if not request.app[SETTINGS].TEST_PAGE_ENABLED:
        raise web.HTTPNotFound()


def content_security_policy(host: str) -> str:
    """Scripts, styles and connections only to this server; nothing inline, no framing."""
    connect = "'self'"
    if _HOST.fullmatch(host):  # older browsers do not count ws(s):// as 'self'
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@routes.get("/payment-test")
async def payment_test_page(request: web.Request) -> web.Response:
    _require_enabled(request)
    settings = request.app[SETTINGS]
    page = (STATIC / "payment-test.html").read_text(encoding="utf-8")
    page = page.replace("{{simulate}}", "true" if settings.SIMULATE_ENABLED else "false")
    page = page.replace(
        "{{provider}}", html.escape(settings.PAYMENT_PROVIDER.value if settings.PAYMENT_PROVIDER else "")
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": content_security_policy(request.host),  # nosniff etc.: app-wide hook
            "Cache-Control": "no-store",
        },
    )


@routes.get("/payment-test/static/{name}")
async def payment_test_asset(request: web.Request) -> web.StreamResponse:
    _require_enabled(request)
    asset = _ASSETS.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    path, content_type = asset
    return web.Response(
        body=(STATIC / path).read_bytes(),
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
