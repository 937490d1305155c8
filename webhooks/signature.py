"""Verifies CamPay's webhook signature: a JWT signed HS256 with the app's webhook key.

Only HS256 is accepted: `none`, RS256 (with the key used as a "public key")
and every other algorithm are refused, so a forger cannot pick the rules.
"""

from __future__ import annotations

from typing import Any

import jwt


class SignatureError(Exception):
    """The webhook's signature is missing, malformed, wrongly signed or does not match."""


def verify_signature(token: str | None, key: str, *, reference: str) -> dict[str, Any]:
    """The token's claims, if it is a valid HS256 JWT under `key` and agrees on `reference`."""
    if not token:
        raise SignatureError("signature is missing")
    if not key:
        raise SignatureError("no webhook key is configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SignatureError("signature is not a well-formed JWT") from None
    if header.get("alg") != "HS256":
        raise SignatureError(f"signature algorithm {header.get('alg')!r} is not accepted; HS256 only")
    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], options={"require": []}, leeway=30)
    except jwt.ExpiredSignatureError:
        raise SignatureError("signature has expired") from None
    except jwt.PyJWTError:
        raise SignatureError("signature verification failed") from None
    claimed = claims.get("reference")
    if claimed is not None and str(claimed) != reference:
        raise SignatureError("signature was issued for a different reference")
    return claims
