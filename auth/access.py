"""Who may see which payment: its owner or an admin; anyone when auth is off."""

from __future__ import annotations

from auth.authenticators import Identity
from payments.model import Payment


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
