"""Ingest -> identity -> customers chained, Kafka-free, on in-memory state.

The same pure steps the agents call, wired the way the agents wire them (the identity
stage's partitions simulated by ``identity.Simulator``, every hop through JSON as the
envelopes carry it, merge notices and hand-overs routed by customer partition), fed with
generated journeys plus the bad samples. Checks what the pipeline promises end to end:
every message is valid or dead-lettered with its reason, identity equals the offline
components, every valid event is counted exactly once in the aggregates (equal to a batch
recomputation), and alerts name known events of known customers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from streams.customers.detect import Alert
from streams.customers.items import event_item, merge_item
from streams.customers.recompute import recompute
from streams.customers.rows import AggregateRow, combine
from streams.customers.stage import POSITION_SCALE, CustomerStage
from streams.identity.graph import IdentityRules, Merge, Resolved, offline_components
from streams.identity.simulator import Simulator
from streams.ingest.stage import IngestPolicy, IngestStage, anchor_key, from_json
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.samples import bad_samples, valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage
from streams.wire.envelope import partition_for
from streams.wire.model import IDENTIFIER_KINDS, ResolvedEvent, TouchpointRecord
from tests.unit.customers.store import Store

NOW = 1_765_000_000_000
PARTITIONS = 4
CUSTOMERS = 60


def _wire(value: Any) -> Any:
    """Through JSON, as every envelope hop carries it."""
    return orjson.loads(orjson.dumps(value))


def _run() -> dict[str, Any]:
    settings = Settings()
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    # guards that cannot fire for this traffic: identity must equal plain components
    rules = IdentityRules.from_mapping(
        {
            "limits": dict.fromkeys(IDENTIFIER_KINDS, 10_000),
            "merge_caps": dict.fromkeys(IDENTIFIER_KINDS, 10_000),
        }
    )
    generated = generate(CUSTOMERS, seed=11, now_ms=NOW - 60_000, span_ms=3 * 3600 * 1000)
    pairs = encode_events(generated, codec)
    first = valid_template(NOW, event_id="dup-original")
    bad = bad_samples(codec, NOW, first)
    pairs = [(b"dup", codec.encode(first)), *pairs, *[(b.key, b.value) for b in bad]]
    messages = [
        RawMessage("raw", partition_for(key.decode(errors="replace"), PARTITIONS), i, key, value)
        for i, (key, value) in enumerate(pairs)
    ]

    # ingest, one batch per raw partition (dedupe is per partition)
    ingest = IngestStage(
        codec,
        IngestPolicy.from_settings(settings),
        dedupe_horizon_ms=3_600_000,
        is_blocked=rules.is_blocked,
    )
    by_partition: dict[int, list[RawMessage]] = defaultdict(list)
    for m in messages:
        by_partition[m.partition].append(m)
    valid: list[TouchpointRecord] = []
    dead: list[str] = []
    for p, batch in sorted(by_partition.items()):
        ingest.restore(p, [])
        result = ingest.process(batch, NOW)
        valid.extend(from_json(_wire(out.record)) for out in result.valid)
        dead.extend(d.reason for d in result.dead)

    # identity on PARTITIONS partitions, ops and outputs through JSON
    sim = Simulator(PARTITIONS, rules, seed=3, wire=True)
    sim.run(valid)

    # customers: resolved events and merge notices, by customer partition, in output order
    stage = CustomerStage(PARTITIONS, lateness_ms=24 * 3600 * 1000, pane_events=100_000)
    store = Store()
    pending: list[tuple[str, dict[str, Any]]] = []
    resolved: list[ResolvedEvent] = []
    for out in sim.outputs:
        if isinstance(out, Resolved) and out.customer:
            record = out.event
            pending.append(
                (out.customer, event_item(out.customer, _wire(record), anchor_key(record)))
            )
            resolved.append({"customer_id": out.customer, "record": record})  # type: ignore[typeddict-item]
        elif isinstance(out, Merge):
            notice = merge_item(out.survivor, out.absorbed, out.ts)
            pending.append((out.absorbed, notice))
            if partition_for(out.survivor, PARTITIONS) != partition_for(out.absorbed, PARTITIONS):
                pending.append((out.survivor, notice))
    rows: list[AggregateRow] = []
    alerts: list[Alert] = []
    offsets = [0] * PARTITIONS
    rounds = 0
    while pending:
        rounds += 1
        assert rounds < 20, "hand-overs did not settle"
        items: dict[int, list[tuple[int, Any]]] = defaultdict(list)
        for key, item in pending:
            p = partition_for(key, PARTITIONS)
            items[p].append((offsets[p] * POSITION_SCALE + len(items[p]), _wire(item)))
        for p in items:
            offsets[p] += 1
            if not stage.has_partition(p):
                stage.restore(p, store)
        out = stage.process(items, store, NOW)
        store.apply(out)
        rows.extend(out.aggregate_rows)
        alerts.extend(out.alerts)
        pending = list(out.handovers)
    return {
        "messages": messages,
        "bad": bad,
        "valid": valid,
        "dead": dead,
        "sim": sim,
        "rules": rules,
        "rows": rows,
        "alerts": alerts,
        "resolved": resolved,
    }


RUN = _run()


def test_every_message_is_valid_or_dead_lettered_with_its_reason() -> None:
    messages, valid, dead, bad = RUN["messages"], RUN["valid"], RUN["dead"], RUN["bad"]
    assert len(valid) >= CUSTOMERS * 5
    assert len(valid) + len(dead) == len(messages), "a message neither valid nor dead-lettered"
    assert sorted(dead) == sorted(b.reason for b in bad), "each bad sample, with its reason"
    ids = [r["event_id"] for r in valid]
    assert len(ids) == len(set(ids)), "a duplicate passed ingest"


def test_identity_equals_the_offline_components() -> None:
    sim, valid, rules = RUN["sim"], RUN["valid"], RUN["rules"]
    assert sim.components() == offline_components(valid, rules)
    merges = [o for o in sim.outputs if isinstance(o, Merge)]
    assert merges, "the journeys link cookies to logins later: merges must happen"


def test_every_valid_event_is_counted_once_and_equals_the_recomputation() -> None:
    streamed = combine(RUN["rows"])
    expected = recompute(RUN["resolved"])
    assert sum(m.events for m in streamed.values()) == len(RUN["valid"])
    assert set(streamed) == set(expected)
    for bucket, m in expected.items():
        got = streamed[bucket]
        assert (got.events, got.orders, got.revenue, got.contacts, got.csat_sum) == (
            m.events,
            m.orders,
            m.revenue,
            m.contacts,
            m.csat_sum,
        ), bucket


def test_alerts_name_known_events_of_known_customers() -> None:
    alerts: list[Alert] = RUN["alerts"]
    assert alerts, "generated journeys include failed self-service then contacts"
    event_ids = {r["event_id"] for r in RUN["valid"]}
    customers = {e["customer_id"] for e in RUN["resolved"]}
    for alert in alerts:
        assert alert["customer_id"] in customers, alert
        assert set(alert["event_ids"]) <= event_ids, alert
    assert len({a["alert_id"] for a in alerts}) == len(alerts), "an alert raised twice"
