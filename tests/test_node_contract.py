"""Checkout code written for the original Node server keeps working: camelCase inputs, snake_case answers."""

from __future__ import annotations

from tests.conftest import Instance


async def test_rest_accepts_the_node_servers_camel_case_names(instance: Instance) -> None:
    status, payment, _ = await instance.api.request(
        "POST", "/api/payment/initiate", json={"orderId": "o-camel", "amount": 500, "phoneNumber": "237671234567"}
    )
    assert status == 201, payment
    assert payment["order_id"] == "o-camel" and payment["phone_number"] == "237671234567"
    assert "orderId" not in payment and "phoneNumber" not in payment  # answers stay snake_case

    status, body, _ = await instance.api.request(
        "POST", "/api/payment/test/simulate", json={"paymentReference": payment["reference"], "status": "SUCCESSFUL"}
    )
    assert status == 200 and body["payment"]["status"] == "SUCCESSFUL"


async def test_socket_accepts_camel_case_reference_and_last_seq(instance: Instance) -> None:
    _, payment, _ = await instance.api.initiate(order_id="o-camel-socket")
    await instance.api.simulate(payment["reference"], "SUCCESSFUL")
    page = await instance.tracker()
    ack = await page.call("track-payment", {"paymentReference": payment["reference"], "lastSeq": 1})
    assert ack["ok"] is True and ack["payment"]["status"] == "SUCCESSFUL"
    completed = await page.wait_for("payment-completed")
    assert [e.data["seq"] for e in page.named("payment-status")] == [2] and completed[0].data["success"] is True


async def test_a_missing_field_is_named_by_its_snake_case_name(instance: Instance) -> None:
    status, body, _ = await instance.api.request("POST", "/api/payment/initiate", json={"amount": 500})
    assert status == 400
    assert {d["field"] for d in body["error"]["details"]} == {"order_id", "phone_number"}


async def test_snake_case_wins_when_both_are_sent(instance: Instance) -> None:
    status, payment, _ = await instance.api.request(
        "POST",
        "/api/payment/initiate",
        json={"order_id": "o-snake", "orderId": "o-camel-ignored", "amount": 500, "phone_number": "237671234567"},
    )
    assert status == 201 and payment["order_id"] == "o-snake"
