"""Scoring alerts against labels: per-detector precision, recall and false alerts, and the
pure detector run over a stream as the agent would."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from streams.customers.detect import (
    RULE_NAMES,
    Alert,
    Detector,
    Profile,
)
from streams.sim.eval_background import HOUR
from streams.wire.model import (
    TouchpointRecord,
)


@dataclass(frozen=True, slots=True)
class Label:
    customer_id: str
    rule: str
    event_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DetectorMetrics:
    rule: str
    alerts: int
    labels: int
    true_alerts: int  # alerts that match a label
    detected: int  # labels matched by at least one alert
    false_alerts: int
    precision: float
    recall: float
    false_per_10k: float


@dataclass(frozen=True, slots=True)
class EvalReport:
    detectors: dict[str, DetectorMetrics]
    overall: DetectorMetrics
    normal_event_count: int


def _metrics(
    rule: str, alerts: int, labels: int, true_alerts: int, detected: int, normal: int
) -> DetectorMetrics:
    false = alerts - true_alerts
    precision = true_alerts / alerts if alerts else (1.0 if labels == 0 else 0.0)
    recall = detected / labels if labels else 1.0
    return DetectorMetrics(
        rule,
        alerts,
        labels,
        true_alerts,
        detected,
        false,
        precision,
        recall,
        false / normal * 10_000 if normal else 0.0,
    )


def evaluate(
    alerts: Iterable[Alert], labels: Sequence[Label], normal_event_count: int
) -> EvalReport:
    """Per-detector precision, recall and false alerts per 10,000 normal events.

    An alert is true when a label of the same rule shares one of its event ids; a label
    is detected when at least one alert is true for it.
    """
    by_event: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        for event_id in label.event_ids:
            by_event[(label.rule, event_id)].append(i)
    counts: dict[str, list[int]] = {rule: [0, 0, 0] for rule in RULE_NAMES}  # alerts, true
    detected: set[int] = set()
    for alert in alerts:
        c = counts.setdefault(alert["rule"], [0, 0, 0])
        c[0] += 1
        matched = {i for e in alert["event_ids"] for i in by_event.get((alert["rule"], e), ())}
        if matched:
            c[1] += 1
            detected |= matched
    label_counts = Counter(label.rule for label in labels)
    detected_counts = Counter(labels[i].rule for i in detected)
    detectors = {
        rule: _metrics(
            rule, c[0], label_counts[rule], c[1], detected_counts[rule], normal_event_count
        )
        for rule, c in counts.items()
    }
    overall = _metrics(
        "overall",
        sum(m.alerts for m in detectors.values()),
        len(labels),
        sum(m.true_alerts for m in detectors.values()),
        len(detected),
        normal_event_count,
    )
    return EvalReport(detectors, overall, normal_event_count)


def format_report(report: EvalReport) -> list[str]:
    """``EVAL <detector> precision=<p> recall=<r> false_per_10k=<f>`` lines, then overall."""
    lines = []
    for m in [*report.detectors.values(), report.overall]:
        lines.append(
            f"EVAL {m.rule} precision={m.precision:.3f} recall={m.recall:.3f} "
            f"false_per_10k={m.false_per_10k:.2f}"
        )
    return lines


def run_detector(
    events: Iterable[tuple[str, TouchpointRecord]],
    detector: Detector,
    end_ms: int,
    tick_every_ms: int = HOUR,
) -> list[Alert]:
    """Run ``detector`` over ``(customer_id, record)`` in event-time order, as the agent.

    Processing time is simulated as the event time; every ``tick_every_ms`` of it, and
    once at ``end_ms``, customers with open complaints get a ``tick``.
    """
    profiles: dict[str, Profile] = {}
    alerts: list[Alert] = []
    next_tick = -1
    for customer_id, record in events:
        ts = record["occurred_at"]
        if next_tick < 0:
            next_tick = ts - ts % tick_every_ms + tick_every_ms
        while ts >= next_tick:
            for profile in profiles.values():
                if profile.complaints:
                    alerts.extend(detector.tick(profile, next_tick)[1])
            next_tick += tick_every_ms
        found = profiles.get(customer_id)
        if found is None:
            found = profiles[customer_id] = Profile(customer_id)
        alerts.extend(detector.process(found, record, ts)[1])
    for profile in profiles.values():
        alerts.extend(detector.tick(profile, end_ms)[1])
    return alerts
