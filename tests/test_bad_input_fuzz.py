"""Seeded garbage at every endpoint: always a JSON 4xx (never a 5xx, never a stack trace), storage untouched."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import StartInstance
from tests.harness import PRODUCTION, user_token
from tests.test_rest_api import snapshot

ENDPOINTS = [
    ("POST", "/api/payment/initiate"),
    ("POST", "/api/payment/test/simulate"),
    ("POST", "/api/payment/webhook"),
    ("GET", "/api/payment/webhook"),
    ("GET", "/api/payment/status/x"),
    ("GET", "/api/payment/tracking/x"),
    ("POST", "/api/payment/debug/outbox/x/replay"),
    ("PUT", "/api/payment/initiate"),
    ("GET", "/api/payment/%ff"),
]
BODIES = [
    b"",
    b"\xff\xfe",
    b"null",
    b"[]",
    b"{}",
    b'{"amount": 1e309}',
    b'{"amount": NaN}',
    b'{"order_id": {"a": 1}}',
    b'{"reference": "\\u0000\\u0000", "status": "SUCCESSFUL"}',
    b'{"status": 1, "reference": []}',
    json.dumps({"order_id": "o", "amount": 10**30, "phone_number": "237671234567"}).encode(),
    json.dumps({"reference": "a" * 70, "status": "X" * 40}).encode(),
    b'"string"',
    b"1",
    b"true",
    b'{"order_id": "o\\n", "amount": 100, "phone_number": "+237 67 12"}',
    b"--x\r\nnot a part\r\n",
]
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "multipart/form-data; boundary=x",
]
QUERIES = [
    "",
    "?status=SUCCESSFUL&reference=r1",
    "?reference=%ff&status=",
    "?refresh=true&refresh=1",
    "?a=" + "b" * 4000,
]


@pytest.mark.parametrize("production", [False, True], ids=["development", "production"])
async def test_garbage_gets_json_4xx_and_changes_nothing(start_instance: StartInstance, production: bool) -> None:
    instance = await start_instance(**(PRODUCTION if production else {}))
    api = instance.api.as_user(user_token("fuzzer")) if production else instance.api
    before = await snapshot(instance)
    rng = random.Random(20261123)
    for _ in range(400):
        method, path = rng.choice(ENDPOINTS)
        body = rng.choice([*BODIES, bytes(rng.getrandbits(8) for _ in range(40))])
        headers = {"Content-Type": rng.choice(CONTENT_TYPES)}
        status, answer, _ = await api.request(method, path + rng.choice(QUERIES), data=body, headers=headers)
        assert 400 <= status < 500, (method, path, body, headers, status, answer)
        assert answer["error"]["code"] and answer["error"]["message"], answer
        assert "Traceback" not in json.dumps(answer)
    assert await snapshot(instance) == before
