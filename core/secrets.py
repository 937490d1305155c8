"""The signing secrets of outbound webhooks, validated once at start (settings) and used to sign.

The Standard Webhooks specification serialises an HMAC secret as `whsec_` and the base64 of 24 to 64
random bytes, and keys are unique per endpoint. `MERCHANT_WEBHOOK_SECRET` holds one entry per
`MERCHANT_WEBHOOK_URL`, comma-separated in the same order; an entry holds one secret, or during a rotation
several, space-separated (as the `webhook-signature` header lists their signatures). The padded form is
required: the official libraries of some languages refuse unpadded base64, and a secret that one
merchant's verifier cannot read would fail every delivery to it.
"""

from __future__ import annotations

import base64
import binascii

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def decode_secret(secret: str) -> bytes:
    """The key of one `whsec_<padded base64>` secret; ValueError (never naming the secret) otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            f"must start with {SECRET_PREFIX} (the Standard Webhooks form: {SECRET_PREFIX} then the padded "
            f"base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes)"
        )
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        if len(encoded) % 4:
            raise ValueError
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"is not padded base64 (after {SECRET_PREFIX}: A-Z, a-z, 0-9, + and /, padded with = to a multiple "
            "of 4 characters)"
        ) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"decodes to {len(key)} bytes; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
        )
    return key


def endpoint_secrets(value: str) -> list[tuple[bytes, ...]]:
    """`MERCHANT_WEBHOOK_SECRET` as keys, one tuple per endpoint (in `MERCHANT_WEBHOOK_URL`'s order).

    Raises ValueError naming every bad secret by its place (never by its value), and a secret given to two
    endpoints, or twice to one.
    """
    groups = [entry.split() for entry in value.split(",")]
    several = len(groups) > 1 or any(len(group) > 1 for group in groups)
    problems: list[str] = []
    keys: list[tuple[bytes, ...]] = []
    owner: dict[bytes, int] = {}  # key -> the endpoint (1-based) that has it
    for number, group in enumerate(groups, 1):
        if not group:
            problems.append(f"endpoint {number} has no secret (an empty entry between commas)")
            continue
        decoded: list[bytes] = []
        for place, secret in enumerate(group, 1):
            try:
                key = decode_secret(secret)
            except ValueError as exc:
                problems.append(f"endpoint {number}, secret {place}: {exc}" if several else str(exc))
                continue
            first = owner.setdefault(key, number)
            if first != number:
                problems.append(
                    f"endpoints {first} and {number} share a secret; give each endpoint its own (Standard "
                    "Webhooks: keys are unique per endpoint)"
                )
            elif key in decoded:
                problems.append(f"endpoint {number} lists the same secret twice")
            decoded.append(key)
        keys.append(tuple(decoded))
    if problems:
        raise ValueError("; ".join(problems))
    return keys
