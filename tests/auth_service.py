"""The merchant's auth service for introspection tests: a real aiohttp server that knows one token."""

from __future__ import annotations

import pytest
from aiohttp import web


class AuthService:
    """The merchant's auth service: answers GET with the user for known tokens, 401 otherwise."""

    def __init__(self) -> None:
        self.users = {"opaque-alice": {"sub": "alice", "scope": ""}}
        self.calls = 0
        self.down = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/introspect", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.down:
            return web.json_response({"message": "down"}, status=503)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        user = self.users.get(token)
        return web.json_response(user, status=200) if user else web.json_response({}, status=401)


@pytest.fixture
async def auth_service(aiohttp_server) -> tuple[AuthService, str]:  # type: ignore[no-untyped-def]
    service = AuthService()
    server = await aiohttp_server(service.app())
    return service, str(server.make_url("/introspect"))
