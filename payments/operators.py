"""Cameroon mobile-money operators by number prefix (the part after country code 237)."""

from __future__ import annotations

# Prefixes of the 9-digit national number. MTN: 67x, 650-654, 680-684;
# Orange: 69x, 655-659, 685-689. Everything else (e.g. Nexttel 66x) is not
# served by CamPay's mobile-money collection.
_MTN = ("67", "650", "651", "652", "653", "654", "680", "681", "682", "683", "684")
_ORANGE = ("69", "655", "656", "657", "658", "659", "685", "686", "687", "688", "689")

USSD_CODES = {"MTN": "*126#", "ORANGE": "#150*50#"}


def operator_for(phone_number: str) -> str | None:
    """"MTN", "ORANGE" or None for a number in 2376XXXXXXXX form."""
    if not (phone_number.startswith("237") and len(phone_number) == 12):
        return None
    national = phone_number[3:]
    if national.startswith(_MTN):
        return "MTN"
    if national.startswith(_ORANGE):
        return "ORANGE"
    return None
