"""Hostile input gets a precise 4xx and changes nothing: huge numbers, deep nesting, non-ASCII header bytes,
undecodable tokens, look-alike digits, idempotency keys built to collide."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Instance, StartInstance
from tests.harness import PRODUCTION, WAIT, pending_references, user_token
from tests.test_limits import refused_code
from tests.test_rest_api import snapshot

VALID = {"order_id": "o-hostile", "amount": 500, "phone_number": "237671234567"}
ENDPOINTS = ["/api/payment/initiate", "/api/payment/webhook", "/api/payment/test/simulate"]


async def raw_request(instance: Instance, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Send bytes no HTTP client library would send (e.g. a raw 0xFF in a header); (status, JSON body)."""
    url = urlsplit(instance.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload) if payload else None


def _huge_number() -> bytes:
    return json.dumps(VALID).replace('"amount": 500', '"amount": ' + "9" * 5000).encode()


def _deep_array() -> bytes:
    return b'{"order_id": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", [_huge_number(), _deep_array()], ids=["5000-digit-number", "30000-deep-array"])
async def test_huge_numbers_and_deep_nesting_are_400_before_validation(
    instance: Instance, path: str, body: bytes
) -> None:
    before = await snapshot(instance)
    status, answer, _ = await instance.api.request(
        "POST", path, data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400 and answer["error"]["code"] == "invalid_json", answer
    assert await snapshot(instance) == before


async def test_reasonable_json_still_parses(instance: Instance) -> None:
    body = {**VALID, "description": "x" * 200, "amount": 123456}
    assert (await instance.api.request("POST", "/api/payment/initiate", json=body))[0] == 201


@pytest.mark.parametrize("header", ["Idempotency-Key", "Authorization", "X-Anything"])
async def test_a_non_ascii_header_byte_is_400(start_instance: StartInstance, header: str) -> None:
    instance = await start_instance(**PRODUCTION)
    body = json.dumps(VALID).encode()
    auth = b"" if header == "Authorization" else b"Authorization: Bearer " + user_token("alice").encode() + b"\r\n"
    head = (
        b"POST /api/payment/initiate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + header.encode()
        + b": "
        + (b"Bearer " if header == "Authorization" else b"")
        + b"k\xff\xfe-1\r\n"
    )
    status, answer = await raw_request(instance, head, body)
    assert status == 400 and answer["error"]["code"] == "invalid_header", answer
    assert header in answer["error"]["message"]
    assert await instance.storage.get_order_payment("o-hostile") is None


async def test_a_token_that_is_a_lone_surrogate_gets_connect_error(start_instance: StartInstance) -> None:
    instance = await start_instance(**PRODUCTION)
    assert await refused_code(instance, auth={"token": "\ud800"}) == "invalid_token"
    assert await refused_code(instance, auth={"token": "abc\udcff.def"}) == "invalid_token"
    client = await instance.tracker(auth={"token": user_token("alice")})
    ack = await client.call("refresh-token", {"token": "\ud800"})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload"  # refused by the payload schema
    ack = await client.call("refresh-token", {"token": "abc\u00ff.def"})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_token"


async def test_idempotency_keys_of_two_users_never_collide(start_instance: StartInstance) -> None:
    """`u` + key `k1:z` and `u:k1` + key `z` once mapped to the same entry (and the same response)."""
    instance = await start_instance(**PRODUCTION)
    first_user = instance.api.as_user(user_token("u"))
    second_user = instance.api.as_user(user_token("u:k1"))
    status, first, _ = await first_user.initiate(order_id="o-collide", headers={"Idempotency-Key": "k1:z"})
    assert status == 201
    status, second, headers = await second_user.initiate(order_id="o-collide", headers={"Idempotency-Key": "z"})
    assert "Idempotent-Replayed" not in headers
    assert status == 403 and second["error"]["code"] == "forbidden"  # the order is the first user's
    assert first["reference"] not in json.dumps(second) and "237671234567" not in json.dumps(second)


@pytest.mark.parametrize(
    "phone",
    [
        "23767\u0661\u0662\u0663\u0664\u0665\u0666\u0667",
        "23767\uff11\uff12\uff13\uff14\uff15\uff16\uff17",
        "\u0662\u0663\u0667671234567",
        "23767123456\u00b2",
    ],
    ids=["arabic-indic", "fullwidth", "arabic-country-code", "superscript"],
)
async def test_phone_numbers_with_non_ascii_digits_are_refused(instance: Instance, phone: str) -> None:
    status, body, _ = await instance.api.request("POST", "/api/payment/initiate", json={**VALID, "phone_number": phone})
    assert status == 400 and body["error"]["code"] == "validation_error", body
    assert body["error"]["details"][0]["field"] == "phone_number"
    assert await pending_references(instance.storage) == []
