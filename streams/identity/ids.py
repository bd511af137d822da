"""Customer ids (they sort by age; ``h...`` is a household), identifier kinds and strength."""

from __future__ import annotations

import hashlib
from typing import Final

from streams.wire.model import IDENTIFIER_KINDS

_KIND_RANK: Final = {kind: i for i, kind in enumerate(IDENTIFIER_KINDS)}
_MAX_FORMER: Final = 16
STRONG_KINDS: Final = frozenset({"customer_id", "login_id", "loyalty_id"})
"""Kinds that name one person (an account): two of them in conflict prove two people."""
_MAX_THROUGH: Final = 32  # members a customer remembers per weak identifier they came through
_MAX_THROUGH_VIAS: Final = 16  # weak identifiers a customer remembers that for
_MAX_BLAME_HOPS: Final = 4
_MAX_REFUSED: Final = (
    32  # proposals a customer remembers refusing (a redelivered one is refused again)
)
_SEP: Final = "\x1f"
WEAK_CAP_FACTOR: Final = 3
"""An identifier may glue ``cap`` customers with an account, ``3 x cap`` in all."""


def customer_id(created_ms: int, anchor: str) -> str:
    """``c`` + creation time (11 hex digits) + sha1(anchor)[:8]: string order is age order."""
    digest = hashlib.sha1(anchor.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"c{max(created_ms, 0):011x}{digest}"


def created_ms_of(customer: str) -> int:
    return int(customer[1:12], 16)


def is_household(customer: str) -> bool:
    """A shared identifier's own customer (``h`` + ...): it stands for no one person."""
    return customer.startswith("h")


def _is_strong(key: str) -> bool:
    return _kind(key) in STRONG_KINDS


def _kind(key: str) -> str:
    return key.partition(":")[0]


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode(), usedforsecurity=False).hexdigest()[:16]


def _peer_tag(key: str) -> str:
    """What an anchor remembers of the identifiers it already joined (no identifier values)."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
