"""`Retry-After` (RFC 9110, section 10.2.3), as a merchant's 429 or 503 sends it: how long it asks us to wait.

Either delay-seconds or an HTTP date. The wait is bounded (`RETRY_AFTER_MAX_SECONDS`): a merchant's header
must not park a message for longer than the retry schedule's longest step. A value that says nothing usable
(not a number or a date, negative, a date already past, digits outside ASCII, an offset no clock has) gives
None, and the schedule alone decides.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

# The longest step of the retry schedule (webhooks/outbound/delivery.py): a day.
RETRY_AFTER_MAX_SECONDS = 86400.0


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` the header asks us to wait, at most RETRY_AFTER_MAX_SECONDS; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # RFC 9110's DIGIT: `²` and `٣` are str digits, not delay-seconds
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: an offset of 10**20 hours
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
            return None
        seconds = (when - now).total_seconds()
    if seconds <= 0:
        return None
    return min(seconds, RETRY_AFTER_MAX_SECONDS)
