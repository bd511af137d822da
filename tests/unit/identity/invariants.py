"""Invariants of a simulated identity run, shared by the property and redelivery tests."""

from __future__ import annotations

from streams.identity.graph import IdentityRules
from streams.identity.simulator import Simulator


def live_owners(sim: Simulator, rules: IdentityRules) -> dict[str, str]:
    """Identifier -> the live customer holding it, asserting that no live customer exceeds a
    limit and that no identifier is in two customers."""
    owner: dict[str, str] = {}
    for cid, c in sim.customers().items():
        if c.absorbed_into is None:
            for kind, members in c.members.items():
                assert len(members) <= rules.limit(kind), (cid, kind, members)
                for key in members:
                    assert key not in owner, (key, owner.get(key), cid)
                    owner[key] = cid
    return owner
