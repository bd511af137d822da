"""``make eval``: the labelled streams through the real pipeline, scored like the offline run.

:func:`run_eval` builds one labelled stream (:mod:`streams.sim.eval_data`), starts a fresh
deployment of the whole pipeline in this process (its own topic prefix, app id and
consumer groups, ClickHouse database and data dir; :func:`streams.runtime.runner.running`:
ingest -> identity -> customers agent with the detectors -> alerts topic -> ClickHouse),
produces the stream to its raw topic, waits until every event is in ``touchpoints`` and
every consumer group has caught up with every topic it reads, reads the alerts back
from ClickHouse (``alerts_v``) and scores them with :func:`streams.sim.eval_data.evaluate`.

The same stream also goes through the pure detector per *true* customer in event-time
order (``eval_data.run_detector``: the offline number), so the two read side by side.
The pipeline runs the detectors per *resolved* customer, after identity stitching, in
the order the events reach the customer stage; the gap between the two numbers is the
pipeline's. ``metrics["missed"]`` / ``metrics["false_alerts"]`` say, per label the
pipeline missed and per false alert, what identity resolution did to that customer.

Time. The stream is built to end at ``now_ms`` (default: the wall clock, to the minute),
so its ~45 days of history are inside ``MAX_EVENT_AGE_SECONDS`` (90 days) and the
worker's deadline tick (wall clock) agrees with the offline run's last tick (at
``now_ms``). An older ``now_ms`` (reproducible streams across days) widens the age limit
of the eval deployment to admit the stream (``run.max_event_age_seconds``); complaints
still open at the end of such a stream are overdue at the wall clock but not offline,
so expect a few extra ``complaint_unresolved`` alerts then. Aggregate lateness does not
touch the detectors.

The 45 days are replayed in seconds: the pipeline sees a catch-up backlog, not live
traffic. Events of one person keyed differently by their producing systems sit on
different raw partitions and reach the customer stage in batch order, not event-time
order, and identity merges land after events that, in event time, came later. Live
traffic reorders far less; the eval measures the harder case.

The worker's deadline timer runs every 60 s, judging deadlines by the event time each
partition has reached while events flow (a timer firing mid-replay does not find a
complaint overdue whose call-back is still in the backlog); once everything is processed
the eval runs that tick once itself, by the clock (what the timer would do at its next
minute) instead of waiting up to a minute for it.

Rules come from ``RULES_FILE`` (the deployment's), copied into the eval's data dir
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
from typing import Any, Final

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.adapters.clickhouse import connect
from streams.adapters.kafka import consumer_security
from streams.customers.detect import RULE_NAMES, Alert, Detector, Rules
from streams.identity.graph import IdentityRules
from streams.runtime.runner import prepare, query, running
from streams.settings import Settings
from streams.sim.eval_data import (
    EvalReport,
    LabelledStream,
    encode_stream,
    evaluate,
    format_report,
    labelled_stream,
    run_detector,
)
from streams.sim.eval_identity import PairScore, format_identity, score_identity
from streams.sim.generator import produce
from streams.topology import consumer_groups
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry

__all__ = ["DEFAULT_CUSTOMERS", "DEFAULT_SEED", "run_eval"]

log = logging.getLogger(__name__)

DEFAULT_CUSTOMERS: Final = 2000
"""~77k events, 360 labels (40 per rule); ~55 s end to end on 2 CPUs (eval_data's default)."""
DEFAULT_SEED: Final = 7

_MINUTE_MS: Final = 60_000
_POLL_S: Final = 0.5
_STOP_TIMEOUT_S: Final = 60.0
_SHOWN: Final = 25  # examples of misses / false alerts kept in the metrics


# --------------------------------------------------------------------------- settings


def _rules(settings: Settings) -> Rules:
    return Rules.from_yaml(settings.rules_file) if settings.rules_file else Rules.default()


def _identity_rules(settings: Settings) -> IdentityRules:
    if settings.identity_rules is None:
        return IdentityRules()
    return IdentityRules.from_mapping(yaml.safe_load(settings.identity_rules.read_text()) or {})


def _eval_settings(
    settings: Settings, run: str, rules: Rules, oldest_ms: int, timeout: float
) -> tuple[Settings, int | None]:
    """A fresh deployment next to ``settings``: own topics, groups, database, data dir."""
    home = settings.data_dir / f"eval-{run}"
    home.mkdir(parents=True, exist_ok=True)
    rules_file = home / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({**rules.to_mapping(), "subscribers": []}))
    # Every event must stay inside the ingest age limit until the run is over.
    needed_s = int((time.time() * 1000 - oldest_ms) / 1000 + 2 * timeout + 3600)
    widened = needed_s if needed_s > settings.max_event_age_seconds else None
    changes: dict[str, Any] = {
        "app_id": f"{settings.app_id}-eval-{run}",
        "topic_prefix": f"{settings.topic_prefix}eval-{run}.",
        "clickhouse_database": f"{settings.clickhouse_database}_eval_{run}",
        "data_dir": home / "faust",
        "rules_file": rules_file,
        "web_port": 0,
    }
    if widened is not None:
        changes["max_event_age_seconds"] = widened
    return settings.model_copy(update=changes), widened


# --------------------------------------------------------------------------- progress


class _Lag:
    """Messages the pipeline's consumer groups have not committed, per group and topic."""

    def __init__(self, settings: Settings) -> None:
        sec = consumer_security(settings)
        servers = settings.kafka_bootstrap_servers
        self.admin = AIOKafkaAdminClient(bootstrap_servers=servers, **sec)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, **sec)
        self.partitions = settings.topic_partitions
        self.groups = consumer_groups(
            settings.topic_prefix, settings.app_id, settings.sink_group_id
        )

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def behind(self) -> dict[str, int]:
        """``{"group/topic": messages not yet committed}``; empty when all caught up."""
        out: dict[str, int] = {}
        for group, topics in self.groups.items():
            committed = await self.admin.list_consumer_group_offsets(group)
            tps = [TopicPartition(topic, p) for topic in topics for p in range(self.partitions)]
            for tp, end in (await self.consumer.end_offsets(tps)).items():
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                if int(end) > done:
                    key = f"{group}/{tp.topic}"
                    out[key] = out.get(key, 0) + int(end) - done
        return out


async def _settled(
    pipeline: Any, lag: _Lag, count_sql: str, expected: int, deadline: float
) -> tuple[int, dict[str, int], bool]:
    """Until ``count_sql`` reaches ``expected`` and no group lags, twice in a row.

    Returns the last count, what was still behind, and whether it settled in time.
    """
    landed, behind, quiet = -1, {"": -1}, 0
    while time.monotonic() < deadline:
        landed = int((await query(pipeline, count_sql))[0][0])
        behind = await lag.behind()
        log.debug("eval: %d/%d landed, behind %s", landed, expected, behind)
        if landed >= expected and not behind:
            quiet += 1
            if quiet >= 2:
                return landed, behind, True
        else:
            quiet = 0
        await asyncio.sleep(_POLL_S)
    return landed, behind, False


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
class _Back:
    alerts: list[Alert]
    at_ingest: dict[str, str]  # event id -> customer the detectors judged it under
    current: dict[str, str]  # event id -> customer after every merge
    dead_letters: dict[str, int]
    merges: int
    refusals: dict[str, int]


async def _read_back(pipeline: Any, db: str) -> _Back:
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
    return _Back(
        alerts=alerts,
        at_ingest={str(e): str(c) for e, c in at_ingest},
        current={str(e): str(c) for e, c in current},
        dead_letters={str(r): int(n) for r, n in dead},
        merges=int(merges),
        refusals={str(r): int(n) for r, n in refusals},
    )


# --------------------------------------------------------------------------- diagnosis


def _identity_summary(stream: LabelledStream, back: _Back) -> dict[str, Any]:
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


def _replay(stream: LabelledStream, resolved: dict[str, str], rules: Rules) -> list[Alert]:
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


def _misses(
    stream: LabelledStream,
    alerts: list[Alert],
    replays: dict[str, list[Alert]],
    back: _Back,
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


# --------------------------------------------------------------------------- report


def _pair_dict(score: PairScore) -> dict[str, Any]:
    return {
        **dataclasses.asdict(score),
        "precision": score.precision,
        "recall": score.recall,
        "recall_linkable": score.recall_linkable,
    }


def _as_dict(report: EvalReport) -> dict[str, Any]:
    out = {rule: dataclasses.asdict(m) for rule, m in report.detectors.items()}
    out["overall"] = dataclasses.asdict(report.overall)
    return out


def _side_by_side(
    pipeline: EvalReport, offline: EvalReport, final: EvalReport, judged: EvalReport
) -> list[str]:
    cols = f"{'alerts':>6} {'P':>6} {'R':>6} {'f/10k':>6}"
    lines = [
        f"{'':<34} {'':>6}   {'pipeline':<27} | {'offline':<27} | recall by identity",
        f"{'detector':<34} {'labels':>6}   {cols} | {cols} | {'final':>6} {'judged':>6}",
    ]
    for rule in [*RULE_NAMES, "overall"]:
        p, o, f, j = (
            r.overall if rule == "overall" else r.detectors[rule]
            for r in (pipeline, offline, final, judged)
        )
        lines.append(
            f"{rule:<34} {p.labels:>6}   "
            f"{p.alerts:>6} {p.precision:6.3f} {p.recall:6.3f} {p.false_per_10k:6.2f} | "
            f"{o.alerts:>6} {o.precision:6.3f} {o.recall:6.3f} {o.false_per_10k:6.2f} | "
            f"{f.recall:6.3f} {j.recall:6.3f}"
        )
    return lines


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

    Returns ``(metrics, report)``. ``metrics`` is plain data: ``pipeline`` and
    ``offline`` (per detector and ``overall``: alerts, labels, true_alerts, detected,
    false_alerts, precision, recall, false_per_10k), ``by_identity`` (the same for the
    pure detector in event-time order per customer as identity grouped them in the end,
    ``final``, and when the detectors ran, ``judged``; see :func:`_misses`), ``run``
    (counts, timings, whether it settled, the deployment's names), ``identity`` (how
    people were grouped), ``missed`` and ``false_alerts`` (first 25, each with a cause;
    totals in ``*_total`` and ``*_by_cause``).
    ``report`` is text: the pipeline's ``EVAL <detector> precision=<p> recall=<r>
    false_per_10k=<f>`` lines then ``EVAL overall ...`` (the format of
    ``eval_data.format_report``), the same for the offline run as ``OFFLINE ...`` lines,
    a side-by-side table (with the recall of the ``by_identity`` replays), the pairwise
    identity score (``EVAL identity precision=<p> recall=<r> recall_linkable=<l> ...``
    then one ``EVAL identity[<trap>]`` line per generator trap; see
    :mod:`streams.sim.eval_identity`; also in ``metrics["identity"]["pairwise"]``), ``MISSED``
    and ``FALSE`` lines counting ``rule:cause`` and one ``RUN ...`` line.

    ``timeout`` bounds the wait for the pipeline to process everything (if it does not
    settle, the report says ``settled=no`` and scores what arrived). ``keep`` leaves the
    eval's topics, database and data dir in place for inspection.
    """
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    rules = _rules(settings)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    now -= now % _MINUTE_MS
    if now > time.time() * 1000 + settings.max_future_skew_seconds * 1000:
        raise ValueError(f"now_ms={now} is ahead of the clock: ingest would refuse the stream")
    stream = labelled_stream(customers, seed=seed, now_ms=now, rules=rules)
    events = stream.events
    offline_alerts = run_detector(
        ((e.customer_id, e.record) for e in events), Detector(rules), stream.now_ms
    )
    offline = evaluate(offline_alerts, stream.labels, stream.normal_event_count)
    built_s = time.monotonic() - started

    run = uuid.uuid4().hex[:8]
    eval_settings, widened = _eval_settings(
        settings, run, rules, events[0].record["occurred_at"], timeout
    )
    db = eval_settings.clickhouse_database
    codec = AvroCodec(SchemaRegistry.from_dir(eval_settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_stream(stream, codec)
    say(
        f"{customers:,} customers, seed {seed}: {len(pairs):,} events, "
        f"{len(stream.labels)} labels (stream and offline run in {built_s:.1f}s); "
        f"deployment {eval_settings.topic_prefix}*"
    )
    count_sql = (
        f"SELECT (SELECT uniqExact(event_id) FROM {db}.touchpoints)"
        f" + (SELECT count() FROM {db}.dead_letters)"
    )
    lag: _Lag | None = None
    stack = contextlib.AsyncExitStack()
    try:
        t_start = time.monotonic()
        await asyncio.to_thread(prepare, eval_settings)
        pipeline = await stack.enter_async_context(running(eval_settings))
        lag = _Lag(eval_settings)
        await lag.start()
        start_s = time.monotonic() - t_start
        t_produce = time.monotonic()
        delivered = await produce(eval_settings, pairs)
        if delivered != len(pairs):
            raise RuntimeError(f"only {delivered:,} of {len(pairs):,} events reached Kafka")
        produce_s = time.monotonic() - t_produce
        say(f"worker started in {start_s:.1f}s; produced in {produce_s:.1f}s; processing")
        deadline = t_produce + timeout
        landed, behind, settled = await _settled(pipeline, lag, count_sql, len(pairs), deadline)
        process_s = time.monotonic() - t_produce
        # The deadline tick, as the worker's 60 s timer would run it at its next minute,
        # with everything processed (idle partitions: the deadline clock is the clock).
        await asyncio.wait_for(pipeline.tick_customers(idle_ms=0), timeout=30.0)
        if settled:
            _, behind, settled = await _settled(
                pipeline, lag, count_sql, len(pairs), time.monotonic() + 30.0
            )
        back = await _read_back(pipeline, db)
    finally:
        try:
            await asyncio.wait_for(stack.aclose(), timeout=_STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("eval: the worker did not stop within %.0fs", _STOP_TIMEOUT_S)
        if lag is not None:
            await lag.stop()
        if not keep:
            await _remove(eval_settings)
    if not settled:
        log.warning("eval: the pipeline had not settled within %.0fs: %s", timeout, behind)

    alerts = back.alerts
    result = evaluate(alerts, stream.labels, stream.normal_event_count)
    replays = {
        "offline": offline_alerts,
        "final": _replay(stream, back.current, rules),
        "judged": _replay(stream, back.at_ingest, rules),
    }
    final = evaluate(replays["final"], stream.labels, stream.normal_event_count)
    judged = evaluate(replays["judged"], stream.labels, stream.normal_event_count)
    missed, false = _misses(stream, alerts, replays, back)
    identity = _identity_summary(stream, back)
    pairwise = score_identity(stream.events, back.current, _identity_rules(settings))
    identity["pairwise"] = {
        "overall": _pair_dict(pairwise.overall),
        "by_trap": {trap: _pair_dict(m) for trap, m in pairwise.by_trap.items()},
        "unattributed_events": pairwise.unattributed,
        "households": pairwise.households,
    }
    total_s = time.monotonic() - started
    dead = sum(back.dead_letters.values())
    metrics: dict[str, Any] = {
        "customers": customers,
        "seed": seed,
        "now_ms": stream.now_ms,
        "events": len(pairs),
        "labels": len(stream.labels),
        "normal_events": stream.normal_event_count,
        "pipeline": _as_dict(result),
        "offline": _as_dict(offline),
        "by_identity": {"final": _as_dict(final), "judged": _as_dict(judged)},
        "run": {
            "deployment": {
                "app_id": eval_settings.app_id,
                "topic_prefix": eval_settings.topic_prefix,
                "clickhouse_database": db,
                "kept": keep,
            },
            "settled": settled,
            "behind": behind,
            "landed": landed,
            "dead_letters": back.dead_letters,
            "events_missing": len(pairs) - len(back.at_ingest) - dead,
            "alerts": len(alerts),
            "alerts_offline": len(offline_alerts),
            "merges": back.merges,
            "identity_refusals": back.refusals,
            "max_event_age_seconds": widened or settings.max_event_age_seconds,
            "seconds": {
                "stream_and_offline": round(built_s, 2),
                "worker_start": round(start_s, 2),
                "produce": round(produce_s, 2),
                "process": round(process_s, 2),
                "total": round(total_s, 2),
            },
        },
        "identity": identity,
        "missed": missed[:_SHOWN],
        "missed_total": len(missed),
        "missed_by_cause": dict(Counter(f"{m['rule']}:{m['cause']}" for m in missed)),
        "false_alerts": false[:_SHOWN],
        "false_alerts_total": len(false),
        "false_by_cause": dict(Counter(f"{f['rule']}:{f['cause']}" for f in false)),
    }
    causes = " ".join(f"{k}={v}" for k, v in sorted(metrics["missed_by_cause"].items()))
    false_causes = " ".join(f"{k}={v}" for k, v in sorted(metrics["false_by_cause"].items()))
    lines = [
        *format_report(result),
        *("OFFLINE" + line.removeprefix("EVAL") for line in format_report(offline)),
        *_side_by_side(result, offline, final, judged),
        *format_identity(pairwise),
        f"MISSED {causes or 'none'}",
        f"FALSE {false_causes or 'none'}",
        f"RUN customers={customers} seed={seed} now_ms={stream.now_ms} events={len(pairs)} "
        f"labels={len(stream.labels)} landed={landed} dead_letters={dead} "
        f"alerts={len(alerts)} merges={back.merges} "
        f"resolved_customers={identity['final']['resolved_customers']} "
        f"true_customers={identity['true_customers']} "
        f"settled={'yes' if settled else 'no'} seconds={total_s:.1f}",
    ]
    return metrics, "\n".join(lines)


async def _remove(settings: Settings) -> None:
    """Delete the eval deployment: topics and changelogs, database, data dir."""
    try:
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
    except Exception as exc:  # the numbers are in hand; say what is left behind
        log.warning("eval: could not delete topics %s*: %s", settings.topic_prefix, exc)
    try:
        client = await asyncio.to_thread(connect, settings)
        await asyncio.to_thread(
            client.command, f"DROP DATABASE IF EXISTS {settings.clickhouse_database}"
        )
    except Exception as exc:
        log.warning("eval: could not drop %s: %s", settings.clickhouse_database, exc)
    shutil.rmtree(settings.data_dir.parent, ignore_errors=True)
