"""What keeps a worker's resident memory from ratcheting up over a long run.

Measured (one worker, 200k events of 5,000 customers, ``sys._debugmallocstats`` and glibc's
``mallinfo2`` at 20 %, 60 % and 100 %): the live Python objects do not grow with the events
(104-165 MB in pymalloc's blocks, 101-139 MB in use in the C heap), but the process's
resident size follows the *largest batch so far*. A backlog makes big takes: a take of
``INGEST_BATCH_SIZE`` messages on an internal topic is up to 2,000 envelopes of up to 512 KiB,
i.e. tens of thousands of events decoded at once (the customer stage also holds every
touched customer's decoded profile until the batch is written). After such a batch its
memory is free, but pymalloc keeps the 1 MiB arenas that a few long-lived objects pin (at
the end: 256 arenas, 268 MB, 104 MB of it in use) and glibc keeps its free chunks (118 of
223 MB free); ``malloc_trim(0)`` at the end gave 101 MB back (512 -> 411 MiB RSS).

So:

* ``release_free_memory``: every ``MALLOC_TRIM_SECONDS`` the worker asks glibc to return
  its free pages (``malloc_trim(0)`` also releases free pages inside the heap, not only
  its top). A no-op where the C library has no ``malloc_trim`` (musl, macOS).
* ``slices`` (off by default, ``BATCH_MAX_BYTES``): a taken batch processed in consecutive
  slices of at most that many message bytes, each a whole batch of its own (output, state,
  acks in order), so what a batch holds decoded no longer grows with the backlog. At 4 MiB
  it cut pymalloc's arenas at the end from 256 to 177, but a customer touched in several
  slices has its profile read, re-encoded and written to the changelog once per slice:
  measured offline the customer stage went 129-142 -> 181-195 us/event (slices of 3-6k
  events against batches of 20k), end to end the worker ~+18 % in catch-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["c_heap", "message_bytes", "release_free_memory", "slices"]

T = TypeVar("T")


def slices(items: Sequence[T], max_bytes: int, size: Callable[[T], int]) -> list[Sequence[T]]:
    """``items`` cut, in order, into consecutive runs of at most ``max_bytes`` by ``size``;
    a run holds at least one item (one larger than ``max_bytes`` is a run of its own).
    ``max_bytes <= 0``: one run. Nothing is dropped, duplicated or reordered."""
    if max_bytes <= 0 or len(items) <= 1:
        return [items] if items else []
    runs: list[Sequence[T]] = []
    start, held = 0, 0
    for i, item in enumerate(items):
        n = size(item)
        if i > start and held + n > max_bytes:
            runs.append(items[start:i])
            start, held = i, 0
        held += n
    runs.append(items[start:])
    return runs


def message_bytes(event: Any) -> int:
    """Key + value bytes of a Faust event's message."""
    message = event.message
    return len(message.value or b"") + len(message.key or b"")


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None


_LIBC = _libc()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    info = getattr(_LIBC, "mallinfo2", None)  # glibc >= 2.33
    if info is None:
        return None
    info.argtypes = []
    info.restype = _MallInfo2
    return info  # type: ignore[no-any-return]


_INFO = _mallinfo2()


def c_heap() -> tuple[int, int] | None:
    """The C heap's bytes in use and free (kept by the allocator), or None if unknown.
    Python's own small objects live in pymalloc's arenas beside it, not in these figures."""
    if _INFO is None:
        return None
    info = _INFO()
    return int(info.uordblks) + int(info.hblkhd), int(info.fordblks)


def _malloc_trim() -> Callable[[int], int] | None:
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Hand the C allocator's free pages back to the system; False where it cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
