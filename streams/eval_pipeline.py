"""``make eval``: the labelled streams through the real pipeline, scored like the offline run.

:func:`run_eval` builds one labelled stream (:mod:`streams.eval_data`), produces it to
the raw topic of a fresh deployment (its own topic prefix, app id / consumer groups,
ClickHouse database and data dir), runs the whole pipeline in this process
(:func:`streams.runner.running`: ingest -> identity -> customers agent with the
detectors -> alerts topic -> ClickHouse), waits until every consumer group has caught up
with every topic, reads the alerts back from ClickHouse (``alerts_v``) and scores them
with :func:`streams.eval_data.evaluate`. The same stream also goes through the pure
detector per *true* customer (the offline number), so the two can be read side by side:
the pipeline runs the detectors per *resolved* customer, after identity stitching and
after the events crossed partitions, so any gap between the two is the pipeline's.

Time. The stream is built to end at ``now_ms`` (default: the wall clock), so its ~45
days of history are inside ``MAX_EVENT_AGE_SECONDS`` (90 days) and the worker's
deadline tick (wall clock) agrees with the offline run's final tick (at ``now_ms``).
An older ``now_ms`` makes the stream reproducible across days; the age limit of the
eval deployment is then widened to admit it (reported as ``max_event_age_seconds``),
and complaints left open at the end of the stream become overdue at the wall clock
(offline they are not yet) — expect a few extra ``complaint_unresolved`` alerts.

The worker's tick timer runs every 60 s; once everything is processed the eval runs
that tick once itself (what the timer would do at its next minute) instead of waiting
for it.

Rules come from ``RULES_FILE`` (the deployment's), written to the eval's data dir
without webhook subscribers: an eval never posts to a real webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.clickhouse import connect
from streams.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.detect import RULE_NAMES, Alert, Detector, Rules
from streams.eval_data import (
    EvalReport,
    LabelledStream,
    encode_stream,
    evaluate,
    format_report,
    labelled_stream,
    run_detector,
)
from streams.generator import produce
from streams.kafka import consumer_security
from streams.runner import prepare, query, running
from streams.settings import Settings

__all__ = ["DEFAULT_CUSTOMERS", "DEFAULT_SEED", "run_eval"]

log = logging.getLogger(__name__)

DEFAULT_CUSTOMERS: Final = 500
DEFAULT_SEED: Final = 7

_MINUTE_MS: Final = 60_000
_POLL_S: Final = 0.5
_SHOWN: Final = 20  # examples of misses / false alerts kept in the metrics


# --------------------------------------------------------------------------- settings


def _eval_settings(
    settings: Settings, run: str, rules: Rules, oldest_ms: int, timeout: float
) -> tuple[Settings, int | None]:
    """A fresh deployment next to ``settings``: own topics, groups, database, data dir."""
    data_dir = settings.data_dir / f"eval-{run}"
    data_dir.mkdir(parents=True, exist_ok=True)
    rules_file = data_dir / "rules.yaml"
    # The deployment's rules, no webhook subscribers.
    rules_file.write_text(yaml.safe_dump({**rules.to_mapping(), "subscribers": []}))
    # Events must stay inside the ingest age limit until the run is over.
    needed_s = int((time.time() * 1000 - oldest_ms) / 1000 + timeout + 3600)
    widened = needed_s if needed_s > settings.max_event_age_seconds else None
    changes: dict[str, Any] = {
        "app_id": f"{settings.app_id}-eval-{run}",
        "topic_prefix": f"{settings.topic_prefix}eval-{run}.",
        "clickhouse_database": f"{settings.clickhouse_database}_eval_{run}",
        "data_dir": data_dir / "faust",
        "rules_file": rules_file,
        "web_port": 0,
    }
    if widened is not None:
        changes["max_event_age_seconds"] = widened
    return settings.model_copy(update=changes), widened


def _rules(settings: Settings) -> Rules:
    return Rules.from_yaml(settings.rules_file) if settings.rules_file else Rules.default()


# --------------------------------------------------------------------------- Kafka progress


class _Lag:
    """Consumer lag of the pipeline's groups over every topic they read."""

    def __init__(self, settings: Settings) -> None:
        t = settings.topics
        sec = consumer_security(settings)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **sec)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, **sec
        )
        self.groups: dict[str, list[str]] = {
            settings.app_id: [t.raw, t.valid, t.identity_ops, t.resolved],
            settings.sink_group_id: [
                t.resolved,
                t.dead_letter,
                t.identity_changes,
                t.aggregates,
                t.alerts,
            ],
        }
        self.partitions = settings.topic_partitions

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def total(self) -> int:
        """Messages not yet committed by the group that reads them, summed."""
        lag = 0
        for group, topics in self.groups.items():
            committed = await self.admin.list_consumer_group_offsets(group)
            tps = [TopicPartition(topic, p) for topic in topics for p in range(self.partitions)]
            for tp, end in (await self.consumer.end_offsets(tps)).items():
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                lag += max(0, int(end) - done)
        return lag


async def _drained(
    pipeline: Any, lag: _Lag, count_sql: str, expected: int, deadline: float
) -> tuple[int, bool]:
    """Wait until ``count_sql`` reaches ``expected`` and no group lags, twice in a row."""
    landed, quiet = -1, 0
    while time.monotonic() < deadline:
        landed = int((await query(pipeline, count_sql))[0][0])
        behind = await lag.total()
        log.debug("eval: %d/%d landed, lag %d", landed, expected, behind)
        if landed >= expected and behind == 0:
            quiet += 1
            if quiet >= 2:
                return landed, True
        else:
            quiet = 0
        await asyncio.sleep(_POLL_S)
    return landed, False


# --------------------------------------------------------------------------- reading back


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _alert(row: Sequence[Any]) -> Alert:
    (alert_id, customer, rule, severity, score, summary, ids, evidence, occurred, detected) = row
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


async def _read_back(pipeline: Any, db: str) -> dict[str, Any]:
    async def q(sql: str) -> list[tuple[Any, ...]]:
        return await query(pipeline, sql)

    alerts = [
        _alert(r)
        for r in await q(
            "SELECT alert_id, customer_id, rule, severity, score, summary, event_ids, "
            f"evidence, occurred_at, detected_at FROM {db}.alerts_v"
        )
    ]
    at_ingest = {
        str(e): str(c)
        for e, c in await q(
            f"SELECT event_id, any(customer_id_at_ingest) FROM {db}.touchpoints GROUP BY event_id"
        )
    }
    current = {
        str(e): str(c)
        for e, c in await q(
            f"SELECT event_id, any(customer_id) FROM {db}.customer_touchpoints_v GROUP BY event_id"
        )
    }
    dead = {
        str(r): int(n)
        for r, n in await q(f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason")
    }
    merges = int((await q(f"SELECT count() FROM {db}.customer_merges FINAL"))[0][0])
    refusals = {
        str(r): int(n)
        for r, n in await q(
            f"SELECT reason, count() FROM {db}.identity_refusals FINAL GROUP BY reason"
        )
    }
    return {
        "alerts": alerts,
        "at_ingest": at_ingest,
        "current": current,
        "dead_letters": dead,
        "merges": merges,
        "refusals": refusals,
    }


# --------------------------------------------------------------------------- diagnosis


def _identity_summary(stream: LabelledStream, at_ingest: dict[str, str]) -> dict[str, Any]:
    """How resolution grouped the true customers, as the detectors saw it (at ingest)."""
    by_person: dict[str, Counter[str]] = defaultdict(Counter)
    persons_of: dict[str, set[str]] = defaultdict(set)
    unresolved = 0
    for e in stream.events:
        customer = at_ingest.get(e.record["event_id"])
        if customer is None:
            continue
        if not customer:
            unresolved += 1
            continue
        by_person[e.customer_id][customer] += 1
        persons_of[customer].add(e.customer_id)
    split = {p: c for p, c in by_person.items() if len(c) > 1}
    return {
        "true_customers": len({e.customer_id for e in stream.events}),
        "resolved_customers": len(persons_of),
        "customers_split": len(split),
        "events_off_main_customer": sum(
            sum(c.values()) - c.most_common(1)[0][1] for c in split.values()
        ),
        "resolved_mixing_customers": sum(1 for p in persons_of.values() if len(p) > 1),
        "events_unresolved": unresolved,
    }


def _misses(
    stream: LabelledStream,
    alerts: list[Alert],
    offline: list[Alert],
    at_ingest: dict[str, str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labels the pipeline missed and its false alerts, with what resolution did to them."""
    ids_of = {a_id for a in alerts for a_id in a["event_ids"]}
    person_of = {e.record["event_id"]: e.customer_id for e in stream.events}
    main: dict[str, str] = {}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in stream.events:
        customer = at_ingest.get(e.record["event_id"])
        if customer:
            counts[e.customer_id][customer] += 1
    for person, c in counts.items():
        main[person] = c.most_common(1)[0][0]
    offline_hits = {(a["rule"], e) for a in offline for e in a["event_ids"]}
    pipeline_hits = {(a["rule"], e) for a in alerts for e in a["event_ids"]}
    missed = []
    for label in stream.labels:
        if any((label.rule, e) in pipeline_hits for e in label.event_ids):
            continue
        missed.append(
            {
                "rule": label.rule,
                "customer": label.customer_id,
                "offline_detected": any((label.rule, e) in offline_hits for e in label.event_ids),
                "main_customer": main.get(label.customer_id, ""),
                "label_events_at": sorted({at_ingest.get(e, "<missing>") for e in label.event_ids}),
                "resolved_customers_of_person": len(counts.get(label.customer_id, ())),
                "alerted_other_rule": any(e in ids_of for e in label.event_ids),
            }
        )
    label_keys = {(lab.rule, e) for lab in stream.labels for e in lab.event_ids}
    false = [
        {
            "rule": a["rule"],
            "customer": a["customer_id"],
            "true_customers": sorted({person_of.get(e, "?") for e in a["event_ids"]}),
            "summary": a["summary"],
        }
        for a in alerts
        if not any((a["rule"], e) in label_keys for e in a["event_ids"])
    ]
    return missed, false


# --------------------------------------------------------------------------- report


def _as_dict(report: EvalReport) -> dict[str, Any]:
    out = {rule: dataclasses.asdict(m) for rule, m in report.detectors.items()}
    out["overall"] = dataclasses.asdict(report.overall)
    return out


def _side_by_side(pipeline: EvalReport, offline: EvalReport) -> list[str]:
    lines = [
        f"{'detector':<34} {'labels':>6}  {'pipeline: alerts  P      R      f/10k':<38}"
        f"| offline: alerts  P      R      f/10k"
    ]
    rows = [*RULE_NAMES, "overall"]
    for rule in rows:
        p = pipeline.overall if rule == "overall" else pipeline.detectors[rule]
        o = offline.overall if rule == "overall" else offline.detectors[rule]
        lines.append(
            f"{rule:<34} {p.labels:>6}  {'':<9} {p.alerts:>6} {p.precision:6.3f} "
            f"{p.recall:6.3f} {p.false_per_10k:6.2f}   |          {o.alerts:>6} "
            f"{o.precision:6.3f} {o.recall:6.3f} {o.false_per_10k:6.2f}"
        )
    return lines


def _offline_lines(offline: EvalReport) -> list[str]:
    return ["OFFLINE" + line.removeprefix("EVAL") for line in format_report(offline)]


# --------------------------------------------------------------------------- the run


async def run_eval(
    settings: Settings,
    *,
    customers: int,
    seed: int,
    now_ms: int | None = None,
    timeout: float = 150.0,
    keep: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], str]:
    """Score the detectors on a labelled stream through the real pipeline.

    Returns ``(metrics, report)``: ``metrics`` is plain data (per-detector numbers for
    ``pipeline`` and ``offline``, the run's counts and timings, identity effects, missed
    labels and false alerts); ``report`` holds the ``EVAL <detector> precision=...
    recall=... false_per_10k=...`` lines of the pipeline (then ``EVAL overall``),
    ``OFFLINE ...`` lines in the same format, a side-by-side table and a ``RUN`` line.

    ``timeout`` bounds the wait for the pipeline to process everything; ``keep`` keeps
    the eval's topics, database and data dir (else they are removed).
    """
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    rules = _rules(settings)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    now -= now % _MINUTE_MS
    stream = labelled_stream(customers, seed=seed, now_ms=now, rules=rules)
    events = stream.events
    if events[-1].record["occurred_at"] > time.time() * 1000 + settings.max_future_skew_seconds:
        raise ValueError(f"now_ms={now} is ahead of the clock: ingest would refuse the stream")
    built_s = time.monotonic() - started

    offline_alerts = run_detector(
        ((e.customer_id, e.record) for e in events), Detector(rules), stream.now_ms
    )
    offline = evaluate(offline_alerts, stream.labels, stream.normal_event_count)

    run = uuid.uuid4().hex[:8]
    eval_settings, widened = _eval_settings(
        settings, run, rules, events[0].record["occurred_at"], timeout
    )
    db = eval_settings.clickhouse_database
    codec = AvroCodec(SchemaRegistry.from_dir(eval_settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_stream(stream, codec)
    say(
        f"{customers} customers, seed {seed}: {len(pairs):,} events, {len(stream.labels)} "
        f"labels (built in {built_s:.1f}s); deployment {eval_settings.topic_prefix}*"
    )
    await asyncio.to_thread(prepare, eval_settings)
    t0 = time.monotonic()
    delivered = await produce(eval_settings, pairs)
    produce_s = time.monotonic() - t0
    if delivered != len(pairs):
        raise RuntimeError(f"only {delivered} of {len(pairs)} events reached the raw topic")

    count_sql = (
        f"SELECT (SELECT uniqExact(event_id) FROM {db}.touchpoints)"
        f" + (SELECT count() FROM {db}.dead_letters)"
    )
    lag = _Lag(eval_settings)
    await lag.start()
    try:
        t1 = time.monotonic()
        async with running(eval_settings) as pipeline:
            start_s = time.monotonic() - t1
            say(f"produced in {produce_s:.1f}s; worker started in {start_s:.1f}s; processing")
            t2 = time.monotonic()
            deadline = t2 + timeout
            landed, complete = await _drained(pipeline, lag, count_sql, len(pairs), deadline)
            process_s = time.monotonic() - t2
            # The deadline tick, as the worker's 60 s timer would run it next.
            await pipeline._tick_customers()
            _, ticked = await _drained(pipeline, lag, count_sql, len(pairs), deadline)
            complete = complete and ticked
            back = await _read_back(pipeline, db)
        total_process_s = time.monotonic() - t2
    finally:
        await lag.stop()
        if not keep:
            await _remove(eval_settings)
    if not complete:
        log.warning("eval: the pipeline had not caught up after %.0fs", timeout)

    alerts: list[Alert] = back["alerts"]
    result = evaluate(alerts, stream.labels, stream.normal_event_count)
    missed, false = _misses(stream, alerts, offline_alerts, back["at_ingest"])
    identity = _identity_summary(stream, back["at_ingest"])
    total_s = time.monotonic() - started
    metrics: dict[str, Any] = {
        "customers": customers,
        "seed": seed,
        "now_ms": stream.now_ms,
        "events": len(pairs),
        "labels": len(stream.labels),
        "normal_events": stream.normal_event_count,
        "pipeline": _as_dict(result),
        "offline": _as_dict(offline),
        "run": {
            "deployment": {
                "app_id": eval_settings.app_id,
                "topic_prefix": eval_settings.topic_prefix,
                "clickhouse_database": db,
                "kept": keep,
            },
            "complete": complete,
            "landed": landed,
            "dead_letters": back["dead_letters"],
            "events_missing": len(pairs)
            - len(back["at_ingest"])
            - sum(back["dead_letters"].values()),
            "alerts": len(alerts),
            "alerts_offline": len(offline_alerts),
            "merges": back["merges"],
            "identity_refusals": back["refusals"],
            "max_event_age_seconds": widened or settings.max_event_age_seconds,
            "seconds": {
                "build": round(built_s, 2),
                "produce": round(produce_s, 2),
                "process": round(process_s, 2),
                "process_and_read": round(total_process_s, 2),
                "total": round(total_s, 2),
            },
        },
        "identity": identity,
        "missed": missed[:_SHOWN],
        "missed_total": len(missed),
        "missed_by_rule": dict(Counter(m["rule"] for m in missed)),
        "false_alerts": false[:_SHOWN],
        "false_alerts_total": len(false),
        "false_by_rule": dict(Counter(f["rule"] for f in false)),
    }
    lines = [
        *format_report(result),
        *_offline_lines(offline),
        *_side_by_side(result, offline),
        f"RUN customers={customers} seed={seed} events={len(pairs)} labels={len(stream.labels)} "
        f"landed={landed} dead_letters={sum(back['dead_letters'].values())} "
        f"alerts={len(alerts)} merges={back['merges']} "
        f"resolved_customers={identity['resolved_customers']} "
        f"true_customers={identity['true_customers']} "
        f"complete={'yes' if complete else 'no'} seconds={total_s:.1f}",
    ]
    return metrics, "\n".join(lines)


async def _remove(settings: Settings) -> None:
    """Delete the eval deployment: its topics (and changelogs), database and data dir."""

    async def topics() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers, **consumer_security(settings)
        )
        await admin.start()
        try:
            names = [
                n
                for n in await admin.list_topics()
                if n.startswith(settings.topic_prefix) or n.startswith(f"{settings.app_id}-")
            ]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    def database() -> None:
        client = connect(settings)
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")

    try:
        await topics()
        await asyncio.to_thread(database)
    except Exception as exc:  # best effort: the numbers are already in hand
        log.warning("eval clean-up failed: %s", exc)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(Path(settings.data_dir).parent)
