"""What the journeys produce (events, their traps and categories) and the people they are about."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from streams.sim.journeys.world import City, Country
from streams.wire.model import COMMERCE, GeoRecord, TouchpointRecord


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One synthetic touchpoint.

    ``person`` is the ground-truth index (0-based) of the real person behind it;
    ``key`` is the Kafka key its producing system would use, ``b"kind:value"`` with the
    identifier that system knows (the cookie before login, the device for the app, the
    caller's phone for a call, the handle on social, ...).
    """

    record: TouchpointRecord
    person: int
    key: bytes
    trap: str = ""  # the identity trap this event carries (see ``Traps``), if any


@dataclass(frozen=True, slots=True)
class Traps:
    """Identity traps: identifier values that real data shares between people.

    * ``households``: share of people living in a household of 2-4 that shares a
      family tablet (one app ``device_id``); each tablet session starts logged out and
      half the registered members' sessions log in, so the tablet is seen with several
      CRM ids and carries many device-only events of every member (``family_tablet``);
    * ``shared_emails``: share of people in a couple sharing one email address, each
      with their own CRM id: contact emails, chats, DMs and password resets of both
      carry it (``shared_email``);
    * ``centre_phone``: share of calls where the agent typed the contact centre's own
      number into the caller's record (with the caller's CRM id) (``centre_phone``);
    * ``junk``: share of events with a junk value in an empty identifier slot
      (``null``, ``test@test.com``, an all-zero device id, ...) (``junk``).

    ``GeneratedEvent.trap`` names the trap an event carries.
    """

    households: float = 0.06
    shared_emails: float = 0.05
    centre_phone: float = 0.05
    junk: float = 0.01

    @classmethod
    def none(cls) -> Traps:
        return cls(0.0, 0.0, 0.0, 0.0)


TRAP_NAMES: Final = ("family_tablet", "shared_email", "centre_phone", "junk")
JUNK: Final[tuple[tuple[str, str], ...]] = (
    ("anonymous_id", "undefined"),
    ("anonymous_id", "null"),
    ("email", "test@test.com"),
    ("email", "n/a"),
    ("phone", "+10000000000"),
    ("device_id", "00000000-0000-0000-0000-000000000000"),
    ("loyalty_id", "0"),
    ("social_handle", "unknown"),
)


CATEGORY_TARGETS: Final[dict[str, float]] = {
    "web": 0.45,
    "mobile": 0.30,
    "contact_centre": 0.12,
    "social": 0.08,
    "commerce": 0.05,
}
"""Target share of events per category; ``category`` says which one an event is in."""

TARGETS: Final = tuple(CATEGORY_TARGETS.values())
WEB_C, MOBILE_C, CC_C, SOCIAL_C, COMMERCE_C = range(5)


def category(record: TouchpointRecord) -> str:
    """``"commerce"`` for a ``CommerceEvent`` payload, else the channel."""
    payload = record["payload"]
    if payload is not None and payload[0] == COMMERCE:
        return "commerce"
    return record["channel"]


@dataclass(slots=True)
class Browser:
    user_agent: str
    mobile: bool
    ip: str
    geo: GeoRecord
    cookies: list[str]
    cookie: int = 0  # index of the cookie in use
    linked: bool = False  # logged in on the current cookie: the site knows who it is


@dataclass(slots=True)
class App:
    os: str
    source: str
    device_id: str
    user_agent: str
    app_version: str
    logged_in: bool = False
    shared: bool = False  # a family tablet (Traps.households)


@dataclass(slots=True)
class Person:
    index: int
    country: Country
    city: City
    locale: str
    customer_id: str
    registered: bool
    login_id: str
    email: str  # canonical spelling
    email_forms: tuple[str, ...]  # the odd spellings that also occur
    phone_e164: str
    phone_typed: str  # as the customer typed it into their account
    phone_national: str
    phone_international: str
    handle: str | None
    platform: str
    loyalty_id: str | None
    consent: str | None
    payment_method: str
    browsers: list[Browser]
    apps: list[App]
    affinity: tuple[float, ...]
    mood: float = 0.0  # < 0 after a bad experience
    shared_email: bool = False  # the email is a couple's (Traps.shared_emails)


@dataclass(slots=True)
class Session:
    events: list[tuple[TouchpointRecord, int, bytes]] = field(default_factory=list)
    duration: int = 0
