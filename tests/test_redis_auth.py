"""The introspection cache on a real Redis: only token hashes stored, and outages in either direction."""

from __future__ import annotations

import pytest

from auth.authenticators import token_cache_key
from tests.auth_service import AuthService
from tests.conftest import StartInstance
from tests.harness import PRODUCTION

pytestmark = pytest.mark.redis


async def test_introspection_cache_in_redis_survives_outages_both_ways(
    redis_server,
    start_redis_instance: StartInstance,
    auth_service: tuple[AuthService, str],  # type: ignore[no-untyped-def]
) -> None:
    service, url = auth_service
    instance = await start_redis_instance(
        **{**PRODUCTION, "STORAGE_BACKEND": "redis", "AUTH_MODE": "introspect", "AUTH_SERVICE_URL": url}
    )
    api = instance.api.as_user("opaque-alice")
    assert (await api.initiate(order_id="o-cache"))[0] == 201
    assert service.calls == 1

    redis = redis_server.client()
    try:
        keys = [k async for k in redis.scan_iter(match="*auth*")]
        assert keys == [f"paytrack:auth:{token_cache_key('opaque-alice')}"]
        assert not [k async for k in redis.scan_iter(match="*opaque-alice*")]
        assert 0 < await redis.ttl(keys[0]) <= 1800
    finally:
        await redis.aclose()

    # auth service down, cache (Redis) up: the cached user is still accepted
    service.down = True
    assert (await api.request("GET", "/api/payment/status/o-cache"))[0] == 200
    assert service.calls == 1

    # cache (Redis) down, auth service up: the service is asked instead of refusing
    service.down = False
    redis_server.stop()
    status, _, _ = await instance.api.as_user("opaque-alice").request("GET", "/api/payment/status/o-cache")
    assert status == 200
    assert service.calls == 2
