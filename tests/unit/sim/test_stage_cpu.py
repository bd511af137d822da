"""The offline stage harness wires the stages as the agents do: every generated event goes
through ingest, dedupe and identity and is counted once by the customer stage."""

from __future__ import annotations

from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.stage_cpu import NOW_MS, STAGES, one_pass
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage
from streams.wire.envelope import partition_for


def test_every_generated_event_reaches_the_customer_stage_once() -> None:
    settings = Settings()
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    pairs = encode_events(generate(40, seed=3, now_ms=NOW_MS - 60_000), codec, seed=3)
    messages = [
        RawMessage("raw", partition_for(k.decode(), 4), i, k, v, NOW_MS)
        for i, (k, v) in enumerate(pairs)
    ]
    # a replayed copy of the first batch's messages: dropped by dedupe, counted once
    run = one_pass([*messages, *messages[:50]], settings, codec, partitions=4, batch=100)
    assert len(messages) > 200
    assert run.customer_events == len(messages)
    assert set(run.seconds) == set(STAGES)
    assert all(seconds > 0 for seconds in run.seconds.values()), run.seconds
    assert run.customer_table.data and run.identity_table.data and run.dedupe_table.data
