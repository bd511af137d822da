"""Many identity partitions in one process, with crashes and redelivery: the property model."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson

from streams.identity.events import ops_for_event
from streams.identity.graph import IdentityNode
from streams.identity.messages import Op, Output, Resolved
from streams.identity.rules import IdentityRules
from streams.identity.state import CustState, DictState, IdState, State
from streams.identity.wire import (
    JsonState,
    op_from_json,
    op_to_json,
    output_from_json,
    output_to_json,
    state_to_json,
)
from streams.wire.envelope import partition_for
from streams.wire.model import TouchpointRecord

# ----------------------------------------------------------------------------- simulator


class Simulator:
    """Many partitions, one process: per-partition FIFO queues, a seeded random interleaving.

    ``redeliver`` is the chance, after each batch, that the partition "crashes" before
    committing: its last 1-3 batches are delivered again, in order, and half the time
    their state writes are lost too (ops were already produced: the delivery contract).
    Writes that survived a crash are durable: a later crash redelivers those batches
    again but cannot lose their writes.
    ``wire``: state kept as JSON bytes and every op and output sent through orjson.
    """

    def __init__(
        self,
        partitions: int,
        rules: IdentityRules | None = None,
        seed: int = 0,
        *,
        redeliver: float = 0.0,
        max_batch: int = 4,
        wire: bool = False,
        undo_through: bool = True,
    ) -> None:
        self.partitions = partitions
        self.rules = rules or IdentityRules()
        self.node = IdentityNode(self.rules, undo_through=undo_through)
        self.rng = random.Random(seed)
        self.redeliver = redeliver
        self.max_batch = max_batch
        self.queues: list[deque[Op]] = [deque() for _ in range(partitions)]
        self.wire = wire
        self.states = [JsonState() if wire else DictState() for _ in range(partitions)]
        self.outputs: list[Output] = []
        self.ops_handled = 0
        self._history: list[deque[tuple[list[Op], dict[str, dict[str, Any] | None]]]] = [
            deque(maxlen=3) for _ in range(partitions)
        ]

    def submit(self, op: Op) -> None:
        if self.wire:
            op = op_from_json(orjson.loads(orjson.dumps(op_to_json(op))))
        self.queues[partition_for(op.routing_key, self.partitions)].append(op)

    def _emit(self, outputs: Iterable[Output]) -> None:
        for out in outputs:
            if self.wire:
                out = output_from_json(orjson.loads(orjson.dumps(output_to_json(out))))
            self.outputs.append(out)

    def run(self, events: Iterable[TouchpointRecord] = (), max_steps: int = 1_000_000) -> None:
        """Feed events (interleaved with processing) and run until nothing is in flight."""
        incoming = deque(events)
        for _ in range(max_steps):
            busy = [p for p, q in enumerate(self.queues) if q]
            if incoming and (not busy or self.rng.random() < 0.3):
                event = incoming.popleft()
                ops, refusals = ops_for_event(event, self.rules)
                self._emit(refusals)
                if not ops:  # nothing usable on it: attributed to nobody
                    self._emit([Resolved(event["event_id"], event["occurred_at"], None, event)])
                for op in ops:
                    self.submit(op)
            elif busy:
                self._step(self.rng.choice(busy))
            else:
                return
        raise RuntimeError(f"not quiescent after {max_steps} steps")

    def _step(self, p: int) -> None:
        queue, state = self.queues[p], self.states[p]
        batch = [
            queue.popleft() for _ in range(min(len(queue), self.rng.randint(1, self.max_batch)))
        ]
        before: dict[str, dict[str, Any] | None] = {}
        for op in batch:
            if op.routing_key not in before:
                value = state.get(op.routing_key)
                before[op.routing_key] = None if value is None else state_to_json(value)
        effects = self.node.handle_batch(batch, state)
        self.ops_handled += len(batch)
        self._emit(effects.outputs)
        for op in effects.ops:
            self.submit(op)
        self._history[p].append((batch, before))
        if self.redeliver and self.rng.random() < self.redeliver:
            history = self._history[p]
            replay = [history.pop() for _ in range(self.rng.randint(1, len(history)))]
            lose_writes = self.rng.random() < 0.5
            for ops, snapshot in replay:  # newest first
                if lose_writes:
                    for key, saved in snapshot.items():
                        state.restore(key, saved)
                queue.extendleft(reversed(ops))
            # The batches before the replayed ones stay uncommitted (a later crash may
            # deliver them again) but their writes survived this crash: they are durable,
            # and a later crash cannot take them back (it would restore a state older than
            # one the partition already recovered with, while ops sent from that newer
            # state are in flight: no changelog does that).
            for i, (ops, _) in enumerate(history):
                history[i] = (ops, {})

    def state(self, key: str) -> State | None:
        return self.states[partition_for(key, self.partitions)].get(key)

    def customer_of(self, identifier: str) -> str | None:
        s = self.state(identifier)
        return s.customer if isinstance(s, IdState) and not s.erased else None

    def survivor(self, customer: str) -> str:
        """Follow absorptions to the customer that holds the members now."""
        while isinstance(c := self.state(customer), CustState) and c.absorbed_into is not None:
            customer = c.absorbed_into
        return customer

    def identifiers(self) -> dict[str, IdState]:
        return {k: v for s in self.states for k, v in s.items() if isinstance(v, IdState)}

    def customers(self) -> dict[str, CustState]:
        return {k: v for s in self.states for k, v in s.items() if isinstance(v, CustState)}

    def components(self) -> list[frozenset[str]]:
        """Identifiers grouped by their customer label."""
        groups: dict[str, set[str]] = {}
        for key, s in self.identifiers().items():
            if s.customer is not None and not s.erased:
                groups.setdefault(s.customer, set()).add(key)
        return sorted((frozenset(g) for g in groups.values()), key=min)
