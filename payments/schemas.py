"""Validated shapes of what callers send us, REST bodies and socket payloads alike.

Strict types: `"100"` or `100.5` is not an amount, `true` is not a number.
Pydantic's errors become 400 `validation_error` with per-field details.
Inputs also accept the camelCase names that checkout code written for the
original Node server sends (`orderId`, `phoneNumber`, `paymentReference`,
`lastSeq`); the snake_case name wins when both are given, and responses are
always snake_case.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

REFERENCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_CAMEROON_NUMBER = re.compile(r"237[0-9]{9}")

Reference = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=REFERENCE_PATTERN)]
OrderId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=REFERENCE_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class InitiateRequest(_Strict):
    order_id: OrderId = Field(validation_alias=AliasChoices("order_id", "orderId"))
    amount: Annotated[StrictInt, Field(gt=0, le=10_000_000)]
    phone_number: StrictStr = Field(validation_alias=AliasChoices("phone_number", "phoneNumber"))
    currency: Literal["XAF"] = "XAF"
    description: Annotated[StrictStr, Field(max_length=255)] | None = None

    @field_validator("phone_number")
    @classmethod
    def _phone(cls, value: str) -> str:
        return _cameroon_number(value)


def _web_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value


WebUrl = Annotated[StrictStr, Field(min_length=1, max_length=2048), AfterValidator(_web_url)]
PaymentOptions = Literal["MOMO", "CARD", "MOMO,CARD"]


class PaymentLinkRequest(_Strict):
    """A payment through CamPay's hosted page: the payer chooses mobile money or a card there, so no phone
    is asked for; where the page sends the payer back afterwards is the caller's."""

    order_id: OrderId = Field(validation_alias=AliasChoices("order_id", "orderId"))
    amount: Annotated[StrictInt, Field(gt=0, le=10_000_000)]
    currency: Literal["XAF"] = "XAF"
    description: Annotated[StrictStr, Field(max_length=255)] | None = None
    payment_options: PaymentOptions = Field(
        "MOMO,CARD", validation_alias=AliasChoices("payment_options", "paymentOptions")
    )
    redirect_url: WebUrl | None = Field(None, validation_alias=AliasChoices("redirect_url", "redirectUrl"))
    failure_redirect_url: WebUrl | None = Field(
        None, validation_alias=AliasChoices("failure_redirect_url", "failureRedirectUrl")
    )


def _cameroon_number(value: str) -> str:
    digits = value.removeprefix("+").replace(" ", "")
    # [0-9], not isdigit(): Arabic-Indic, fullwidth or superscript digits are digits to Python, not to CamPay.
    if not _CAMEROON_NUMBER.fullmatch(digits):
        raise ValueError("must be a Cameroon number with country code: 237 followed by 9 digits (0-9)")
    return digits


Phone = Annotated[StrictStr, AfterValidator(_cameroon_number)]


class PayoutRequest(_Strict):
    """Money from the app's CamPay balance to a mobile-money number (a merchant's disbursement)."""

    amount: Annotated[StrictInt, Field(gt=0, le=10_000_000)]
    phone_number: Phone = Field(validation_alias=AliasChoices("phone_number", "phoneNumber"))
    currency: Literal["XAF"] = "XAF"
    description: Annotated[StrictStr, Field(max_length=255)] | None = None


class TrackPayload(_Strict):
    reference: Reference = Field(validation_alias=AliasChoices("reference", "paymentReference"))
    last_seq: Annotated[StrictInt, Field(ge=0)] | None = Field(
        None, validation_alias=AliasChoices("last_seq", "lastSeq")
    )


class StopTrackingPayload(_Strict):
    reference: Reference = Field(validation_alias=AliasChoices("reference", "paymentReference"))


class SimulateRequest(_Strict):
    reference: Reference = Field(validation_alias=AliasChoices("reference", "paymentReference"))
    status: Literal["SUCCESSFUL", "FAILED"]
    reason: Annotated[StrictStr, Field(max_length=255)] | None = None
    delay_ms: Annotated[StrictInt, Field(ge=0, le=60_000)] = 0


class RefreshTokenPayload(_Strict):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]
