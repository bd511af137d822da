"""Builders of touchpoint records and their parts, from the declared Avro shapes.

The generator, the labelled evaluation stream and the tests' hand-made events all build
the records of ``streams.wire.model``; :func:`build` makes any of its shapes from the
fields given, every other field ``None``, in the declared order (the order the literal
dicts had, so the generated events are unchanged).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from streams.wire.model import (
    CommerceRecord,
    ContactCentreRecord,
    ContextRecord,
    GeoRecord,
    IdentifiersRecord,
    MobileRecord,
    Payload,
    SocialRecord,
    TouchpointRecord,
    WebRecord,
)

__all__ = [
    "build",
    "commerce",
    "contact_centre",
    "context",
    "identifiers",
    "mobile",
    "social",
    "touchpoint",
    "web",
]

_R = TypeVar("_R")
_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def build(shape: type[_R], /, **given: Any) -> _R:
    """A ``shape`` record (a TypedDict of ``streams.wire.model``) of the ``given`` fields."""
    fields = _FIELDS.get(shape)
    if fields is None:
        fields = _FIELDS[shape] = tuple(shape.__annotations__)
    if not given.keys() <= set(fields):
        raise TypeError(f"{shape.__name__} has no field {sorted(given.keys() - set(fields))}")
    return cast(_R, {name: given.get(name) for name in fields})


def identifiers(**given: str | None) -> IdentifiersRecord:
    return build(IdentifiersRecord, **given)


def web(session_id: str | None, **given: Any) -> WebRecord:
    return build(WebRecord, session_id=session_id, **given)


def mobile(session_id: str | None, **given: Any) -> MobileRecord:
    return build(MobileRecord, session_id=session_id, **given)


def commerce(amount: float, currency: str, **given: Any) -> CommerceRecord:
    return build(CommerceRecord, amount=amount, currency=currency, **given)


def contact_centre(**given: Any) -> ContactCentreRecord:
    return build(ContactCentreRecord, **given)


def social(platform: str, **given: Any) -> SocialRecord:
    return build(SocialRecord, platform=platform, **given)


def context(
    country: str | None,
    geo: GeoRecord | None = None,
    timezone: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    locale: str | None = None,
) -> ContextRecord:
    """The event's context; ``geo`` is copied (records never share one)."""
    return build(
        ContextRecord,
        country=country,
        geo=None if geo is None else {**geo},
        ip=ip,
        user_agent=user_agent,
        locale=locale,
        timezone=timezone,
    )


def touchpoint(
    event_id: str,
    channel: str,
    event_type: str,
    occurred_at: int,
    received_at: int,
    source: str,
    ids: IdentifiersRecord,
    context: ContextRecord,
    payload: tuple[str, Payload] | None,
    properties: dict[str, str],
    consent: str | None,
) -> TouchpointRecord:
    return {
        "event_id": event_id,
        "channel": channel,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "received_at": received_at,
        "source": source,
        "identifiers": ids,
        "context": context,
        "payload": payload,
        "properties": properties,
        "consent": consent,
    }
