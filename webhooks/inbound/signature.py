"""Verifies CamPay's webhook signature: a JWT signed with the app's webhook key by an HMAC.

CamPay does not document which HMAC it uses, and integrations that verify it
with common JWT libraries' defaults accept HS256, HS384 and HS512, so those
three are accepted. `none`, every asymmetric algorithm (RS256 with the key
used as a "public key", ES256, ...) and anything else are refused, so a
forger cannot pick the rules.
"""

from __future__ import annotations

import warnings
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning


class SignatureError(Exception):
    """The webhook's signature is missing, malformed, wrongly signed or does not match."""


HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


def verify_signature(token: str | None, key: str, *, reference: str) -> dict[str, Any]:
    """The token's claims, if it is a valid HMAC-signed JWT under `key` and agrees on `reference`."""
    if not token:
        raise SignatureError("signature is missing")
    if not key:
        raise SignatureError("no webhook key is configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SignatureError("signature is not a well-formed JWT") from None
    if header.get("alg") not in HMAC_ALGORITHMS:
        raise SignatureError(
            f"signature algorithm {str(header.get('alg'))[:16]!r} is not accepted; {', '.join(HMAC_ALGORITHMS)} only"
        )
    try:
        with warnings.catch_warnings():
            # The key is CamPay's and its length CamPay's choice: a warning on every HS384/HS512
            # callback would tell the operator nothing they could change.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(token, key, algorithms=list(HMAC_ALGORITHMS), options={"require": []}, leeway=30)
    except jwt.ExpiredSignatureError:
        raise SignatureError("signature has expired") from None
    except jwt.PyJWTError:
        raise SignatureError("signature verification failed") from None
    claimed = claims.get("reference")
    if claimed is not None and str(claimed) != reference:
        raise SignatureError("signature was issued for a different reference")
    return claims
