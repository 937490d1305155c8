"""Which source addresses may call the CamPay webhook (`CAMPAY_WEBHOOK_ALLOWED_IPS`).

Payment teams usually add a source check beside the signature: a leaked
webhook key alone is then not enough to reach the update path from anywhere.
The address is the request's client address as the rest of the server sees
it (`core.http.client_ip`, which honours `TRUST_FORWARDED_FOR`). An empty list
allows every source; the signature and the provider check still decide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def source_allowed(address: str, allowed: Sequence[IPNetwork]) -> bool:
    """True when no list is configured, or `address` (IPv4, IPv6, IPv4-mapped IPv6) is in one of `allowed`."""
    if not allowed:
        return True
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:  # "unknown", a forged header's junk: never allowed
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in allowed)
