"""Per-customer aggregate memory: recent contacts and failures, for repeat contacts and
channel switches after a failed self-service step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.customers.measures import (
    MINUTE_MS,
    REPEAT_CONTACT_MS,
    SWITCH_AFTER_FAILURE_MS,
    BucketKey,
    minute_of,
)


class _Contact:
    """A contact whose window is still open: its bucket and flags may still change."""

    __slots__ = ("bucket", "event_id", "repeat", "switch", "ts")

    def __init__(
        self, ts: int, event_id: str, bucket: BucketKey, repeat: bool, switch: bool
    ) -> None:
        self.ts = ts
        self.event_id = event_id
        self.bucket = bucket
        self.repeat = repeat
        self.switch = switch

    def to_list(self) -> list[Any]:
        return [self.ts, self.event_id, *self.bucket, int(self.repeat), int(self.switch)]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> _Contact:
        bucket: BucketKey = (int(v[2]), str(v[3]), str(v[4]), str(v[5]), str(v[6]))
        return cls(int(v[0]), str(v[1]), bucket, bool(v[7]), bool(v[8]))


class _Memory:
    """Per-customer memory for repeat contacts and channel switches.

    Contacts and failures in still-open windows are kept one by one; once their window
    closes only the latest time matters (every event accepted later is after it), and once
    that is beyond the 7-day / 1-hour horizon of anything still acceptable it is dropped.
    """

    __slots__ = ("contact_closed", "contacts", "failure_closed", "failures")

    def __init__(self) -> None:
        self.contact_closed: int | None = None
        self.failure_closed: int | None = None
        self.contacts: list[_Contact] = []
        self.failures: list[int] = []

    def empty(self) -> bool:
        return (
            self.contact_closed is None
            and self.failure_closed is None
            and not self.contacts
            and not self.failures
        )

    def absorb(self, other: _Memory) -> None:
        self.contact_closed = _max(self.contact_closed, other.contact_closed)
        self.failure_closed = _max(self.failure_closed, other.failure_closed)
        self.contacts.extend(other.contacts)
        self.failures.extend(other.failures)

    def compact(self, watermark: int) -> bool:
        """Fold closed windows into the ``*_closed`` times, drop what can no longer matter.

        Returns whether anything changed. Safe at any time: an event accepted later has
        ``t > watermark - 1 min``, so it is after every closed entry, and an entry older
        than ``watermark - 1 min - horizon`` is outside its horizon.
        """
        changed = False
        if self.contacts:
            keep = [c for c in self.contacts if c.bucket[0] + MINUTE_MS > watermark]
            if len(keep) != len(self.contacts):
                for c in self.contacts:
                    if c.bucket[0] + MINUTE_MS <= watermark:
                        self.contact_closed = _max(self.contact_closed, c.ts)
                self.contacts = keep
                changed = True
        if self.failures:
            closed = [f for f in self.failures if minute_of(f) + MINUTE_MS <= watermark]
            if closed:
                self.failure_closed = _max(self.failure_closed, max(closed))
                self.failures = [f for f in self.failures if minute_of(f) + MINUTE_MS > watermark]
                changed = True
        oldest = watermark - MINUTE_MS
        if self.contact_closed is not None and self.contact_closed < oldest - REPEAT_CONTACT_MS:
            self.contact_closed = None
            changed = True
        if (
            self.failure_closed is not None
            and self.failure_closed < oldest - SWITCH_AFTER_FAILURE_MS
        ):
            self.failure_closed = None
            changed = True
        return changed

    def to_list(self) -> list[Any]:
        return [
            self.contact_closed,
            self.failure_closed,
            [c.to_list() for c in self.contacts],
            list(self.failures),
        ]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> _Memory:
        m = cls()
        m.contact_closed = None if v[0] is None else int(v[0])
        m.failure_closed = None if v[1] is None else int(v[1])
        m.contacts = [_Contact.from_list(c) for c in v[2]]
        m.failures = [int(f) for f in v[3]]
        return m


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


PartialKey = tuple[
    int, int, str, str, str, str
]  # pane, minute, channel, event_type, country, segment
