"""Issue 12, item 4: first wins across raw partitions (``streams.ingest.dedupe``) and the
``touchpoints.checked`` frames it reads (``streams.wire.checked``)."""

from __future__ import annotations

import orjson
import pytest

from streams.ingest.dedupe import DUPLICATE_REASON, DedupeStage, FirstWins, Seen
from streams.ingest.stage import Reason
from streams.wire.checked import frame, iter_frames, pack_frames
from streams.wire.dlq import parse_dead_letter_headers
from streams.wire.envelope import join_chunks, pack_chunks

NOW = 1_765_000_000_000


def _frame(event_id: str, origin: tuple[int, int], valid_partition: int = 0) -> bytes:
    item = orjson.dumps({"a": f"email:{event_id}@x", "r": {"event_id": event_id}})
    value = f"raw bytes of {event_id} at {origin}".encode()
    return frame(event_id, "web", valid_partition, item, "t.raw", *origin, NOW, b"key", value)


def test_frames_round_trip_byte_for_byte() -> None:
    item = orjson.dumps({"a": "phone:+44", "r": {"event_id": "é-1", "x": [1, 2]}})
    raw = b"\x00\x00\x00\x00\x01avro\xff"
    data = frame("é-1", "contact", 3, item, "p.touchpoints.raw", 2, 2**40, None, None, raw)
    data += frame("e2", "web", 0, b"{}", "p.touchpoints.raw", 0, 0, NOW, b"", b"")
    first, second = iter_frames(data)
    assert (first.event_id, first.channel, first.partition, first.item) == (
        "é-1",
        "contact",
        3,
        item,
    )
    assert (first.source_topic, first.origin, first.timestamp_ms) == (
        "p.touchpoints.raw",
        (2, 2**40),
        None,
    )
    assert (first.key, first.value) == (None, raw)
    assert (second.key, second.value, second.timestamp_ms) == (b"", b"", NOW)


def test_a_message_cut_inside_a_frame_is_refused() -> None:
    data = _frame("a", (0, 1))
    with pytest.raises((ValueError, UnicodeDecodeError)):
        list(iter_frames(data[:-3]))


def test_frames_are_packed_under_the_limit_in_order() -> None:
    frames = [_frame(f"e{i}", (0, i)) for i in range(10)]
    messages = pack_frames(frames, max_bytes=3 * len(frames[0]))
    assert len(messages) == 4 and all(len(m) <= 3 * len(frames[0]) for m in messages)
    assert [f.event_id for m in messages for f in iter_frames(m)] == [f"e{i}" for i in range(10)]


def test_join_chunks_gives_the_bytes_pack_chunks_gives() -> None:
    records = [{"a": f"k{i}", "r": {"n": i, "s": "x" * (i * 37)}} for i in range(40)]
    parts = [orjson.dumps(r) for r in records]
    assert join_chunks(parts, max_bytes=900) == pack_chunks(records, max_bytes=900)


def test_the_first_copy_wins_and_a_later_copy_is_dead_lettered_with_its_own_bytes() -> None:
    stage = DedupeStage(horizon_ms=3_600_000)
    first = _frame("same", (0, 10), valid_partition=1)
    other = _frame("same", (3, 4), valid_partition=2)  # another raw partition, other anchor
    result = stage.process([(0, 100, first), (0, 101, other)], NOW)
    (forwarded,) = result.valid[1]
    assert forwarded == next(iter_frames(first)).item and 2 not in result.valid
    (dead,) = result.dead
    meta = parse_dead_letter_headers(dead.headers)
    assert (dead.reason, dead.key, dead.value) == (
        "duplicate_event_id",
        b"key",
        next(iter_frames(other)).value,
    )
    assert (meta["dlq.source.topic"], meta["dlq.source.partition"], meta["dlq.source.offset"]) == (
        "t.raw",
        "3",
        "4",
    )
    assert result.replayed == 0 and result.channels == {"web": 1}
    assert [(p, k, v["ids"]) for p, k, v in result.state_puts] == [(0, "0:100", ["same"])]


def test_a_replay_of_the_same_raw_position_is_dropped_within_a_batch_and_after_restart() -> None:
    """Ingest retried (or crashed after sending): the same frames arrive again."""
    stage = DedupeStage(horizon_ms=3_600_000)
    frames = b"".join(_frame(f"r{i}", (2, 50 + i)) for i in range(3))
    result = stage.process([(1, 7, frames), (1, 8, frames)], NOW)
    assert len(result.valid[0]) == 3 and result.replayed == 3 and not result.dead

    restarted = DedupeStage(horizon_ms=3_600_000)
    restarted.restore(1, [(k, v) for _, k, v in result.state_puts])
    again = restarted.process([(1, 9, frames + _frame("r0", (2, 99)))], NOW + 1000)
    assert not again.valid and again.replayed == 3
    assert [d.reason for d in again.dead] == ["duplicate_event_id"]
    assert not again.state_puts  # nothing new to remember


def test_state_expires_after_the_horizon_and_is_bounded() -> None:
    wins = FirstWins(horizon_ms=1000)
    assert wins.remember("0:0", {"a": (0, 0), "b": (0, 1)}, now_ms=0) is not None
    wins.remember("0:2", {"c": (1, 0)}, now_ms=900)
    assert wins.check("a", (5, 5), {}) == Seen.DUPLICATE
    assert wins.expire(now_ms=1500) == ["0:0"]
    assert wins.check("a", (5, 5), {}) == Seen.NEW and wins.check("c", (1, 0), {}) == Seen.REPLAY
    capped = FirstWins(horizon_ms=10**9, max_ids=4)
    for i in range(5):
        capped.remember(f"0:{i}", {f"e{i}a": (0, 2 * i), f"e{i}b": (0, 2 * i + 1)}, now_ms=i)
    assert capped.expire(now_ms=10) == ["0:0", "0:1", "0:2"] and len(capped) == 4


def test_a_horizon_of_zero_forwards_every_copy_and_keeps_nothing() -> None:
    stage = DedupeStage(horizon_ms=0)
    result = stage.process([(0, 0, _frame("x", (0, 0)) + _frame("x", (1, 0)))], NOW)
    assert len(result.valid[0]) == 2 and not result.dead and not result.state_puts


def test_the_reason_is_the_ingest_reason() -> None:
    assert DUPLICATE_REASON == Reason.DUPLICATE_EVENT_ID.value
