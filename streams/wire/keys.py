"""Every key of the Faust tables, from one place (the changelogs are keyed by these strings).

The formats are persisted in compacted changelog topics: changing one orphans the state a
running deployment has stored under the old form. ``<p>`` is a partition number.

| table | key | value |
|---|---|---|
| customers | ``prof|<customer>`` | the customer's behaviour profile |
| customers | ``moved|<absorbed>`` | the survivor an absorbed customer's profile moved to |
| customers | ``360|<customer>`` | the customer-360 entry |
| customers | ``mem|<p>|<customer>`` | aggregate memory of a customer (repeat contacts, switches) |
| customers | ``agg|<p>`` | the partition's open aggregate windows |
| customers | ``seen|<p>|<position>`` | event ids applied by one batch (exactly-once effect) |
| customers | ``due|<p>`` | customer -> when a deadline rule is next due |
| identity | ``res|<p>|<offset>`` | the customer each event was first given (replays re-send it) |
"""

from __future__ import annotations

__all__ = [
    "aggregator",
    "c360",
    "due",
    "memory",
    "memory_prefix",
    "moved",
    "profile",
    "resolution",
    "resolution_prefix",
    "seen",
    "seen_prefix",
]


def profile(customer_id: str) -> str:
    return f"prof|{customer_id}"


def moved(customer_id: str) -> str:
    return f"moved|{customer_id}"


def c360(customer_id: str) -> str:
    return f"360|{customer_id}"


def memory_prefix(partition: int) -> str:
    return f"mem|{partition}|"


def memory(partition: int, customer_id: str) -> str:
    return f"mem|{partition}|{customer_id}"


def aggregator(partition: int) -> str:
    return f"agg|{partition}"


def seen_prefix(partition: int) -> str:
    return f"seen|{partition}|"


def seen(partition: int, position: int) -> str:
    return f"seen|{partition}|{position}"


def due(partition: int) -> str:
    return f"due|{partition}"


def resolution_prefix(partition: int) -> str:
    return f"res|{partition}|"


def resolution(partition: int, offset: int) -> str:
    return f"res|{partition}|{offset}"
