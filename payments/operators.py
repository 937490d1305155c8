"""Cameroon mobile-money operators by number prefix (the part after country code 237)."""

from __future__ import annotations

# Prefixes of the 9-digit national number, per the numbering plan of Cameroon's regulator
# (ART, Agence de Régulation des Télécommunications; 9 digits since 21 November 2014, ART's
# communication to the ITU of 6.X.2014: 67 and 650-654 MTN, 69 and 655-659 Orange, 66 Nexttel;
# the 68 block later split MTN 680-684, Orange 685-689). Everything else (e.g. Nexttel 66x,
# Camtel) is not served by CamPay's mobile-money collection. tests/campay_fake.py keeps its own
# copy of the plan (it stands in for CamPay) and a test checks that the two agree.
_MTN = ("67", "650", "651", "652", "653", "654", "680", "681", "682", "683", "684")
_ORANGE = ("69", "655", "656", "657", "658", "659", "685", "686", "687", "688", "689")

USSD_CODES = {"MTN": "*126#", "ORANGE": "#150*50#"}


def normalise_operator(value: object) -> str | None:
    """CamPay's operator name in one spelling: the live API says `MTN`/`ORANGE`, the demo any casing."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().upper()


def operator_for(phone_number: str) -> str | None:
    """ "MTN", "ORANGE" or None for a number in 2376XXXXXXXX form."""
    if not (phone_number.startswith("237") and len(phone_number) == 12):
        return None
    national = phone_number[3:]
    if national.startswith(_MTN):
        return "MTN"
    if national.startswith(_ORANGE):
        return "ORANGE"
    return None
