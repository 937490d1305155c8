"""Issue 34, item 9: a captured CamPay signature is good for one reference, for a bounded time, and never
makes a record CamPay has not confirmed.

A signature travels in the callback itself (in the URL for GET callbacks), so a proxy log or a shared
debugging session hands it to anyone. These tests replay real-shaped signatures (HMAC-signed with the
webhook key, as CamPay's) against the server: against another reference, past their age, and while
CamPay cannot be asked; and check that production refuses to trust a callback's status on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest

from core.settings import SettingsError, load_settings
from payments.reconciler import RECONCILER
from tests.campay_fake import WEBHOOK_KEY, FakeCampay
from tests.conftest import Instance, StartInstance, campay_settings
from tests.harness import PRODUCTION, pending_references
from tests.test_server_process import run_server


@pytest.fixture
async def live(start_instance: StartInstance, campay: FakeCampay) -> Instance:
    return await start_instance(**campay_settings(campay))


async def _pending(instance: Instance, order_id: str = "o-replay") -> str:
    status, body, _ = await instance.api.initiate(order_id=order_id)
    assert status == 201, body
    return str(body["reference"])


def _signed(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, WEBHOOK_KEY, algorithm="HS256")


# -- one reference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "captured, code",
    [
        (lambda seen: {"reference": seen, "iat": int(time.time())}, "signature_reference_mismatch"),
        (lambda seen: {"iat": int(time.time())}, "signature_unbound"),
    ],
    ids=["signed-for-another-reference", "no-reference-claim"],
)
async def test_a_signature_replayed_against_another_reference_is_refused_before_anything_is_asked(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession, captured: Any, code: str
) -> None:
    """The victim is a payment CamPay knows and paytrack does not: a replay that got through would ask
    CamPay about it and store it. Refused at the signature: 401 with the precise code, nothing stored,
    no CamPay lookup."""
    seen = await _pending(live)  # the payment whose callback (and signature) was captured
    campay.set_status(seen, "SUCCESSFUL")
    campay.add_transaction("someone-elses-1", status="SUCCESSFUL", amount=900)
    signature = _signed(captured(seen))
    lookups = campay.calls["transaction"]

    status, body = await campay.send_webhook(http, live.url, "someone-elses-1", signature=signature)

    assert status == 401 and body["error"]["code"] == code, body
    assert await live.storage.get_payment("someone-elses-1") is None
    assert campay.calls["transaction"] == lookups
    assert (await live.storage.get_payment(seen)).status.value == "PENDING"


# -- bounded age ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "age, code",
    [(3600, "signature_expired"), (121, "signature_expired"), (-3600, "signature_not_yet_valid")],
    ids=["an-hour-old", "just-past-the-bound", "issued-in-the-future"],
)
async def test_a_signature_past_its_age_is_refused(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession, age: int, code: str
) -> None:
    """CAMPAY_WEBHOOK_MAX_AGE_SECONDS=90 and 30 s of clock leeway: a signature issued more than 120 s ago
    (or more than 30 s ahead of our clock) is refused, whoever replays it and whatever it names."""
    instance = await start_instance(**campay_settings(campay, CAMPAY_WEBHOOK_MAX_AGE_SECONDS=90))
    reference = await _pending(instance)
    campay.set_status(reference, "SUCCESSFUL")
    lookups = campay.calls["transaction"]
    old = _signed({"reference": reference, "iat": int(time.time()) - age})

    status, body = await campay.send_webhook(http, instance.url, reference, signature=old)

    assert status == 401 and body["error"]["code"] == code, body
    assert (await instance.storage.get_payment(reference)).status.value == "PENDING"
    assert campay.calls["transaction"] == lookups


async def test_a_signature_within_its_age_and_the_leeway_is_accepted(
    start_instance: StartInstance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    instance = await start_instance(**campay_settings(campay, CAMPAY_WEBHOOK_MAX_AGE_SECONDS=90))
    reference = await _pending(instance)
    campay.set_status(reference, "SUCCESSFUL")
    recent = _signed({"reference": reference, "iat": int(time.time()) - 100})  # past 90 s, inside the leeway

    status, body = await campay.send_webhook(http, instance.url, reference, signature=recent)

    assert status == 200 and body["outcome"] == "applied", body


# -- nothing stored that CamPay has not confirmed ---------------------------------------------------------


async def test_a_webhook_for_an_unknown_reference_while_campay_is_unreachable_creates_no_record(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    """Unknown to paytrack and CamPay cannot be asked: nothing is stored (no orphan PENDING), the sender
    is told to come back (503 with Retry-After), and CamPay is asked again once it answers."""
    campay.add_transaction("made-elsewhere-7", status="SUCCESSFUL", amount=900)
    campay.unavailable.add("transaction")

    status, body = await campay.send_webhook(http, live.url, "made-elsewhere-7")

    assert status == 503 and body["error"]["code"] == "verification_unavailable", body
    assert await live.storage.get_payment("made-elsewhere-7") is None
    assert await pending_references(live.storage) == []

    campay.unavailable.discard("transaction")
    results = await live.app[RECONCILER].run_once(include_due=False)  # the check the callback asked for
    assert [r.outcome for r in results] == ["created_orphan"]
    assert (await live.storage.get_payment("made-elsewhere-7")).status.value == "SUCCESSFUL"


async def test_an_unconfirmed_callback_answer_carries_retry_after(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession
) -> None:
    campay.unavailable.add("transaction")
    fields = campay.webhook_fields(
        "made-elsewhere-8", signature=_signed({"reference": "made-elsewhere-8", "iat": int(time.time())})
    )
    async with http.post(live.url + "api/payment/webhook", json=fields) as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
    assert await live.storage.get_payment("made-elsewhere-8") is None


# -- trusting the callback's own status ---------------------------------------------------------------------


async def test_production_refuses_to_start_with_webhook_verification_off() -> None:
    proc = await run_server(**{**{k: str(v) for k, v in PRODUCTION.items()}, "WEBHOOK_VERIFY_WITH_PROVIDER": "false"})
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)  # a bound on its start and exit, not a timing
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the server started in production with WEBHOOK_VERIFY_WITH_PROVIDER=false")
    report = err.decode()
    assert proc.returncode == 2 and "Traceback" not in report, report
    (line,) = [line.strip() for line in report.splitlines() if line.strip().startswith("WEBHOOK_VERIFY_WITH_PROVIDER:")]
    assert "production" in line and "status" in line and "CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS" in line, line


def test_verification_off_is_allowed_in_production_only_when_the_signature_binds_the_status() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, **PRODUCTION, WEBHOOK_VERIFY_WITH_PROVIDER=False)
    assert [p.variable for p in refused.value.problems] == ["WEBHOOK_VERIFY_WITH_PROVIDER"]
    load_settings(
        _env_file=None, **PRODUCTION, WEBHOOK_VERIFY_WITH_PROVIDER=False, CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS=True
    )
    load_settings(_env_file=None, WEBHOOK_VERIFY_WITH_PROVIDER=False)  # development: the tests' fake CamPay


@pytest.mark.parametrize(
    "claims, expected",
    [
        ({"status": "SUCCESSFUL"}, (200, "applied")),
        ({"status": "FAILED"}, (401, "signature_status_mismatch")),
        ({}, (401, "signature_unbound")),
    ],
    ids=["status-signed", "status-signed-otherwise", "status-not-signed"],
)
async def test_when_the_signature_binds_the_status_a_callback_is_applied_only_with_the_status_it_signs(
    start_instance: StartInstance,
    campay: FakeCampay,
    http: aiohttp.ClientSession,
    claims: dict[str, str],
    expected: tuple[int, str],
) -> None:
    instance = await start_instance(
        **campay_settings(campay, WEBHOOK_VERIFY_WITH_PROVIDER=False, CAMPAY_WEBHOOK_SIGNATURE_BINDS_STATUS=True)
    )
    reference = await _pending(instance)
    signature = _signed({"reference": reference, "iat": int(time.time()), **claims})

    status, body = await campay.send_webhook(http, instance.url, reference, status="SUCCESSFUL", signature=signature)

    assert (status, body.get("outcome") or body["error"]["code"]) == expected, body
    stored = (await instance.storage.get_payment(reference)).status.value
    assert stored == ("SUCCESSFUL" if expected[0] == 200 else "PENDING")
    assert campay.calls["transaction"] == 0


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
async def test_a_time_claim_too_large_for_a_float_is_a_401_not_a_500(
    live: Instance, campay: FakeCampay, http: aiohttp.ClientSession, claim: str
) -> None:
    """JSON numbers have no bound: a signed `iat` of 10**400 is an int Python cannot turn into a float
    (OverflowError), which the time check let escape as a 500 and a traceback. It is no number of seconds:
    refused like a string would be, and nothing asked or stored."""
    reference = await _pending(live)
    campay.set_status(reference, "SUCCESSFUL")
    lookups = campay.calls["transaction"]
    signature = _signed({"reference": reference, claim: 10**400})

    status, body = await campay.send_webhook(http, live.url, reference, signature=signature)

    assert status == 401 and body["error"]["code"] == "invalid_signature", body
    assert f"{claim} claim is not a number of seconds" in body["error"]["message"]
    assert (await live.storage.get_payment(reference)).status.value == "PENDING"
    assert campay.calls["transaction"] == lookups
