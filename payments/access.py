"""Who is calling and what they may see: the identity port of the payments layer.

`Identity` and the `Authenticator` protocol are what payments needs to know
about callers; auth/ implements the protocol (JWT, introspection, none).
A payment is visible to its owner or an admin; to anyone when auth is off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from aiohttp import web
from pydantic import BaseModel

from core.errors import ApiError
from core.http import bearer_token
from payments.model import Payment

ADMIN_SCOPE = "payments:admin"
# A merchant backend's scope for moving money out (payouts, refunds); a shopper's token never has it.
PAYOUT_SCOPE = "payouts:write"


class Identity(BaseModel):
    user_id: str
    scopes: frozenset[str] = frozenset()
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    @property
    def may_pay_out(self) -> bool:
        """An admin, or a merchant backend whose token carries `payouts:write`: the only callers of payouts."""
        return self.is_admin or PAYOUT_SCOPE in self.scopes


class Unauthenticated(ApiError):
    status, code = 401, "unauthenticated"


class AuthUnavailable(ApiError):
    status, code = 503, "auth_unavailable"


class Authenticator(Protocol):
    mode: str

    async def authenticate(self, token: str | None) -> Identity | None:
        """The caller's identity; None only in mode `none` (nobody is checked)."""

    async def close(self) -> None: ...


AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator", Authenticator)


async def identify(request: web.Request) -> Identity | None:
    """The caller of an HTTP request (None when AUTH_MODE=none); raises 401/503 per the authenticator."""
    return await request.app[AUTHENTICATOR].authenticate(bearer_token(request.headers.get("Authorization")))


def may_see(identity: Identity | None, owner_id: str | None, orphan: bool, *, auth_enabled: bool) -> bool:
    """True if `identity` may read or follow a payment owned by `owner_id`.

    A record the provider told us about before (or without) our initiation
    (an orphan) is private: only an admin may read it until our initiation
    adopts it, so a replayed or stray webhook can never expose a payment to
    whoever holds its reference.
    """
    if not auth_enabled:
        return True
    if identity is None:
        return False
    if identity.is_admin:
        return True
    if orphan:
        return False
    return owner_id is None or owner_id == identity.user_id


def can_view(identity: Identity | None, payment: Payment, *, auth_enabled: bool) -> bool:
    """`may_see` for a stored payment."""
    return may_see(identity, payment.owner_id, payment.orphan, auth_enabled=auth_enabled)
