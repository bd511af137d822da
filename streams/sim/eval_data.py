"""Labelled evaluation streams for the detectors, and the metrics that score them.

:func:`labelled_stream` takes normal traffic from :func:`streams.sim.generator.generate`
over several weeks, makes it a realistic *background* (see "Normal traffic" below),
and injects labelled anomalies and friction journeys for some customers, one scenario
per chosen customer:

=================================== ==================================================
rule                                injected
=================================== ==================================================
impossible_travel                   a home login, then 20-90 min later a payment with a
                                    geo on another continent (known browser, usual
                                    amount)
new_device_new_country_high_value   a payment of 1.5-5x the value threshold from a new
                                    device id in a country never used (customer with
                                    too few payments for amount statistics)
amount_outlier                      8-14 ordinary payments over a month, then one of
                                    10-40x the largest
velocity_burst                      5-7 card-testing payments, or 5-7 password resets,
                                    within 3-8 min
unusual_hour                        a web login and pages at the hour of the local day
                                    farthest from any hour the customer has used
                                    (customers with a long history only)
self_service_failed                 a failed web checkout, then a call 3-55 min later
high_effort                         three distinct contacts within 2-6 days
unhappy_valuable                    payments worth ~1.3-2x the high-value threshold,
                                    then a call and a CSAT 1-2 / NPS 0-4 survey (or a
                                    negative public mention when the handle is known)
complaint_unresolved                a call logged as a complaint and never resolved
=================================== ==================================================

Near misses (unlabelled, counted as normal) test the precision side: a real trip
(1,000-3,000 km, 8-14 h later, home days later), a payment declined twice then approved
within minutes, and two contacts three days apart, the first 2-3 h after a failed
checkout.

Each label is (customer, rule, injected event ids). An alert matches a label when the
rules are equal and the alert's ``event_ids`` share an id with the label; matching on
event ids (not customer ids) lets the same labels score the real pipeline, whose
customer ids come from identity resolution.

Normal traffic
--------------
The generator was built for short windows (two hours by default). Stretched over
weeks, three of its habits would read as anomalies, so the background is post-processed
in ``eval_background`` (the generator is left alone; each fix is counted in
``LabelledStream.notes``):

* sessions are placed uniformly over the 24 h of the day, so every customer is active at
  every hour: sessions are moved to the same day within the person's waking window
  (07-10h to 22-24h local, in the person's own time zone);
* the channel mix (12 % contact centre) means ~3 contacts per customer per month, and
  friction journeys (failed checkout -> call within the hour; complaints that nobody
  resolves) are built in: in the background, a failed web/app step that is followed by
  a contact within the hour is dropped (the contact stays), contact cases beyond two in
  any 7 days are dropped, and complaints get the resolving call-back that a real contact
  centre would make (2-30 h later, same case id). Friction then only occurs where it is
  injected and labelled;
* customers whose injected payments make them high-value lose the background's low
  CSAT/NPS answers and negative posts (else ``unhappy_valuable`` would rightly fire on
  them, unlabelled).

``raw_generator_alerts`` measures what the detectors say about the generator's output
untouched, for the record.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeVar

from streams.customers.detect import (
    RULE_NAMES,
    Detector,
    Rules,
    is_unhappy,
)
from streams.ingest.stage import Accepted, IngestPolicy, ingest_message
from streams.sim.eval_background import (
    DAY,
    DEFAULT_NOW_MS,
    Person,
    build_background,
    normal_stream,
    person_key,
)
from streams.sim.eval_inject import Injector
from streams.sim.eval_score import (
    DetectorMetrics,
    EvalReport,
    Label,
    evaluate,
    format_report,
    run_detector,
)
from streams.sim.generator import Traps, generate
from streams.wire.codec import AvroCodec
from streams.wire.model import (
    COMMERCE,
    TouchpointRecord,
    payload_body,
)

__all__ = [
    "DetectorMetrics",
    "EvalReport",
    "Label",
    "LabelledStream",
    "StreamEvent",
    "encode_stream",
    "evaluate",
    "format_report",
    "labelled_stream",
    "normal_stream",
    "raw_generator_alerts",
    "run_detector",
    "run_offline_eval",
]

DEFAULT_TRAPS: Final = Traps()


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One touchpoint of the evaluation stream, with its ground-truth customer."""

    record: TouchpointRecord
    customer_id: str  # the person's CRM id (ground truth, what resolution should find)
    person: int
    key: bytes  # Kafka key its producing system would use
    anomalous: bool = False  # one of the events a label points at
    trap: str = ""  # the identity trap it carries (``streams.sim.generator.Traps``), if any


@dataclass(slots=True)
class LabelledStream:
    events: list[StreamEvent]  # sorted by occurred_at
    labels: list[Label]
    now_ms: int
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def normal_event_count(self) -> int:
        return sum(1 for e in self.events if not e.anomalous)


def labelled_stream(
    customers: int = 2000,
    *,
    seed: int = 7,
    now_ms: int = DEFAULT_NOW_MS,
    span_days: float = 45.0,
    events_per_customer: float = 45.0,
    per_rule: int | None = None,
    rules: Rules | None = None,
    traps: Traps | None = DEFAULT_TRAPS,
) -> LabelledStream:
    """Normal background plus ``per_rule`` labelled scenarios per rule (default 2 %).

    The background carries the generator's identity ``traps`` (family tablets, shared
    emails, the contact centre's number, junk values; ``None``: none), each event
    tagged with its trap (``StreamEvent.trap``) for the pairwise identity score
    (:mod:`streams.sim.eval_identity`).
    """
    rules = rules or Rules.default()
    people, background, notes = build_background(
        customers, seed, now_ms, span_days, events_per_customer, traps or Traps.none()
    )
    per_rule = per_rule if per_rule is not None else max(3, customers // 50)
    rng = random.Random(seed * 104729 + 3)
    injector = Injector(rng, now_ms, rules)
    candidates = list(people.values())
    rng.shuffle(candidates)
    used: set[int] = set()
    labels, injected = _inject_scenarios(injector, candidates, used, per_rule, notes)
    injected += _inject_near_misses(injector, candidates, used, per_rule, notes)
    kept = {r["event_id"] for p in people.values() for r in p.events}
    keys = {e.record["event_id"]: e.key for e in background}
    events = [
        StreamEvent(
            e.record,
            people[e.person].customer_id,
            e.person,
            keys[e.record["event_id"]],
            trap=e.trap,
        )
        for e in background
        if e.record["event_id"] in kept
    ]
    events.extend(injected)
    events.sort(key=lambda e: e.record["occurred_at"])
    return LabelledStream(events, labels, now_ms, dict(notes))


_Built = TypeVar("_Built")


def _chosen(
    candidates: list[Person],
    used: set[int],
    limit: int,
    build: Callable[[Person], _Built | None],
) -> Iterator[tuple[Person, _Built]]:
    """Up to ``limit`` people not used yet, in order, for whom ``build`` makes something
    (each one then counts as used)."""
    made = 0
    for person in candidates:
        if made >= limit:
            return
        if person.index in used:
            continue
        built = build(person)
        if built is None:
            continue
        used.add(person.index)
        made += 1
        yield person, built


def _inject_scenarios(
    injector: Injector,
    candidates: list[Person],
    used: set[int],
    per_rule: int,
    notes: Counter[str],
) -> tuple[list[Label], list[StreamEvent]]:
    """``per_rule`` labelled scenarios of every rule, on people not used yet."""
    scenarios = {
        "impossible_travel": injector.impossible_travel,
        "new_device_new_country_high_value": injector.new_device_new_country,
        "amount_outlier": injector.amount_outlier,
        "velocity_burst": injector.velocity_burst,
        "unusual_hour": injector.unusual_hour,
        "self_service_failed": injector.self_service_failed,
        "high_effort": injector.high_effort,
        "unhappy_valuable": injector.unhappy_valuable,
        "complaint_unresolved": injector.complaint_unresolved,
    }
    assert tuple(scenarios) == RULE_NAMES
    unhappy = injector.rules.unhappy_valuable
    labels: list[Label] = []
    injected: list[StreamEvent] = []
    for rule in RULE_NAMES:
        made = 0
        for person, (records, anomalous) in _chosen(candidates, used, per_rule, scenarios[rule]):
            made += 1
            if any(payload_body(r, COMMERCE) for r in records):
                # Injected payments can make the customer high-value: keep their
                # background free of the unhappy signals that rule looks for.
                before = len(person.events)
                person.events = [r for r in person.events if not is_unhappy(r, unhappy)]
                notes["unhappy signals dropped (customers made high-value)"] += before - len(
                    person.events
                )
            labels.append(Label(person.customer_id, rule, tuple(anomalous)))
            marked = set(anomalous)
            injected.extend(
                StreamEvent(
                    r, person.customer_id, person.index, person_key(person), r["event_id"] in marked
                )
                for r in records
            )
        notes[f"scenarios injected: {rule}"] = made
    return labels, injected


def _inject_near_misses(
    injector: Injector,
    candidates: list[Person],
    used: set[int],
    per_rule: int,
    notes: Counter[str],
) -> list[StreamEvent]:
    """Near misses for the precision side: normal behaviour close to a rule's threshold."""
    decoys = {
        "trip": injector.trip,
        "payment_retry": injector.payment_retry,
        "two_contacts": injector.two_contacts,
    }
    injected: list[StreamEvent] = []
    for name, build in decoys.items():
        made = 0
        for person, decoy in _chosen(candidates, used, per_rule, build):
            made += 1
            injected.extend(
                StreamEvent(r, person.customer_id, person.index, person_key(person)) for r in decoy
            )
        notes[f"near misses injected: {name}"] = made
    return injected


def encode_stream(stream: LabelledStream, codec: AvroCodec) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs in the Confluent wire format, in event-time order."""
    return [(e.key, codec.encode(e.record)) for e in stream.events]  # type: ignore[arg-type]


def raw_generator_alerts(
    customers: int,
    *,
    seed: int = 7,
    now_ms: int = DEFAULT_NOW_MS,
    span_days: float = 45.0,
    events_per_customer: float = 45.0,
    rules: Rules | None = None,
) -> tuple[int, Counter[str]]:
    """Alerts per rule on the generator's output as is (no post-processing, no injection)."""
    raw = generate(
        customers,
        seed=seed,
        now_ms=now_ms,
        span_ms=int(span_days * DAY),
        events_per_customer=events_per_customer,
    )
    alerts = run_detector(((f"person-{e.person}", e.record) for e in raw), Detector(rules), now_ms)
    return len(raw), Counter(a["rule"] for a in alerts)


def _ingested(stream: LabelledStream, codec: AvroCodec) -> list[tuple[str, TouchpointRecord]]:
    """Every event through Avro and the ingest step, as the pipeline would see it."""
    policy = IngestPolicy()
    out: list[tuple[str, TouchpointRecord]] = []
    for e in stream.events:
        outcome = ingest_message(codec.encode(e.record), codec, policy, stream.now_ms)  # type: ignore[arg-type]
        if not isinstance(outcome, Accepted):
            raise ValueError(f"event {e.record['event_id']} fails ingest: {outcome}")
        out.append((e.customer_id, outcome.record))
    return out


def run_offline_eval(
    customers: int = 2000,
    seed: int = 7,
    *,
    rules: Rules | None = None,
    codec: AvroCodec | None = None,
    now_ms: int = DEFAULT_NOW_MS,
) -> EvalReport:
    """The pure detector over a labelled stream, per customer in event-time order.

    With a ``codec``, events go through Avro encoding and ``ingest_message`` first (and
    any that fail validation raise).
    """
    stream = labelled_stream(customers, seed=seed, now_ms=now_ms, rules=rules)
    if codec is not None:
        events = _ingested(stream, codec)
    else:
        events = [(e.customer_id, e.record) for e in stream.events]
    alerts = run_detector(events, Detector(rules), now_ms)
    return evaluate(alerts, stream.labels, stream.normal_event_count)
