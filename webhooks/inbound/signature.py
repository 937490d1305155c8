"""Verifies CamPay's webhook signature: a JWT signed with the app's webhook key by an HMAC.

CamPay does not document which HMAC it uses, and integrations that verify it
with common JWT libraries' defaults accept HS256, HS384 and HS512, so those
three are accepted. `none`, every asymmetric algorithm (RS256 with the key
used as a "public key", ES256, ...) and anything else are refused, so a
forger cannot pick the rules.

A signature travels inside the callback (in the URL of a GET callback), so
anyone who saw one in a log can send it again. What limits a replay is what
the signature binds:

- **one reference**: the `reference` claim is required and must be the
  callback's (a CamPay signature names the payment it is about), so a
  captured signature cannot speak for another payment;
- **a bounded age**: a signature carrying `iat` (CamPay's do) is good for
  `max_age_seconds` after it was issued, and `exp`/`nbf` are honoured, each
  with `leeway_seconds` for the two clocks;
- **the status**, only when the operator says CamPay's signatures carry a
  `status` claim (`binds_status`): then it is required and must match. CamPay's
  signature is otherwise no evidence of the status, which is why the server
  asks CamPay for it (WEBHOOK_VERIFY_WITH_PROVIDER).

Time is the server's clock, passed in as `now`, so expiry is tested without waiting.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
CLOCK_LEEWAY_SECONDS = 30.0  # CamPay's clock against ours, both ways, on every time claim


class SignatureError(Exception):
    """The webhook's signature does not vouch for this callback; `code` says why (a 401's error code)."""

    def __init__(self, message: str, code: str = "invalid_signature") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SignatureRules:
    """What a callback's signature must satisfy (from CAMPAY_WEBHOOK_KEY and the settings beside it)."""

    key: str
    max_age_seconds: float
    binds_status: bool = False
    leeway_seconds: float = CLOCK_LEEWAY_SECONDS


def verify_signature(
    token: str | None, rules: SignatureRules, *, reference: str, status: str, now: float
) -> dict[str, Any]:
    """The token's claims, if it is a valid HMAC-signed JWT under `rules.key`, bound to `reference`
    (and to `status` when the rules say so), and not expired at `now` (seconds since the epoch)."""
    if not token:
        raise SignatureError("signature is missing")
    if not rules.key:
        raise SignatureError("no webhook key is configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SignatureError("signature is not a well-formed JWT") from None
    if header.get("alg") not in HMAC_ALGORITHMS:
        raise SignatureError(
            f"signature algorithm {str(header.get('alg'))[:16]!r} is not accepted; {', '.join(HMAC_ALGORITHMS)} only"
        )
    required = ["reference", "status"] if rules.binds_status else ["reference"]
    try:
        with warnings.catch_warnings():
            # The key is CamPay's and its length CamPay's choice: a warning on every HS384/HS512
            # callback would tell the operator nothing they could change.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                rules.key,
                algorithms=list(HMAC_ALGORITHMS),
                # The time claims are checked below on the server's clock (PyJWT reads the system's).
                options={"require": required, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
    except jwt.MissingRequiredClaimError as exc:
        raise SignatureError(
            f"signature carries no {exc.claim!r} claim, so it could be replayed for any {exc.claim}",
            code="signature_unbound",
        ) from None
    except jwt.PyJWTError:
        raise SignatureError("signature verification failed") from None
    _check_times(claims, rules, now)
    if str(claims["reference"]) != reference:
        raise SignatureError("signature was issued for a different reference", code="signature_reference_mismatch")
    if rules.binds_status and str(claims["status"]).strip().upper() != status.strip().upper():
        raise SignatureError("signature was issued for a different status", code="signature_status_mismatch")
    return claims


def _check_times(claims: dict[str, Any], rules: SignatureRules, now: float) -> None:
    leeway = rules.leeway_seconds
    exp, nbf, iat = (_time_claim(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is not None and now > exp + leeway:
        raise SignatureError("signature has expired", code="signature_expired")
    if iat is not None and now > iat + rules.max_age_seconds + leeway:
        raise SignatureError(
            f"signature was issued {int(now - iat)} s ago; at most {rules.max_age_seconds:g} s are accepted",
            code="signature_expired",
        )
    for name, moment in (("iat", iat), ("nbf", nbf)):
        if moment is not None and moment > now + leeway:
            raise SignatureError(
                f"signature's {name} is {int(moment - now)} s ahead of this server's clock",
                code="signature_not_yet_valid",
            )


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError
        return float(value)
    except (ValueError, OverflowError):  # OverflowError: an int no float holds (JSON numbers have no bound)
        raise SignatureError(f"signature's {name} claim is not a number of seconds") from None
