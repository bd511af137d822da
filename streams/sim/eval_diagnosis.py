"""Reading an eval deployment back from ClickHouse, and saying what identity resolution did
to the customers behind each miss and false alert."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from streams.customers.detect import Alert, Detector, Rules
from streams.runtime.runner import query
from streams.sim.eval_data import (
    LabelledStream,
    run_detector,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading back


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _alert(row: Sequence[Any]) -> Alert:
    alert_id, customer, rule, severity, score, summary, ids, evidence, occurred, detected = row
    return {
        "alert_id": str(alert_id),
        "customer_id": str(customer),
        "rule": str(rule),
        "severity": str(severity),
        "score": float(score),
        "summary": str(summary),
        "event_ids": [str(e) for e in ids],
        "evidence": {str(k): str(v) for k, v in dict(evidence).items()},
        "occurred_at": _ms(occurred),
        "detected_at": _ms(detected),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Back:
    alerts: list[Alert]
    at_ingest: dict[str, str]  # event id -> customer the detectors judged it under
    current: dict[str, str]  # event id -> customer after every merge
    dead_letters: dict[str, int]
    merges: int
    refusals: dict[str, int]


async def read_back(pipeline: Any, db: str) -> Back:
    async def q(sql: str) -> list[tuple[Any, ...]]:
        return await query(pipeline, sql)

    alerts = [
        _alert(r)
        for r in await q(
            "SELECT alert_id, customer_id, rule, severity, score, summary, event_ids, "
            f"evidence, occurred_at, detected_at FROM {db}.alerts_v"
        )
    ]
    at_ingest = await q(
        f"SELECT event_id, any(customer_id_at_ingest) FROM {db}.touchpoints GROUP BY event_id"
    )
    current = await q(
        f"SELECT event_id, any(customer_id) FROM {db}.customer_touchpoints_v GROUP BY event_id"
    )
    dead = await q(f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason")
    refusals = await q(f"SELECT reason, count() FROM {db}.identity_refusals FINAL GROUP BY reason")
    merges = (await q(f"SELECT count() FROM {db}.customer_merges FINAL"))[0][0]
    return Back(
        alerts=alerts,
        at_ingest={str(e): str(c) for e, c in at_ingest},
        current={str(e): str(c) for e, c in current},
        dead_letters={str(r): int(n) for r, n in dead},
        merges=int(merges),
        refusals={str(r): int(n) for r, n in refusals},
    )


# --------------------------------------------------------------------------- diagnosis


def identity_summary(stream: LabelledStream, back: Back) -> dict[str, Any]:
    """How resolution grouped the true customers: as the detectors saw it, and finally."""

    def grouping(resolved: dict[str, str]) -> dict[str, int]:
        by_person: dict[str, Counter[str]] = defaultdict(Counter)
        persons_of: dict[str, set[str]] = defaultdict(set)
        for e in stream.events:
            customer = resolved.get(e.record["event_id"])
            if customer:
                by_person[e.customer_id][customer] += 1
                persons_of[customer].add(e.customer_id)
        split = [c for c in by_person.values() if len(c) > 1]
        return {
            "resolved_customers": len(persons_of),
            "true_customers_split": len(split),
            "events_off_main_customer": sum(
                sum(c.values()) - c.most_common(1)[0][1] for c in split
            ),
            "resolved_customers_mixing_people": sum(1 for p in persons_of.values() if len(p) > 1),
        }

    return {
        "true_customers": len({e.customer_id for e in stream.events}),
        "events_without_customer": sum(
            1 for e in stream.events if back.at_ingest.get(e.record["event_id"]) == ""
        ),
        "at_judgement": grouping(back.at_ingest),
        "final": grouping(back.current),
    }


def replay(stream: LabelledStream, resolved: dict[str, str], rules: Rules) -> list[Alert]:
    """The pure detector in event-time order, per customer as ``resolved`` groups them.

    Events that never reached ClickHouse are left out, as the pipeline left them out.
    """
    grouped = (
        (resolved[e.record["event_id"]], e.record)
        for e in stream.events
        if resolved.get(e.record["event_id"])
    )
    return run_detector(grouped, Detector(rules), stream.now_ms)


_CAUSES: Final = {
    "final": "identity_cannot_link",
    "judged": "merged_too_late",
    "pipeline": "order_or_state",
}


def misses(
    stream: LabelledStream,
    alerts: list[Alert],
    replays: dict[str, list[Alert]],
    back: Back,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labels the pipeline missed and its false alerts, each with a cause.

    ``replays`` are the pure detector in event-time order with the customers grouped
    as the offline run (``offline``: the true customer), as identity finally grouped
    them (``final``, after every merge) and as the detectors saw them (``judged``: the
    customer at processing time, no merges). A label's cause is the first step of that
    ladder that misses it:

    * ``identity_cannot_link``: missed even per final resolved customer — nothing in the
      stream links the history to the customer of the label's events;
    * ``merged_too_late``: found per final customer, missed per customer at processing
      time — the history joined the customer by a merge after the event was judged;
    * ``order_or_state``: found with the same grouping in event-time order, missed by the
      pipeline — the order the events reached the customer stage, or lost state.

    A false alert's cause is the first replay that raises it too (``offline``: the
    detector's own false positive), else ``order_or_state``.
    """
    by_id = {e.record["event_id"]: e for e in stream.events}

    def found(found_by: list[Alert]) -> set[tuple[str, str]]:
        return {(a["rule"], e) for a in found_by for e in a["event_ids"]}

    hits = found(alerts)
    ladder = [(step, found(replays[step])) for step in ("offline", "final", "judged")]
    missed = []
    for label in stream.labels:
        keys = [(label.rule, e) for e in label.event_ids]
        if any(k in hits for k in keys):
            continue
        cause = next(
            (_CAUSES[step] for step, got in ladder[1:] if not any(k in got for k in keys)),
            _CAUSES["pipeline"],
        )
        if not any(k in ladder[0][1] for k in keys):
            cause = "offline_misses_too"
        missed.append(
            {
                "rule": label.rule,
                "true_customer": label.customer_id,
                "cause": cause,
                "judged_under": back.at_ingest.get(label.event_ids[-1], ""),
                "customer_now": back.current.get(label.event_ids[-1], ""),
                "label_event_types": [by_id[e].record["event_type"] for e in label.event_ids],
            }
        )
    label_keys = {(lab.rule, e) for lab in stream.labels for e in lab.event_ids}
    raised = {
        step: {(a["rule"], tuple(sorted(a["event_ids"]))) for a in replays[step]}
        for step in ("offline", "final", "judged")
    }
    false = []
    for a in alerts:
        if any((a["rule"], e) in label_keys for e in a["event_ids"]):
            continue
        key = (a["rule"], tuple(sorted(a["event_ids"])))
        step = next((s for s in ("offline", "final", "judged") if key in raised[s]), None)
        false.append(
            {
                "rule": a["rule"],
                "customer": a["customer_id"],
                "cause": {"offline": "detector", None: "order_or_state"}.get(
                    step, _CAUSES.get(step or "", "")
                ),
                "true_customers": sorted(
                    {by_id[e].customer_id if e in by_id else "?" for e in a["event_ids"]}
                ),
                "summary": a["summary"],
            }
        )
    return missed, false
