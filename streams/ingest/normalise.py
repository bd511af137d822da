"""Identifier normalisation: one spelling per real-world identifier.

Pure functions, no I/O. An identifier that is junk after normalisation
(empty, "null", an email without a domain, a phone that cannot be a number)
becomes ``None``: it is not usable for linking.
"""

from __future__ import annotations

import re
from typing import Final

import phonenumbers

from streams.wire.model import IdentifiersRecord

__all__ = ["JUNK_VALUES", "normalise_country", "normalise_identifiers", "normalise_phone"]

JUNK_VALUES: Final[frozenset[str]] = frozenset(
    {"", "null", "none", "nil", "undefined", "nan", "n/a", "na", "[object object]"}
)
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_COUNTRY: Final = re.compile(r"^[A-Z]{2}$")


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value.lower() in JUNK_VALUES else value


def normalise_email(value: str | None) -> str | None:
    cleaned = _clean(value)
    if cleaned is None:
        return None
    lowered = cleaned.lower()
    return lowered if _EMAIL.match(lowered) else None


def normalise_phone(value: str | None, region: str) -> str | None:
    """E.164 (``+447700900123``); national numbers are read in ``region``."""
    cleaned = _clean(value)
    if cleaned is None:
        return None
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    try:
        number = phonenumbers.parse(cleaned, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_handle(value: str | None) -> str | None:
    cleaned = _clean(value)
    if cleaned is None:
        return None
    handle = cleaned.lstrip("@").lower()
    return handle or None


def normalise_country(value: str | None) -> str | None:
    cleaned = _clean(value)
    if cleaned is None:
        return None
    upper = cleaned.upper()
    return upper if _COUNTRY.match(upper) else None


def normalise_identifiers(ids: IdentifiersRecord, region: str) -> IdentifiersRecord:
    """Return a new record with every identifier in canonical form or ``None``."""
    device = _clean(ids.get("device_id"))
    login = _clean(ids.get("login_id"))
    return {
        "anonymous_id": _clean(ids.get("anonymous_id")),
        "device_id": device.lower() if device else None,
        "customer_id": _clean(ids.get("customer_id")),
        "login_id": login.lower() if login else None,
        "email": normalise_email(ids.get("email")),
        "phone": normalise_phone(ids.get("phone"), region),
        "social_handle": normalise_handle(ids.get("social_handle")),
        "loyalty_id": _clean(ids.get("loyalty_id")),
    }
