"""ResolutionMemory: a replayed LINK re-sends its event with the customer it first got."""

from __future__ import annotations

from typing import Any

from streams.identity.graph import ResolutionMemory, Resolved

NOW = 1_750_000_000_000


def r(event_id: str, customer: str | None) -> Resolved:
    return Resolved(event_id, NOW, customer, {"a": "email:x", "r": {"event_id": event_id}})


def test_a_replay_after_a_merge_keeps_the_first_stamp() -> None:
    memory = ResolutionMemory(3_600_000)
    first = [memory.stamp(x) for x in (r("e1", "c-young"), r("e2", "c-young"))]
    memory.remember("res|0|10", first, NOW)
    # The batch's state landed (c-young merged into c-old) but not its offsets: the
    # replay resolves the same events to the survivor.
    replay = [memory.stamp(x) for x in (r("e1", "c-old"), r("e2", "c-old"), r("e3", "c-old"))]
    assert [(x.event_id, x.customer) for x in replay] == [
        ("e1", "c-young"),
        ("e2", "c-young"),
        ("e3", "c-old"),
    ]
    assert replay[0].event == {"a": "email:x", "r": {"event_id": "e1"}}  # the event travels


def test_only_new_events_are_persisted_and_a_restart_restores_them() -> None:
    memory = ResolutionMemory(3_600_000)
    saved: dict[str, Any] = {}
    entry = memory.remember("res|0|10", [r("e1", "c1"), r("e2", None)], NOW)
    assert entry == {"seen_ms": NOW, "r": {"e1": "c1", "e2": None}}
    saved["res|0|10"] = entry
    assert memory.remember("res|0|12", [r("e1", "c9")], NOW) is None  # nothing new
    restarted = ResolutionMemory(3_600_000)
    restarted.restore(saved.items())
    assert restarted.stamp(r("e1", "c9")).customer == "c1"
    assert restarted.stamp(r("e2", "c9")).customer is None
    assert restarted.stamp(r("e4", "c9")).customer == "c9"


def test_stamps_expire_after_the_horizon() -> None:
    memory = ResolutionMemory(60_000)
    memory.remember("res|0|1", [r("e1", "c1")], NOW)
    memory.remember("res|0|2", [r("e2", "c1")], NOW + 30_000)
    assert memory.expire(NOW + 61_000) == ["res|0|1"]
    assert memory.stamp(r("e1", "c2")).customer == "c2"
    assert memory.stamp(r("e2", "c2")).customer == "c1"
    assert len(memory) == 1


def test_a_zero_horizon_remembers_nothing() -> None:
    memory = ResolutionMemory(0)
    assert memory.remember("res|0|1", [r("e1", "c1")], NOW) is None
    assert memory.stamp(r("e1", "c2")).customer == "c2"
