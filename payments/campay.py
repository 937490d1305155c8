"""CamPay's HTTP API: token, collect, payment link, withdraw, balance, transaction status.

One `httpx.AsyncClient` per provider, made in the app's lifetime, with
explicit timeouts. Idempotent calls (token, status, balance) are retried on
transient failures with exponential backoff and jitter; `collect`, a payment
link and `withdraw` are retried only when the request provably never reached
CamPay (connect failure, 429), because a second one could charge the shopper
twice (or pay a refund twice). Everything else is protected by the
Idempotency-Key, the one-pending-payment-per-order rule and the payout intents
upstream.

The shapes, and where each is confirmed (tests/campay_fake.py, which plays CamPay in the tests, says the
same for every one):

- token, collect, `GET /transaction/{reference}/`, the error codes ER101, ER102, ER201 and ER301: CamPay's
  API documentation (Postman collection 2391374/T1LV8PVA) and CamPay's own Python SDK
  (CamPay/campay-python-sdk). How an error code is carried (`error_code` or `code` beside `message`) is
  assumed from what the collect's refusals look like in the wild; ER301 on a withdraw likewise.
- `POST /get_payment_link/`: the request as CamPay's Python SDK sends it (amount as a string, currency,
  description, external_reference, redirect_url), with `failure_redirect_url` and `payment_options`
  ("MOMO" or "CARD") as NdoleStudio/campay-go-sdk, blessdarah/php-campay and melkishengue/nestjs-campay send
  them; "MOMO,CARD" together is assumed. The answer's `link` is in every SDK; its `reference` only in the
  Go SDK's (payment_link.go and its test stub) and in the issue: without one the link cannot be tracked,
  so an answer without it is `provider_bad_response` and the intent stays to link CamPay's record later.
- A link's transaction answers 404 until its payer starts paying (assumed, from the issue); a card
  payment's record has no operator (assumed: no source shows one).
- `POST /withdraw/`: the request as CamPay's Python SDK sends it (amount, currency, `to`, description,
  external_reference; "enable API withdrawal under app settings" first, its README says); the answer
  `{reference, status: "PENDING"}` as the Go SDK's stub; the outcome through `GET /transaction/{reference}/`
  (the Python SDK polls it for a withdrawal as for a collect) and the callback with `endpoint: "withdraw"`
  (melkishengue/nestjs-campay's types carry `endpoint` and `app_amount`).
- `GET /balance/`: `{total_balance, mtn_balance, orange_balance, currency}` in the Python SDK's README, the
  Go SDK (numbers that may be fractional since its "int to float" change), CamPay's Android SDK and the
  NestJS module.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from core.clock import Clock
from core.errors import ApiError, NotFound, ProviderError
from core.settings import Settings
from observability.metrics import Metrics
from payments.model import Payment, StatusUpdate
from payments.operators import normalise_operator
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
from payments.reported import as_text, parse_amount

log = logging.getLogger("paytrack.campay")

# CamPay error codes -> (our HTTP status, our error code).
CAMPAY_ERRORS: dict[str, tuple[int, str]] = {
    "ER101": (400, "invalid_phone_number"),
    "ER102": (400, "unsupported_operator"),
    "ER201": (400, "invalid_amount"),
    "ER301": (402, "insufficient_balance"),
}

# Renew a cached token this many seconds before CamPay says it expires.
TOKEN_RENEW_MARGIN = 60.0


class TransientProviderError(ProviderError):
    """A failure worth retrying: transport trouble, 429 or 5xx."""

    def __init__(self, message: str, *, http_status: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.http_status = http_status
        # A 429 means CamPay refused before acting: safe to retry even a collect.
        self.retry_safe = http_status == 429


class ProviderUnreachable(TransientProviderError):
    """The request never reached CamPay; safe to retry anything, even collect."""

    code = "provider_unreachable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_safe = True


class ProviderTimeout(ProviderError):
    """CamPay may or may not have acted: never retried for collect."""

    code = "provider_timeout"


def _longest_wait(base: float) -> float:
    """The cap of one backoff wait between retries (before jitter)."""
    return max(base * 16, 0.01)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientProviderError)


def _is_never_sent(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retry_safe


class CampayProvider:
    name = "campay"

    def __init__(
        self,
        base_url: str,
        *,
        clock: Clock,
        permanent_token: str = "",
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        retry_attempts: int = 4,
        retry_base_seconds: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            timeout=httpx.Timeout(timeout),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            transport=transport,
        )
        self._clock = clock
        self._permanent_token = permanent_token
        self._username = username
        self._password = password
        self._retry_attempts = retry_attempts
        self._retry_base = retry_base_seconds
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_lock = asyncio.Lock()
        self._metrics = metrics or Metrics()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock, metrics: Metrics | None = None) -> CampayProvider:
        return cls(
            settings.CAMPAY_API_URL,
            clock=clock,
            permanent_token=settings.CAMPAY_PERMANENT_ACCESS_TOKEN,
            username=settings.CAMPAY_USERNAME,
            password=settings.CAMPAY_APP_PASSWORD,
            timeout=settings.CAMPAY_TIMEOUT_SECONDS,
            retry_attempts=settings.CAMPAY_RETRY_ATTEMPTS,
            retry_base_seconds=settings.CAMPAY_RETRY_BASE_SECONDS,
            metrics=metrics,
        )

    def _observed(self, operation: str) -> AbstractContextManager[None]:
        """Latency and errors of one API operation, retries included, as the caller experiences it."""
        return self._metrics.provider_call(self.name, operation)

    def payment_stored(self, payment: Payment, apply: ApplyUpdate) -> None:
        """Nothing to do: CamPay's outcome arrives as a webhook (or a reconciler poll)."""

    def record_simulated(self, update: StatusUpdate) -> None:
        """Nothing to record: CamPay's book is CamPay's."""

    async def close(self) -> None:
        await self._http.aclose()

    # -- retries ------------------------------------------------------------------
    def _retrying(self, *, only_unsent: bool = False) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self._retry_attempts),
            wait=wait_exponential_jitter(
                multiplier=self._retry_base, max=_longest_wait(self._retry_base), jitter=self._retry_base
            ),
            retry=retry_if_exception(_is_never_sent if only_unsent else _is_transient),
            reraise=True,
        )

    # -- transport ----------------------------------------------------------------
    async def _send(self, method: str, path: str, *, json: Any = None, auth: bool = True) -> httpx.Response:
        headers = {}
        if auth:
            try:
                headers["Authorization"] = f"Token {await self._get_token()}"
            except ProviderError as exc:
                exc.never_acted = True  # failed at the token: the call itself never left
                raise
        try:
            response = await self._http.request(method, path, json=json, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ProviderUnreachable(f"CamPay could not be reached: {exc.__class__.__name__}") from None
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"CamPay did not answer in time ({exc.__class__.__name__})") from None
        except httpx.TransportError as exc:
            raise TransientProviderError(f"CamPay connection failed: {exc.__class__.__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientProviderError(
                f"CamPay answered {response.status_code}", code="provider_unavailable", http_status=response.status_code
            )
        return response

    async def _call(self, method: str, path: str, *, json: Any = None, only_unsent: bool = False) -> Any:
        """An authenticated call, retried per policy, re-authenticating once on a 401."""
        async for attempt in self._retrying(only_unsent=only_unsent):
            with attempt:
                response = await self._send(method, path, json=json)
                if response.status_code == 401 and not self._permanent_token:
                    log.info("CamPay token rejected; renewing once")
                    self._token = None
                    response = await self._send(method, path, json=json)
                return self._parse(response)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _parse(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            if not isinstance(body, dict):
                raise ProviderError("CamPay returned a body that is not a JSON object", code="provider_bad_response")
            return body
        body = body if isinstance(body, dict) else {}
        provider_code = body.get("error_code") or body.get("code")
        message = body.get("message") or body.get("detail") or f"CamPay answered {response.status_code}"
        if response.status_code == 404:
            raise NotFound(str(message), code="provider_unknown_reference")
        if response.status_code == 401:
            refused = ProviderError("CamPay rejected our credentials", code="provider_auth_failed")
            refused.never_acted = True
            raise refused
        status, code = CAMPAY_ERRORS.get(str(provider_code), (400, "provider_rejected"))
        raise ApiError(str(message), code=code, status=status, details={"provider_code": provider_code})

    # -- token ----------------------------------------------------------------------
    async def _get_token(self) -> str:
        if self._permanent_token:
            return self._permanent_token
        async with self._token_lock:
            if self._token and self._clock.monotonic() < self._token_expires_at:
                return self._token
            async for attempt in self._retrying():
                with attempt:
                    response = await self._send(
                        "POST", "token/", json={"username": self._username, "password": self._password}, auth=False
                    )
                    body = self._parse(response)
            token = body.get("token")
            if not isinstance(token, str) or not token:
                raise ProviderError("CamPay's token response has no token", code="provider_bad_response")
            expires_in = float(body.get("expires_in") or 3600)
            self._token = token
            self._token_expires_at = self._clock.monotonic() + max(expires_in - TOKEN_RENEW_MARGIN, expires_in / 2)
            log.info("CamPay token obtained", extra={"expires_in": expires_in})
            return token

    # -- API ------------------------------------------------------------------------
    async def collect(self, request: CollectRequest) -> CollectResult:
        with self._observed("collect"):
            return await self._collect(request)

    async def _collect(self, request: CollectRequest) -> CollectResult:
        body = await self._call(
            "POST",
            "collect/",
            json={
                "amount": str(request.amount),
                "currency": request.currency,
                "from": request.phone_number,
                "description": request.description,
                "external_reference": request.external_reference,
            },
            only_unsent=True,
        )
        reference = body.get("reference")
        if not isinstance(reference, str) or not reference:
            raise ProviderError("CamPay's collect response has no reference", code="provider_bad_response")
        return CollectResult(
            reference=reference, ussd_code=body.get("ussd_code"), operator=normalise_operator(body.get("operator"))
        )

    async def payment_link(self, request: LinkRequest) -> CollectResult:
        with self._observed("link"):
            return await self._payment_link(request)

    async def _payment_link(self, request: LinkRequest) -> CollectResult:
        body: dict[str, Any] = {
            "amount": str(request.amount),
            "currency": request.currency,
            "description": request.description,
            "external_reference": request.external_reference,
            "payment_options": request.payment_options,
        }
        if request.redirect_url:
            body["redirect_url"] = request.redirect_url
        if request.failure_redirect_url:
            body["failure_redirect_url"] = request.failure_redirect_url
        answer = await self._call("POST", "get_payment_link/", json=body, only_unsent=True)
        link, reference = as_text(answer.get("link")), as_text(answer.get("reference"))
        if not link or not reference:
            raise ProviderError(
                "CamPay's payment link answer has no link or no reference", code="provider_bad_response"
            )
        return CollectResult(reference=reference, link=link)

    async def withdraw(self, request: WithdrawRequest) -> WithdrawResult:
        with self._observed("withdraw"):
            return await self._withdraw(request)

    async def _withdraw(self, request: WithdrawRequest) -> WithdrawResult:
        answer = await self._call(
            "POST",
            "withdraw/",
            json={
                "amount": str(request.amount),
                "currency": request.currency,
                "to": request.phone_number,
                "description": request.description,
                "external_reference": request.external_reference,
            },
            only_unsent=True,
        )
        reference = as_text(answer.get("reference"))
        if not reference:
            raise ProviderError("CamPay's withdraw answer has no reference", code="provider_bad_response")
        return WithdrawResult(reference=reference, status=as_text(answer.get("status")))

    async def balance(self) -> Balance:
        with self._observed("balance"):
            answer = await self._call("GET", "balance/")

        def number(name: str) -> float | None:
            value = answer.get(name)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        currency = answer.get("currency")
        return Balance(
            total_balance=number("total_balance"),
            mtn_balance=number("mtn_balance"),
            orange_balance=number("orange_balance"),
            currency=currency if isinstance(currency, str) else None,
        )

    async def get_transaction(self, reference: str) -> ProviderTransaction:
        with self._observed("transaction"):
            return await self._get_transaction(reference)

    async def _get_transaction(self, reference: str) -> ProviderTransaction:
        body = await self._call("GET", f"transaction/{reference}/")
        if not body.get("status"):
            raise ProviderError("CamPay's transaction response has no status", code="provider_bad_response")
        amount = parse_amount(body.get("amount"))
        currency = body.get("currency")
        if amount is None or not isinstance(currency, str):
            # Never a reason to fail the check: the state rule keeps a SUCCESSFUL it cannot read PENDING.
            log.warning(
                "CamPay reported an amount or currency we cannot read",
                extra={"reference": reference, "amount": str(body.get("amount"))[:32], "currency": str(currency)[:8]},
            )
        return ProviderTransaction(
            reference=reference,  # the one we asked about, whatever the body says
            status=as_text(body.get("status")) or "",
            amount=amount,
            currency=currency if isinstance(currency, str) else None,
            app_amount=parse_amount(body.get("app_amount")),
            operator=normalise_operator(as_text(body.get("operator"))),
            code=as_text(body.get("code")),
            operator_reference=as_text(body.get("operator_reference")),
            external_reference=as_text(body.get("external_reference")),
            reason=as_text(body.get("reason")),
            phone_number=as_text(body.get("phone_number")),
        )
