"""Which failures take a batch apart (``streams.runtime.protocol.is_deterministic``)."""

from __future__ import annotations

import struct

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NotLeaderForPartitionError

from streams.runtime.protocol import is_deterministic
from streams.wire.codec import SchemaUnavailableError


def _raised(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("did not raise")


@pytest.mark.parametrize(
    "exc",
    [
        _raised(lambda: orjson.loads(b"{trunc")),
        _raised(lambda: {}["r"]),
        _raised(lambda: struct.unpack(">I", b"\x00")),
        _raised(lambda: b"\xff".decode()),
        TypeError("unhashable"),
        ZeroDivisionError(),
    ],
)
def test_bad_data_and_bugs_are_deterministic(exc: BaseException) -> None:
    assert is_deterministic(exc)


@pytest.mark.parametrize(
    "exc",
    [
        KafkaConnectionError(),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),
        ConnectionResetError(),
        TimeoutError(),
        SchemaUnavailableError("registry away"),
        RuntimeError("producer closed"),
    ],
)
def test_broker_network_and_registry_failures_are_retried_not_isolated(exc: BaseException) -> None:
    assert not is_deterministic(exc)
