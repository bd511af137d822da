"""The items of ``touchpoints.resolved``: what the customer stage consumes, typed.

On the wire an item is a small JSON object whose ``"t"`` names its kind (one letter: the
topic carries one per event, so the names stay short); in code the kinds are ``ItemKind``
members and each shape is a ``TypedDict``, built only by the constructors below.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict

__all__ = [
    "ErasedItem",
    "EventItem",
    "HandoverItem",
    "Item",
    "ItemKind",
    "JudgeItem",
    "MergeItem",
    "ProfileItem",
    "erased_item",
    "event_item",
    "handover_item",
    "judge_item",
    "merge_item",
    "profile_item",
]


class ItemKind(StrEnum):
    EVENT = "e"  # a touchpoint resolved to a customer: counted, judged
    JUDGE = "d"  # an event that followed its customer's profile to the survivor: judged only
    MERGE = "m"  # a merge notice (to the absorbed customer's partition, and the survivor's)
    HANDOVER = "h"  # aggregate memory of an absorbed customer, to the survivor's partition
    PROFILE = "p"  # an absorbed customer's behaviour profile, to the survivor's partition
    ERASED = "x"  # the customer was erased: forget everything of it


class EventItem(TypedDict):
    t: str
    c: str  # customer id ("" when nothing usable identified it: not for this stage)
    r: Any  # the record as JSON
    a: str  # anchor identifier (the identity_key in ClickHouse)


class JudgeItem(TypedDict):
    t: str
    c: str  # the survivor it followed
    r: Any
    n: int  # hops followed so far


class MergeItem(TypedDict):
    t: str
    s: str  # survivor
    a: str  # absorbed
    at: int  # merged at, epoch ms


class ProfileItem(TypedDict):
    t: str
    s: str  # survivor
    p: dict[str, Any]  # the absorbed customer's profile (Profile.to_dict)


class ErasedItem(TypedDict):
    t: str
    c: str


HandoverItem = dict[str, Any]  # {"t": "h", **AggregatorState hand-over}
Item = EventItem | JudgeItem | MergeItem | ProfileItem | ErasedItem | HandoverItem


def event_item(customer_id: str, record: Any, anchor: str) -> EventItem:
    return {"t": ItemKind.EVENT.value, "c": customer_id, "r": record, "a": anchor}


def judge_item(customer_id: str, record: Any, hops: int = 1) -> JudgeItem:
    """An event that followed its customer's profile to the survivor: judged, not counted."""
    return {"t": ItemKind.JUDGE.value, "c": customer_id, "r": record, "n": hops}


def merge_item(survivor: str, absorbed: str, at_ms: int) -> MergeItem:
    return {"t": ItemKind.MERGE.value, "s": survivor, "a": absorbed, "at": at_ms}


def profile_item(survivor: str, profile: dict[str, Any]) -> ProfileItem:
    return {"t": ItemKind.PROFILE.value, "s": survivor, "p": profile}


def handover_item(handover: dict[str, Any]) -> HandoverItem:
    return {"t": ItemKind.HANDOVER.value, **handover}


def erased_item(customer_id: str) -> ErasedItem:
    return {"t": ItemKind.ERASED.value, "c": customer_id}
