"""The customer stage: everything keyed by resolved customer, one batch at a time.

Consumes the items of ``touchpoints.resolved`` (partitioned by customer id):

* ``{"t": "e", "c": customer_id, "r": record, "a": anchor}`` — a touchpoint resolved to a
  customer (``anchor``: the identifier it was routed by, the ``identity_key`` in ClickHouse);
* ``{"t": "m", "s": survivor, "a": absorbed, "at": ms}`` — a merge notice;
* ``{"t": "h", ...}`` — a hand-over of aggregate memory to the survivor's partition;
* ``{"t": "p", "s": survivor, "p": profile}`` — an absorbed customer's behaviour profile;
* ``{"t": "d", "c": survivor, "r": record, "n": hops}`` — an event resolved to a customer
  whose profile had already moved to this survivor: judged by the detectors, not counted
  (its own partition counted it);
* ``{"t": "x", "c": customer_id}`` — the customer was erased: forget everything of it.

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
from typing import Any

from streams.customers.aggregates import (
    AGGREGATE_COLUMNS,
    ALERT_COLUMNS,
    CUSTOMER_360_COLUMNS,
    AggregateRow,
    AggregatorState,
    AlertRow,
    Customer360Book,
    Customer360Row,
    Row,
)
from streams.customers.detect import Alert, Detector, Profile
from streams.ingest.stage import DedupeBatch, Deduplicator, from_json
from streams.wire.envelope import partition_for
from streams.wire.model import MergeNotice, ResolvedEvent

__all__ = [
    "CustomerOutputs",
    "CustomerStage",
    "decode_row",
    "encode_rows",
    "event_item",
    "merge_item",
]

POSITION_SCALE = 100_000  # item position = envelope offset * scale + index in the envelope


def event_item(customer_id: str, record: Any, anchor: str) -> dict[str, Any]:
    return {"t": "e", "c": customer_id, "r": record, "a": anchor}


def merge_item(survivor: str, absorbed: str, at_ms: int) -> dict[str, Any]:
    return {"t": "m", "s": survivor, "a": absorbed, "at": at_ms}


def judge_item(customer_id: str, record: Any, hops: int = 1) -> dict[str, Any]:
    """An event that followed its customer's profile to the survivor: judged, not counted."""
    return {"t": "d", "c": customer_id, "r": record, "n": hops}


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
    """Rows for the aggregates topic: ``[table, values]``. Money maps go as exact strings."""
    out = []
    for r in rows:
        values = r.values()
        for i in _MONEY_COLUMNS[r.TABLE]:
            values[i] = {k: str(v) for k, v in values[i].items()}
        out.append([r.TABLE, values])
    return out


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
    handovers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, item)
    alerts: list[Alert] = field(default_factory=list)
    state_puts: list[tuple[int, str, Any]] = field(default_factory=list)
    late_events: int = 0
    events: int = 0
    duplicates: int = 0  # resolved events skipped: already applied (an upstream replay)


class _StoreView(MutableMapping[str, Any]):
    """The customer-360 store as the book sees it: reads from the table, writes queued."""

    def __init__(self, data: Any, outputs: CustomerOutputs, partitions: int) -> None:
        self.data = data
        self.outputs = outputs
        self.partitions = partitions
        self.written: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.written:
            return self.written[key]
        value = self.data.get(f"360|{key}")
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in self.written or f"360|{key}" in self.data

    def __setitem__(self, key: str, value: Any) -> None:
        self.written[key] = value
        self.outputs.state_puts.append((partition_for(key, self.partitions), f"360|{key}", value))

    def __delitem__(self, key: str) -> None:  # pragma: no cover - the book never deletes
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - the book never iterates
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover
        raise NotImplementedError


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
    ) -> None:
        self.dedupe_horizon_ms = dedupe_horizon_ms
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
        self._states.pop(partition, None)
        self._seen.pop(partition, None)
        self._due.pop(partition, None)
        self._event_clock.pop(partition, None)

    def restore(self, partition: int, data: Any) -> None:
        """Rebuild a partition's aggregator from its table entries (after assignment)."""
        saved = data.get(f"agg|{partition}")
        if saved is None:
            state = AggregatorState(
                partition, lateness_ms=self.lateness_ms, pane_events=self.pane_events
            )
        else:
            prefix = f"mem|{partition}|"
            memory = {k[len(prefix) :]: v for k, v in data.items_with_prefix(prefix)}
            state = AggregatorState.from_dict(saved, customers=memory)
        self._states[partition] = state
        seen = Deduplicator(self.dedupe_horizon_ms)
        prefix = f"seen|{partition}|"
        seen.restore(
            [
                DedupeBatch(key, int(v["seen_ms"]), tuple(v["ids"]))
                for key, v in data.items_with_prefix(prefix)
            ]
        )
        self._seen[partition] = seen
        self._due[partition] = {
            str(k): int(v) for k, v in (data.get(f"due|{partition}") or {}).items()
        }

    def process(
        self, items: dict[int, list[tuple[int, Any]]], data: Any, now_ms: int
    ) -> CustomerOutputs:
        """``items``: per partition, (position, item) in order. ``data``: the table store."""
        out = CustomerOutputs()
        book = Customer360Book(_StoreView(data, out, self.partitions))
        profiles: dict[str, Profile | None] = {}  # touched this batch; None: moved away
        moved: dict[str, str] = {}  # absorbed customer -> survivor, as far as known here

        def profile(customer_id: str) -> Profile:
            known = profiles.get(customer_id)
            if known is not None:
                return known
            saved = None if customer_id in profiles else data.get(f"prof|{customer_id}")
            loaded = Profile(customer_id) if saved is None else Profile.from_dict(saved)
            profiles[customer_id] = loaded
            return loaded

        def moved_to(customer_id: str) -> str | None:
            """The survivor a customer's profile went to on a merge (None: it lives here).
            Identity partitions learn of a merge at different times, so events resolved
            to the absorbed id still arrive after its profile left; they follow it."""
            if profiles.get(customer_id) is not None:
                return None
            if customer_id not in moved and customer_id not in profiles:
                saved = data.get(f"prof|{customer_id}")
                if saved is not None:
                    profiles[customer_id] = Profile.from_dict(saved)
                    return None
                target = data.get(f"moved|{customer_id}")
                if target is not None:
                    moved[customer_id] = str(target)
            return moved.get(customer_id)

        def raise_alerts(state: AggregatorState, customer: str, alerts: list[Alert]) -> None:
            for alert in alerts:
                out.alerts.append(alert)
                state.add_alert(alert["rule"], alert["severity"], alert["occurred_at"])
                book.set_alert(customer, alert["rule"], True, now_ms)

        def judge(state: AggregatorState, events: list[_Judged]) -> None:
            """The detectors over a run of events (event, record as JSON, hops), each
            customer's in event-time order (stable: equal times keep their arrival order).
            A batch is a slice of one partition, whose events can arrive out of event-time
            order (a customer's events come through different identity partitions, and
            catch-up reads one partition far ahead of another): judging them sorted removes
            the disorder inside a batch. Aggregates and the 360 count positions, not
            judgements, and keep arrival order. An event of a customer whose profile moved
            to a survivor is sent after it (``"d"``: judge only) to the survivor's partition."""
            for event, raw, hops in sorted(events, key=lambda e: e[0]["record"]["occurred_at"]):
                customer = event["customer_id"]
                target = moved_to(customer)
                if target is not None and hops < _MAX_HOPS:
                    out.handovers.append((target, judge_item(target, raw, hops + 1)))
                    continue
                updated, alerts = self.detector.process(profile(customer), event["record"], now_ms)
                profiles[customer] = updated
                raise_alerts(state, customer, alerts)
            events.clear()

        # Written last: a partition's changelog records land in order, so after a crash
        # mid-flush an event id is remembered only if everything it updated landed too.
        seen_puts: list[tuple[int, str, Any]] = []
        for partition, entries in items.items():
            state = self._states[partition]
            to_judge: list[_Judged] = []  # judged before the next non-event item
            seen = self._seen.setdefault(partition, Deduplicator(self.dedupe_horizon_ms))
            fresh: list[str] = []
            pending: set[str] = set()
            events_before = out.events
            late_before = state.late_events
            for position, item in entries:
                kind = item["t"]
                if kind == "e" and self.dedupe_horizon_ms > 0:
                    event_id = item["r"]["event_id"]
                    if seen.is_duplicate(event_id, pending):
                        out.duplicates += 1
                        continue
                    pending.add(event_id)
                    fresh.append(event_id)
                if kind == "e":
                    event: ResolvedEvent = {
                        "customer_id": item["c"],
                        "record": from_json(item["r"]),
                    }
                    state.add(event, now_ms, position)
                    book.add(event, now_ms, position)
                    out.events += 1
                    to_judge.append((event, item["r"], 0))
                    continue
                if kind == "d":  # followed its customer's profile here: judged, not counted
                    followed: ResolvedEvent = {
                        "customer_id": item["c"],
                        "record": from_json(item["r"]),
                    }
                    to_judge.append((followed, item["r"], int(item.get("n", 1))))
                    continue
                if to_judge:  # merges, hand-overs and erasures see the events before them
                    judge(state, to_judge)
                if kind == "m":
                    notice: MergeNotice = {
                        "survivor": item["s"],
                        "absorbed": item["a"],
                        "merged_at": item["at"],
                    }
                    handover = state.apply_merge(notice, position)
                    absorbed_id, survivor_id = notice["absorbed"], notice["survivor"]
                    home = partition_for(absorbed_id, self.partitions) == partition
                    if home:
                        # Only where the absorbed customer lives: its 360 entry counts input
                        # positions of that partition. (The notice also reaches the
                        # survivor's partition; a worker that owns both would otherwise
                        # stamp the 360 with a position of the wrong partition and skip the
                        # absorbed customer's later events.)
                        book.apply_merge(notice, now_ms, position)
                    if home and moved_to(absorbed_id) is None:  # (else: a replayed notice)
                        # Where the absorbed customer lived, it now points at the survivor
                        # (events resolved to it before identity knew follow: ``moved_to``,
                        # which has also loaded its profile if it has one).
                        moving = profiles.get(absorbed_id)
                        if moving is not None:
                            out.handovers.append(
                                (survivor_id, {"t": "p", "s": survivor_id, "p": moving.to_dict()})
                            )
                        moved[absorbed_id] = survivor_id
                        profiles[absorbed_id] = None
                        out.state_puts.append((partition, f"prof|{absorbed_id}", None))
                        out.state_puts.append((partition, f"moved|{absorbed_id}", survivor_id))
                    if handover is not None:
                        survivor = notice["survivor"]
                        if partition_for(survivor, self.partitions) == partition:
                            state.accept_handover(handover, None)
                        else:
                            out.handovers.append((survivor, {"t": "h", **handover}))
                elif kind == "h":
                    state.accept_handover(item, position)
                elif kind == "x":  # erased: forget the customer's profile, memory and 360
                    gone = item["c"]
                    profiles[gone] = None
                    book.touched.pop(gone, None)
                    state.memory.pop(gone, None)
                    for key in (f"prof|{gone}", f"360|{gone}", f"mem|{partition}|{gone}"):
                        out.state_puts.append((partition, key, None))
                elif kind == "p":  # an absorbed customer's profile joins the survivor's
                    survivor_id = item["s"]
                    target = moved_to(survivor_id)
                    if target is not None:  # the survivor was absorbed in turn: follow it
                        out.handovers.append((target, {**item, "s": target}))
                        continue
                    merged, alerts = self.detector.merge(
                        profile(survivor_id), Profile.from_dict(item["p"]), now_ms
                    )
                    profiles[survivor_id] = merged
                    raise_alerts(state, survivor_id, alerts)
            if to_judge:
                judge(state, to_judge)
            if out.events > events_before and state.max_ts is not None:
                self._event_clock[partition] = (state.max_ts, now_ms)
            out.late_events += state.late_events - late_before
            rolling = now_ms - self._last_rolling.get(partition, 0) >= self.rolling_ms
            if rolling:
                self._last_rolling[partition] = now_ms
            out.aggregate_rows.extend(state.flush(now_ms, final_only=not rolling))
            out.alert_rows.extend(state.flush_alerts(now_ms, final_only=not rolling))
            for customer_id, memory in state.take_customer_changes().items():
                out.state_puts.append((partition, f"mem|{partition}|{customer_id}", memory))
            out.state_puts.append((partition, f"agg|{partition}", state.to_dict(customers=False)))
            if fresh:
                key = f"seen|{partition}|{entries[0][0]}"
                seen.remember(key, fresh, now_ms)
                seen_puts.append((partition, key, {"seen_ms": now_ms, "ids": fresh}))
            seen_puts.extend((partition, key, None) for key in seen.expire(now_ms))
        out.c360_rows.extend(book.flush())
        changed_due: set[int] = set()
        for customer_id, touched in profiles.items():
            part = partition_for(customer_id, self.partitions)
            if touched is not None:
                out.state_puts.append((part, f"prof|{customer_id}", touched.to_dict()))
            if self._set_due(part, customer_id, touched):
                changed_due.add(part)
        out.state_puts.extend(self._due_puts(changed_due))
        out.state_puts.extend(seen_puts)
        return out

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
        return [(p, f"due|{p}", dict(self._due.get(p, {}))) for p in sorted(partitions)]

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
                saved = data.get(f"prof|{customer_id}")
                profile = None if saved is None else Profile.from_dict(saved)
                if profile is not None:
                    profile, alerts = self.detector.tick(profile, now_ms, at_ms=clock)
                    out.alerts.extend(alerts)
                    out.state_puts.append((partition, f"prof|{customer_id}", profile.to_dict()))
                if self._set_due(partition, customer_id, profile):
                    changed.add(partition)
        out.state_puts.extend(self._due_puts(changed))
        return out
