"""One Idempotency-Key claim, two kinds of request (issue 39's review): a payment initiation and a payout share
`claim_key`, and each still answers in its own words. Every branch of the claim, for both kinds, on memory and
on a real redis-server: replayed once done, in progress while its holder runs (`idempotency_in_progress` for an
initiation, `payout_in_progress` for a payout), 422 for another body, a vanished holder's outcome (its intent
pending: `initiation_unknown` / `payout_unknown`), and a vanished holder that wrote no intent carried on under
the new request's own nonce. Real servers, the CamPay fake over HTTP holding its answers.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from payments import initiation, payouts
from payments.model import InitiationIntent
from payments.ports import IdempotencyRecord
from payments.schemas import InitiateRequest, PayoutRequest
from tests.campay_fake import FakeCampay
from tests.conftest import Backend, Instance, campay_settings
from tests.harness import WAIT, eventually

_deployments = itertools.count()


@dataclass(frozen=True)
class Kind:
    """One kind of request that takes an Idempotency-Key, and how it says so."""

    name: str
    path: str
    provider_call: str  # the fake CamPay's count of calls that move money
    in_progress: tuple[str, str]  # (code, message) while the key's holder runs
    unknown: tuple[str, str]  # (code, message) for a vanished holder whose intent is still pending

    def body(self, amount: int = 500) -> dict[str, Any]:
        if self.name == "initiate":
            return {"order_id": "o-claim", "amount": amount, "phone_number": "237671234567"}
        return {"amount": amount, "phone_number": "237671234567"}

    def scope(self, key: str) -> str:
        if self.name == "initiate":
            return initiation.idempotency_scope(None, key)
        return payouts.payout_scope(None, key)

    def fingerprint(self, body: dict[str, Any]) -> str:
        if self.name == "initiate":
            return initiation._fingerprint(InitiateRequest.model_validate(body))
        return payouts._fingerprint(PayoutRequest.model_validate(body).model_dump())

    def hold(self, campay: FakeCampay) -> None:
        if self.name == "initiate":
            campay.hold_collects()
        else:
            campay.hold_withdraws()

    def release(self, campay: FakeCampay) -> None:
        campay.hold_withdraw_if = None
        campay.release_collects()


UNKNOWN_TAIL = "may have reached CamPay and its outcome is not known yet; retry shortly"
KINDS = [
    Kind(
        "initiate",
        "/api/payment/initiate",
        "collect",
        (
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        ),
        (
            "initiation_unknown",
            f"the first request with this Idempotency-Key {UNKNOWN_TAIL} with the same Idempotency-Key",
        ),
    ),
    Kind(
        "payout",
        "/api/payouts",
        "withdraw",
        (
            "payout_in_progress",
            "a request with this Idempotency-Key is being processed right now; retry shortly",
        ),
        (
            "payout_unknown",
            f"the first request with this Idempotency-Key {UNKNOWN_TAIL} (never with another key)",
        ),
    ),
]


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


async def _start(backend: Backend, campay: FakeCampay) -> Instance:
    settings = campay_settings(campay)
    if backend.name == "redis":
        n = next(_deployments)
        settings |= {"REDIS_KEY_PREFIX": f"claims{n}:", "SOCKETIO_CHANNEL": f"claims{n}"}
    return await backend.start(**settings)


async def _post(instance: Instance, kind: Kind, key: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
    return await instance.api.request("POST", kind.path, json=body, headers={"Idempotency-Key": key})


async def test_a_key_is_replayed_once_done_and_refused_with_another_body(
    backend: Backend, campay: FakeCampay, kind: Kind
) -> None:
    instance = await _start(backend, campay)
    status, first, headers = await _post(instance, kind, "k-replay", kind.body())
    assert status == 201 and "Idempotent-Replayed" not in headers, first
    status, again, headers = await _post(instance, kind, "k-replay", kind.body())
    assert status == 201 and headers["Idempotent-Replayed"] == "true" and again == first, again
    status, other, _ = await _post(instance, kind, "k-replay", kind.body(amount=700))
    assert (status, other["error"]) == (
        422,
        {
            "code": "idempotency_key_reused",
            "message": "this Idempotency-Key was used with a different request body",
        },
    ), other
    assert campay.calls[kind.provider_call] == 1


async def test_a_key_in_progress_is_answered_in_its_kinds_words_and_sends_nothing(
    backend: Backend, campay: FakeCampay, kind: Kind
) -> None:
    instance = await _start(backend, campay)
    kind.hold(campay)  # the first request is in CamPay's hands while the second arrives
    first = asyncio.create_task(_post(instance, kind, "k-busy", kind.body()))
    try:
        assert await campay.wait_held(1, WAIT)
        status, second, headers = await _post(instance, kind, "k-busy", kind.body())
    finally:
        kind.release(campay)  # even when the test fails: a held answer would hold the server's shutdown
    code, message = kind.in_progress
    assert (status, second["error"]["code"], second["error"]["message"]) == (409, code, message), second
    assert headers["Retry-After"] == "1"
    status, done, _ = await asyncio.wait_for(first, WAIT)
    assert status == 201, done
    assert campay.calls[kind.provider_call] == 1


async def _claim_and_vanish(instance: Instance, kind: Kind, key: str, nonce: str) -> None:
    """A holder that claimed `key` for `kind.body()` under `nonce` and died: its lease lapses by itself."""
    record = IdempotencyRecord(fingerprint=kind.fingerprint(kind.body()), state="in_progress", nonce=nonce)
    claimed = await instance.storage.claim_idempotency(kind.scope(key), record, "gone-holder", 0.2, 600)
    assert claimed.claimed


async def _after_the_lease(instance: Instance, kind: Kind, key: str) -> tuple[int, Any, Any]:
    """The first answer to `key` once the vanished holder's lease has lapsed (in progress until then)."""

    async def answered() -> tuple[int, Any, Any] | None:
        answer = await _post(instance, kind, key, kind.body())
        return None if answer[0] == 409 and answer[1]["error"]["code"] == kind.in_progress[0] else answer

    result: tuple[int, Any, Any] = await eventually(answered)
    return result


async def test_a_vanished_holder_that_wrote_no_intent_is_carried_on_under_the_new_nonce(
    backend: Backend, campay: FakeCampay, kind: Kind
) -> None:
    instance = await _start(backend, campay)
    await _claim_and_vanish(instance, kind, "k-gone", "gone-holders-nonce")
    status, answer, headers = await _after_the_lease(instance, kind, "k-gone")
    assert status == 201 and "Idempotent-Replayed" not in headers, answer
    assert campay.calls[kind.provider_call] == 1
    sent = campay.transactions[answer["reference"]]["external_reference"]
    assert sent != "gone-holders-nonce"  # the taker's own nonce: a slow holder cannot pass for it
    status, again, headers = await _post(instance, kind, "k-gone", kind.body())
    assert status == 201 and headers["Idempotent-Replayed"] == "true" and again["reference"] == answer["reference"]
    assert campay.calls[kind.provider_call] == 1


async def test_a_vanished_holder_whose_intent_is_pending_is_unknown_in_its_kinds_words(
    backend: Backend, campay: FakeCampay, kind: Kind
) -> None:
    instance = await _start(backend, campay)
    body = kind.body()
    intent = InitiationIntent(
        nonce="pending-holders-nonce",
        order_id=body.get("order_id", "payout-pending-holders-nonce"),
        amount=body["amount"],
        currency="XAF",
        phone_number=body["phone_number"],
        provider="campay",
        idempotency_scope=kind.scope("k-unknown"),
        fingerprint=kind.fingerprint(body),
        created_at=datetime.now(UTC),
        kind="collect" if kind.name == "initiate" else "payout",
    )
    assert await instance.storage.put_intent(intent, 600, 600)
    await _claim_and_vanish(instance, kind, "k-unknown", intent.nonce)
    status, answer, headers = await _after_the_lease(instance, kind, "k-unknown")
    code, message = kind.unknown
    assert (status, answer["error"]["code"], answer["error"]["message"]) == (409, code, message), answer
    assert headers["Retry-After"] == "2"
    assert campay.calls[kind.provider_call] == 0
