"""Rolling customer-experience aggregates and the customer 360: the pure, Faust-free core.

The agent that uses this consumes ``ResolvedEvent``s (and ``MergeNotice``s) from the
resolved topic, which is partitioned by customer id, keeps one ``AggregatorState`` per
source partition (in a changelog-backed table, written once per batch) and hands the
rows ``flush`` returns to the ClickHouse sink. Nothing here imports Faust or touches I/O.

Windows and dimensions
----------------------
Every event falls in one 1-minute tumbling window of its EVENT time
(``record["occurred_at"]``, epoch ms; ``[m, m + 60 s)``) and one bucket of the
dimensions ``channel, event_type, country, segment`` (``segment_of``). Hours and days are
never computed here: ClickHouse rolls minutes up (every measure is a sum, a set union or a
concatenation of raw values, so minutes merge exactly into hours and days).

Measures of a bucket (``Measures``)
-----------------------------------
* ``events``; ``customers`` — the set of customer ids (for exact unique counts; new vs
  returning is decided in ClickHouse from each customer's first minute, see below);
* commerce: ``orders`` (``order_placed``), ``basket_items``/``basket_orders`` (items on
  orders that report them), ``checkouts_started`` (web ``checkout_step`` at the first
  step, ``cart``; conversion = orders / checkouts started, meaningful once rolled up over
  event types — mobile apps report no checkout start in the event catalogue),
  ``payments_approved`` and ``revenue`` (approved ``payment`` amounts per currency, in
  1/10,000 of the major unit, exact), ``payment_failures`` (``payment`` declined/failed);
* experience: ``csat_responses``/``csat_sum``; NPS ``promoters`` (9-10), ``passives``
  (7-8), ``detractors`` (0-6); social ``sentiment_count``/``sentiment_sum``;
  ``contacts`` (contact-centre ``call``/``chat``/``email``/``complaint``; survey responses
  are not contacts) with their raw ``wait_seconds``/``handle_seconds`` (ClickHouse takes
  percentiles with t-digests; at most ``MAX_DURATIONS`` kept per partial, the first ones);
  ``fcr_eligible``/``fcr_resolved`` (contacts reporting ``resolved``; resolved without a
  transfer); ``repeat_contacts`` (a contact by a customer with another contact in the 7
  days before it; ties at the same millisecond are ordered by event id);
  ``channel_switches`` (a contact within 1 hour after a web/mobile ``checkout_failed`` or
  ``login_failed`` by the same customer); ``complaints``.
* alerts by rule and severity: ``add_alert`` (a hook for the alerts topic; own rows).

Repeat contacts and channel switches need per-customer memory (``_Memory``): contacts and
failures of the last 7 days / 1 hour. An out-of-order contact or failure can change the
flag of a LATER contact of the same customer; that later contact's window is always still
open (it is later than an accepted event), so the correction is applied to its bucket and
emitted like any update. The result never depends on arrival order within the lateness.

Watermark, lateness, late events
--------------------------------
``watermark = max event time seen in the partition - allowed lateness`` (default 5 min).
An event whose window ends at or before the watermark when it arrives is LATE: ``add``
returns ``AddOutcome.LATE`` and counts it (``late_events``) for the metric; it changes
nothing here (it is still in the raw ``touchpoints`` table). Windows whose end is at or
before the watermark are closed: ``flush`` emits their last version and evicts them.
The decision uses only event data, never the wall clock, so a replay decides the same.
(Far-future timestamps cannot run the watermark away: ingest rejects them.)

Rows, versions, panes
---------------------
A row is the partial aggregate of one bucket from one source partition, keyed by
``(minute, channel, event_type, country, segment, source_partition, pane)`` with a
``version`` = the number of updates folded into it. ClickHouse keeps the highest version
per key (``ReplacingMergeTree(version)``) and sums partitions and panes at query time.
A pane is a block of ``pane_events`` consecutive input positions (the Kafka offset when
the agent passes it, else the count of events applied): when the position moves to the
next block, the open partials are finished (emitted, evicted) and new ones start. Panes
bound the state to at most one block of events per partition, whatever the rate and the
lateness (``pane_events=0``: one pane, partials live until their window closes).
``flush(final_only=False)`` also emits the open partials that changed since the last flush
(rolling freshness): a later version of the same key replaces the earlier one.

Why the effect is exactly once
------------------------------
1. Determinism: the content of row ``(key, version)`` is a pure function of the
   partition's input sequence (events and merge notices, in offset order) from the state
   it started from; acceptance, panes and corrections use event data and positions only.
2. Changelog state: the state is saved once per batch, after ``flush``. After a crash
   the agent restores the last saved state and the input is re-read from the committed
   offset (at least once). Re-applied events produce the same ``(key, version)`` rows
   again — identical, so replacing one with the other changes nothing — and then higher
   versions. If the saved state is AHEAD of the committed offset (changelog written,
   offsets not), the ``offset`` passed to ``add`` lets the state skip what it already
   holds (``AddOutcome.REPLAYED``).
3. Idempotent writes: ``ReplacingMergeTree(version)`` on the deterministic key keeps one
   row per key, the latest; the views read it with ``FINAL``. Re-inserted rows, rolling
   versions and replays can therefore never double count, and no window is lost: a
   window's final version is emitted before the state that evicts it is saved.
   ``dedupe_token`` gives an insert de-duplication token so an identical batch is even
   dropped before it becomes a part.

Merges
------
Counts use the customer id stamped on the event when it was resolved. After a
``MergeNotice`` the absorbed id keeps its past rows, so a person seen under both ids in
one window counts twice in ``unique_customers`` of that window (an over-count bounded by
the merges inside each window; ``customer_360_v`` folds absorbed customers into their
survivor). ``apply_merge`` carries the absorbed customer's contact/failure memory over
to the survivor so repeat contacts and channel switches after the merge see the history:
folded in place when the survivor has memory in this partition, otherwise returned as a
handover for the survivor's partition (``accept_handover``).

State
-----
``to_dict``/``from_dict`` give compact JSON-able state. The per-customer memory can also
be kept per customer (``to_dict(customers=False)`` + ``take_customer_changes``), so a
big 7-day memory is not rewritten with every batch.

The customer 360 (``Customer360State``, ``Customer360Book``) is kept per customer and
emitted per batch for the customers a batch touched, ``ReplacingMergeTree(version)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, cast

from streams.customers.measures import (
    _CHECKOUT_FIRST_STEP,
    _FAILURE_TYPES,
    _PAYMENT_FAILED,
    _SELF_SERVICE,
    _STATE_FORMAT,
    CONTACT_TYPES,
    DEFAULT_LATENESS_MS,
    DEFAULT_PANE_EVENTS,
    MAX_DURATIONS,
    MINUTE_MS,
    REPEAT_CONTACT_MS,
    SWITCH_AFTER_FAILURE_MS,
    BucketKey,
    _amount_e4,
    _nps_class,
    _Partial,
    segment_of,
)
from streams.customers.memory import PartialKey, _Contact, _Memory
from streams.customers.rows import (
    AggregateRow,
    AlertRow,
)
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    SOCIAL,
    WEB,
    MergeNotice,
    ResolvedEvent,
    TouchpointRecord,
)

__all__ = [
    "AddOutcome",
    "AggregatorState",
]


# --------------------------------------------------------------------------- the streaming state


class AddOutcome(StrEnum):
    APPLIED = "applied"
    LATE = "late"  # beyond the allowed lateness: counted, not aggregated
    REPLAYED = "replayed"  # offset already applied to this state (state ahead of offsets)


class AggregatorState:
    """Rolling aggregates of one source partition. See the module doc for the contract.

    Not thread-safe; one instance per partition, used by the task that owns it.
    """

    def __init__(
        self,
        source_partition: int,
        *,
        lateness_ms: int = DEFAULT_LATENESS_MS,
        pane_events: int = DEFAULT_PANE_EVENTS,
    ) -> None:
        if lateness_ms < 0:
            raise ValueError("lateness_ms must be >= 0")
        if pane_events < 0:
            raise ValueError("pane_events must be >= 0 (0: no panes)")
        self.source_partition = source_partition
        self.lateness_ms = lateness_ms
        self.pane_events = pane_events
        self.max_ts: int | None = None
        self.seq = 0  # inputs applied (events and merges), the position without offsets
        self.last_offset: int | None = None
        self.pane = 0
        self.late_events = 0
        self.replayed = 0
        self.partials: dict[PartialKey, _Partial] = {}
        self.memory: dict[str, _Memory] = {}
        self._changed_customers: set[str] = set()
        self._compacted_at: int | None = None
        # alerts: their own watermark (they come from another topic)
        self.alert_max_ts: int | None = None
        self.late_alerts = 0
        self.alerts: dict[tuple[int, str, str], list[int]] = {}  # -> [count, version, emitted]

    # ----------------------------------------------------------------- input

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.lateness_ms

    def _position(self, offset: int | None) -> int | None:
        """The input position, or None if this offset was already applied."""
        if offset is None:
            position = self.seq
        else:
            if self.last_offset is not None and offset <= self.last_offset:
                self.replayed += 1
                return None
            self.last_offset = offset
            position = offset
        self.seq += 1
        if self.pane_events:
            pane = position // self.pane_events
            if pane > self.pane:
                self.pane = pane
        return position

    def add(self, event: ResolvedEvent, now_ms: int, offset: int | None = None) -> AddOutcome:
        """Fold one resolved event in. ``now_ms`` only stamps ``updated_at``.

        ``offset``: the event's offset in its source partition. Pass it whenever there is
        one: panes then follow offsets and an offset already applied is skipped.
        """
        if self._position(offset) is None:
            return AddOutcome.REPLAYED
        record = event["record"]
        ts = record["occurred_at"]
        minute = ts - ts % MINUTE_MS
        max_ts = self.max_ts
        if max_ts is not None and minute + MINUTE_MS <= max_ts - self.lateness_ms:
            self.late_events += 1
            return AddOutcome.LATE
        if max_ts is None or ts > max_ts:
            self.max_ts = ts
        channel = record["channel"]
        event_type = record["event_type"]
        bucket: BucketKey = (
            minute,
            channel,
            event_type,
            record["context"]["country"] or "",
            segment_of(record),
        )
        p = self._partial(bucket, now_ms)
        customer_id = event["customer_id"]
        p.events += 1
        p.customers.add(customer_id)
        payload = record["payload"]
        if payload is not None:
            kind, body = payload
            b = cast("dict[str, Any]", body)
            if kind == COMMERCE:
                if event_type == "order_placed":
                    p.orders += 1
                    items = b.get("items")
                    if items is not None:
                        p.basket_items += items
                        p.basket_orders += 1
                elif event_type == "payment":
                    status = b.get("status")
                    if status == "approved":
                        p.payments_approved += 1
                        currency = b["currency"]
                        p.revenue[currency] = p.revenue.get(currency, 0) + _amount_e4(b["amount"])
                    elif status in _PAYMENT_FAILED:
                        p.payment_failures += 1
            elif kind == CONTACT:
                self._contact_centre(p, b, record, customer_id, bucket, now_ms)
            elif kind == SOCIAL:
                sentiment = b.get("sentiment")
                if sentiment is not None:
                    p.sentiment_count += 1
                    p.sentiment_sum += sentiment
            elif kind == WEB:
                if event_type == "checkout_step" and b.get("checkout_step") == _CHECKOUT_FIRST_STEP:
                    p.checkouts_started += 1
        if event_type in _FAILURE_TYPES and channel in _SELF_SERVICE:
            self._failure(customer_id, ts, now_ms)
        return AddOutcome.APPLIED

    def _partial(self, bucket: BucketKey, now_ms: int) -> _Partial:
        key: PartialKey = (self.pane, *bucket)
        p = self.partials.get(key)
        if p is None:
            p = self.partials[key] = _Partial()
        p.version += 1
        p.updated_at = now_ms
        return p

    def _contact_centre(
        self,
        p: _Partial,
        b: dict[str, Any],
        record: TouchpointRecord,
        customer_id: str,
        bucket: BucketKey,
        now_ms: int,
    ) -> None:
        csat = b.get("csat")
        if csat is not None:
            p.csat_responses += 1
            p.csat_sum += csat
        nps = b.get("nps")
        if nps is not None:
            klass = _nps_class(nps)
            if klass == 2:
                p.nps_promoters += 1
            elif klass == 1:
                p.nps_passives += 1
            else:
                p.nps_detractors += 1
        if b.get("is_complaint") or record["event_type"] == "complaint":
            p.complaints += 1
        if record["event_type"] not in CONTACT_TYPES:
            return
        p.contacts += 1
        wait, handle = b.get("wait_seconds"), b.get("handle_seconds")
        if wait is not None and len(p.wait_seconds) < MAX_DURATIONS:
            p.wait_seconds.append(wait)
        if handle is not None and len(p.handle_seconds) < MAX_DURATIONS:
            p.handle_seconds.append(handle)
        resolved = b.get("resolved")
        if resolved is not None:
            p.fcr_eligible += 1
            if resolved and not b.get("transferred"):
                p.fcr_resolved += 1
        # repeat contact / channel switch, decided over the customer's memory
        ts, event_id = record["occurred_at"], record["event_id"]
        mem = self.memory.get(customer_id)
        if mem is None:
            mem = self.memory[customer_id] = _Memory()
        self._changed_customers.add(customer_id)
        since = ts - REPEAT_CONTACT_MS
        repeat = mem.contact_closed is not None and mem.contact_closed >= since
        me = (ts, event_id)
        for c in mem.contacts:
            if c.ts >= since and (c.ts, c.event_id) < me:
                repeat = True
            elif not c.repeat and c.ts <= ts + REPEAT_CONTACT_MS and (c.ts, c.event_id) > me:
                c.repeat = True  # this earlier-in-time contact arrived late: a correction
                self._partial(c.bucket, now_ms).repeat_contacts += 1
        after = ts - SWITCH_AFTER_FAILURE_MS
        switch = mem.failure_closed is not None and mem.failure_closed >= after
        if not switch:
            switch = any(after <= f <= ts for f in mem.failures)
        mem.contacts.append(_Contact(ts, event_id, bucket, repeat, switch))
        p.repeat_contacts += repeat
        p.channel_switches += switch

    def _failure(self, customer_id: str, ts: int, now_ms: int) -> None:
        mem = self.memory.get(customer_id)
        if mem is None:
            mem = self.memory[customer_id] = _Memory()
        self._changed_customers.add(customer_id)
        mem.failures.append(ts)
        for c in mem.contacts:
            if not c.switch and ts <= c.ts <= ts + SWITCH_AFTER_FAILURE_MS:
                c.switch = True  # a failure that arrived after the contact it explains
                self._partial(c.bucket, now_ms).channel_switches += 1

    def add_alert(self, rule: str, severity: str, ts: int) -> AddOutcome:
        """Count one alert (the hook for the alerts topic); same lateness rule as events."""
        minute = ts - ts % MINUTE_MS
        if (
            self.alert_max_ts is not None
            and minute + MINUTE_MS <= self.alert_max_ts - self.lateness_ms
        ):
            self.late_alerts += 1
            return AddOutcome.LATE
        if self.alert_max_ts is None or ts > self.alert_max_ts:
            self.alert_max_ts = ts
        entry = self.alerts.setdefault((minute, rule, severity), [0, 0, 0])
        entry[0] += 1
        entry[1] += 1
        return AddOutcome.APPLIED

    # ----------------------------------------------------------------- merges

    def apply_merge(self, notice: MergeNotice, offset: int | None = None) -> dict[str, Any] | None:
        """Carry the absorbed customer's memory over to the survivor.

        If the survivor has memory here, the absorbed one's is folded into it (None is
        returned). Otherwise the absorbed customer's memory leaves this state and comes
        back as a JSON-able handover: the agent delivers it to the survivor's partition
        (``accept_handover`` there, or right here if the survivor hashes to this one),
        in order with that partition's events. Windows already counted are not changed
        (see the module doc on merges).
        """
        if self._position(offset) is None:
            return None
        absorbed = self.memory.pop(notice["absorbed"], None)
        if absorbed is None:
            return None
        self._changed_customers.add(notice["absorbed"])
        survivor = self.memory.get(notice["survivor"])
        if survivor is None:
            return {"survivor": notice["survivor"], "memory": absorbed.to_list()}
        survivor.absorb(absorbed)
        self._changed_customers.add(notice["survivor"])
        return None

    def accept_handover(self, handover: Mapping[str, Any], offset: int | None = None) -> None:
        if self._position(offset) is None:
            return
        customer_id = str(handover["survivor"])
        incoming = _Memory.from_list(handover["memory"])
        mem = self.memory.get(customer_id)
        if mem is None:
            self.memory[customer_id] = incoming
        else:
            mem.absorb(incoming)
        self._changed_customers.add(customer_id)

    # ----------------------------------------------------------------- output

    def flush(self, now_ms: int, final_only: bool = False) -> list[AggregateRow]:
        """Rows to write, then evict what is finished. Call once per batch, before saving.

        Emits the last version of every partial whose window closed (end <= watermark) or
        whose pane is over, and evicts it; with ``final_only=False`` also the open partials
        updated since the last flush (rolling freshness). ``now_ms`` is not used for any
        decision. Alerts have their own ``flush_alerts``.
        """
        rows: list[AggregateRow] = []
        wm = self.watermark
        part = self.source_partition
        finished: list[PartialKey] = []
        for key, p in self.partials.items():
            pane, minute, channel, event_type, country, segment = key
            done = pane < self.pane or (wm is not None and minute + MINUTE_MS <= wm)
            if p.version != p.emitted and (done or not final_only):
                rows.append(
                    AggregateRow(
                        minute,
                        channel,
                        event_type,
                        country,
                        segment,
                        part,
                        pane,
                        p.version,
                        p.updated_at,
                        p.copy(),
                    )
                )
                p.emitted = p.version
            if done:
                finished.append(key)
        for key in finished:
            del self.partials[key]
        if wm is not None and (self._compacted_at is None or wm - self._compacted_at >= MINUTE_MS):
            self._compact(wm)
        return rows

    def flush_alerts(self, now_ms: int, final_only: bool = False) -> list[AlertRow]:
        """Alert rows, with the same rules as ``flush`` (alerts have their own watermark)."""
        rows: list[AlertRow] = []
        wm = None if self.alert_max_ts is None else self.alert_max_ts - self.lateness_ms
        finished = []
        for (minute, rule, severity), entry in self.alerts.items():
            done = wm is not None and minute + MINUTE_MS <= wm
            if entry[1] != entry[2] and (done or not final_only):
                rows.append(
                    AlertRow(
                        minute, rule, severity, self.source_partition, entry[1], now_ms, entry[0]
                    )
                )
                entry[2] = entry[1]
            if done:
                finished.append((minute, rule, severity))
        for key in finished:
            del self.alerts[key]
        return rows

    def _compact(self, watermark: int) -> None:
        self._compacted_at = watermark
        for customer_id in list(self.memory):
            mem = self.memory[customer_id]
            if mem.compact(watermark):
                self._changed_customers.add(customer_id)
                if mem.empty():
                    del self.memory[customer_id]

    # ----------------------------------------------------------------- state

    def to_dict(self, *, customers: bool = True) -> dict[str, Any]:
        """JSON-able state. ``customers=False`` leaves out the per-customer memory (keep it
        per customer with ``take_customer_changes`` instead)."""
        data: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "partition": self.source_partition,
            "lateness_ms": self.lateness_ms,
            "pane_events": self.pane_events,
            "max_ts": self.max_ts,
            "seq": self.seq,
            "last_offset": self.last_offset,
            "pane": self.pane,
            "late": self.late_events,
            "replayed": self.replayed,
            "compacted_at": self._compacted_at,
            "partials": [
                [*key, p.version, p.emitted, p.updated_at, *p.to_list()]
                for key, p in self.partials.items()
            ],
            "alert_max_ts": self.alert_max_ts,
            "late_alerts": self.late_alerts,
            "alerts": [[*key, *entry] for key, entry in self.alerts.items()],
        }
        if customers:
            data["customers"] = {cid: m.to_list() for cid, m in self.memory.items()}
        return data

    def take_customer_changes(self) -> dict[str, list[Any] | None]:
        """Per-customer memory changed since the last call (None: deleted). For a table
        keyed by customer id, written once per batch; ``from_dict(customers=...)`` reads it."""
        out: dict[str, list[Any] | None] = {}
        for customer_id in self._changed_customers:
            mem = self.memory.get(customer_id)
            out[customer_id] = None if mem is None else mem.to_list()
        self._changed_customers.clear()
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], customers: Mapping[str, Sequence[Any]] | None = None
    ) -> AggregatorState:
        """Restore; configuration comes from the saved state (changing pane size or
        lateness under a live state would break determinism)."""
        if data.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown aggregator state format {data.get('format')!r}")
        state = cls(
            int(data["partition"]),
            lateness_ms=int(data["lateness_ms"]),
            pane_events=int(data["pane_events"]),
        )
        state.max_ts = data["max_ts"]
        state.seq = int(data["seq"])
        state.last_offset = data["last_offset"]
        state.pane = int(data["pane"])
        state.late_events = int(data["late"])
        state.replayed = int(data["replayed"])
        state._compacted_at = data["compacted_at"]
        for entry in data["partials"]:
            key: PartialKey = (
                int(entry[0]),
                int(entry[1]),
                str(entry[2]),
                str(entry[3]),
                str(entry[4]),
                str(entry[5]),
            )
            p = _Partial(version=int(entry[6]), emitted=int(entry[7]), updated_at=int(entry[8]))
            p.load_list(entry[9:])
            state.partials[key] = p
        state.alert_max_ts = data["alert_max_ts"]
        state.late_alerts = int(data["late_alerts"])
        for entry in data["alerts"]:
            state.alerts[(int(entry[0]), str(entry[1]), str(entry[2]))] = [
                int(entry[3]),
                int(entry[4]),
                int(entry[5]),
            ]
        source = customers if customers is not None else data.get("customers", {})
        state.memory = {str(cid): _Memory.from_list(v) for cid, v in source.items()}
        return state
