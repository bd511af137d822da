"""The customer stage: everything keyed by resolved customer, one batch at a time.

Consumes the items of ``touchpoints.resolved`` (partitioned by customer id; the kinds and
shapes are ``streams.customers.items``): events resolved to a customer (counted and judged),
events that followed a moved profile to its survivor (judged only), merge notices, hand-overs
of aggregate memory and of behaviour profiles to the survivor's partition, and erasures;
and runs the pure steps on them: rolling aggregates (``streams.customers.aggregates``), the
customer 360, and the detectors (``streams.customers.detect``) over each customer's profile.
Faust-free: the agent feeds items, persists ``state_puts`` through a ``TableShard`` and
produces ``rows``, ``alerts`` and ``handovers``.

Exactly-once effect: the identity stage is at-least-once, so after a crash it re-sends
resolved events it had already sent, in new envelopes (new offsets). Each partition
remembers the event ids it has applied (``seen|<partition>|<position>`` entries, one per
batch, expiring after ``dedupe_horizon_ms`` of processing time) and skips a resolved event
it has already seen; merge notices and hand-overs are de-duplicated by input position.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from streams.customers.aggregates import AggregatorState
from streams.customers.c360 import Customer360Book, Customer360State
from streams.customers.cache import DEFAULT_CACHE_ENTRIES, MISSING, DecodedCache
from streams.customers.detect import Alert, Detector, Profile
from streams.customers.items import (
    Item,
    ItemKind,
    handover_item,
    judge_item,
    profile_item,
)
from streams.customers.rows import (
    AGGREGATE_COLUMNS,
    ALERT_COLUMNS,
    CUSTOMER_360_COLUMNS,
    AggregateRow,
    AlertRow,
    Customer360Row,
    Row,
    money_text,
)
from streams.identity.ids import is_household
from streams.ingest.stage import DedupeBatch, Deduplicator, from_json
from streams.wire import keys
from streams.wire.envelope import partition_for
from streams.wire.model import MergeNotice, ResolvedEvent

__all__ = [
    "CustomerOutputs",
    "CustomerStage",
    "decode_row",
    "encode_rows",
]

POSITION_SCALE = 100_000  # item position = envelope offset * scale + index in the envelope


# Keys whose decoded values the stage reads again by key (the rest live in its memory)
_CACHED_KEYS: tuple[str, ...] = (keys.profile(""), keys.c360(""), keys.moved(""))
_MAX_HOPS = 8  # a chain of merges longer than this is judged where it stands
_Judged = tuple[ResolvedEvent, Any, int]  # an event to judge, its record as JSON, its hops


_MONEY_COLUMNS: dict[str, tuple[int, ...]] = {
    table: tuple(i for i, c in enumerate(cols) if c in ("revenue", "lifetime_value"))
    for table, cols in (
        ("cx_partials", AGGREGATE_COLUMNS),
        ("customer_360", CUSTOMER_360_COLUMNS),
        ("alert_partials", ALERT_COLUMNS),
    )
}


def encode_rows(rows: Sequence[Row]) -> list[list[Any]]:
    """Rows for the aggregates topic: ``[table, values]``. Money maps go as exact strings
    (``str`` of the Decimals ``decode_row`` makes of them again)."""
    return [[r.TABLE, r.values(money_text)] for r in rows]


def decode_row(item: Sequence[Any]) -> tuple[str, list[Any]]:
    table, values = str(item[0]), list(item[1])
    for i in _MONEY_COLUMNS.get(table, ()):
        values[i] = {k: Decimal(v) for k, v in values[i].items()}
    return table, values


@dataclass
class CustomerOutputs:
    aggregate_rows: list[AggregateRow] = field(default_factory=list)
    alert_rows: list[AlertRow] = field(default_factory=list)
    c360_rows: list[Customer360Row] = field(default_factory=list)
    handovers: list[tuple[str, Item]] = field(default_factory=list)  # (routing key, item)
    alerts: list[Alert] = field(default_factory=list)
    state_puts: list[tuple[int, str, Any]] = field(default_factory=list)
    late_events: int = 0
    events: int = 0
    duplicates: int = 0  # resolved events skipped: already applied (an upstream replay)


class _StoreView(MutableMapping[str, Any]):
    """The customer-360 store as the book sees it (``Customer360State``s, ``live``): read
    from the decoded cache, else the table; writes queued (the states themselves)."""

    def __init__(
        self, data: Any, cache: DecodedCache, outputs: CustomerOutputs, partitions: int
    ) -> None:
        self.data = data
        self.cache = cache
        self.outputs = outputs
        self.partitions = partitions
        self.written: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.written:
            return self.written[key]
        stored = keys.c360(key)
        value = self.cache.get(stored)
        if value is MISSING:
            saved = self.data.get(stored)
            if saved is None:
                raise KeyError(key)
            value = Customer360State.from_dict(saved)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        stored = keys.c360(str(key))
        return key in self.written or stored in self.cache or stored in self.data

    def __setitem__(self, key: str, value: Any) -> None:
        self.written[key] = value
        self.outputs.state_puts.append((partition_for(key, self.partitions), keys.c360(key), value))

    def __delitem__(self, key: str) -> None:  # pragma: no cover - the book never deletes
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - the book never iterates
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover
        raise NotImplementedError


def _resolved(item: Any) -> ResolvedEvent:
    return {"customer_id": item["c"], "record": from_json(item["r"])}


class _Batch:
    """What one ``process`` call shares across partitions: its outputs, the 360 book, and
    the profiles it touched (``None``: moved away or erased), written once at the end."""

    def __init__(self, stage: CustomerStage, data: Any, now_ms: int) -> None:
        self.detector = stage.detector
        self.stage = stage
        self.data = data
        self.now_ms = now_ms
        self.out = CustomerOutputs()
        store = _StoreView(data, stage.cache, self.out, stage.partitions)
        self.book = Customer360Book(store, live=True)
        self.profiles: dict[str, Profile | None] = {}
        self.moved: dict[str, str] = {}  # absorbed customer -> survivor, as far as known here

    def profile(self, customer_id: str) -> Profile:
        known = self.profiles.get(customer_id)
        if known is not None:
            return known
        saved = (
            None
            if customer_id in self.profiles
            else self.stage.stored_profile(self.data, customer_id)
        )
        loaded = Profile(customer_id) if saved is None else saved
        self.profiles[customer_id] = loaded
        return loaded

    def moved_to(self, customer_id: str) -> str | None:
        """The survivor a customer's profile went to on a merge (None: it lives here).
        Identity partitions learn of a merge at different times, so events resolved to the
        absorbed id still arrive after its profile left; they follow it."""
        if self.profiles.get(customer_id) is not None:
            return None
        if customer_id not in self.moved and customer_id not in self.profiles:
            saved = self.stage.stored_profile(self.data, customer_id)
            if saved is not None:
                self.profiles[customer_id] = saved
                return None
            key = keys.moved(customer_id)
            target = self.stage.cache.get(key)
            if target is MISSING:
                target = self.data.get(key)
            if target is not None:
                self.moved[customer_id] = str(target)
        return self.moved.get(customer_id)

    def raise_alerts(self, state: AggregatorState, customer: str, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.out.alerts.append(alert)
            state.add_alert(alert["rule"], alert["severity"], alert["occurred_at"])
            self.book.set_alert(customer, alert["rule"], True, self.now_ms)

    def judge(self, state: AggregatorState, events: list[_Judged]) -> None:
        """The detectors over a run of events (event, record as JSON, hops), each customer's
        in event-time order (stable: equal times keep their arrival order). A batch is a
        slice of one partition, whose events can arrive out of event-time order (a
        customer's events come through different identity partitions, and catch-up reads
        one partition far ahead of another): judging them sorted removes the disorder inside
        a batch. Aggregates and the 360 count positions, not judgements, and keep arrival
        order. An event of a customer whose profile moved to a survivor is sent after it
        (a judge item) to the survivor's partition."""
        for event, raw, hops in sorted(events, key=lambda e: e[0]["record"]["occurred_at"]):
            customer = event["customer_id"]
            if is_household(customer):
                # A shared device or email's own customer is no one person: a "new device"
                # or "impossible travel" across its members' activity is noise. Counted in
                # the aggregates and its 360, never judged.
                continue
            target = self.moved_to(customer)
            if target is not None and hops < _MAX_HOPS:
                self.out.handovers.append((target, judge_item(target, raw, hops + 1)))
                continue
            updated, alerts = self.detector.process(
                self.profile(customer), event["record"], self.now_ms
            )
            self.profiles[customer] = updated
            self.raise_alerts(state, customer, alerts)
        events.clear()


class CustomerStage:
    def __init__(
        self,
        partitions: int,
        *,
        lateness_ms: int,
        pane_events: int,
        detector: Detector | None = None,
        rolling_ms: int = 0,  # every batch: a quiet stream must not strand open partials
        dedupe_horizon_ms: int = 3_600_000,  # 0: off (replayed resolved events count twice)
        cache_entries: int = DEFAULT_CACHE_ENTRIES,  # decoded values kept (0: off)
    ) -> None:
        self.dedupe_horizon_ms = dedupe_horizon_ms
        self.cache = DecodedCache(cache_entries)
        self._seen: dict[int, Deduplicator] = {}
        # per partition: customer -> when a deadline rule is next due (``due|<p>`` entries),
        # so the minute tick reads a handful of profiles instead of scanning them all
        self._due: dict[int, dict[str, int]] = {}
        self.detector = detector or Detector()
        self.rolling_ms = rolling_ms
        self._last_rolling: dict[int, int] = {}
        self.partitions = partitions
        self.lateness_ms = lateness_ms
        self.pane_events = pane_events
        self._states: dict[int, AggregatorState] = {}
        # per partition: (latest event time, processing time it arrived): the deadline clock
        self._event_clock: dict[int, tuple[int, int]] = {}

    def has_partition(self, partition: int) -> bool:
        return partition in self._states

    def forget(self, partition: int) -> None:
        """Drop a partition's in-memory state (revoked, or its batch failed: the next batch
        restores it from the table), and the decoded cache whole (``streams.customers.cache``)."""
        self.cache.clear()
        self._states.pop(partition, None)
        self._seen.pop(partition, None)
        self._due.pop(partition, None)
        self._event_clock.pop(partition, None)

    def restore(self, partition: int, data: Any) -> None:
        """Rebuild a partition's aggregator from its table entries (after assignment)."""
        saved = data.get(keys.aggregator(partition))
        if saved is None:
            state = AggregatorState(
                partition, lateness_ms=self.lateness_ms, pane_events=self.pane_events
            )
        else:
            prefix = keys.memory_prefix(partition)
            memory = {k[len(prefix) :]: v for k, v in data.items_with_prefix(prefix)}
            state = AggregatorState.from_dict(saved, customers=memory)
        self._states[partition] = state
        seen = Deduplicator(self.dedupe_horizon_ms)
        prefix = keys.seen_prefix(partition)
        seen.restore(
            [
                DedupeBatch(key, int(v["seen_ms"]), tuple(v["ids"]))
                for key, v in data.items_with_prefix(prefix)
            ]
        )
        self._seen[partition] = seen
        self._due[partition] = {
            str(k): int(v) for k, v in (data.get(keys.due(partition)) or {}).items()
        }

    def process(
        self, items: dict[int, list[tuple[int, Any]]], data: Any, now_ms: int
    ) -> CustomerOutputs:
        """``items``: per partition, (position, item) in order. ``data``: the table store."""
        batch = _Batch(self, data, now_ms)
        # Written last: a partition's changelog records land in order, so after a crash
        # mid-flush an event id is remembered only if everything it updated landed too.
        seen_puts: list[tuple[int, str, Any]] = []
        for partition, entries in items.items():
            seen_puts.extend(self._process_partition(batch, partition, entries))
        out = batch.out
        out.c360_rows.extend(batch.book.flush())
        changed_due: set[int] = set()
        for customer_id, touched in batch.profiles.items():
            part = partition_for(customer_id, self.partitions)
            if touched is not None:
                out.state_puts.append((part, keys.profile(customer_id), touched))
            if self._set_due(part, customer_id, touched):
                changed_due.add(part)
        out.state_puts.extend(self._due_puts(changed_due))
        out.state_puts.extend(seen_puts)
        self._remember(out.state_puts)
        return out

    def stored_profile(self, data: Any, customer_id: str) -> Profile | None:
        """A customer's stored profile: the decoded cache's, else the table's."""
        key = keys.profile(customer_id)
        profile = self.cache.get(key)
        if profile is MISSING:
            saved = data.get(key)
            return None if saved is None else Profile.from_dict(saved)
        return cast("Profile | None", profile)

    def _remember(self, state_puts: list[tuple[int, str, Any]]) -> None:
        """The decoded values a batch writes (those read by key again) into the cache."""
        cache = self.cache
        if cache.capacity:
            for _, key, value in state_puts:
                if key.startswith(_CACHED_KEYS):
                    cache.put(key, value)

    def _process_partition(
        self, batch: _Batch, partition: int, entries: list[tuple[int, Any]]
    ) -> list[tuple[int, str, Any]]:
        """One partition's items in order; returns its ``seen|`` writes (written last)."""
        out, now_ms = batch.out, batch.now_ms
        state = self._states[partition]
        to_judge: list[_Judged] = []  # judged before the next non-event item
        seen = self._seen.setdefault(partition, Deduplicator(self.dedupe_horizon_ms))
        fresh: list[str] = []
        pending: set[str] = set()
        events_before = out.events
        late_before = state.late_events
        for position, item in entries:
            kind = item["t"]
            if kind == ItemKind.EVENT:
                if self.dedupe_horizon_ms > 0:
                    event_id = item["r"]["event_id"]
                    if seen.is_duplicate(event_id, pending):
                        out.duplicates += 1
                        continue
                    pending.add(event_id)
                    fresh.append(event_id)
                event = _resolved(item)
                state.add(event, now_ms, position)
                batch.book.add(event, now_ms, position)
                out.events += 1
                to_judge.append((event, item["r"], 0))
                continue
            if kind == ItemKind.JUDGE:  # followed its customer's profile here: not counted
                to_judge.append((_resolved(item), item["r"], int(item.get("n", 1))))
                continue
            if to_judge:  # merges, hand-overs and erasures see the events before them
                batch.judge(state, to_judge)
            if kind == ItemKind.MERGE:
                self._on_merge(batch, state, partition, item, position)
            elif kind == ItemKind.HANDOVER:
                state.accept_handover(item, position)
            elif kind == ItemKind.ERASED:
                self._on_erased(batch, state, partition, item["c"])
            elif kind == ItemKind.PROFILE:
                self._on_profile(batch, state, item)
        if to_judge:
            batch.judge(state, to_judge)
        if out.events > events_before and state.max_ts is not None:
            self._event_clock[partition] = (state.max_ts, now_ms)
        out.late_events += state.late_events - late_before
        rolling = now_ms - self._last_rolling.get(partition, 0) >= self.rolling_ms
        if rolling:
            self._last_rolling[partition] = now_ms
        out.aggregate_rows.extend(state.flush(now_ms, final_only=not rolling))
        out.alert_rows.extend(state.flush_alerts(now_ms, final_only=not rolling))
        for customer_id, memory in state.take_customer_changes().items():
            out.state_puts.append((partition, keys.memory(partition, customer_id), memory))
        out.state_puts.append(
            (partition, keys.aggregator(partition), state.to_dict(customers=False))
        )
        seen_puts: list[tuple[int, str, Any]] = []
        if fresh:
            key = keys.seen(partition, entries[0][0])
            seen.remember(key, fresh, now_ms)
            seen_puts.append((partition, key, {"seen_ms": now_ms, "ids": fresh}))
        seen_puts.extend((partition, key, None) for key in seen.expire(now_ms))
        return seen_puts

    def _on_merge(
        self, batch: _Batch, state: AggregatorState, partition: int, item: Any, position: int
    ) -> None:
        notice: MergeNotice = {
            "survivor": item["s"],
            "absorbed": item["a"],
            "merged_at": item["at"],
        }
        handover = state.apply_merge(notice, position)
        absorbed_id, survivor_id = notice["absorbed"], notice["survivor"]
        home = partition_for(absorbed_id, self.partitions) == partition
        if home:
            # Only where the absorbed customer lives: its 360 entry counts input positions
            # of that partition. (The notice also reaches the survivor's partition; a worker
            # that owns both would otherwise stamp the 360 with a position of the wrong
            # partition and skip the absorbed customer's later events.)
            batch.book.apply_merge(notice, batch.now_ms, position)
        if home and batch.moved_to(absorbed_id) is None:  # (else: a replayed notice)
            # Where the absorbed customer lived, it now points at the survivor (events
            # resolved to it before identity knew follow: ``moved_to``, which has also
            # loaded its profile if it has one).
            moving = batch.profiles.get(absorbed_id)
            if moving is not None:
                batch.out.handovers.append(
                    (survivor_id, profile_item(survivor_id, moving.to_dict()))
                )
            batch.moved[absorbed_id] = survivor_id
            batch.profiles[absorbed_id] = None
            batch.out.state_puts.append((partition, keys.profile(absorbed_id), None))
            batch.out.state_puts.append((partition, keys.moved(absorbed_id), survivor_id))
        if handover is not None:
            if partition_for(survivor_id, self.partitions) == partition:
                state.accept_handover(handover, None)
            else:
                batch.out.handovers.append((survivor_id, handover_item(handover)))

    def _on_erased(self, batch: _Batch, state: AggregatorState, partition: int, gone: str) -> None:
        """Erased: forget the customer's profile, aggregate memory and 360."""
        batch.profiles[gone] = None
        batch.book.touched.pop(gone, None)
        state.memory.pop(gone, None)
        for key in (keys.profile(gone), keys.c360(gone), keys.memory(partition, gone)):
            batch.out.state_puts.append((partition, key, None))

    def _on_profile(self, batch: _Batch, state: AggregatorState, item: Any) -> None:
        """An absorbed customer's profile joins the survivor's (detectors re-judge)."""
        survivor_id = item["s"]
        target = batch.moved_to(survivor_id)
        if target is not None:  # the survivor was absorbed in turn: follow it
            batch.out.handovers.append((target, {**item, "s": target}))
            return
        merged, alerts = self.detector.merge(
            batch.profile(survivor_id), Profile.from_dict(item["p"]), batch.now_ms
        )
        batch.profiles[survivor_id] = merged
        batch.raise_alerts(state, survivor_id, alerts)

    def _set_due(self, partition: int, customer_id: str, profile: Profile | None) -> bool:
        """Track when ``customer_id``'s deadline rules are next due; True if that changed."""
        due = self._due.setdefault(partition, {})
        at = None if profile is None else self.detector.next_tick_ms(profile)
        if at is None:
            return due.pop(customer_id, None) is not None
        if due.get(customer_id) == at:
            return False
        due[customer_id] = at
        return True

    def _due_puts(self, partitions: set[int]) -> list[tuple[int, str, Any]]:
        return [(p, keys.due(p), dict(self._due.get(p, {}))) for p in sorted(partitions)]

    def deadline_clock(self, partition: int, now_ms: int, idle_ms: int) -> int:
        """The time deadline rules are judged at on ``partition``: the event time it has
        reached while events flow (a catch-up replays days in minutes, and a complaint
        whose resolving call-back is still in the backlog is not overdue), the processing
        time once nothing has arrived for ``idle_ms`` (caught up: a quiet customer's
        deadline passes by the clock)."""
        seen = self._event_clock.get(partition)
        if seen is None or now_ms - seen[1] >= idle_ms:
            return now_ms
        return min(now_ms, seen[0])

    def tick(
        self, partitions: Sequence[int], data: Any, now_ms: int, idle_ms: int = 60_000
    ) -> CustomerOutputs:
        """Deadline-driven rules (e.g. complaint unresolved) of ``partitions``' customers
        whose next deadline has passed (by ``deadline_clock``); the others are not read."""
        out = CustomerOutputs()
        changed: set[int] = set()
        for partition in partitions:
            if not self.has_partition(partition):
                self.restore(partition, data)
            clock = self.deadline_clock(partition, now_ms, idle_ms)
            due = [c for c, at in self._due.get(partition, {}).items() if at <= clock]
            for customer_id in due:
                profile = self.stored_profile(data, customer_id)
                if profile is not None:
                    profile, alerts = self.detector.tick(profile, now_ms, at_ms=clock)
                    out.alerts.extend(alerts)
                    out.state_puts.append((partition, keys.profile(customer_id), profile))
                if self._set_due(partition, customer_id, profile):
                    changed.add(partition)
        out.state_puts.extend(self._due_puts(changed))
        self._remember(out.state_puts)
        return out
