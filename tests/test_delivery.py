"""The packets LocalDelivery writes out by hand are the ones python-socketio would encode."""

from __future__ import annotations

import json
from typing import Any

import pytest
import socketio
from engineio import packet as eio_packet
from hypothesis import given
from hypothesis import strategies as st

from realtime import event_names as ev
from realtime.delivery import PaymentMessage, _packets

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6)
payloads = st.dictionaries(st.text(max_size=6), scalars, max_size=6)


def expected_events(status: str, initiated: bool, payload: dict[str, Any]) -> list[list[Any]]:
    """The contract's sequence for one state (docs/API.md), as data."""
    if initiated:
        return [[ev.PAYMENT_INITIATED, payload]]
    events = [[ev.PAYMENT_STATUS, payload]]
    if status != "PENDING":
        success = status == "SUCCESSFUL"
        final = {"SUCCESSFUL": ev.PAYMENT_SUCCESS, "FAILED": ev.PAYMENT_FAILED, "EXPIRED": ev.PAYMENT_EXPIRED}
        events.append([final[status], payload])
        events.append([ev.PAYMENT_COMPLETED, {**payload, "success": success}])
    return events


def message(status: str, initiated: bool, payload: dict[str, Any]) -> PaymentMessage:
    return {
        "reference": "r-1",
        "seq": 2,
        "status": status,
        "owner_id": None,
        "orphan": False,
        "initiated": initiated,
        "payload": payload,
    }


@given(st.sampled_from(["PENDING", "SUCCESSFUL", "FAILED", "EXPIRED"]), st.booleans(), payloads)
def test_packets_decode_as_python_socketio_encodes_the_same_events(
    status: str, initiated: bool, payload: dict[str, Any]
) -> None:
    packets = _packets(message(status, initiated, payload))
    expected = expected_events(status, initiated, payload)
    assert [p.packet_type for p in packets] == [eio_packet.MESSAGE] * len(expected)
    for pkt, data in zip(packets, expected, strict=True):
        reference = socketio.packet.Packet(socketio.packet.EVENT, data=data, namespace="/").encode()
        assert pkt.data[0] == reference[0] == str(socketio.packet.EVENT)
        decoded = json.loads(pkt.data[1:])
        assert decoded == json.loads(reference[1:])
        assert list(decoded[1]) == list(data[1])  # key order too: `success` last on payment-completed


@pytest.mark.parametrize("payload", [{"reference": "r-1", "seq": 2, "status": "SUCCESSFUL"}, {}])
def test_ascii_payloads_give_python_socketios_exact_text(payload: dict[str, Any]) -> None:
    packets = _packets(message("SUCCESSFUL", False, payload))
    for pkt, data in zip(packets, expected_events("SUCCESSFUL", False, payload), strict=True):
        assert pkt.data == socketio.packet.Packet(socketio.packet.EVENT, data=data, namespace="/").encode()
