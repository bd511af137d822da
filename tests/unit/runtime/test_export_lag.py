"""The lag gauge of a batch never fails the batch (``PipelineProtocol._export_lag``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams import metrics
from streams.runtime.protocol import PipelineProtocol
from streams.wire.dlq import RawMessage


class _Consumer:
    """aiokafka's ``highwater`` asserts the partition is assigned: partition 1 was revoked."""

    def highwater(self, tp: Any) -> int:
        assert tp.partition == 0, "Partition is not assigned"
        return 10


def test_a_partition_revoked_under_a_finishing_batch_is_skipped_not_raised() -> None:
    host = SimpleNamespace(app=SimpleNamespace(consumer=_Consumer()))
    messages = [
        RawMessage("t.raw", 1, 7, None, b""),
        RawMessage("t.raw", 0, 3, None, b""),
        RawMessage("t.raw", 0, 4, None, b""),
    ]
    PipelineProtocol._export_lag(host, "lag-test", messages)  # type: ignore[arg-type]
    gauge = metrics.CONSUMER_LAG.labels("lag-test", "t.raw", "0")
    assert gauge._value.get() == 10 - 4 - 1
