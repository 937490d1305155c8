"""An in-process CamPay: speaks CamPay's HTTP API over a real socket, and sends signed webhooks.

Implements `POST /api/token/`, `POST /api/collect/`, `POST /api/get_payment_link/`,
`POST /api/withdraw/`, `GET /api/balance/` and `GET /api/transaction/{reference}/`
with CamPay's shapes and error codes. A test sets a transaction's true status,
makes calls fail or hang, revokes tokens, opens a payment link as its payer
would (by mobile money or by card), and fires webhooks (GET or POST, with the
`endpoint` CamPay names: `collect` or `withdraw`) at a server, signed like CamPay's.

Where each shape comes from (read from the SDKs with the `search` tool; "assumed" where none says):

- collect, token, transaction, ER101/ER102/ER201/ER301: CamPay's API documentation (the Postman
  collection 2391374/T1LV8PVA, whose error table says ER301 is "Insufficient balance. Trying to withdraw
  an amount which is above your current balance for the specific carrier") and CamPay's own Python SDK
  (CamPay/campay-python-sdk, src/campay/sdk.py).
- `POST /get_payment_link/`: the request (`amount` as a string, `currency`, `description`,
  `external_reference`, `redirect_url`) is CamPay's Python SDK's; `failure_redirect_url` and
  `payment_options` (`MOMO` or `CARD`) are NdoleStudio/campay-go-sdk's (payment_link.go), also sent by
  blessdarah/php-campay, melkishengue/nestjs-campay and the WooCommerce plugin in
  common-repository/campay-api. The answer's `link` is in every SDK; its `reference` only in the Go SDK's
  (its test stub answers `{link, reference}`), and is assumed here as in the issue. Both options at once
  (`"MOMO,CARD"`) is assumed.
- A link's transaction: `GET /transaction/{reference}/` answers 404 until the payer starts paying
  (assumed, from the issue: no SDK shows a link's status call), then the collect's shape. A card payment
  has `operator: null` and no `phone_number` (assumed: no source shows a card payment's record).
- `POST /withdraw/`: the request (`amount`, `currency`, `to`, `description`, `external_reference`) is
  CamPay's Python SDK's; the answer `{reference, status: "PENDING"}` is the Go SDK's stub (withdraw.go,
  internal/stubs); the Python SDK reads `reference` and polls `GET /transaction/{reference}/` for the
  outcome, as for a collect. ER301 as a 400 with `error_code` is assumed like the collect's errors.
- `GET /balance/`: `{total_balance, mtn_balance, orange_balance, currency}` in the Python SDK's README,
  the Go SDK (balance.go), CamPay's Android SDK and the NestJS module alike.
- Callbacks: the fields of NdoleStudio/campay-go-sdk's callback.go, plus `endpoint` (`collect` or
  `withdraw`) and `app_amount` from melkishengue/nestjs-campay's CampayTransaction type.

Two ways to hang a collect: `collect_gate` blocks it *before* CamPay accepts it
(no transaction exists yet), `hold_collects` holds its answer *after* CamPay
accepted it (the transaction exists, the USSD prompt is on the shopper's phone,
and a caller killed meanwhile never learns the reference).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from jwt.warnings import InsecureKeyLengthWarning

from core.clock import Clock

USERNAME = "campay-user"
PASSWORD = "campay-pass"
WEBHOOK_KEY = "campay-webhook-key-for-tests-0123456789abcdef"
FEE_PERCENT = 2  # CamPay's fee: `app_amount` is what reaches the merchant's account


def app_amount(amount: int) -> str:
    """The amount after CamPay's fee, as a string like CamPay's own (`"980"` for 1000)."""
    return str(amount - amount * FEE_PERCENT // 100)


# Cameroon's mobile numbering plan, as the regulator (ART, Agence de Régulation des
# Télécommunications) set it: 9-digit national numbers since 21 November 2014 (ART's
# communication to the ITU of 6.X.2014: 67 and 650-654 MTN, 69 and 655-659 Orange, 66 Nexttel);
# the 68 block was later split MTN 680-684, Orange 685-689. Kept separate from
# payments/operators.py on purpose: the fake stands in for CamPay, and a test checks the two agree.
_PREFIXES = {
    **{p: "MTN" for p in ("67", "650", "651", "652", "653", "654", "680", "681", "682", "683", "684")},
    **{p: "ORANGE" for p in ("69", "655", "656", "657", "658", "659", "685", "686", "687", "688", "689")},
}


def operator_for(phone: str) -> str | None:
    """The operator CamPay collects a 2376XXXXXXXX number through, or None (not MTN or Orange)."""
    national = phone[3:]
    return _PREFIXES.get(national[:2]) or _PREFIXES.get(national[:3])


def unsigned_token(claims: dict[str, Any]) -> str:
    """An `alg: none` JWT, as a forger would send it."""

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@dataclass(frozen=True)
class Lookup:
    """One status call: whose token asked, about what, and when (time.monotonic()) it started and ended."""

    token: str
    reference: str
    started: float
    ended: float


class FakeCampay:
    def __init__(self, *, token_expires_in: int = 3600) -> None:
        self.token_expires_in = token_expires_in
        self.transactions: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.transaction_tokens: list[str] = []  # the token behind each status call (which caller asked)
        self.transaction_delay = 0.0  # seconds each status call takes to answer (a slow CamPay)
        self.lookups: list[Lookup] = []  # every status call answered, with when it started and ended
        self.valid_tokens: set[str] = set()
        # endpoint name -> queue of HTTP statuses to answer with before behaving normally
        self.fail_next: dict[str, list[int]] = defaultdict(list)
        # endpoint names answering 503 for as long as they are in this set (an outage of some length)
        self.unavailable: set[str] = set()
        self.failing_references: set[str] = set()  # status calls about these answer 500 (CamPay's bug, not an outage)
        self.collect_error: str | None = None
        # when set, collect records the call and then waits for this event (to force client timeouts);
        # nothing is created until it is set
        self.collect_gate: asyncio.Event | None = None
        # when set (see `hold_collects`), a matching collect is accepted (its transaction created and
        # recorded) and then its answer waits until `release_collects`
        self.hold_if: Callable[[dict[str, Any]], bool] | None = None
        self.held: list[str] = []  # references of accepted collects whose answer is (or was) held
        self._releases: dict[str, asyncio.Event] = {}
        # called with every transaction a collect creates (as recorded), before it is answered
        self.on_collect: Callable[[dict[str, Any]], None] | None = None
        # called with every payment link made (what it asked, and its `reference`), before it is answered
        self.on_link: Callable[[dict[str, Any]], None] | None = None
        self._created = asyncio.Event()  # set whenever a collect creates a transaction
        self.created_at: dict[str, float] = {}  # reference -> time.monotonic() when it was created
        # CamPay's clock, for the `iat` of the webhooks it signs: the server's ManualClock in tests that move
        # time (the server checks a signature's age on its own clock), else the system's.
        self.clock: Clock | None = None
        self.url = ""
        # payment links: reference -> what `get_payment_link` was asked (amount, options, redirect URLs,
        # external reference); a link's transaction exists (`transactions`) only once its payer started
        self.links: dict[str, dict[str, Any]] = {}
        # withdrawals: what each `withdraw` asked (in order), and which references they made
        self.withdrawals: list[dict[str, Any]] = []
        self.withdraw_error: str | None = None  # a CamPay error code every withdraw answers with
        self.endpoints: dict[str, str] = {}  # reference -> the endpoint CamPay's callback names
        # The app's balance per carrier: a withdraw above the carrier's balance is ER301, one within it
        # is taken from it (CamPay's error table: "above your current balance for the specific carrier").
        self.balances: dict[str, int] = {"MTN": 1_000_000, "ORANGE": 1_000_000}
        # when set (see `hold_withdraws`), a withdraw is accepted and its answer held like a collect's
        self.hold_withdraw_if: Callable[[dict[str, Any]], bool] | None = None
        # a lying CamPay: endpoint ("collect", "link" or "withdraw") -> the reference its answers name instead of
        # the one CamPay made (the transaction, the link or the payout exists under its own)
        self.answers_reference: dict[str, str] = {}

    # -- test controls ------------------------------------------------------------
    def set_status(self, reference: str, status: str, reason: str | None = None) -> None:
        tx = self.transactions[reference]
        tx["status"] = status
        if reason:
            tx["reason"] = reason
        if status == "SUCCESSFUL":
            tx["operator_reference"] = f"OP{uuid.uuid4().hex[:10].upper()}"

    def add_transaction(
        self,
        reference: str,
        status: str = "PENDING",
        amount: int = 100,
        external_reference: str | None = None,
        *,
        description: str | None = None,
        phone_number: str | None = None,
        currency: str = "XAF",
    ) -> None:
        """A transaction as CamPay's `GET /transaction/` shows it: always with `amount` and `currency`,
        `app_amount` (after CamPay's fee, a string), and the collect's `description` and
        `external_reference` as the caller sent them."""
        self.transactions[reference] = {
            "reference": reference,
            "status": status,
            "amount": amount,
            "app_amount": app_amount(amount),
            "currency": currency,
            "operator": "MTN",
            "code": f"CP{reference[:6]}",
            "operator_reference": None,
            "external_reference": external_reference,
            "description": description,
            "phone_number": phone_number,
        }
        self.created_at[reference] = time.monotonic()

    def hold_collects(self, match: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """From now on, accept collects (all, or those whose JSON body `match`es) and hold their answer.

        The transaction is created and recorded (`transactions`, `held`, `on_collect`) exactly as
        usual: CamPay has it and the shopper's phone shows the prompt. Only the HTTP answer waits,
        until `release_collects`; a caller that died meanwhile never gets it.
        """
        self.hold_if = match or (lambda _body: True)

    def release_collects(self, references: list[str] | None = None) -> None:
        """Answer the held collects (all of them, or those of `references`); with no `references`,
        new collects are no longer held either."""
        if references is None:
            self.hold_if = None
            references = list(self._releases)
        for reference in references:
            self._releases.setdefault(reference, asyncio.Event()).set()

    async def wait_held(self, count: int, timeout: float) -> bool:
        """Until `count` collects are held (True), or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while len(self.held) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._created.clear()
            try:
                await asyncio.wait_for(self._created.wait(), remaining)
            except TimeoutError:
                return len(self.held) >= count
        return True

    def hold_withdraws(self, match: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """Like `hold_collects`, for withdrawals: CamPay accepts the payout (its transaction exists, the
        money is on its way) and its answer waits until `release_collects`."""
        self.hold_withdraw_if = match or (lambda _body: True)

    def start_link(self, reference: str, *, method: str = "MOMO", phone: str = "237671234567") -> dict[str, Any]:
        """The payer opens the link's page and starts paying, by mobile money (from `phone`) or by card:
        from now on CamPay knows the transaction (PENDING), which it did not before."""
        link = self.links[reference]
        card = method == "CARD"
        self.add_transaction(
            reference,
            amount=int(link["amount"]),
            external_reference=link.get("external_reference"),
            description=link.get("description"),
            phone_number=None if card else phone,
            currency=link.get("currency") or "XAF",
        )
        tx = self.transactions[reference]
        tx["operator"] = None if card else operator_for(phone)
        return tx

    def revoke_tokens(self) -> None:
        self.valid_tokens.clear()

    def signature_claims(self, reference: str) -> dict[str, Any]:
        """What CamPay's webhook signature says: the payment it is about, and when it was issued."""
        issued = self.clock.now().timestamp() if self.clock is not None else time.time()
        return {"reference": reference, "iat": int(issued)}

    def webhook_fields(
        self,
        reference: str,
        *,
        status: str | None = None,
        key: str = WEBHOOK_KEY,
        signature: str | None = ...,  # type: ignore[assignment]
        claims: dict[str, Any] | None = None,
        algorithm: str = "HS256",
        fields: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The callback CamPay would send; `fields` overrides any of them (shapes seen in the wild).

        Signed over `signature_claims` unless `claims` (or a ready `signature`) is given."""
        tx = self.transactions.get(reference, {})
        callback = {
            "status": status or tx.get("status", "SUCCESSFUL"),
            "reference": reference,
            "amount": str(tx.get("amount", 100)),
            "currency": "XAF",
            "operator": tx.get("operator", "MTN"),
            "code": tx.get("code", "CP123"),
            "operator_reference": tx.get("operator_reference") or "OP123",
            "external_reference": tx.get("external_reference") or "",
            "phone_number": tx.get("phone_number", "237671234567"),
            "endpoint": self.endpoints.get(reference, "collect"),
            **({"app_amount": tx["app_amount"]} if tx.get("app_amount") else {}),
            **(fields or {}),
        }
        # A card payment has no operator and no phone: absent from its callback (assumed, like its record).
        callback = {name: value for name, value in callback.items() if value is not None}
        if signature is ...:
            with warnings.catch_warnings():  # CamPay's keys are what they are: HS512 with a 45-byte key is real
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                signature = jwt.encode(
                    claims if claims is not None else self.signature_claims(reference), key, algorithm=algorithm
                )
        if signature is not None:
            callback["signature"] = signature
        return callback

    async def send_webhook(
        self,
        session: aiohttp.ClientSession,
        server_url: str,
        reference: str,
        *,
        method: str = "POST",
        form: bool = False,
        **field_kwargs: Any,
    ) -> tuple[int, Any]:
        fields = self.webhook_fields(reference, **field_kwargs)
        url = server_url.rstrip("/") + "/api/payment/webhook"
        if method == "GET":
            request = session.get(url, params=fields)
        elif form:
            request = session.post(url, data=fields)
        else:
            request = session.post(url, json=fields)
        async with request as resp:
            return resp.status, await resp.json()

    # -- the API ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/token/", self._token)
        app.router.add_post("/api/collect/", self._collect)
        app.router.add_post("/api/get_payment_link/", self._payment_link)
        app.router.add_post("/api/withdraw/", self._withdraw)
        app.router.add_get("/api/balance/", self._balance)
        app.router.add_get("/api/transaction/{reference}/", self._transaction)
        app.router.add_post("/_fake/transactions/{reference}", self._control)
        return app

    async def _control(self, request: web.Request) -> web.Response:
        """Local development: `{"status": "SUCCESSFUL", "webhook_url": "http://localhost:5000"}`
        sets the true status and, when a URL is given, sends the signed webhook there. For a payment
        link nobody opened yet, `"method": "MOMO"` or `"CARD"` first plays its payer starting to pay."""
        reference = request.match_info["reference"]
        body = await request.json()
        if reference in self.links and reference not in self.transactions:  # a link's payer starts paying
            self.start_link(reference, method=str(body.get("method") or "MOMO"))
        if reference not in self.transactions:
            return web.json_response({"message": "Transaction not found"}, status=404)
        self.set_status(reference, body["status"], body.get("reason"))
        if body.get("webhook_url"):
            async with aiohttp.ClientSession() as session:
                status, answer = await self.send_webhook(session, body["webhook_url"], reference)
            return web.json_response({"webhook_status": status, "webhook_answer": answer})
        return web.json_response(self.transactions[reference])

    def _injected_failure(self, endpoint: str) -> web.Response | None:
        if endpoint in self.unavailable:
            return web.json_response({"message": "service unavailable"}, status=503)
        if self.fail_next[endpoint]:
            status = self.fail_next[endpoint].pop(0)
            return web.json_response({"message": "injected failure"}, status=status)
        return None

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Token ") and header[6:] in self.valid_tokens

    async def _token(self, request: web.Request) -> web.Response:
        self.calls["token"] += 1
        if (failure := self._injected_failure("token")) is not None:
            return failure
        body = await request.json()
        if body.get("username") != USERNAME or body.get("password") != PASSWORD:
            return web.json_response({"message": "Invalid credentials"}, status=400)
        token = uuid.uuid4().hex
        self.valid_tokens.add(token)
        return web.json_response({"token": token, "expires_in": self.token_expires_in})

    async def _collect(self, request: web.Request) -> web.Response:
        self.calls["collect"] += 1
        if not self._authorized(request):
            return web.json_response({"detail": "Invalid token."}, status=401)
        if (failure := self._injected_failure("collect")) is not None:
            return failure
        if self.collect_gate is not None:
            await self.collect_gate.wait()
        body = await request.json()
        if self.collect_error:
            return web.json_response({"message": "Collect refused", "error_code": self.collect_error}, status=400)
        phone, amount = str(body.get("from", "")), str(body.get("amount", ""))
        if not (phone.startswith("237") and len(phone) == 12 and phone.isdigit()):
            return web.json_response({"message": "Invalid phone number", "error_code": "ER101"}, status=400)
        operator = operator_for(phone)
        if operator is None:
            return web.json_response({"message": "Unsupported operator", "error_code": "ER102"}, status=400)
        if not amount.isdigit() or int(amount) <= 0:
            return web.json_response({"message": "Invalid amount", "error_code": "ER201"}, status=400)
        reference = str(uuid.uuid4())
        description = body.get("description")
        self.add_transaction(
            reference,
            amount=int(amount),
            external_reference=body.get("external_reference"),
            description=description if isinstance(description, str) else None,
            phone_number=phone,
            currency=str(body.get("currency") or "XAF"),
        )
        tx = self.transactions[reference]
        tx["operator"] = operator
        hold = self.hold_if is not None and self.hold_if(body)
        if hold:
            self.held.append(reference)
        if self.on_collect is not None:
            self.on_collect(tx)
        self._created.set()
        if hold:
            await self._releases.setdefault(reference, asyncio.Event()).wait()
        ussd = "*126#" if operator == "MTN" else "#150*50#"
        answered = self.answers_reference.get("collect", reference)
        return web.json_response({"reference": answered, "ussd_code": ussd, "operator": operator})

    async def _payment_link(self, request: web.Request) -> web.Response:
        """CamPay's hosted page for one payment: nothing exists to ask about until its payer starts."""
        self.calls["link"] += 1
        if not self._authorized(request):
            return web.json_response({"detail": "Invalid token."}, status=401)
        if (failure := self._injected_failure("link")) is not None:
            return failure
        body = await request.json()
        amount = str(body.get("amount", ""))
        if not amount.isdigit() or int(amount) <= 0:
            return web.json_response({"message": "Invalid amount", "error_code": "ER201"}, status=400)
        options = {part.strip().upper() for part in str(body.get("payment_options") or "MOMO").split(",")}
        if not options or not options <= {"MOMO", "CARD"}:
            return web.json_response({"message": "Invalid payment options"}, status=400)
        reference = str(uuid.uuid4())
        self.links[reference] = {**body, "amount": int(amount), "options": sorted(options)}
        if self.on_link is not None:
            self.on_link({**self.links[reference], "reference": reference})
        link = f"{self.url.removesuffix('/api')}/pay/{reference}"
        return web.json_response({"link": link, "reference": self.answers_reference.get("link", reference)})

    async def _withdraw(self, request: web.Request) -> web.Response:
        self.calls["withdraw"] += 1
        if not self._authorized(request):
            return web.json_response({"detail": "Invalid token."}, status=401)
        if (failure := self._injected_failure("withdraw")) is not None:
            return failure
        body = await request.json()
        self.withdrawals.append(body)
        if self.withdraw_error:
            return web.json_response({"message": "Withdraw refused", "error_code": self.withdraw_error}, status=400)
        phone, amount = str(body.get("to", "")), str(body.get("amount", ""))
        if not (phone.startswith("237") and len(phone) == 12 and phone.isdigit()):
            return web.json_response({"message": "Invalid phone number", "error_code": "ER101"}, status=400)
        operator = operator_for(phone)
        if operator is None:
            return web.json_response({"message": "Unsupported operator", "error_code": "ER102"}, status=400)
        if not amount.isdigit() or int(amount) <= 0:
            return web.json_response({"message": "Invalid amount", "error_code": "ER201"}, status=400)
        if int(amount) > self.balances.get(operator, 0):
            return web.json_response({"message": "Insufficient balance", "error_code": "ER301"}, status=400)
        self.balances[operator] -= int(amount)
        reference = str(uuid.uuid4())
        description = body.get("description")
        self.add_transaction(
            reference,
            amount=int(amount),
            external_reference=body.get("external_reference"),
            description=description if isinstance(description, str) else None,
            phone_number=phone,
            currency=str(body.get("currency") or "XAF"),
        )
        tx = self.transactions[reference]
        tx["operator"] = operator
        self.endpoints[reference] = "withdraw"
        hold = self.hold_withdraw_if is not None and self.hold_withdraw_if(body)
        if hold:
            self.held.append(reference)
        self._created.set()
        if hold:
            await self._releases.setdefault(reference, asyncio.Event()).wait()
        return web.json_response({"reference": self.answers_reference.get("withdraw", reference), "status": "PENDING"})

    async def _balance(self, request: web.Request) -> web.Response:
        self.calls["balance"] += 1
        if not self._authorized(request):
            return web.json_response({"detail": "Invalid token."}, status=401)
        if (failure := self._injected_failure("balance")) is not None:
            return failure
        mtn, orange = self.balances.get("MTN", 0), self.balances.get("ORANGE", 0)
        return web.json_response(
            {"total_balance": mtn + orange, "mtn_balance": mtn, "orange_balance": orange, "currency": "XAF"}
        )

    async def _transaction(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            return await self._answer_transaction(request)
        finally:
            token = request.headers.get("Authorization", "").removeprefix("Token ")
            self.lookups.append(Lookup(token, request.match_info["reference"], started, time.monotonic()))

    async def _answer_transaction(self, request: web.Request) -> web.Response:
        self.calls["transaction"] += 1
        self.transaction_tokens.append(request.headers.get("Authorization", ""))
        if self.transaction_delay:
            await asyncio.sleep(self.transaction_delay)
        if not self._authorized(request):
            return web.json_response({"detail": "Invalid token."}, status=401)
        if (failure := self._injected_failure("transaction")) is not None:
            return failure
        if request.match_info["reference"] in self.failing_references:
            return web.json_response({"message": "internal error"}, status=500)
        tx = self.transactions.get(request.match_info["reference"])
        if tx is None:
            return web.json_response({"message": "Transaction not found"}, status=404)
        return web.json_response(tx)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A local fake CamPay for development")
    parser.add_argument("--port", type=int, default=8001)
    port = parser.parse_args().port
    print(
        f"fake CamPay on http://127.0.0.1:{port}/api\n"
        f"  PAYMENT_PROVIDER=campay CAMPAY_API_URL=http://127.0.0.1:{port}/api "
        f"CAMPAY_USERNAME={USERNAME} CAMPAY_APP_PASSWORD={PASSWORD} CAMPAY_WEBHOOK_KEY={WEBHOOK_KEY}\n"
        f"  complete a payment: curl -XPOST localhost:{port}/_fake/transactions/<ref> "
        '-d \'{"status": "SUCCESSFUL", "webhook_url": "http://localhost:5000"}\''
    )
    web.run_app(FakeCampay().app(), host="127.0.0.1", port=port, print=None)
