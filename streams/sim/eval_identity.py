"""Identity scored pairwise against the generator's people (``make eval``).

Every pair of events is a claim: two events in one resolved customer say "the same
person". Against the truth (``StreamEvent.person``):

* **precision** = pairs put together that are one person / pairs put together;
* **recall** = pairs of one person put together / pairs of one person;
* **recall of what is linkable** = the same over the pairs the evidence can link: two
  events of one person are *linkable* when a chain of that person's *own* identifiers
  (values no other person's events carry, after normalisation, not blocked) joins them.
  An event that carries only shared values (the family tablet alone, the contact
  centre's number) is linkable to nothing: no resolver can know whose it is.

Events resolved to nobody, or to a household (:func:`streams.identity.graph.is_household`:
a shared device or email's own customer, which claims no person), are singletons: they
make no pair, right or wrong.

The score is per trap, too (``streams.sim.generator.Traps``): over the people involved in a
trap (an event of theirs carries it), the pairs with at least one of their events.

:func:`resolve_offline` runs the partitioned protocol's simulator over the stream (the
same ``IdentityNode`` the pipeline runs, several partitions, random interleaving) and
reads every event's customer as ``customer_touchpoints_v`` does: the current label of
the identifier the event resolved at (its anchor, or the next one when the anchor is
quarantined: ``Resolved.via``, the ``identity_key`` in ClickHouse). ``make eval`` scores
the real pipeline's answer from ClickHouse the same way.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from streams.identity.graph import IdentityRules, Resolved, event_identifiers, is_household
from streams.identity.simulator import Simulator
from streams.ingest.normalise import normalise_country, normalise_identifiers
from streams.ingest.stage import anchor_key
from streams.sim.eval_data import StreamEvent
from streams.sim.generator import TRAP_NAMES
from streams.wire.model import TouchpointRecord

__all__ = [
    "IdentityScore",
    "PairScore",
    "format_identity",
    "normalised",
    "resolve_offline",
    "score_identity",
]

_DEFAULT_REGION: Final = "GB"


@dataclass(frozen=True, slots=True)
class PairScore:
    people: int
    events: int
    predicted_pairs: int  # pairs of events put in one (person) customer
    true_pairs: int  # pairs of events of one person
    correct_pairs: int  # both
    linkable_pairs: int  # pairs of one person the evidence links
    linkable_found: int  # of those, put together

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def recall_linkable(self) -> float:
        return self.linkable_found / self.linkable_pairs if self.linkable_pairs else 1.0


@dataclass(frozen=True, slots=True)
class IdentityScore:
    overall: PairScore
    by_trap: dict[str, PairScore]  # people involved in the trap; "none": in no trap
    unattributed: int  # events resolved to nobody or to a household
    households: int  # household customers events resolved to


def normalised(record: TouchpointRecord, region: str = _DEFAULT_REGION) -> TouchpointRecord:
    """A copy with identifiers normalised as ingest does (emails, phones, junk dropped)."""
    country = normalise_country(record["context"]["country"])
    ids = normalise_identifiers(dict(record["identifiers"]), country or region)  # type: ignore[arg-type]
    return {**record, "identifiers": ids}


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def _linkable(events: Sequence[StreamEvent], rules: IdentityRules) -> dict[str, tuple[int, str]]:
    """Event id -> (person, component of the person's own identifiers); absent: none."""
    keys_of: dict[str, list[str]] = {}
    owners: dict[str, set[int]] = defaultdict(set)
    for e in events:
        keys = rules.filter(event_identifiers(normalised(e.record)))[0]
        keys_of[e.record["event_id"]] = keys
        for key in keys:
            owners[key].add(e.person)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    own_of: dict[str, list[str]] = {}
    for e in events:
        own = [k for k in keys_of[e.record["event_id"]] if len(owners[k]) == 1]
        own_of[e.record["event_id"]] = own
        for key in own:
            parent.setdefault(key, key)
        for key in own[1:]:
            parent[find(key)] = find(own[0])
    return {
        e.record["event_id"]: (e.person, find(own[0]))
        for e in events
        if (own := own_of[e.record["event_id"]])
    }


def _score(
    events: Sequence[StreamEvent],
    cluster: Mapping[str, str],
    linkable: Mapping[str, tuple[int, str]],
    subset: Callable[[StreamEvent], bool],
) -> PairScore:
    in_cluster: Counter[str] = Counter()
    in_cluster_subset: Counter[str] = Counter()
    same: Counter[tuple[str, int]] = Counter()
    person_n: Counter[int] = Counter()
    comp_n: Counter[tuple[int, str]] = Counter()
    comp_found: Counter[tuple[str, int, str]] = Counter()
    people: set[int] = set()
    n = 0
    for e in events:
        event_id = e.record["event_id"]
        c = cluster[event_id]
        inside = subset(e)
        in_cluster[c] += 1
        if not inside:
            continue
        n += 1
        people.add(e.person)
        in_cluster_subset[c] += 1
        same[(c, e.person)] += 1
        person_n[e.person] += 1
        comp = linkable.get(event_id)
        if comp is not None:
            comp_n[comp] += 1
            comp_found[(c, *comp)] += 1
    predicted = sum(
        _pairs(total) - _pairs(total - in_cluster_subset[c]) for c, total in in_cluster.items()
    )
    return PairScore(
        people=len(people),
        events=n,
        predicted_pairs=predicted,
        true_pairs=sum(_pairs(k) for k in person_n.values()),
        correct_pairs=sum(_pairs(k) for k in same.values()),
        linkable_pairs=sum(_pairs(k) for k in comp_n.values()),
        linkable_found=sum(_pairs(k) for k in comp_found.values()),
    )


def score_identity(
    events: Sequence[StreamEvent],
    resolved: Mapping[str, str | None],
    rules: IdentityRules | None = None,
) -> IdentityScore:
    """Pairwise precision/recall of ``resolved`` (event id -> customer, None/absent:
    nobody) against the events' true people, overall and per trap."""
    rules = rules or IdentityRules()
    cluster: dict[str, str] = {}
    unattributed = 0
    households: set[str] = set()
    for e in events:
        event_id = e.record["event_id"]
        customer = resolved.get(event_id)
        if not customer or is_household(customer):
            unattributed += 1
            if customer:
                households.add(customer)
            cluster[event_id] = f"\x00{event_id}"  # a singleton: no pair
        else:
            cluster[event_id] = customer
    linkable = _linkable(events, rules)
    trapped: dict[str, set[int]] = defaultdict(set)
    for e in events:
        if e.trap:
            trapped[e.trap].add(e.person)
    in_any = set().union(*trapped.values()) if trapped else set()

    def involved(who: set[int]) -> Callable[[StreamEvent], bool]:
        return lambda e: e.person in who

    by_trap = {
        trap: _score(events, cluster, linkable, involved(trapped[trap]))
        for trap in TRAP_NAMES
        if trapped.get(trap)
    }
    by_trap["none"] = _score(events, cluster, linkable, lambda e: e.person not in in_any)
    return IdentityScore(
        overall=_score(events, cluster, linkable, lambda _e: True),
        by_trap=by_trap,
        unattributed=unattributed,
        households=len(households),
    )


def resolve_offline(
    events: Iterable[StreamEvent],
    rules: IdentityRules | None = None,
    *,
    partitions: int = 4,
    seed: int = 0,
) -> dict[str, str | None]:
    """Event id -> customer as the partitioned protocol leaves it (the simulator, in
    event-time order with random interleaving): the label of the identifier it resolved
    at (its anchor, or the next one when the anchor is quarantined)."""
    rules = rules or IdentityRules()
    records = [normalised(e.record) for e in events]
    sim = Simulator(partitions, rules, seed, max_batch=64)
    sim.run(records, max_steps=100_000_000)
    labels = sim.identifiers()
    key_of = {r["event_id"]: anchor_key(r, rules.is_blocked) for r in records}
    key_of.update({o.event_id: o.via for o in sim.outputs if isinstance(o, Resolved) and o.via})
    out: dict[str, str | None] = {}
    for record in records:
        state = labels.get(key_of[record["event_id"]])
        out[record["event_id"]] = state.customer if state is not None and not state.erased else None
    return out


def format_identity(score: IdentityScore) -> list[str]:
    """``EVAL identity precision=<p> recall=<r> recall_people=<q> ...``, then one
    ``EVAL identity[<trap>] ...`` line per trap. ``recall`` is of what the evidence can
    link (the outside judge's measure); ``recall_people`` is of every same-person pair."""
    o = score.overall
    lines = [
        f"EVAL identity precision={o.precision:.4f} recall={o.recall_linkable:.4f} "
        f"recall_people={o.recall:.4f} pairs={o.predicted_pairs} "
        f"unattributed_events={score.unattributed} households={score.households}"
    ]
    for trap, m in score.by_trap.items():
        lines.append(
            f"EVAL identity[{trap}] precision={m.precision:.4f} recall={m.recall_linkable:.4f} "
            f"recall_people={m.recall:.4f} people={m.people} events={m.events}"
        )
    return lines
