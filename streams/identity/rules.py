"""The identity guards as configuration: blocked values, patterns, per-kind limits, merge caps."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from streams.identity.messages import Refusal
from streams.wire.model import IDENTIFIER_KINDS

# ----------------------------------------------------------------------------- rules

DEFAULT_LIMITS: Final[Mapping[str, int]] = {
    "customer_id": 1,
    "login_id": 2,
    "email": 5,
    "phone": 5,
    "loyalty_id": 1,
    "social_handle": 5,
    "device_id": 10,
    "anonymous_id": 200,
}
DEFAULT_MERGE_CAPS: Final[Mapping[str, int]] = {
    kind: 3 if kind in ("phone", "email", "device_id") else 5 for kind in IDENTIFIER_KINDS
}
DEFAULT_BLOCKED_VALUES: Final[Mapping[str, frozenset[str]]] = {
    "*": frozenset({"anonymous", "0", "-1", "unknown", "null", "undefined", "none", "test"}),
    "email": frozenset({"test@test.com", "test@example.com", "noreply@example.com"}),
    "phone": frozenset({"+10000000000"}),
}
DEFAULT_BLOCKED_PATTERNS: Final[Mapping[str, tuple[str, ...]]] = {
    "*": (r"^0+$",),
    "device_id": (r"^[0-]+$",),  # all-zero device ids / advertising ids
    "phone": (r"^\+\d0{6,}$", r"^\+(\d)\1{6,}$"),  # +10000000000, +1111111111
}
_UNLIMITED: Final = 1 << 40


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """Guards: per-customer limits and merge caps per identifier kind, blocked values."""

    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    merge_caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MERGE_CAPS))
    blocked_values: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: dict(DEFAULT_BLOCKED_VALUES)
    )
    blocked_patterns: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_BLOCKED_PATTERNS)
    )
    max_peers: int = 16  # identifiers an anchor remembers having joined (saves repeat JOINs)
    _block: dict[str, tuple[frozenset[str], re.Pattern[str] | None]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Per kind: its blocked values and one pattern, each merged with the ``*`` ones."""
        block = {}
        for kind in (*IDENTIFIER_KINDS, "*"):
            values = self.blocked_values.get(kind, frozenset()) | self.blocked_values.get(
                "*", frozenset()
            )
            patterns = (*self.blocked_patterns.get(kind, ()), *self.blocked_patterns.get("*", ()))
            joined = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
            block[kind] = (frozenset(v.lower() for v in values), joined)
        object.__setattr__(self, "_block", block)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> IdentityRules:
        """Defaults overridden by ``{"limits": {kind: n}, "merge_caps": {kind: k},
        "blocked_values": {kind | "*": [...]}, "blocked_patterns": {kind | "*": [regex]},
        "max_peers": n}``; a kind given replaces that kind's default entirely."""
        unknown = set(config) - {f.name for f in fields(cls) if f.init}
        if unknown:
            raise ValueError(f"unknown identity settings: {sorted(unknown)}")

        def kinds(name: str, wildcard: bool) -> Mapping[str, Any]:
            section: Mapping[str, Any] = config.get(name) or {}
            allowed = set(IDENTIFIER_KINDS) | ({"*"} if wildcard else set())
            if set(section) - allowed:
                raise ValueError(f"{name}: unknown kinds {sorted(set(section) - allowed)}")
            return section

        limits = {**DEFAULT_LIMITS, **{k: int(v) for k, v in kinds("limits", False).items()}}
        caps = {**DEFAULT_MERGE_CAPS, **{k: int(v) for k, v in kinds("merge_caps", False).items()}}
        if min(limits.values()) < 1 or min(caps.values()) < 1:
            raise ValueError("limits and merge caps must be >= 1")
        values = {**DEFAULT_BLOCKED_VALUES}
        values.update(
            {k: frozenset(v.lower() for v in vs) for k, vs in kinds("blocked_values", True).items()}
        )
        patterns = {**DEFAULT_BLOCKED_PATTERNS}
        patterns.update({k: tuple(v) for k, v in kinds("blocked_patterns", True).items()})
        try:
            return cls(limits, caps, values, patterns, int(config.get("max_peers", 16)))
        except re.error as exc:
            raise ValueError(f"blocked_patterns: {exc}") from exc

    @classmethod
    def unguarded(cls) -> IdentityRules:
        """No limits, no caps, nothing blocked: plain connected components."""
        unlimited = {kind: _UNLIMITED for kind in IDENTIFIER_KINDS}
        return cls(unlimited, dict(unlimited), {}, {})

    def limit(self, kind: str) -> int:
        return self.limits.get(kind, _UNLIMITED)

    def merge_cap(self, kind: str) -> int:
        return self.merge_caps.get(kind, _UNLIMITED)

    def is_blocked(self, key: str) -> bool:
        kind, _, value = key.partition(":")
        values, pattern = self._block.get(kind) or self._block["*"]
        return value.lower() in values or (
            pattern is not None and pattern.search(value) is not None
        )

    def filter(
        self, idents: Iterable[str], event_id: str = "", ts: int = 0
    ) -> tuple[list[str], list[Refusal]]:
        """Drop blocked (and repeated) identifier keys; one Refusal per blocked key."""
        usable: list[str] = []
        refusals: list[Refusal] = []
        for key in dict.fromkeys(idents):
            if self.is_blocked(key):
                refusals.append(Refusal("blocked_value", event_id, ts, identifier=key))
            else:
                usable.append(key)
        return usable, refusals
