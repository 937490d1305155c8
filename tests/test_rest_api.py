"""REST contract: initiate (idempotent, one pending payment per order), status with ETag, every error path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.server import SIO
from tests.conftest import Instance, StartInstance
from tests.harness import PRODUCTION, pending_references, user_token


async def snapshot(instance: Instance) -> dict[str, Any]:
    """Everything a bad request could have changed, through the storage protocol."""
    storage = instance.storage
    refs = await pending_references(storage)
    payments = {r: (await storage.get_payment(r)).model_dump() for r in refs}
    clients = [c.model_dump() for c in await storage.list_clients()]
    return {"active": refs, "payments": payments, "clients": clients}


async def test_initiate_returns_201_with_pending_payment(instance: Instance) -> None:
    status, body, _headers = await instance.api.initiate(order_id="o-201", amount=1500, phone="237691234567")
    assert status == 201
    assert body["status"] == "PENDING" and body["order_id"] == "o-201" and body["amount"] == 1500
    assert body["operator"] == "ORANGE" and body["ussd_code"] == "#150*50#"
    assert body["phone_number"] == "237691234567"  # the owner sees the full number on initiate
    assert body["currency"] == "XAF" and body["seq"] == 1 and len(body["reference"]) == 36


async def test_idempotency_key_replays_first_response_without_second_payment(instance: Instance) -> None:
    headers = {"Idempotency-Key": "key-1"}
    status1, body1, h1 = await instance.api.initiate(order_id="o-idem", headers=headers)
    status2, body2, h2 = await instance.api.initiate(order_id="o-idem", headers=headers)
    assert status1 == status2 == 201
    assert body1 == body2
    assert h2.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in h1
    assert await pending_references(instance.storage) == [body1["reference"]]
    sandbox = instance.service.provider
    assert len(sandbox._transactions) == 1  # one provider call


async def test_idempotency_key_with_different_body_is_422(instance: Instance) -> None:
    headers = {"Idempotency-Key": "key-2"}
    await instance.api.initiate(order_id="o-k2", headers=headers)
    before = await snapshot(instance)
    status, body, _ = await instance.api.initiate(order_id="o-k2-other", headers=headers)
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"
    assert await snapshot(instance) == before


async def test_second_pending_payment_for_order_is_409_with_existing_reference(instance: Instance) -> None:
    _, first, _ = await instance.api.initiate(order_id="o-409")
    before = await snapshot(instance)
    status, body, _ = await instance.api.initiate(order_id="o-409")
    assert status == 409
    assert body["error"]["code"] == "payment_pending" and body["error"]["reference"] == first["reference"]
    assert await snapshot(instance) == before


async def test_new_payment_allowed_after_failure(instance: Instance) -> None:
    _, first, _ = await instance.api.initiate(order_id="o-retry")
    await instance.api.simulate(first["reference"], "FAILED")
    status, second, _ = await instance.api.initiate(order_id="o-retry")
    assert status == 201 and second["reference"] != first["reference"]
    status, latest, _ = await instance.api.request("GET", "/api/payment/status/o-retry")
    assert latest["reference"] == second["reference"]


async def test_concurrent_initiates_for_one_order_create_one_payment(instance: Instance) -> None:
    results = await asyncio.gather(*(instance.api.initiate(order_id="o-race") for _ in range(5)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [201, 409, 409, 409, 409]
    assert len(await pending_references(instance.storage)) == 1


async def test_status_has_etag_and_304_until_it_changes(instance: Instance) -> None:
    _, payment, _ = await instance.api.initiate(order_id="o-etag")
    status, body, headers = await instance.api.request("GET", "/api/payment/status/o-etag")
    assert status == 200 and body["reference"] == payment["reference"]
    assert headers["Cache-Control"] == "no-store"
    assert body["phone_number"] == "2376XXXX4567"
    etag = headers["ETag"]

    status, body, headers = await instance.api.request(
        "GET", "/api/payment/status/o-etag", headers={"If-None-Match": etag}
    )
    assert status == 304 and body is None and headers["ETag"] == etag

    await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    status, body, headers = await instance.api.request(
        "GET", "/api/payment/status/o-etag", headers={"If-None-Match": etag}
    )
    assert status == 200 and body["status"] == "SUCCESSFUL" and headers["ETag"] != etag


async def test_health_reports_storage(instance: Instance) -> None:
    status, body, _ = await instance.api.request("GET", "/health")
    assert status == 200
    assert body["status"] == "healthy" and body["storage"]["backend"] == "memory"
    assert body["timestamp"].endswith("Z")


async def test_cors_preflight_allows_frontend_origin_only(start_instance: StartInstance) -> None:
    instance = await start_instance(FRONTEND_URL="https://shop.example,https://checkout.example")
    preflight = {"Origin": "https://checkout.example", "Access-Control-Request-Method": "POST"}
    status, _, headers = await instance.api.request("OPTIONS", "/api/payment/initiate", headers=preflight)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://checkout.example"
    status, _, headers = await instance.api.request(
        "OPTIONS", "/api/payment/initiate", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_cors_headers_on_cross_origin_requests_only(start_instance: StartInstance) -> None:
    """A request from an allowed origin is answered with the CORS headers (and the ones it may read); a
    request without `Origin` (a server's) and one from another origin get none."""
    instance = await start_instance(FRONTEND_URL="https://checkout.example")
    await instance.api.initiate(order_id="cors-1")
    path = "/api/payment/status/cors-1"
    status, _, headers = await instance.api.request("GET", path, headers={"Origin": "https://checkout.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://checkout.example"
    assert "X-Request-ID" in headers["Access-Control-Expose-Headers"]
    for other in ({}, {"Origin": "https://evil.example"}):
        status, _, headers = await instance.api.request("GET", path, headers=other)
        assert status == 200 and not any(name.startswith("Access-Control-") for name in headers)


BAD_INITIATE_BODIES = [
    pytest.param(b"{not json", "invalid_json", id="malformed-json"),
    pytest.param(b"", "invalid_json", id="empty-body"),
    pytest.param(b"[1, 2]", "invalid_json", id="array-body"),
    pytest.param(b'{"amount": 100, "phone_number": "237671234567"}', "validation_error", id="missing-order"),
    pytest.param(
        b'{"order_id": "o", "amount": "100", "phone_number": "237671234567"}', "validation_error", id="amount-string"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": 10.5, "phone_number": "237671234567"}', "validation_error", id="amount-decimal"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": true, "phone_number": "237671234567"}', "validation_error", id="amount-bool"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": 0, "phone_number": "237671234567"}', "validation_error", id="amount-zero"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": -5, "phone_number": "237671234567"}', "validation_error", id="amount-negative"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": 100, "phone_number": "671234567"}', "validation_error", id="phone-no-country"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": 100, "phone_number": 237671234567}', "validation_error", id="phone-number-type"
    ),
    pytest.param(
        b'{"order_id": "o", "amount": 100, "phone_number": "237671234567", "currency": "EUR"}',
        "validation_error",
        id="currency",
    ),
    pytest.param(
        b'{"order_id": "' + b"x" * 65 + b'", "amount": 100, "phone_number": "237671234567"}',
        "validation_error",
        id="order-too-long",
    ),
    pytest.param(
        b'{"order_id": "o", "amount": 100, "phone_number": "237661234567"}', "unsupported_operator", id="nexttel-number"
    ),
]


@pytest.mark.parametrize("raw, code", BAD_INITIATE_BODIES)
async def test_bad_initiate_is_400_and_changes_nothing(instance: Instance, raw: bytes, code: str) -> None:
    before = await snapshot(instance)
    status, body, _ = await instance.api.request(
        "POST", "/api/payment/initiate", data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 400, body
    assert body["error"]["code"] == code and body["error"]["message"]
    if code == "validation_error":
        assert body["error"]["details"] and all("field" in d for d in body["error"]["details"])
    assert await snapshot(instance) == before


async def test_validation_error_names_the_field(instance: Instance) -> None:
    status, body, _ = await instance.api.request(
        "POST", "/api/payment/initiate", json={"order_id": "o", "amount": "100", "phone_number": "237671234567"}
    )
    assert status == 400 and [d["field"] for d in body["error"]["details"]] == ["amount"]


async def test_oversize_body_is_413(instance: Instance) -> None:
    before = await snapshot(instance)
    big = b'{"order_id": "o", "amount": 1, "phone_number": "237671234567", "description": "' + b"x" * 70_000 + b'"}'
    status, body, _ = await instance.api.request(
        "POST", "/api/payment/initiate", data=big, headers={"Content-Type": "application/json"}
    )
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert await snapshot(instance) == before


@pytest.mark.parametrize(
    "method, path, expected_status, code",
    [
        ("GET", "/api/payment/status/no-such-order", 404, "payment_not_found"),
        ("GET", "/api/payment/tracking/no-such-ref", 404, "payment_not_found"),
        ("GET", "/api/payment/status/bad%20id!", 400, "invalid_order_id"),
        ("GET", "/api/payment/nothing-here", 404, "not_found"),
        ("DELETE", "/api/payment/initiate", 405, "method_not_allowed"),
    ],
)
async def test_lookup_errors(instance: Instance, method: str, path: str, expected_status: int, code: str) -> None:
    status, body, _ = await instance.api.request(method, path)
    assert status == expected_status and body["error"]["code"] == code and body["error"]["message"]


@pytest.mark.parametrize(
    "payload, expected_status, code",
    [
        ({"reference": "unknown-ref", "status": "SUCCESSFUL"}, 404, "payment_not_found"),
        ({"reference": "unknown-ref", "status": "FAILED", "delay_ms": 10}, 404, "payment_not_found"),
        ({"reference": "r", "status": "PAID"}, 400, "validation_error"),
        ({"status": "SUCCESSFUL"}, 400, "validation_error"),
        ({"reference": "r", "status": "SUCCESSFUL", "delay_ms": -1}, 400, "validation_error"),
        ({"reference": "r", "status": "SUCCESSFUL", "delay_ms": "soon"}, 400, "validation_error"),
    ],
)
async def test_bad_simulate_changes_nothing(instance: Instance, payload: dict, expected_status: int, code: str) -> None:
    await instance.api.initiate(order_id="o-sim")
    before = await snapshot(instance)
    status, body, _ = await instance.api.request("POST", "/api/payment/test/simulate", json=payload)
    assert status == expected_status and body["error"]["code"] == code
    assert await snapshot(instance) == before


async def test_simulate_is_404_when_disabled(start_instance: StartInstance) -> None:
    instance = await start_instance(SIMULATE_ENABLED=False)
    _, payment, _ = await instance.api.initiate(order_id="o-closed")
    status, body, _ = await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert (await instance.storage.get_payment(payment["reference"])).status.value == "PENDING"


async def test_simulate_is_404_in_production_unless_enabled(start_instance: StartInstance) -> None:
    closed = await start_instance(**PRODUCTION)
    status, _, _ = await closed.api.simulate("any", "SUCCESSFUL")
    assert status == 404
    opened = await start_instance(**PRODUCTION, SIMULATE_ENABLED=True)
    api = opened.api.as_user(user_token("user-1"))
    _, payment, _ = await api.initiate(order_id="o-prod")
    status, body, _ = await api.simulate(payment["reference"], "SUCCESSFUL")
    assert status == 200 and body["applied"] is True


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({}, id="empty"),
        pytest.param({"reference": ""}, id="empty-reference"),
        pytest.param({"reference": 42}, id="number-reference"),
        pytest.param({"reference": "x" * 65}, id="too-long"),
        pytest.param({"reference": "ok", "last_seq": -1}, id="negative-last-seq"),
        pytest.param({"reference": "ok", "last_seq": "1"}, id="string-last-seq"),
        pytest.param([1, 2], id="array"),
        pytest.param(None, id="no-payload"),
    ],
)
async def test_malformed_track_payload_acks_error_and_joins_nothing(instance: Instance, payload: Any) -> None:
    client = await instance.tracker()
    ack = await client.call("track-payment", payload)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload" and ack["error"]["message"]
    record = await instance.storage.get_client(client.sid)
    assert record is not None and record.tracked == []
    assert instance.app[SIO].rooms(client.sid) == [client.sid]  # joined no payment room


async def test_malformed_stop_tracking_acks_error(instance: Instance) -> None:
    client = await instance.tracker()
    ack = await client.call("stop-tracking-payment", {"reference": {"nested": True}})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload"


async def test_unknown_socket_event_acks_an_error(instance: Instance) -> None:
    client = await instance.tracker()
    ack = await client.call("track-payments", {"reference": "r"})
    assert ack["ok"] is False and ack["error"]["code"] == "unknown_event"
    ack = await client.call("track-payment", b"\x00\x01binary")
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload"
