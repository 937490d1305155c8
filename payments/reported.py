"""Reading what a provider reports, which is not always the type its documentation says: an amount as 100,
"100", "100.00" or something unreadable, a reference as text or as a number."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

# Larger than any mobile-money amount; a bigger figure is treated as unreadable.
MAX_AMOUNT = 10**12


def parse_amount(value: Any) -> int | None:
    """A whole, finite, non-negative amount, or None: "100", "100.00", 100 and 100.0 are 100; "", "99.5",
    "1,000", "inf", "NaN", True or a number too large to be an amount are None. Never raises.

    None is "we could not read it", never zero: a SUCCESSFUL status whose amount is None is not
    believed (payments.state.unconfirmed), so an amount we cannot check never confirms a payment.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_AMOUNT else None
    if isinstance(value, str):
        value = value.strip()
        if not value or len(value) > 32:
            return None
    if not isinstance(value, (str, float)):
        return None
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number != number.to_integral_value() or not 0 <= number <= MAX_AMOUNT:
        return None
    return int(number)


def as_text(value: Any) -> str | None:
    """A text field as text: a number where a string was expected (an operator reference sent as 1234567)
    is its digits; anything else that is not text (null, true, a list) is absent. Never raises."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None
