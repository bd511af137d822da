"""Envelopes: chunks under the size limit, every record once, in order, bytes as orjson's."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.wire.envelope import pack_chunks, unpack

records = st.lists(
    st.fixed_dictionaries(
        {
            "k": st.text(max_size=300),
            "n": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "x": st.none() | st.booleans(),
        }
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(records, st.integers(min_value=16, max_value=4000))
def test_chunks_hold_every_record_once_in_order_under_the_limit(
    items: list[dict[str, Any]], max_bytes: int
) -> None:
    chunks = pack_chunks(items, max_bytes)
    assert [r for chunk in chunks for r in unpack(chunk)] == items
    for chunk in chunks:
        assert len(chunk) <= max_bytes or len(unpack(chunk)) == 1
        assert chunk == orjson.dumps(unpack(chunk))  # the bytes orjson gives for the list
    whole = orjson.dumps(items)
    if len(whole) <= max_bytes:
        assert chunks == [whole]


def test_a_lone_oversize_record_travels_alone() -> None:
    big = {"k": "x" * 100}
    chunks = pack_chunks([{"n": 1}, big, {"n": 2}], max_bytes=50)
    assert [unpack(c) for c in chunks] == [[{"n": 1}], [big], [{"n": 2}]]
