"""Batch slices (``streams.runtime.memory.slices``) and the allocator hand-back."""

from __future__ import annotations

import ctypes.util
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.memory import message_bytes, release_free_memory, slices


def test_runs_stay_under_the_cap_in_order() -> None:
    sizes = [3, 3, 3, 3, 3]
    assert slices(sizes, 7, int) == [[3, 3], [3, 3], [3]]


def test_an_item_larger_than_the_cap_is_a_run_of_its_own() -> None:
    assert slices([1, 20, 1, 1], 5, int) == [[1], [20], [1, 1]]
    assert slices([20], 5, int) == [[20]]


def test_no_cap_or_one_item_is_one_run_and_nothing_is_no_run() -> None:
    assert slices([5, 5, 5], 0, int) == [[5, 5, 5]]
    assert slices([9], 1, int) == [[9]]
    assert slices([], 10, int) == []


@given(st.lists(st.integers(min_value=0, max_value=50)), st.integers(min_value=1, max_value=100))
def test_slices_keep_every_item_once_in_order_and_respect_the_cap(
    sizes: list[int], cap: int
) -> None:
    items = list(enumerate(sizes))
    runs = slices(items, cap, lambda item: item[1])
    assert [item for run in runs for item in run] == items
    for run in runs:
        assert run, "an empty run"
        assert len(run) == 1 or sum(n for _, n in run) <= cap


def test_message_bytes_counts_key_and_value() -> None:
    event = SimpleNamespace(message=SimpleNamespace(key=b"abc", value=b"12345"))
    assert message_bytes(event) == 8
    assert message_bytes(SimpleNamespace(message=SimpleNamespace(key=None, value=None))) == 0


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to ask")
def test_release_free_memory_reaches_glibc() -> None:
    has_trim = hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim")
    assert release_free_memory() is has_trim


def test_c_heap_is_read_where_glibc_reports_it() -> None:
    from streams.runtime.memory import c_heap

    libc = ctypes.util.find_library("c")
    heap = c_heap()
    if libc is None or not hasattr(ctypes.CDLL(libc), "mallinfo2"):
        assert heap is None
        return
    assert heap is not None
    held = bytearray(4 << 20)  # above the mmap threshold: counted as in use
    in_use, free = c_heap() or (0, 0)
    assert in_use >= heap[0] + len(held) - (1 << 20)
    assert free >= 0
    del held
