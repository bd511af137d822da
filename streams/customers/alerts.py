"""The alert record: severities, deterministic ids, the ClickHouse row, and the one
place alerts are built (``make_alert``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Final, TypedDict

_MINUTE: Final = 60_000
_HOUR: Final = 3_600_000
_DAY: Final = 86_400_000

# --------------------------------------------------------------------------- the Alert


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {s: i for i, s in enumerate(Severity)}


class Alert(TypedDict):
    """One alert, as the Avro record ``touchpoints.Alert`` (subject ``alerts-value``)."""

    alert_id: str
    customer_id: str
    rule: str
    severity: str
    score: float
    summary: str
    event_ids: list[str]
    evidence: dict[str, str]
    occurred_at: int  # epoch ms: the triggering event (or the deadline that passed)
    detected_at: int  # epoch ms: when the pipeline raised it


def alert_id(customer_id: str, rule: str, event_ids: Iterable[str]) -> str:
    """Deterministic: the same customer, rule and triggering events give the same id."""
    text = "\x1f".join((customer_id, rule, *sorted(event_ids)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ALERT_COLUMNS: Final[tuple[str, ...]] = (
    "alert_id",
    "customer_id",
    "rule",
    "severity",
    "score",
    "summary",
    "event_ids",
    "evidence",
    "occurred_at",
    "detected_at",
)


def alert_row(alert: Alert) -> list[Any]:
    """One ``alerts`` row (migration 0004), in ``ALERT_COLUMNS`` order."""
    return [
        alert["alert_id"],
        alert["customer_id"],
        alert["rule"],
        alert["severity"],
        alert["score"],
        alert["summary"],
        list(alert["event_ids"]),
        dict(alert["evidence"]),
        alert["occurred_at"],
        alert["detected_at"],
    ]
