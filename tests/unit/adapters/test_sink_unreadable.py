"""The sink never stops on a message it cannot read (no broker, no ClickHouse: ``add`` only)."""

from __future__ import annotations

from streams.adapters.sink import (
    UNREADABLE_DEAD_LETTER,
    UNREADABLE_OUTPUT,
    ClickHouseSink,
    default_routes,
)
from streams.settings import Settings
from streams.wire.dlq import parse_dead_letter_headers
from streams.wire.envelope import pack

NOW_MS = 1_765_000_000_000


def _sink() -> tuple[ClickHouseSink, Settings]:
    settings = Settings()
    sink = ClickHouseSink(
        client=None,  # type: ignore[arg-type]  # add() never touches the client
        database="db",
        routes=default_routes(settings),
        dead_letter_topic=settings.topics.dead_letter,
        max_dead_letter_bytes=4096,
    )
    return sink, settings


def test_garbage_on_every_output_topic_becomes_a_dead_letter_with_its_bytes() -> None:
    sink, settings = _sink()
    topics = settings.topics
    garbage = {
        topics.resolved: b"\x00\x01not an envelope",
        topics.identity_changes: b"{truncated",
        topics.aggregates: b"",
        topics.alerts: b"\x00\x00\x00\x00\x07\xff\xff",
    }
    for offset, (topic, value) in enumerate(garbage.items()):
        sink.add(topic, 1, offset, b"k", value, None, NOW_MS)
    assert sink.pending_rows == 0
    assert [d.reason for d in sink.rejected] == [UNREADABLE_OUTPUT] * len(garbage)
    for offset, (dead, (topic, value)) in enumerate(
        zip(sink.rejected, garbage.items(), strict=True)
    ):
        meta = parse_dead_letter_headers(dead.headers)
        assert dead.value == value and dead.key == b"k"
        assert meta["dlq.source.topic"] == topic
        assert (meta["dlq.source.partition"], meta["dlq.source.offset"]) == ("1", str(offset))
        assert meta["dlq.detail"]  # the exception, named


def test_rows_clickhouse_would_refuse_are_dead_lettered_not_retried_forever() -> None:
    sink, settings = _sink()
    wrong = [
        pack([["no_such_table", [1, 2, 3]]]),
        pack([["alert_partials", [1, 2]]]),  # a known table, too few values
        pack([["customer_360", list(range(500))]]),
    ]
    for offset, value in enumerate(wrong):
        sink.add(settings.topics.aggregates, 0, offset, None, value, None, NOW_MS)
    assert sink.pending_rows == 0
    assert [d.value for d in sink.rejected] == wrong
    assert all(d.reason == UNREADABLE_OUTPUT for d in sink.rejected)


def test_a_huge_unreadable_message_is_dead_lettered_truncated_to_fit() -> None:
    sink, settings = _sink()
    sink.add(settings.topics.aggregates, 0, 9, None, b"\xff" * 100_000, None, NOW_MS)
    (dead,) = sink.rejected
    meta = parse_dead_letter_headers(dead.headers)
    assert dead.size <= 4096
    assert meta["dlq.truncated"] == "true" and meta["dlq.original.size"] == "100000"


def test_dead_letters_with_headers_a_foreign_writer_got_wrong_still_become_rows() -> None:
    sink, settings = _sink()
    headers = [
        ("dlq.reason", b"whatever"),
        ("dlq.source.partition", b"minus one"),
        ("dlq.source.offset", b"-5"),
        ("dlq.failed_at", b"99999999999999999999999"),
        ("dlq.original.size", b"\xff\xfe"),
    ]
    sink.add(settings.topics.dead_letter, 2, 7, None, b"orig", headers, NOW_MS)
    assert sink.rejected == []  # never back onto the dead-letter topic: it would loop
    (row,) = sink.batches["dead_letters"].rows
    assert row[1:4] == [0, 0, "whatever"]
    assert row[5] == NOW_MS and row[6] == 4 and row[7] == b"orig"


def test_an_unreadable_dead_letter_is_stored_as_it_is() -> None:
    sink, settings = _sink()

    def broken(*_: object) -> list[tuple[str, list[object]]]:
        raise RuntimeError("cannot read")

    sink.routes = {**sink.routes, settings.topics.dead_letter: broken}
    sink.add(settings.topics.dead_letter, 3, 11, None, b"raw", None, NOW_MS)
    assert sink.rejected == []
    (row,) = sink.batches["dead_letters"].rows
    assert row[:4] == [settings.topics.dead_letter, 3, 11, UNREADABLE_DEAD_LETTER]
    assert row[7] == b"raw"
