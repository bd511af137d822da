"""The customer stage's cache of decoded table values (``streams.customers.cache``): the
stage computes exactly what it computes from the table alone (a worker recovering from the
changelog), whatever the cache holds, evicts or forgets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson
import pytest

from streams.customers.c360 import Customer360State
from streams.customers.cache import MISSING, DecodedCache
from streams.customers.detect import Detector, Profile, Rules
from streams.customers.items import ItemKind
from streams.customers.stage import POSITION_SCALE, CustomerOutputs, CustomerStage, encode_rows
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.stage_cpu import NOW_MS, BytesTable, Pass
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage
from streams.wire.envelope import group_by_partition, pack_chunks, partition_for, unpack

PARTITIONS = 4
HOUR = 3_600_000
Message = tuple[int, int, bytes]


def test_the_cache_is_a_bounded_lru_and_holds_no_deleted_value() -> None:
    lru = DecodedCache(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the least recently used
    lru.put("c", 3)
    assert (lru.get("b"), lru.get("a"), lru.get("c"), len(lru)) == (MISSING, 1, 3, 2)
    lru.put("a", None)  # deleted in the table: nothing held
    assert lru.get("a") is MISSING and "a" not in lru
    off = DecodedCache(0)
    off.put("a", 1)
    assert off.get("a") is MISSING and len(off) == 0
    with pytest.raises(ValueError, match="capacity"):
        DecodedCache(-1)


# --------------------------------------------------------------------------- a workload


class _Recording(Pass):
    """The offline harness, keeping what reaches the customer stage in each round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rounds: list[list[Message]] = []

    def customer_batches(self, resolved: list[Message]) -> None:
        self.rounds.append(list(resolved))
        super().customer_batches(resolved)


@cache
def _rounds() -> tuple[tuple[Message, ...], ...]:
    """Resolved envelopes of generated traffic (merges included), batch by batch."""
    settings = Settings()
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_events(generate(150, seed=5, now_ms=NOW_MS - 60_000), codec, seed=5)
    messages = [
        RawMessage("raw", partition_for(k.decode(), PARTITIONS), i, k, v, NOW_MS)
        for i, (k, v) in enumerate(pairs)
    ]
    run = _Recording(PARTITIONS, settings, codec)
    for start in range(0, len(messages), 250):
        run.batch(messages[start : start + 250])
    return tuple(tuple(r) for r in run.rounds)


def _stage(cache_entries: int) -> CustomerStage:
    return CustomerStage(
        PARTITIONS,
        lateness_ms=3 * HOUR,
        pane_events=1_000,
        detector=Detector(Rules.default()),
        dedupe_horizon_ms=HOUR,
        cache_entries=cache_entries,
    )


def _items(resolved: list[Message]) -> dict[int, list[tuple[int, Any]]]:
    items: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    for p, offset, value in resolved:
        items[p].extend(
            (offset * POSITION_SCALE + i, item)
            for i, item in enumerate(unpack(value))
            if item["t"] != ItemKind.EVENT or item["c"]
        )
    return items


def _seen(out: CustomerOutputs) -> bytes:
    """What a batch or tick produced, as bytes (the state as the table stores it)."""
    return orjson.dumps(
        {
            "rows": sorted(orjson.dumps(r).decode() for r in encode_rows(out.aggregate_rows)),
            "alert_rows": encode_rows(out.alert_rows),
            "c360_rows": encode_rows(out.c360_rows),
            "alerts": [dict(a) for a in out.alerts],
            "handovers": out.handovers,
            "state": sorted((p, k, orjson.dumps(v).decode()) for p, k, v in out.state_puts),
        }
    )


def _run(stage_for: Callable[[], CustomerStage]) -> tuple[list[bytes], list[CustomerStage]]:
    """Every round through ``stage_for()``'s stage (then its hand-overs, until none are
    left), each batch's state stored through JSON, and a deadline tick after each round.
    Returns what each step produced and the stages used."""
    table = BytesTable()
    produced: list[bytes] = []
    used: list[CustomerStage] = []
    offsets = dict.fromkeys(range(PARTITIONS), 10**6)  # hand-overs: after the recorded ones

    def store(out: CustomerOutputs) -> None:
        produced.append(_seen(out))
        for _, key, value in out.state_puts:
            table.put(key, value)

    for i, recorded in enumerate(_rounds()):
        now = NOW_MS + i * 12 * HOUR
        resolved = list(recorded)
        while resolved:
            stage = stage_for()
            used.append(stage)
            items = _items(resolved)
            for p in items:
                if not stage.has_partition(p):
                    stage.restore(p, table)
            out = stage.process(items, table, now)
            store(out)
            resolved = []
            for p, handovers in group_by_partition(out.handovers, PARTITIONS).items():
                for chunk in pack_chunks(handovers):
                    resolved.append((p, offsets[p], chunk))
                    offsets[p] += 1
        stage = stage_for()
        store(stage.tick(range(PARTITIONS), table, now + HOUR, idle_ms=0))
    return produced, used


def test_a_worker_computes_with_its_cache_what_it_computes_from_the_table_alone() -> None:
    long_lived = _stage(20_000)
    cached, _ = _run(lambda: long_lived)
    recovering, _ = _run(lambda: _stage(20_000))  # a new worker for every batch and tick
    uncached_stage = _stage(0)
    uncached, _ = _run(lambda: uncached_stage)
    tiny_stage = _stage(3)  # evicting all the time
    tiny, _ = _run(lambda: tiny_stage)
    assert long_lived.cache.hits > 100 and len(long_lived.cache) > 100
    assert tiny_stage.cache.hits > 0 and len(tiny_stage.cache) == 3
    assert uncached_stage.cache.hits == 0
    assert len(cached) == len(recovering) > len(_rounds())
    for i, step in enumerate(cached):
        assert step == recovering[i], f"step {i} differs from a recovering worker's"
        assert step == uncached[i], f"step {i} differs without the cache"
        assert step == tiny[i], f"step {i} differs with a tiny cache"
    # the workload judges, alerts, merges and ticks (what the cache must get right)
    everything = b"".join(cached)
    for needle in (b'"rule"', b'"t":"p"', b"prof|", b"moved|", b"complaint_unresolved"):
        assert needle in everything, needle


def test_a_cached_value_is_what_decoding_its_stored_bytes_gives() -> None:
    stage = _stage(20_000)
    _run(lambda: stage)
    held = dict(stage.cache._entries)
    kinds = {key.split("|")[0] for key in held}
    assert kinds == {"prof", "360", "moved"}, kinds
    decode: dict[str, Callable[[Any], Any]] = {
        "prof": Profile.from_dict,
        "360": Customer360State.from_dict,
        "moved": str,
    }
    for key, value in held.items():
        again = decode[key.split("|")[0]](orjson.loads(orjson.dumps(value)))
        assert again == value, key


def test_a_failed_batch_is_retried_from_the_table_not_from_what_it_changed_in_memory() -> None:
    rounds = _rounds()

    def attempt(stage: CustomerStage, table: BytesTable) -> bytes:
        items = _items(list(rounds[1]))
        for p in items:
            if not stage.has_partition(p):
                stage.restore(p, table)
        return _seen(stage.process(items, table, NOW_MS + HOUR))

    def stored_first_round(stage: CustomerStage) -> BytesTable:
        table = BytesTable()
        items = _items(list(rounds[0]))
        for p in items:
            stage.restore(p, table)
        for _, key, value in stage.process(items, table, NOW_MS).state_puts:
            table.put(key, value)
        return table

    stage = _stage(20_000)
    table = stored_first_round(stage)
    first = attempt(stage, table)  # its state never stored: the batch failed
    assert len(stage.cache) > 0
    for p in range(PARTITIONS):
        stage.forget(p)  # what the agent does on a failure
    assert len(stage.cache) == 0
    assert attempt(stage, table) == first
    # A forget that kept the cache: the retry would see the failed try's changes in the
    # cached (live) profiles and 360 states, and differ.
    careless = _stage(20_000)
    table = stored_first_round(careless)
    assert attempt(careless, table) == first
    kept = dict(careless.cache._entries)
    for p in range(PARTITIONS):
        careless.forget(p)
    for key, value in kept.items():
        careless.cache.put(key, value)
    assert attempt(careless, table) != first
