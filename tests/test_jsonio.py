"""The fast JSON encoder says the same as `json` for what the server sends, and falls back where orjson
would refuse (so no input that `json` could encode becomes a 500)."""

from __future__ import annotations

import json
import math

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import server
from core.errors import MAX_JSON_DEPTH, InvalidRequest, parse_json
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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(json_values, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]))
def test_bodies_are_read_as_json_loads_reads_them(value: object, encoding: str) -> None:
    """`parse_json` answers the usual UTF-8 object without `json.detect_encoding`, and every other body
    through it: whatever the encoding json.loads accepts, both read the same value."""
    raw = json.dumps(value).encode(encoding)
    assert parse_json(raw) == json.loads(raw)


@pytest.mark.parametrize("depth", [1, 2, MAX_JSON_DEPTH])
def test_nesting_up_to_the_bound_is_read_and_past_it_refused(depth: int) -> None:
    def nested(levels: int) -> bytes:
        return b'{"a":' * (levels - 1) + b'{"a":1}' + b"}" * (levels - 1)

    assert parse_json(nested(depth)) == json.loads(nested(depth))
    with pytest.raises(InvalidRequest, match="nests deeper"):
        parse_json(nested(MAX_JSON_DEPTH + 1))
