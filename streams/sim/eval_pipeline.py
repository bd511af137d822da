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
from collections import Counter
from collections.abc import Callable
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
from streams.sim.eval_diagnosis import Back, identity_summary, misses, read_back, replay
from streams.sim.eval_identity import IdentityScore, PairScore, format_identity, score_identity
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
    ``final``, and when the detectors ran, ``judged``; see :func:`misses`), ``run``
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
    codec = AvroCodec(SchemaRegistry.from_dir(eval_settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_stream(stream, codec)
    say(
        f"{customers:,} customers, seed {seed}: {len(pairs):,} events, "
        f"{len(stream.labels)} labels (stream and offline run in {built_s:.1f}s); "
        f"deployment {eval_settings.topic_prefix}*"
    )
    done = await _through_pipeline(eval_settings, pairs, timeout, keep, say)
    built = _Built(customers, seed, stream, offline_alerts, offline, rules, built_s, started)
    identity_rules = _identity_rules(settings)
    max_age = widened or settings.max_event_age_seconds
    metrics, lines = _scored(built, done, eval_settings, keep, len(pairs), identity_rules, max_age)
    return metrics, "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class _Built:
    """The labelled stream and the offline run over it."""

    customers: int
    seed: int
    stream: LabelledStream
    offline_alerts: list[Alert]
    offline: EvalReport
    rules: Rules
    seconds: float  # to build both
    started: float  # time.monotonic() at the start of the eval


def _scored(
    built: _Built,
    done: _Run,
    eval_settings: Settings,
    keep: bool,
    events: int,
    identity_rules: IdentityRules,
    max_age: int,
) -> tuple[dict[str, Any], list[str]]:
    """The metrics and the report lines of a run (see :func:`run_eval`)."""
    customers, seed, stream, rules = built.customers, built.seed, built.stream, built.rules
    offline_alerts, offline = built.offline_alerts, built.offline
    back = done.back

    alerts = back.alerts
    result = evaluate(alerts, stream.labels, stream.normal_event_count)
    replays = {
        "offline": offline_alerts,
        "final": replay(stream, back.current, rules),
        "judged": replay(stream, back.at_ingest, rules),
    }
    final = evaluate(replays["final"], stream.labels, stream.normal_event_count)
    judged = evaluate(replays["judged"], stream.labels, stream.normal_event_count)
    missed, false = misses(stream, alerts, replays, back)
    identity = identity_summary(stream, back)
    pairwise = score_identity(stream.events, back.current, identity_rules)
    identity["pairwise"] = _pairwise_dict(pairwise)
    seconds = {"stream_and_offline": built.seconds, **done.seconds}
    seconds["total"] = time.monotonic() - built.started
    facts = _run_facts(eval_settings, keep, done, events, len(offline_alerts), max_age)
    facts["seconds"] = {name: round(value, 2) for name, value in seconds.items()}
    metrics: dict[str, Any] = {
        "customers": customers,
        "seed": seed,
        "now_ms": stream.now_ms,
        "events": events,
        "labels": len(stream.labels),
        "normal_events": stream.normal_event_count,
        "pipeline": _as_dict(result),
        "offline": _as_dict(offline),
        "by_identity": {"final": _as_dict(final), "judged": _as_dict(judged)},
        "run": facts,
        "identity": identity,
        "missed": missed[:_SHOWN],
        "missed_total": len(missed),
        "missed_by_cause": dict(Counter(f"{m['rule']}:{m['cause']}" for m in missed)),
        "false_alerts": false[:_SHOWN],
        "false_alerts_total": len(false),
        "false_by_cause": dict(Counter(f"{f['rule']}:{f['cause']}" for f in false)),
    }
    lines = [
        *format_report(result),
        *("OFFLINE" + line.removeprefix("EVAL") for line in format_report(offline)),
        *_side_by_side(result, offline, final, judged),
        *format_identity(pairwise),
        *_closing_lines(metrics, seconds["total"]),
    ]
    return metrics, lines


@dataclasses.dataclass(frozen=True, slots=True)
class _Run:
    """What the deployment did with the stream."""

    back: Back
    landed: int
    behind: dict[str, int]
    settled: bool
    seconds: dict[str, float]  # worker_start, produce, process


async def _through_pipeline(
    eval_settings: Settings,
    pairs: list[tuple[bytes, bytes]],
    timeout: float,
    keep: bool,
    say: Callable[[str], None],
) -> _Run:
    """Start the deployment, produce ``pairs``, wait until it settles, read it back, stop
    it (and remove it unless ``keep``)."""
    db = eval_settings.clickhouse_database
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
        back = await read_back(pipeline, db)
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
    seconds = {"worker_start": start_s, "produce": produce_s, "process": process_s}
    return _Run(back, landed, behind, settled, seconds)


def _run_facts(
    eval_settings: Settings,
    keep: bool,
    done: _Run,
    events: int,
    alerts_offline: int,
    max_event_age_seconds: int,
) -> dict[str, Any]:
    """``metrics["run"]``: the deployment, whether it settled, counts and timings."""
    back = done.back
    return {
        "deployment": {
            "app_id": eval_settings.app_id,
            "topic_prefix": eval_settings.topic_prefix,
            "clickhouse_database": eval_settings.clickhouse_database,
            "kept": keep,
        },
        "settled": done.settled,
        "behind": done.behind,
        "landed": done.landed,
        "dead_letters": back.dead_letters,
        "events_missing": events - len(back.at_ingest) - sum(back.dead_letters.values()),
        "alerts": len(back.alerts),
        "alerts_offline": alerts_offline,
        "merges": back.merges,
        "identity_refusals": back.refusals,
        "max_event_age_seconds": max_event_age_seconds,
        "seconds": {},  # the caller's
    }


def _pairwise_dict(pairwise: IdentityScore) -> dict[str, Any]:
    return {
        "overall": _pair_dict(pairwise.overall),
        "by_trap": {trap: _pair_dict(m) for trap, m in pairwise.by_trap.items()},
        "unattributed_events": pairwise.unattributed,
        "households": pairwise.households,
    }


def _closing_lines(metrics: dict[str, Any], total_s: float) -> list[str]:
    """The ``MISSED``, ``FALSE`` and ``RUN`` lines of the report."""
    causes = " ".join(f"{k}={v}" for k, v in sorted(metrics["missed_by_cause"].items()))
    false_causes = " ".join(f"{k}={v}" for k, v in sorted(metrics["false_by_cause"].items()))
    run, identity = metrics["run"], metrics["identity"]
    return [
        f"MISSED {causes or 'none'}",
        f"FALSE {false_causes or 'none'}",
        f"RUN customers={metrics['customers']} seed={metrics['seed']}"
        f" now_ms={metrics['now_ms']} events={metrics['events']}"
        f" labels={metrics['labels']} landed={run['landed']}"
        f" dead_letters={sum(run['dead_letters'].values())}"
        f" alerts={run['alerts']} merges={run['merges']} "
        f"resolved_customers={identity['final']['resolved_customers']} "
        f"true_customers={identity['true_customers']} "
        f"settled={'yes' if run['settled'] else 'no'} seconds={total_s:.1f}",
    ]


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
