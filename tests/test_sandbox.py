"""The sandbox provider remembers a simulated outcome as CamPay would, without feeding the collector."""

from __future__ import annotations

import gc

import pytest

from core.errors import ApiError, NotFound
from payments.model import StatusUpdate, UpdateSource
from payments.provider import CollectRequest, LinkRequest, ProviderTransaction, WithdrawRequest
from payments.sandbox import SandboxProvider


async def _collected(sandbox: SandboxProvider, count: int) -> list[str]:
    references = []
    for i in range(count):
        request = CollectRequest(
            order_id=f"order-{i}",
            amount=500,
            currency="XAF",
            phone_number="237670000000",
            description="x",
            external_reference=f"nonce-{i}",
        )
        references.append((await sandbox.collect(request)).reference)
    return references


async def test_a_provider_read_reports_the_settled_outcome() -> None:
    sandbox = SandboxProvider()
    paid, declined, untouched = await _collected(sandbox, 3)
    sandbox.record_simulated(StatusUpdate(reference=paid, status="SUCCESSFUL", source=UpdateSource.SIMULATION))
    sandbox.record_simulated(
        StatusUpdate(reference=declined, status="FAILED", reason="declined", source=UpdateSource.SIMULATION)
    )
    sandbox.settle("never-collected", "SUCCESSFUL")  # nothing to settle: no transaction appears
    assert (await sandbox.get_transaction(paid)).status == "SUCCESSFUL"
    tx = await sandbox.get_transaction(declined)
    assert (tx.status, tx.reason, tx.amount, tx.operator) == ("FAILED", "declined", 500, "MTN")
    assert (await sandbox.get_transaction(untouched)).status == "PENDING"
    await sandbox.close()


async def test_settling_adds_nothing_the_garbage_collector_counts(collector_paused: None) -> None:
    sandbox = SandboxProvider()
    references = await _collected(sandbox, 500)
    updates = [StatusUpdate(reference=r, status="SUCCESSFUL", source=UpdateSource.SIMULATION) for r in references]
    before = gc.get_count()[0]
    for update in updates:
        sandbox.record_simulated(update)
    grown = gc.get_count()[0] - before
    assert grown < len(references) // 10, f"the collector's count grew by {grown} over {len(references)} settlements"
    await sandbox.close()


def _collect(phone: str, amount: int = 500, nonce: str = "nonce-c") -> CollectRequest:
    return CollectRequest(
        order_id="o", amount=amount, currency="XAF", phone_number=phone, description="x", external_reference=nonce
    )


async def test_each_transaction_the_sandbox_starts_is_recorded_pending_with_what_it_knows() -> None:
    """A collect has no phone on its record, a paid link its payer's (none by card, nor an operator), a payout
    its receiver's; each is PENDING with the request's amount, currency and nonce (issue 39's review)."""
    sandbox = SandboxProvider()
    collected = (await sandbox.collect(_collect("237690000000", amount=3000))).reference
    assert (await sandbox.get_transaction(collected)).model_dump() == ProviderTransaction(
        reference=collected,
        status="PENDING",
        amount=3000,
        currency="XAF",
        operator="ORANGE",
        external_reference="nonce-c",
    ).model_dump()
    links = {}
    for method, phone in (("MOMO", "237670000000"), ("CARD", "237670000000")):
        link = LinkRequest(
            order_id=f"o-{method}",
            amount=700,
            currency="XAF",
            description="x",
            external_reference=f"nonce-{method}",
            payment_options="MOMO,CARD",
        )
        links[method] = (await sandbox.payment_link(link)).reference
        with pytest.raises(NotFound):
            await sandbox.get_transaction(links[method])  # nobody paid it yet: CamPay does not know it
        assert sandbox.pay_link(links[method], method=method, phone_number=phone, status="FAILED")
    momo, card = [await sandbox.get_transaction(links[m]) for m in ("MOMO", "CARD")]
    assert (momo.status, momo.operator, momo.phone_number, momo.amount, momo.external_reference) == (
        "FAILED",
        "MTN",
        "237670000000",
        700,
        "nonce-MOMO",
    )
    assert (card.status, card.operator, card.phone_number, card.amount, card.external_reference) == (
        "FAILED",
        None,
        None,
        700,
        "nonce-CARD",
    )
    sandbox.settle(collected, "SUCCESSFUL")  # 3000 into the Orange balance
    payout = await sandbox.withdraw(
        WithdrawRequest(
            amount=1000, currency="XAF", phone_number="237690000001", description="x", external_reference="nonce-p"
        )
    )
    assert payout.status == "PENDING"
    assert (await sandbox.get_transaction(payout.reference)).model_dump() == ProviderTransaction(
        reference=payout.reference,
        status="PENDING",
        amount=1000,
        currency="XAF",
        operator="ORANGE",
        external_reference="nonce-p",
        phone_number="237690000001",
    ).model_dump()
    assert (await sandbox.balance()).orange_balance == 2000
    await sandbox.close()


async def test_a_number_of_another_operator_is_refused_as_campay_does_by_collect_and_withdraw() -> None:
    """ER102 for a collect and for a payout alike, and nothing recorded nor taken from the balance."""
    sandbox = SandboxProvider()
    paid = (await sandbox.collect(_collect("237670000000"))).reference
    sandbox.settle(paid, "SUCCESSFUL")
    refusals = []
    with pytest.raises(ApiError) as refused:
        await sandbox.collect(_collect("237661234567", nonce="nonce-nexttel"))
    refusals.append(refused.value)
    with pytest.raises(ApiError) as refused:
        await sandbox.withdraw(
            WithdrawRequest(
                amount=100, currency="XAF", phone_number="237661234567", description="x", external_reference="n"
            )
        )
    refusals.append(refused.value)
    for error in refusals:
        assert (error.status, error.code, error.message, error.extra) == (
            400,
            "unsupported_operator",
            "the phone number's operator is not supported (MTN or Orange Cameroon only)",
            {"details": {"provider_code": "ER102"}},
        )
    assert list(sandbox._transactions) == [paid]
    assert (await sandbox.balance()).mtn_balance == 500
    await sandbox.close()
