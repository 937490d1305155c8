"""REST CORS by the server's `OriginPolicy`, so a page Socket.IO lets in can call the REST API too.

aiohttp-cors looks an origin up in a fixed table of origins (or `*`); a policy such as "any page on
this machine, in development" is no table. Its router adapter (the documented `router_adapter`
argument of `aiohttp_cors.CorsConfig`) hands each request's configuration to the library; this one
adds the request's own origin to it whenever the policy accepts that origin, with the same options
for every accepted page. The library does everything else (preflights, methods, headers).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp_cors import ResourceOptions
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

from core.origins import OriginPolicy


class PolicyRouterAdapter(ResourcesUrlDispatcherRouterAdapter):
    """aiohttp-cors's own router adapter, with the accepted origins decided by an `OriginPolicy`."""

    def __init__(self, router: web.UrlDispatcher, policy: OriginPolicy, options: ResourceOptions) -> None:
        super().__init__(router, defaults={})
        self._policy = policy
        self._options = options

    async def get_preflight_request_config(
        self, preflight_request: web.Request, origin: str, requested_method: str
    ) -> Mapping[str, Any]:
        config = await super().get_preflight_request_config(preflight_request, origin, requested_method)
        return self._admit(config, origin, preflight_request)

    def get_non_preflight_request_config(self, request: web.Request) -> Mapping[str, Any]:
        config = super().get_non_preflight_request_config(request)
        return self._admit(config, request.headers.get(hdrs.ORIGIN), request)

    def _admit(self, config: Mapping[str, Any], origin: str | None, request: web.Request) -> Mapping[str, Any]:
        if origin is None or not self._policy.accepts(origin, request):
            return config
        return collections.ChainMap({origin: self._options}, dict(config))
