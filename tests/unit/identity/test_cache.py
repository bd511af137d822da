"""Decoded identity states kept between batches (``streams.identity.cache``): handed out only
while the table holds the bytes they stand for, dropped on ``forget``, bounded, never for an
erased key; and the identity stage computes exactly what it computes without them."""

from __future__ import annotations

from typing import Any

from streams.identity.cache import DecodedStates, TableStates, hashed_key
from streams.identity.state import CustState, IdState
from streams.runtime.state import TableShard
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.stage_cpu import NOW_MS, one_pass
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage
from streams.wire.envelope import partition_for

N = 4


class Table:
    """A raw table as the worker's: UTF-8 keys, orjson bytes (``TableShard`` writes it)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        """(nothing to send)"""


def _key(partition: int, prefix: str = "email:") -> str:
    return next(k for i in range(1000) if partition_for(k := f"{prefix}{i}@x", N) == partition)


def _batch(table: Table, cache: DecodedStates, partition: int) -> tuple[TableStates, TableShard]:
    shard = TableShard(table)
    return TableStates(shard, table.data, N, partition, cache), shard


def _write(table: Table, cache: DecodedStates, key: str, state: Any) -> None:
    view, shard = _batch(table, cache, partition_for(key, N))
    view.put(key, state)
    shard.flush()
    view.remember()


def test_a_state_read_again_is_the_decoded_one_while_its_bytes_stand() -> None:
    table, cache = Table(), DecodedStates(100)
    key = _key(1)
    _write(table, cache, key, IdState("c1", first_seen_ms=5))
    assert table.data[hashed_key(key).encode()]  # stored under the hashed key, not in clear
    view, _ = _batch(table, cache, 1)
    first = view.get(key)
    assert first == IdState("c1", first_seen_ms=5)
    assert _batch(table, cache, 1)[0].get(key) is first  # not decoded again
    # a recovery (or any other writer) replaces the bytes: decoded again, from them
    table.data[hashed_key(key).encode()] = b'{"t":"id","customer":"c9","first_seen_ms":5}'
    again = _batch(table, cache, 1)[0].get(key)
    assert isinstance(again, IdState) and again.customer == "c9"


def test_forget_drops_what_a_failed_batch_changed_in_place() -> None:
    table, cache = Table(), DecodedStates(100)
    key = _key(2)
    _write(table, cache, key, IdState("c1"))
    view, _ = _batch(table, cache, 2)
    state = view.get(key)
    assert isinstance(state, IdState)
    state.customer = "c-mutated"  # a handler's change; its batch then fails before the flush
    assert _batch(table, cache, 2)[0].get(key) is state  # why the agent must forget
    cache.forget(2)
    fresh = _batch(table, cache, 2)[0].get(key)
    assert isinstance(fresh, IdState) and fresh.customer == "c1"


def test_bounded_and_no_erased_key_is_kept() -> None:
    table, cache = Table(), DecodedStates(3)
    keys = [_key(0, f"e{i}:") for i in range(5)]
    for key in keys:
        _write(table, cache, key, IdState("c1"))
    assert len(cache) == 3
    assert [cache.lookup(0, k) is not None for k in keys] == [False, False, True, True, True]
    _write(table, cache, keys[4], IdState(erased=True))
    assert cache.lookup(0, keys[4]) is None and len(cache) == 2
    assert _batch(table, cache, 0)[0].get(keys[4]) == IdState(erased=True)
    assert cache.lookup(0, keys[4]) is None
    customer = next(c for i in range(100) if partition_for(c := f"c{i:011x}", N) == 0)
    _write(table, cache, customer, CustState(7, erased=True))
    assert cache.lookup(0, customer) is None
    cache.forget(0)
    assert len(cache) == 0
    assert DecodedStates(0).max_keys == 0


def test_a_write_lands_under_the_hashed_key_only_in_its_partition() -> None:
    table, cache = Table(), DecodedStates(100)
    view, _ = _batch(table, cache, 0)
    try:
        view.put(_key(1), IdState("c1"))
    except RuntimeError as exc:
        assert "partition 1" in str(exc)
    else:
        raise AssertionError("a key of another partition was written")


def _run(cache_keys: int) -> Any:
    settings = Settings(identity_cache_keys=cache_keys)
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_events(generate(60, seed=7, now_ms=NOW_MS - 60_000), codec, seed=7)
    messages = [
        RawMessage("raw", partition_for(k.decode(), N), i, k, v, NOW_MS)
        for i, (k, v) in enumerate(pairs)
    ]
    return one_pass(messages, settings, codec, partitions=N, batch=40)


def test_the_identity_stage_computes_the_same_with_and_without_decoded_states() -> None:
    cached, plain = _run(100_000), _run(0)
    assert len(cached.states) > 100 and len(plain.states) == 0
    assert cached.identity_table.data == plain.identity_table.data
    assert cached.customer_table.data == plain.customer_table.data
    assert cached.customer_events == plain.customer_events > 200
    small = _run(10)  # evicting all the time
    assert len(small.states) <= 10
    assert small.identity_table.data == plain.identity_table.data
