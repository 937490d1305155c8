"""A provider that behaves like CamPay, with no network and no money.

It answers `collect` the way CamPay does (a UUID4 reference, a USSD code and
the operator) and remembers what it was told, so reconciliation and status
refreshes work in development too. Completion comes from the simulate
endpoint, or from its own auto-complete timer (SANDBOX_AUTOCOMPLETE_SECONDS),
which settles the payment here and applies the outcome through the service's
one update path, as a shopper answering the USSD prompt would.

A payment link's page is the test page's stand-in for CamPay's
(`/payment-test/link/<reference>`, testpage/): like CamPay, the sandbox knows
no transaction for a link until its payer pays there (`pay_link`). Payouts
are paid from a balance the sandbox keeps per operator: what its successful
payments brought in, less what it paid out (a payout above it is ER301, as
CamPay answers); each completes by itself (after SANDBOX_AUTOCOMPLETE_SECONDS,
or at once without it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from core.background import OwnedTasks
from core.errors import ApiError, NotFound
from payments.model import Payment, StatusUpdate, UpdateSource
from payments.operators import USSD_CODES, operator_for
from payments.provider import (
    ApplyUpdate,
    Balance,
    CollectRequest,
    CollectResult,
    LinkRequest,
    ProviderTransaction,
    WithdrawRequest,
    WithdrawResult,
)

# Where the test page serves its stand-in for CamPay's payment page (testpage/routes.py); a path on this
# server, which the REST answer makes absolute.
LINK_PAGE = "/payment-test/link/"

log = logging.getLogger("paytrack.payments")


class SandboxProvider:
    name = "sandbox"

    def __init__(self, *, autocomplete_seconds: float | None = None, outcome: str = "SUCCESSFUL") -> None:
        self._transactions: dict[str, ProviderTransaction] = {}
        # The outcome each payment was settled with (see settle()): strings only, so that settling adds no
        # object the garbage collector counts (docs/PERFORMANCE.md, the collector rows).
        self._settled: dict[str, str] = {}  # reference -> status
        self._settled_reasons: dict[str, str | None] = {}  # reference -> reason
        self._autocomplete = autocomplete_seconds
        self._outcome = outcome
        self._timers = OwnedTasks(log)
        self._links: dict[str, LinkRequest] = {}  # links nobody has paid yet
        self._payouts: set[str] = set()
        self._balance: dict[str, int] = {"MTN": 0, "ORANGE": 0}  # brought in by successful payments, less payouts

    async def collect(self, request: CollectRequest) -> CollectResult:
        operator = _supported_operator(request.phone_number)
        reference = str(uuid.uuid4())
        self._pending(reference, request, operator)
        return CollectResult(reference=reference, ussd_code=USSD_CODES[operator], operator=operator)

    async def payment_link(self, request: LinkRequest) -> CollectResult:
        reference = str(uuid.uuid4())
        self._links[reference] = request
        return CollectResult(reference=reference, link=f"{LINK_PAGE}{reference}")

    def link_request(self, reference: str) -> LinkRequest | None:
        """What a link nobody has paid yet asked for (None once paid, or unknown): the stand-in page shows it."""
        return self._links.get(reference)

    def pay_link(self, reference: str, *, method: str, phone_number: str | None, status: str) -> bool:
        """The link's payer pays on the stand-in page, by mobile money from `phone_number` or by card (no
        operator, no phone): the sandbox knows the transaction from now on, with its outcome. False for a
        link that is unknown or already paid."""
        request = self._links.pop(reference, None)
        if request is None:
            return False
        card = method.upper() == "CARD"
        operator = None if card or phone_number is None else operator_for(phone_number)
        self._pending(reference, request, operator, phone_number=None if card else phone_number)
        self.settle(reference, status, "declined by the payer" if status == "FAILED" else None)
        return True

    async def withdraw(self, request: WithdrawRequest) -> WithdrawResult:
        operator = _supported_operator(request.phone_number)
        if request.amount > self._balance[operator]:
            raise ApiError(
                f"the sandbox's {operator} balance ({self._balance[operator]}) is below the payout",
                code="insufficient_balance",
                status=402,
                details={"provider_code": "ER301"},
            )
        self._balance[operator] -= request.amount
        reference = str(uuid.uuid4())
        self._payouts.add(reference)
        self._pending(reference, request, operator, phone_number=request.phone_number)
        return WithdrawResult(reference=reference, status="PENDING")

    def _pending(
        self,
        reference: str,
        request: CollectRequest | LinkRequest | WithdrawRequest,
        operator: str | None,
        *,
        phone_number: str | None = None,
    ) -> None:
        """The sandbox's record of a transaction just started (a collect, a paid link, a payout): PENDING
        until it is settled."""
        self._transactions[reference] = ProviderTransaction(
            reference=reference,
            status="PENDING",
            amount=request.amount,
            currency=request.currency,
            operator=operator,
            external_reference=request.external_reference,
            phone_number=phone_number,
        )

    async def balance(self) -> Balance:
        mtn, orange = self._balance["MTN"], self._balance["ORANGE"]
        return Balance(total_balance=mtn + orange, mtn_balance=mtn, orange_balance=orange, currency="XAF")

    def settle(self, reference: str, status: str, reason: str | None = None) -> None:
        """Record the sandbox's 'true' outcome, as CamPay would after the shopper answers.

        Kept beside the transaction and applied when it is read: every simulated update settles, and
        reads (a provider poll) are rare, so the copy of the model is made then, not here. A payment's
        first success brings its amount into the balance payouts are made from (a card's into none).
        """
        tx = self._transactions.get(reference)
        if tx is not None:
            first_success = status == "SUCCESSFUL" and self._settled.get(reference) != "SUCCESSFUL"
            if first_success and reference not in self._payouts and tx.operator in self._balance:
                self._balance[tx.operator] += tx.amount or 0
            self._settled[reference] = status
            self._settled_reasons[reference] = reason

    def payment_stored(self, payment: Payment, apply: ApplyUpdate) -> None:
        """Start the auto-complete timer, when one is set (a link waits for its payer instead); a payout
        completes by itself, after that timer or at once."""
        if payment.kind == "payout":
            self._timers.start(
                self._complete(payment.reference, apply, "SUCCESSFUL", self._autocomplete or 0),
                name=f"sandbox-payout-{payment.reference}",
            )
        elif self._autocomplete is not None and payment.kind != "link":
            self._timers.start(
                self._complete(payment.reference, apply, self._outcome, self._autocomplete),
                name=f"sandbox-complete-{payment.reference}",
            )

    def record_simulated(self, update: StatusUpdate) -> None:
        self.settle(update.reference, update.status, update.reason)

    async def _complete(self, reference: str, apply: ApplyUpdate, outcome: str, after: float) -> None:
        await asyncio.sleep(after)
        update = StatusUpdate(
            reference=reference,
            status=outcome,
            source=UpdateSource.SANDBOX,
            reason="sandbox auto-complete" if outcome == "FAILED" else None,
        )
        self.record_simulated(update)
        await apply(update)

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        tx = self._transactions.get(reference)
        if tx is None:
            raise NotFound(f"the sandbox has no transaction {reference}", code="unknown_reference")
        if reference not in self._settled:
            return tx
        return tx.model_copy(update={"status": self._settled[reference], "reason": self._settled_reasons[reference]})

    async def close(self) -> None:
        await self._timers.close()
        self._transactions.clear()
        self._settled.clear()
        self._settled_reasons.clear()
        self._links.clear()
        self._payouts.clear()


def _supported_operator(phone_number: str) -> str:
    """The number's operator; a number of any other is refused as CamPay refuses it (ER102)."""
    operator = operator_for(phone_number)
    if operator is None:
        raise ApiError(
            "the phone number's operator is not supported (MTN or Orange Cameroon only)",
            code="unsupported_operator",
            status=400,
            details={"provider_code": "ER102"},
        )
    return operator
