"""Who may see which payment: its owner, an admin, or anyone when auth is off."""

from __future__ import annotations

from auth.authenticators import Identity
from payments.model import Payment


def can_view(identity: Identity | None, payment: Payment, *, auth_enabled: bool) -> bool:
    """True if `identity` may read or follow `payment`.

    A payment with no owner (one the provider told us about first) can be
    followed by any authenticated caller: its reference is the secret.
    """
    if not auth_enabled:
        return True
    if identity is None:
        return False
    return identity.is_admin or payment.owner_id is None or payment.owner_id == identity.user_id
