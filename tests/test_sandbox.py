"""The sandbox provider remembers a simulated outcome as CamPay would, without feeding the collector."""

from __future__ import annotations

import gc

from payments.model import StatusUpdate, UpdateSource
from payments.provider import CollectRequest
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
