"""The fast JSON encoder says the same as `json` for what the server sends, and falls back where orjson
would refuse (so no input that `json` could encode becomes a 500)."""

from __future__ import annotations

import json
import math

import aiohttp
import pytest

import server
from core.jsonio import JsonModule, dumps, loads
from core.settings import load_settings
from tests.conftest import StartInstance


@pytest.mark.parametrize(
    "value",
    [
        {"reference": "r-1", "seq": 2, "status": "SUCCESSFUL", "amount": 100, "reason": None, "ok": True},
        ["payment-status", {"nested": [1, 2.5, "é", {"x": None}]}],
        {"big": 2**70},  # past orjson's 64 bits: json's output
        {"lone": "\ud800"},  # a lone surrogate: json escapes it
        {1: "non-string key"},
    ],
)
def test_dumps_is_json_compact(value: object) -> None:
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))
    assert JsonModule.dumps(value, separators=(",", ":")) == dumps(value)


def test_loads_is_the_standard_librarys() -> None:
    """Hostile input reads as `json` reads it: a 64-bit overflow stays an int, NaN parses, bad JSON is a ValueError."""
    assert loads("123456789012345678901234567890") == 123456789012345678901234567890
    assert loads('"\\ud800"') == "\ud800"
    assert math.isnan(loads("NaN"))
    with pytest.raises(ValueError):
        loads("{")


def test_event_loop_setting_picks_uvloop_or_asyncio() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert server.event_loop_factory(load_settings(EVENT_LOOP="auto")) is uvloop.new_event_loop
    assert server.event_loop_factory(load_settings(EVENT_LOOP="asyncio")) is None


async def test_a_websocket_upgrade_with_a_non_ascii_header_is_still_refused(start_instance: StartInstance) -> None:
    """Upgrades skip the middlewares (realtime/server.py), but not the header check."""
    instance = await start_instance()
    url = f"{instance.url}socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:  # an ordinary upgrade goes through
            opened = await ws.receive_str()
            assert opened.startswith("0{")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"X-Note": "caf\u00e9".encode().decode("latin-1")})
        assert refused.value.status == 400
