"""CPU per event of each worker stage's batch body, offline: no Kafka, no Faust.

``python -m streams.sim.stage_cpu --customers 1000 --passes 5`` generates touchpoints and
runs them through what the agents run per batch (``streams.runtime.agents``): ingest
``check`` + frames, dedupe + envelopes, identity (envelope decode, LINK ops, the node over a
hashed orjson table, resolution memory, op and output envelopes until no ops are left), the
customer stage (envelope decode, ``process`` over an orjson table, hand-overs, rows). Tables
hold bytes, as Faust's raw tables do. Prints the best ``time.process_time`` of the passes per
stage, in µs per event: steadier than the pipeline bench on a shared machine, to compare a
change to the pure steps side by side (run old and new alternately).
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import orjson

from streams.customers.detect import Detector, Rules
from streams.customers.items import ItemKind, event_item, merge_item
from streams.customers.stage import POSITION_SCALE, CustomerStage, encode_rows
from streams.identity.cache import DecodedStates, TableStates
from streams.identity.graph import (
    IdentityNode,
    IdentityRules,
    Merge,
    ResolutionMemory,
    Resolved,
    link_ops,
    op_from_json,
    op_to_json,
    output_to_json,
)
from streams.ingest.stage import IngestPolicy, IngestStage
from streams.runtime.state import TableShard
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.wire.checked import pack_frames
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage
from streams.wire.envelope import (
    MAX_ENVELOPE_BYTES,
    group_by_partition,
    pack_chunks,
    partition_for,
    unpack,
)
from streams.wire.valid import pack_valid, read_valid

__all__ = ["STAGES", "Pass", "measure", "one_pass"]

STAGES = ("ingest", "dedupe", "identity", "customers")
NOW_MS = 1_765_000_000_000
HORIZON_MS = 3_600_000

Message = tuple[int, int, bytes]  # partition, offset, value


class BytesTable:
    """A raw table: UTF-8 keys, orjson values (``streams.runtime.state.StoredView``)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.data.get(key.encode())
        return default if raw is None else orjson.loads(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.encode() in self.data

    def items_with_prefix(self, prefix: str) -> Iterator[tuple[str, Any]]:
        start = prefix.encode()
        for key, raw in list(self.data.items()):
            if key.startswith(start):
                yield key.decode(), orjson.loads(raw)

    def put(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key.encode(), None)
        else:
            self.data[key.encode()] = bytes(memoryview(orjson.dumps(value)))

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        """(``TableShard.flush``: nothing to send offline.)"""


@dataclass
class Pass:
    """One pass over the messages: fresh stages and tables, CPU seconds per stage."""

    partitions: int
    settings: Settings
    codec: AvroCodec
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    customer_events: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self) -> None:
        n, settings = self.partitions, self.settings
        self.rules = IdentityRules()
        self.ingest = IngestStage(
            self.codec,
            IngestPolicy.from_settings(settings),
            dedupe_horizon_ms=HORIZON_MS,
            is_blocked=self.rules.is_blocked,
            partitions=n,
        )
        self.node = IdentityNode(self.rules)
        self.customers = CustomerStage(
            n,
            lateness_ms=3 * HORIZON_MS,
            pane_events=settings.aggregate_pane_events,
            detector=Detector(Rules.default()),
            dedupe_horizon_ms=HORIZON_MS,
            cache_entries=settings.customer_cache_entries,
        )
        self.dedupe_table, self.identity_table = BytesTable(), BytesTable()
        self.customer_table = BytesTable()
        self.memories = {p: ResolutionMemory(HORIZON_MS) for p in range(n)}
        self.states = DecodedStates(settings.identity_cache_keys)

    def _send(self, topic: str, partition: int, chunk: bytes) -> Message:
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] = offset + 1
        return partition, offset, chunk

    def batch(self, messages: list[RawMessage]) -> None:
        """One raw batch through the four stages, each timed on its own."""
        clock = time.process_time
        started = clock()
        checked = self.ingest_batch(messages)
        ingested = clock()
        valid = self.dedupe_batch(checked)
        deduped = clock()
        resolved = self.identity_batches(valid)
        identified = clock()
        self.customer_batches(resolved)
        done = clock()
        self.seconds["ingest"] += ingested - started
        self.seconds["dedupe"] += deduped - ingested
        self.seconds["identity"] += identified - deduped
        self.seconds["customers"] += done - identified

    def ingest_batch(self, messages: list[RawMessage]) -> list[Message]:
        result = self.ingest.check(messages, NOW_MS)
        return [
            self._send("checked", p, chunk)
            for p, frames in result.checked.items()
            for chunk in pack_frames(frames, MAX_ENVELOPE_BYTES)
        ]

    def dedupe_batch(self, checked: list[Message]) -> list[Message]:
        result = self.ingest.dedupe.process(checked, NOW_MS)
        for _, key, value in result.state_puts:
            self.dedupe_table.put(key, value)
        return [
            self._send("valid", p, chunk)
            for p, items in result.valid.items()
            for chunk in pack_valid(items, MAX_ENVELOPE_BYTES)
        ]

    def identity_batches(self, valid: list[Message]) -> list[Message]:
        """The valid envelopes, then the ops they cause, until no ops are left."""
        resolved: list[Message] = []
        incoming = [("valid", m) for m in valid]
        while incoming:
            ops, outputs = self._identity_step(incoming)
            incoming = [
                ("ops", self._send("ops", p, chunk))
                for p, items in group_by_partition(ops, self.partitions).items()
                for chunk in pack_chunks(items)
            ]
            resolved.extend(self._identity_outputs(outputs))
        return resolved

    def _identity_step(
        self, incoming: list[tuple[str, Message]]
    ) -> tuple[list[tuple[str, Any]], list[Any]]:
        by_partition: dict[int, list[Any]] = defaultdict(list)
        first: dict[int, int] = {}
        for topic, (p, offset, value) in incoming:
            ops = by_partition[p]
            first.setdefault(p, offset)
            if topic == "valid":
                for v in read_valid(value):
                    event = {"a": v.anchor, "r": v.record_json()}
                    ops.extend(link_ops(v.keys, v.event_id, v.ts, event, self.rules)[0])
            else:
                ops.extend(op_from_json(item) for item in unpack(value))
        out_ops: list[tuple[str, Any]] = []
        outputs: list[Any] = []
        shard, table = TableShard(self.identity_table), self.identity_table
        views = []
        for p, ops in by_partition.items():
            views.append(TableStates(shard, table.data, self.partitions, p, self.states))
            fx = self.node.handle_batch(ops, views[-1], NOW_MS)
            out_ops.extend((op.routing_key, op_to_json(op)) for op in fx.ops)
            memory = self.memories[p]
            stamped = [memory.stamp(o) for o in fx.outputs if isinstance(o, Resolved)]
            outputs.extend(stamped)
            outputs.extend(o for o in fx.outputs if not isinstance(o, Resolved))
            entry = memory.remember(f"resolution:{p}:{first[p]}", stamped, NOW_MS)
            if entry is not None:
                self.identity_table.put(f"resolution:{p}:{first[p]}", entry)
        shard.flush()  # (the worker: after the batch's ops and outputs are delivered)
        for view in views:
            view.remember()
        return out_ops, outputs

    def _identity_outputs(self, outputs: list[Any]) -> list[Message]:
        n = self.partitions
        items: list[tuple[str, Any]] = []
        changes: list[tuple[str, Any]] = []
        for out in outputs:
            if isinstance(out, Resolved):
                event, customer = out.event, out.customer or ""
                key = out.via or event["a"]
                items.append((customer or out.event_id, event_item(customer, event["r"], key)))
                continue
            changes.append((out.id, output_to_json(out)))
            if isinstance(out, Merge):
                notice = merge_item(out.survivor, out.absorbed, out.ts)
                items.append((out.absorbed, notice))
                if partition_for(out.survivor, n) != partition_for(out.absorbed, n):
                    items.append((out.survivor, notice))
                orjson.dumps(output_to_json(out))  # the identity.merges record
        for records in group_by_partition(changes, n).values():
            pack_chunks(records)  # identity.changes
        return [
            self._send("resolved", p, chunk)
            for p, records in group_by_partition(items, n).items()
            for chunk in pack_chunks(records)
        ]

    def customer_batches(self, resolved: list[Message]) -> None:
        """The resolved envelopes, then the hand-overs they cause, until none are left."""
        stage, table = self.customers, self.customer_table
        while resolved:
            items: dict[int, list[tuple[int, Any]]] = defaultdict(list)
            for p, offset, value in resolved:
                base = offset * POSITION_SCALE
                items[p].extend(
                    (base + i, item)
                    for i, item in enumerate(unpack(value))
                    if item["t"] != ItemKind.EVENT or item["c"]
                )
            for p in items:
                if not stage.has_partition(p):
                    stage.restore(p, table)
            out = stage.process(items, table, NOW_MS)
            self.customer_events += out.events
            resolved = [
                self._send("resolved", p, chunk)
                for p, handovers in group_by_partition(out.handovers, self.partitions).items()
                for chunk in pack_chunks(handovers)
            ]
            pack_chunks(encode_rows([*out.aggregate_rows, *out.alert_rows, *out.c360_rows]))
            for _, key, value in out.state_puts:
                table.put(key, value)


def one_pass(
    messages: list[RawMessage], settings: Settings, codec: AvroCodec, partitions: int, batch: int
) -> Pass:
    run = Pass(partitions, settings, codec)
    for start in range(0, len(messages), batch):
        run.batch(messages[start : start + batch])
    return run


def measure(
    customers: int, passes: int, partitions: int = 8, batch: int = 2000
) -> tuple[int, dict[str, float]]:
    """(events, best µs of CPU per event per stage and in total) over ``passes`` passes."""
    settings = Settings()
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_events(generate(customers, seed=1, now_ms=NOW_MS - 60_000), codec, seed=1)
    messages = [
        RawMessage("raw", partition_for(k.decode(errors="replace"), partitions), i, k, v, NOW_MS)
        for i, (k, v) in enumerate(pairs)
    ]
    gc.freeze()  # as the worker runs (streams.runtime.gc_tuning)
    gc.set_threshold(50_000)
    best: dict[str, float] = {}
    for _ in range(passes):
        run = one_pass(messages, settings, codec, partitions, batch)
        seconds = {**run.seconds, "total": sum(run.seconds.values())}
        for stage, value in seconds.items():
            best[stage] = min(best.get(stage, value), value)
    n = len(messages)
    return n, {stage: value / n * 1e6 for stage, value in best.items()}


@click.command()
@click.option("--customers", default=1000, show_default=True, help="Generated customers.")
@click.option("--passes", default=5, show_default=True, help="Passes; the best one counts.")
def main(customers: int, passes: int) -> None:
    """Offline CPU per event of each worker stage (best of the passes)."""
    events, us = measure(customers, passes)
    figures = " ".join(f"{stage}_us_per_event={value:.1f}" for stage, value in us.items())
    click.echo(f"STAGES events={events} passes={passes} {figures}")


if __name__ == "__main__":
    main()
