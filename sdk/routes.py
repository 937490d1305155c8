"""`/sdk/`: the official checkout client, served so a page can use it without a bundler.

`GET /sdk/paytrack-client.js` is `clients/js/paytrack-client.js` with its one bare
import, `from "socket.io-client"`, pointed at the sibling
`/sdk/socket.io.esm.min.js?v=<content hash>` (the official socket.io-client ESM
build, vendored in `sdk/vendor/`). A plain page then writes

    <script type="module">import { PaymentTracker } from "https://pay.example.com/sdk/paytrack-client.js";</script>

and the browser fetches both modules itself. Why a rewrite of that one line rather
than the alternatives: an import map must be an inline `<script>` placed before
every module script of the page, which a strict Content-Security-Policy
(`script-src 'self'`, as on /payment-test) refuses, and it is one more thing a
merchant must paste; bundling socket.io into the file would need a build step
and a second copy of socket.io to keep in step. The rewrite is exact: the
import must appear once, or the asset refuses to load.

Caching: the client is `no-cache` with a versioned ETag (each load revalidates
and gets a 304 while nothing changed, so a deploy is seen at once); the
socket.io build is immutable under its content hash. Both are sent with
`Access-Control-Allow-Origin: *`, since module scripts are fetched in CORS mode
from the merchant's origin.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

routes = web.RouteTableDef()

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"
SOCKETIO_BUILD = Path(__file__).resolve().parent / "vendor" / "socket.io.esm.min.js"
BARE_IMPORT = 'from "socket.io-client";'


@dataclass(frozen=True)
class Asset:
    body: bytes
    etag: str  # quoted


@dataclass(frozen=True)
class Sdk:
    client: Asset
    socketio: Asset
    socketio_hash: str  # the `v` the client imports the socket.io build with


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@functools.cache
def load_sdk() -> Sdk:
    """The two files as served; read once (they ship with the code and never change at run time)."""
    socketio = SOCKETIO_BUILD.read_bytes()
    found = re.search(rb"Socket\.IO v([0-9A-Za-z.\-]+)", socketio[:200])
    socketio_version = found.group(1).decode() if found else "unknown"
    socketio_hash = _digest(socketio)

    source = (CLIENT_DIR / "paytrack-client.js").read_text(encoding="utf-8")
    if source.count(BARE_IMPORT) != 1:
        raise RuntimeError(f"clients/js/paytrack-client.js must contain `{BARE_IMPORT}` exactly once")
    client = source.replace(BARE_IMPORT, f'from "./{SOCKETIO_BUILD.name}?v={socketio_hash}";').encode()
    version = json.loads((CLIENT_DIR / "package.json").read_text(encoding="utf-8"))["version"]
    return Sdk(
        client=Asset(client, f'"paytrack-client-{version}-{_digest(client)}"'),
        socketio=Asset(socketio, f'"socket.io-client-{socketio_version}-{socketio_hash}"'),
        socketio_hash=socketio_hash,
    )


def _serve(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": cache_control,
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    wanted = request.if_none_match or ()
    if any(tag.value == "*" or f'"{tag.value}"' == asset.etag for tag in wanted):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type="text/javascript", charset="utf-8", headers=headers)


@routes.get("/sdk/paytrack-client.js")
async def client(request: web.Request) -> web.Response:
    return _serve(request, load_sdk().client, "public, no-cache")


@routes.get(f"/sdk/{SOCKETIO_BUILD.name}")
async def socketio_build(request: web.Request) -> web.Response:
    sdk = load_sdk()
    pinned = request.query.get("v") == sdk.socketio_hash
    return _serve(request, sdk.socketio, "public, max-age=31536000, immutable" if pinned else "public, no-cache")
