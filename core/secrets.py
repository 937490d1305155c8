"""The signing secret format of outbound webhooks, validated once at start (settings) and used to sign."""

from __future__ import annotations

import base64
import binascii


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` or plain base64, as the spec and its libraries accept."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 (optionally prefixed with whsec_)") from None
    if len(key) < 16:
        raise ValueError("must decode to at least 16 bytes")
    return key
