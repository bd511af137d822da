"""The detectors, one module per rule family, and which events each rule looks at (gates).

Each detector is ``observe(profile, record, rule, now_ms) -> Alert | None``: it judges the
event against the profile *before* the event is folded in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from streams.customers.alerts import Alert
from streams.customers.detectors.effort import (
    observe_complaint_unresolved,
    observe_high_effort,
    observe_self_service_failed,
    observe_unhappy_valuable,
)
from streams.customers.detectors.hours import observe_unusual_hour
from streams.customers.detectors.money import observe_amount_outlier, observe_velocity_burst
from streams.customers.detectors.travel import (
    observe_impossible_travel,
    observe_new_device_new_country,
)
from streams.customers.profile import _CONTACT_TYPES, _DIGITAL, _FAILURE_TYPES, Profile
from streams.wire.model import TouchpointRecord

__all__ = ["OBSERVERS", "Observer", "gates_of"]

Observer = Callable[[Profile, TouchpointRecord, Any, int], Alert | None]

# Which events each detector can fire on (a cheap gate in ``Detector.process``).
_GEO, _PAYMENT, _VELOCITY, _DIGITAL_EVENT, _CONTACT_EVENT, _OPINION, _ANY, _SERVICE = range(8)
_GATES: Final[dict[str, int]] = {
    "impossible_travel": _GEO,
    "new_device_new_country_high_value": _PAYMENT,
    "amount_outlier": _PAYMENT,
    "velocity_burst": _VELOCITY,
    "unusual_hour": _DIGITAL_EVENT,
    "self_service_failed": _SERVICE,  # contacts, and failures that arrive after one
    "high_effort": _CONTACT_EVENT,
    "unhappy_valuable": _OPINION,
    "complaint_unresolved": _ANY,
}


def gates_of(channel: str, event_type: str) -> frozenset[int]:
    gates = {_ANY, _GEO}
    if event_type == "payment":
        gates |= {_PAYMENT, _VELOCITY}
    if event_type == "password_reset":
        gates.add(_VELOCITY)
    if channel in _DIGITAL:
        gates.add(_DIGITAL_EVENT)
    if channel == "contact_centre" and event_type in _CONTACT_TYPES:
        gates |= {_CONTACT_EVENT, _SERVICE}
    if channel in _DIGITAL and event_type in _FAILURE_TYPES:
        gates.add(_SERVICE)
    if channel in ("contact_centre", "social"):
        gates.add(_OPINION)
    return frozenset(gates)


OBSERVERS: Final[dict[str, Observer]] = {
    "impossible_travel": observe_impossible_travel,
    "new_device_new_country_high_value": observe_new_device_new_country,
    "amount_outlier": observe_amount_outlier,
    "velocity_burst": observe_velocity_burst,
    "unusual_hour": observe_unusual_hour,
    "self_service_failed": observe_self_service_failed,
    "high_effort": observe_high_effort,
    "unhappy_valuable": observe_unhappy_valuable,
    "complaint_unresolved": observe_complaint_unresolved,
}
