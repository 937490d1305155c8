"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per key.

During a secret rotation an endpoint has several keys, and `webhook-signature` lists every one's signature,
space-separated: a merchant verifying with the old secret and one already on the new both accept the
message, so the switch needs no downtime (the specification's zero-downtime rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


def sign(key: bytes, message_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(keys: Sequence[bytes], message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value: each key's signature, space-separated."""
    return " ".join(sign(key, message_id, timestamp, body) for key in keys)
