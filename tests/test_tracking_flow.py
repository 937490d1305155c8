"""The checkout page's view: initiate, track, and receive every change live, in order."""

from __future__ import annotations

from core.clock import ManualClock
from tests.conftest import Instance, StartInstance
from tests.harness import eventually


async def _client_gone(instance: Instance, sid: str) -> bool:
    return await instance.storage.get_client(sid) is None


async def _initiated(instance: Instance, order_id: str = "order-1") -> dict:
    status, body, _ = await instance.api.initiate(order_id=order_id)
    assert status == 201, body
    return body


async def test_success_flow_delivers_status_success_completed_in_order(instance: Instance) -> None:
    payment = await _initiated(instance)
    ref = payment["reference"]
    assert payment["status"] == "PENDING" and payment["seq"] == 1
    assert payment["operator"] == "MTN" and payment["ussd_code"] == "*126#"

    client = await instance.tracker()
    ack = await client.track(ref)
    assert ack["ok"] is True and ack["payment"]["reference"] == ref
    await client.wait_for("payment-status")  # current state, sent right away

    status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL")
    assert status == 200 and body["applied"] is True

    await client.wait_for("payment-completed")
    names = [e.name for e in client.payment_events()]
    assert names == ["payment-status", "payment-status", "payment-success", "payment-completed"]
    seqs = [e.data["seq"] for e in client.payment_events()]
    assert seqs == [1, 2, 2, 2]
    final = client.named("payment-success")[0].data
    assert final["status"] == "SUCCESSFUL" and final["reference"] == ref and final["order_id"] == "order-1"
    assert final["amount"] == 500 and final["currency"] == "XAF" and final["operator"] == "MTN"
    assert final["timestamp"].endswith("Z")
    assert client.named("payment-completed")[0].data["success"] is True


async def test_failed_flow_carries_reason(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)
    await instance.api.simulate(ref, "FAILED", reason="insufficient funds")
    await client.wait_for("payment-completed")
    names = [e.name for e in client.payment_events()]
    assert names == ["payment-status", "payment-status", "payment-failed", "payment-completed"]
    failed = client.named("payment-failed")[0].data
    assert failed["status"] == "FAILED" and failed["reason"] == "insufficient funds" and failed["seq"] == 2
    assert client.named("payment-completed")[0].data["success"] is False


async def test_two_clients_tracking_one_payment_both_get_it(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    first, second = await instance.tracker(), await instance.tracker()
    await first.track(ref)
    await second.track(ref)
    await instance.api.simulate(ref, "SUCCESSFUL")
    for client in (first, second):
        done = await client.wait_for("payment-completed")
        assert done[0].data["reference"] == ref and done[0].data["success"] is True


async def test_client_tracking_another_payment_gets_nothing(instance: Instance) -> None:
    ref_a = (await _initiated(instance, "order-a"))["reference"]
    ref_b = (await _initiated(instance, "order-b"))["reference"]
    watcher_a, watcher_b = await instance.tracker(), await instance.tracker()
    await watcher_a.track(ref_a)
    await watcher_b.track(ref_b)
    await watcher_b.wait_for("payment-status")
    await instance.api.simulate(ref_a, "SUCCESSFUL")
    await watcher_a.wait_for("payment-completed")
    await watcher_b.barrier()
    assert [e.data["reference"] for e in watcher_b.payment_events()] == [ref_b]


async def test_tracking_after_completion_gets_final_state_immediately(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    await instance.api.simulate(ref, "SUCCESSFUL")
    late = await instance.tracker()
    ack = await late.track(ref)
    assert ack["payment"]["status"] == "SUCCESSFUL"
    await late.wait_for("payment-completed")
    assert [e.name for e in late.payment_events()] == ["payment-status", "payment-success", "payment-completed"]
    assert all(e.data["seq"] == 2 for e in late.payment_events())


async def test_tracking_unknown_reference_acks_null_then_gets_events_once_known(instance: Instance) -> None:
    client = await instance.tracker()
    ack = await client.track("not-yet-known")
    assert ack == {"ok": True, "payment": None}
    await client.barrier()
    assert client.payment_events() == []


async def test_stop_tracking_stops_events(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)
    await client.wait_for("payment-status")
    assert await client.call("stop-tracking-payment", {"paymentReference": ref}) == {"ok": True}
    await instance.api.simulate(ref, "SUCCESSFUL")
    await client.barrier()
    assert [e.name for e in client.payment_events()] == ["payment-status"]
    record = await instance.storage.get_client(client.sid)
    assert record is not None and ref not in record.tracked


async def test_duplicate_and_backward_updates_emit_nothing(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)
    await instance.api.simulate(ref, "SUCCESSFUL")
    await client.wait_for("payment-completed")
    before = len(client.events)

    status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL")
    assert status == 200 and body["applied"] is False and body["outcome"] == "duplicate"
    status, body, _ = await instance.api.simulate(ref, "FAILED")
    assert status == 200 and body["applied"] is False and body["outcome"] == "regression"
    assert body["payment"]["status"] == "SUCCESSFUL" and body["payment"]["seq"] == 2

    await client.barrier()
    assert len(client.events) == before
    stored = await instance.storage.get_payment(ref)
    assert stored.status.value == "SUCCESSFUL" and stored.seq == 2


async def test_paymentreference_key_and_bare_string_are_accepted(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    client = await instance.tracker()
    ack = await client.call("track-payment", {"paymentReference": ref})
    assert ack["ok"] is True and ack["payment"]["reference"] == ref
    other = await instance.tracker()
    ack = await other.call("track-payment", ref)
    assert ack["ok"] is True and ack["payment"]["reference"] == ref


async def test_reconnect_with_last_seq_gets_only_missed_events(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    await instance.api.simulate(ref, "SUCCESSFUL")
    caught_up = await instance.tracker()
    await caught_up.track(ref, last_seq=1)
    await caught_up.wait_for("payment-completed")
    assert [e.data["seq"] for e in caught_up.payment_events()] == [2, 2, 2]

    current = await instance.tracker()
    await current.track(ref, last_seq=2)
    await current.barrier()
    assert current.payment_events() == []


async def test_connected_event_carries_socket_id_and_client_is_recorded(instance: Instance) -> None:
    client = await instance.tracker()
    connected = client.named("connected")[0].data
    assert connected["socket_id"] == client.sid and connected["timestamp"].endswith("Z")
    ref = (await _initiated(instance))["reference"]
    await client.track(ref)
    status, body, _ = await instance.api.request("GET", "/api/payment/debug/connections")
    assert status == 200 and body["count"] == 1
    conn = body["connections"][0]
    assert conn["socket_id"] == client.sid and conn["tracked"] == [ref]
    assert conn["instance_id"] == body["instance_id"]
    status, body, _ = await instance.api.request("GET", f"/api/payment/tracking/{ref}")
    assert status == 200 and body["tracking_clients"] == 1 and body["payment"]["reference"] == ref

    sid = client.sid
    await client.disconnect()
    # the server's disconnect handler runs after the client's call returns
    await eventually(lambda: _client_gone(instance, sid))
    status, body, _ = await instance.api.request("GET", f"/api/payment/tracking/{ref}")
    assert body["tracking_clients"] == 0


async def test_sandbox_autocomplete_completes_by_itself(start_instance: StartInstance) -> None:
    instance = await start_instance(SANDBOX_AUTOCOMPLETE_SECONDS=0.05, SANDBOX_OUTCOME="FAILED")
    client = await instance.tracker()
    ref = (await _initiated(instance))["reference"]
    await client.track(ref)
    done = await client.wait_for("payment-completed")
    assert done[-1].data["success"] is False and done[-1].data["reason"] == "sandbox auto-complete"


async def test_simulate_with_delay_is_scheduled(instance: Instance) -> None:
    ref = (await _initiated(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)
    status, body, _ = await instance.api.simulate(ref, "SUCCESSFUL", delay_ms=20)
    assert status == 202 and body["scheduled"] is True
    done = await client.wait_for("payment-completed")
    assert done[0].data["success"] is True


async def test_payment_and_client_records_expire(start_instance: StartInstance) -> None:
    clock = ManualClock()
    instance = await start_instance(clock=clock, PAYMENT_TTL_SECONDS=60, CLIENT_TTL_SECONDS=120)
    ref = (await _initiated(instance))["reference"]
    client = await instance.tracker()
    await client.track(ref)

    clock.advance(50)
    await instance.api.simulate(ref, "SUCCESSFUL")  # completion restarts the payment's TTL
    clock.advance(50)
    status, body, _ = await instance.api.request("GET", "/api/payment/status/order-1")
    assert status == 200 and body["status"] == "SUCCESSFUL"

    clock.advance(11)
    status, body, _ = await instance.api.request("GET", "/api/payment/status/order-1")
    assert status == 404 and body["error"]["code"] == "payment_not_found"
    status, _, _ = await instance.api.request("GET", f"/api/payment/tracking/{ref}")
    assert status == 404

    status, body, _ = await instance.api.request("GET", "/api/payment/debug/connections")
    assert body["count"] == 1  # client TTL is longer
    clock.advance(10)
    status, body, _ = await instance.api.request("GET", "/api/payment/debug/connections")
    assert body["count"] == 0
    assert await instance.storage.get_client(client.sid) is None
