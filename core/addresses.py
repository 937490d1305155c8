"""Which addresses a production server may send a merchant's webhooks to: public ones only.

A webhook sender is a classic server-side request forgery tool: the URL decides where a POST from inside
the deployment goes. In production, merchant endpoints must be https and must not reach loopback, private
(RFC 1918, unique-local), link-local (cloud metadata lives at 169.254.169.254) or other non-public
addresses. The start-time check sees only what the URL spells (a literal address, `localhost`); the
sender checks what a name resolves to before each attempt (webhooks/outbound/address_guard.py).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

IPAddress = IPv4Address | IPv6Address

# How the refusals end, in settings problems and in the sender's log line alike.
LIFT_HINT = "MERCHANT_WEBHOOK_ALLOW_PRIVATE=true lifts this, for local tests only"


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is (`loopback`, `link-local`, `private`, ...), or None."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
    )
    for kind, matches in checks:
        if matches:
            return kind
    return None if address.is_global else "reserved"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def literal_refusals(url: str) -> list[str]:
    """Why a production server must not send to `url` as written (empty: nothing seen at start).

    `localhost` and `*.localhost` are loopback by definition (RFC 6761); other names are checked at send time.
    """
    parts = urlsplit(url)
    refusals = []
    if parts.scheme != "https":
        refusals.append(f"{url} must be https:// in production ({LIFT_HINT})")
    host = (parts.hostname or "").rstrip(".").lower()
    kind: str | None
    if host == "localhost" or host.endswith(".localhost"):
        kind = "loopback"
    else:
        try:
            kind = non_public_kind(ip_address(host))
        except ValueError:
            kind = None  # a name: resolved and checked at send time
    if kind is not None:
        refusals.append(f"{url} is {_a(kind)} address; production sends only to public addresses ({LIFT_HINT})")
    return refusals
