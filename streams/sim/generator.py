"""Synthetic multi-channel customer journeys, encoded and produced to the raw topic.

``generate`` builds realistic touchpoints for a population of people: anonymous web
browsing that later logs in (the linking event carries the cookie *and* the account,
after the events it links), the same person on a phone app and a laptop, failed
checkouts followed within the hour by contact-centre calls or chats and surveys, social
mentions and direct messages (some revealing an email), purchases with payments
(occasionally declined), password resets and push opens. Every event passes
``streams.ingest.stage`` validation; each carries the ground-truth index of its person so
identity stitching can be tested. The same seed gives the same events.

``encode_events`` turns them into Confluent-Avro ``(key, value)`` pairs (optionally a
fraction on the v1 schema) and ``produce`` writes them to Kafka with aiokafka.

Channel mix (share of events): web ~45%, mobile ~30%, contact centre ~12%, social ~8%,
commerce (``CommerceEvent`` payloads: orders, payments, refunds, on the channel where
they happened) ~5%.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streams.adapters.kafka import consumer_security
from streams.settings import Settings
from streams.wire.codec import Encoder
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    MOBILE,
    SOCIAL,
    WEB,
    CommerceRecord,
    ContactCentreRecord,
    ContextRecord,
    GeoRecord,
    IdentifiersRecord,
    MobileRecord,
    Payload,
    SocialRecord,
    TouchpointRecord,
    WebRecord,
)

__all__ = [
    "CATEGORY_TARGETS",
    "TRAP_NAMES",
    "GeneratedEvent",
    "Traps",
    "category",
    "encode_events",
    "generate",
    "produce",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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
_JUNK: Final[tuple[tuple[str, str], ...]] = (
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

_TARGETS: Final = tuple(CATEGORY_TARGETS.values())
_WEB_C, _MOBILE_C, _CC_C, _SOCIAL_C, _COMMERCE_C = range(5)


def category(record: TouchpointRecord) -> str:
    """``"commerce"`` for a ``CommerceEvent`` payload, else the channel."""
    payload = record["payload"]
    if payload is not None and payload[0] == COMMERCE:
        return "commerce"
    return record["channel"]


# --------------------------------------------------------------------------- reference data


@dataclass(frozen=True, slots=True)
class _City:
    name: str
    lat: float
    lon: float
    timezone: str
    area: str = ""  # phone area code (national significant digits) where numbers depend on it


@dataclass(frozen=True, slots=True)
class _Country:
    code: str
    weight: float
    calling_code: str
    locales: tuple[str, ...]
    currency: str
    cities: tuple[_City, ...]
    # Number pools, in order of use: (national significant number prefix, free digits).
    # "{a}" is replaced by the city's area code. Every number must be valid for the region.
    phone_pools: tuple[tuple[str, int], ...]
    # Templates: one '#' per digit of the national significant number.
    national: tuple[str, ...]
    international: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    ip_prefixes: tuple[str, ...]
    search_terms: tuple[str, ...]
    payment_methods: tuple[str, ...]
    amount_range: tuple[float, float]
    mobile_android_share: float


_COUNTRIES: Final[tuple[_Country, ...]] = (
    _Country(
        "GB",
        0.25,
        "44",
        ("en-GB",),
        "GBP",
        (
            _City("London", 51.5074, -0.1278, "Europe/London"),
            _City("Manchester", 53.4808, -2.2426, "Europe/London"),
            _City("Edinburgh", 55.9533, -3.1883, "Europe/London"),
            _City("Bristol", 51.4545, -2.5879, "Europe/London"),
        ),
        # 07700 900xxx is Ofcom's drama range (possible, deliberately not "valid").
        (("7700900", 3), ("7400", 6)),
        ("0#### ######", "0##########", "(0####) ######"),
        ("+44 #### ######", "+44##########", "0044 #### ######", "+44 (0)#### ######"),
        ("Oliver", "Amelia", "Harry", "Isla", "Jack", "Olivia", "George", "Emily", "Noah"),
        ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Patel", "Walker"),
        ("81.2", "86.14", "92.40", "109.150", "2.96"),
        ("running shoes", "rain jacket", "wireless earbuds", "kettle", "school uniform"),
        ("card_visa", "card_mastercard", "paypal", "apple_pay", "klarna"),
        (12.0, 240.0),
        0.45,
    ),
    _Country(
        "US",
        0.25,
        "1",
        ("en-US", "es-US"),
        "USD",
        (
            _City("New York", 40.7128, -74.0060, "America/New_York", "212"),
            _City("Chicago", 41.8781, -87.6298, "America/Chicago", "312"),
            _City("San Francisco", 37.7749, -122.4194, "America/Los_Angeles", "415"),
            _City("Austin", 30.2672, -97.7431, "America/Chicago", "512"),
            _City("Washington", 38.9072, -77.0369, "America/New_York", "202"),
        ),
        # 555-0100..0199 is reserved for fiction in every area code.
        (("{a}55501", 2), ("{a}7", 6)),
        ("(###) ###-####", "###-###-####", "###.###.####", "1-###-###-####"),
        ("+1 ###-###-####", "+1##########", "+1 (###) ###-####"),
        ("James", "Mary", "Michael", "Jennifer", "Robert", "Linda", "David", "Sarah", "Daniel"),
        ("Johnson", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Anderson", "Moore"),
        ("73.162", "98.210", "24.5", "67.180", "174.63"),
        ("air fryer", "running shoes", "phone case", "usb-c charger", "yoga mat"),
        ("card_visa", "card_mastercard", "amex", "paypal", "apple_pay", "google_pay"),
        (15.0, 300.0),
        0.45,
    ),
    _Country(
        "DE",
        0.10,
        "49",
        ("de-DE",),
        "EUR",
        (
            _City("Berlin", 52.5200, 13.4050, "Europe/Berlin"),
            _City("Munich", 48.1351, 11.5820, "Europe/Berlin"),
            _City("Hamburg", 53.5511, 9.9937, "Europe/Berlin"),
        ),
        (("151", 8),),
        ("0### ########", "(0###) ########", "0###-########"),
        ("+49 ### ########", "+49###########", "0049 ### ########"),
        ("Lukas", "Anna", "Leon", "Lea", "Finn", "Marie", "Jonas", "Lena", "Paul"),
        ("Mueller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"),
        ("84.150", "91.64", "79.200", "93.192"),
        ("laufschuhe", "regenjacke", "kopfhoerer", "wasserkocher"),
        ("card_visa", "card_mastercard", "paypal", "sepa_debit", "klarna"),
        (12.0, 220.0),
        0.6,
    ),
    _Country(
        "FR",
        0.10,
        "33",
        ("fr-FR",),
        "EUR",
        (
            _City("Paris", 48.8566, 2.3522, "Europe/Paris"),
            _City("Lyon", 45.7640, 4.8357, "Europe/Paris"),
            _City("Marseille", 43.2965, 5.3698, "Europe/Paris"),
        ),
        (("61", 7),),
        ("0# ## ## ## ##", "0#########", "0#.##.##.##.##"),
        ("+33 # ## ## ## ##", "+33#########", "0033 # ## ## ## ##"),
        ("Louis", "Emma", "Gabriel", "Jade", "Arthur", "Louise", "Jules", "Alice", "Hugo"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"),
        ("90.12", "86.200", "78.120", "92.184"),
        ("chaussures running", "veste pluie", "ecouteurs", "bouilloire"),
        ("card_cb", "card_visa", "paypal", "apple_pay"),
        (12.0, 220.0),
        0.55,
    ),
    _Country(
        "ES",
        0.07,
        "34",
        ("es-ES", "ca-ES"),
        "EUR",
        (
            _City("Madrid", 40.4168, -3.7038, "Europe/Madrid"),
            _City("Barcelona", 41.3874, 2.1686, "Europe/Madrid"),
            _City("Valencia", 39.4699, -0.3763, "Europe/Madrid"),
        ),
        (("6", 8),),
        ("### ## ## ##", "#########", "### ### ###"),
        ("+34 ### ## ## ##", "+34#########", "0034 #########"),
        ("Hugo", "Lucia", "Mateo", "Sofia", "Martin", "Martina", "Pablo", "Maria", "Paula"),
        ("Garcia", "Rodriguez", "Gonzalez", "Fernandez", "Lopez", "Sanchez", "Perez", "Gomez"),
        ("83.40", "88.12", "79.150", "95.16"),
        ("zapatillas running", "chaqueta lluvia", "auriculares"),
        ("card_visa", "card_mastercard", "paypal", "bizum"),
        (12.0, 200.0),
        0.75,
    ),
    _Country(
        "BR",
        0.07,
        "55",
        ("pt-BR",),
        "BRL",
        (
            _City("Sao Paulo", -23.5505, -46.6333, "America/Sao_Paulo", "11"),
            _City("Rio de Janeiro", -22.9068, -43.1729, "America/Sao_Paulo", "21"),
        ),
        (("{a}9", 8),),
        ("(##) #####-####", "## #####-####", "(##) ##### ####"),
        ("+55 ## #####-####", "+55###########", "0055 ## ##### ####"),
        ("Miguel", "Helena", "Arthur", "Alice", "Heitor", "Laura", "Bernardo", "Julia", "Davi"),
        ("Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira"),
        ("177.30", "189.60", "201.20", "179.104"),
        ("tenis corrida", "fone bluetooth", "capa celular", "air fryer"),
        ("pix", "card_visa", "card_mastercard", "boleto"),
        (60.0, 1200.0),
        0.85,
    ),
    _Country(
        "IN",
        0.08,
        "91",
        ("en-IN", "hi-IN"),
        "INR",
        (
            _City("Mumbai", 19.0760, 72.8777, "Asia/Kolkata"),
            _City("Bengaluru", 12.9716, 77.5946, "Asia/Kolkata"),
            _City("Delhi", 28.7041, 77.1025, "Asia/Kolkata"),
        ),
        (("98", 8),),
        ("0##### #####", "##########", "0##########"),
        ("+91 ##### #####", "+91##########", "0091 ##########"),
        ("Aarav", "Ananya", "Vihaan", "Diya", "Arjun", "Saanvi", "Reyansh", "Priya", "Ishaan"),
        ("Sharma", "Verma", "Gupta", "Singh", "Kumar", "Patel", "Reddy", "Iyer", "Nair"),
        ("49.36", "106.200", "117.200", "223.181"),
        ("running shoes", "kurta", "earphones", "pressure cooker"),
        ("upi", "card_rupay", "card_visa", "netbanking", "cod"),
        (499.0, 15000.0),
        0.9,
    ),
    _Country(
        "AU",
        0.05,
        "61",
        ("en-AU",),
        "AUD",
        (
            _City("Sydney", -33.8688, 151.2093, "Australia/Sydney"),
            _City("Melbourne", -37.8136, 144.9631, "Australia/Melbourne"),
            _City("Brisbane", -27.4698, 153.0251, "Australia/Brisbane"),
        ),
        (("491570", 3), ("412", 6)),
        ("0### ### ###", "0#########", "0###-###-###"),
        ("+61 ### ### ###", "+61#########", "0061 ### ### ###"),
        ("Oliver", "Charlotte", "Jack", "Olivia", "William", "Amelia", "Noah", "Isla", "Mia"),
        ("Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Martin"),
        ("101.160", "110.140", "120.150", "1.128"),
        ("running shoes", "swimwear", "sunscreen", "esky"),
        ("card_visa", "card_mastercard", "afterpay", "paypal", "apple_pay"),
        (20.0, 380.0),
        0.45,
    ),
    _Country(
        "JP",
        0.03,
        "81",
        ("ja-JP",),
        "JPY",
        (
            _City("Tokyo", 35.6762, 139.6503, "Asia/Tokyo"),
            _City("Osaka", 34.6937, 135.5023, "Asia/Tokyo"),
        ),
        (("901", 7),),
        ("0##-####-####", "0##########", "0## #### ####"),
        ("+81 ##-####-####", "+81##########", "0081 ## #### ####"),
        ("Haruto", "Yui", "Sota", "Hina", "Yuto", "Sakura", "Riku", "Yuna", "Ren"),
        ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura"),
        ("126.20", "153.140", "180.12", "60.70"),
        ("ランニングシューズ", "イヤホン", "傘", "電気ケトル"),
        ("card_jcb", "card_visa", "paypay", "konbini"),
        (1500.0, 40000.0),
        0.3,
    ),
)
_COUNTRY_WEIGHTS: Final = tuple(c.weight for c in _COUNTRIES)

_EMAIL_DOMAINS: Final = (
    "example.com",
    "example.net",
    "example.org",
    "mail.example",
    "post.example",
)
_SOCIAL_PLATFORMS: Final = ("x", "instagram", "facebook", "tiktok")
_SOCIAL_PLATFORM_WEIGHTS: Final = (0.35, 0.35, 0.2, 0.1)
_BRAND: Final = "northwind"
_SHOP: Final = "https://shop.example.com"

_DESKTOP_UAS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
)
_MOBILE_WEB_UAS: Final = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
)
_IOS_DEVICES: Final = ("iPhone15,3", "iPhone14,5", "iPhone16,1", "iPad13,18")
_IOS_VERSIONS: Final = ("17.4.1", "17.5", "16.7.8")
_ANDROID_DEVICES: Final = ("Pixel 8", "SM-S911B", "SM-A546B", "moto g54 5G", "Redmi Note 13")
_ANDROID_VERSIONS: Final = ("14", "13", "12")
_APP_VERSIONS: Final = ("5.13.0", "5.12.1", "5.12.0", "5.11.3")
_APP_VERSION_WEIGHTS: Final = (0.45, 0.3, 0.15, 0.1)

_CATEGORIES_SHOP: Final = ("shoes", "outdoor", "electronics", "home", "kids", "sport", "beauty")
_WEB_REFERRERS: Final = (
    None,
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://l.instagram.com/",
    "https://newsletter.example.com/",
)
_PUSH_CAMPAIGNS: Final = ("spring_sale", "cart_reminder", "back_in_stock", "order_shipped", "vip")
_SUPPORT_TOPICS: Final = ("order_status", "returns", "payment_issue", "account_access")
_SCREENS: Final = ("home", "category", "product", "search", "offers", "orders", "account")
_WEB_CHECKOUT_ERRORS: Final = ("PSP_TIMEOUT", "ADDRESS_INVALID", "HTTP_502", "3DS_FAILED")
_MOBILE_CHECKOUT_ERRORS: Final = ("PSP_TIMEOUT", "NETWORK_ERROR", "3DS_FAILED", "APP_CRASH")
_MERCHANT_CATEGORIES: Final = ("5651", "5732", "5941", "5712", "5977")
_CC_REASONS: Final = (
    "order_status",
    "delivery_delay",
    "return_request",
    "billing",
    "account_access",
    "product_question",
)
_CC_REASON_WEIGHTS: Final = (0.3, 0.2, 0.2, 0.12, 0.1, 0.08)
_CC_QUEUES: Final = {
    "order_status": "orders",
    "delivery_delay": "orders",
    "return_request": "returns",
    "billing": "payments",
    "account_access": "accounts",
    "product_question": "general",
    "checkout_failure": "payments",
    "payment_declined": "payments",
}

_POSITIVE_TEXTS: Final = (
    "Love my new order from @{brand}, arrived a day early!",
    "Great service from @{brand} today, thank you",
    "@{brand} the new app update is really smooth",
    "Best trainers I've had, cheers @{brand}",
)
_NEUTRAL_TEXTS: Final = (
    "@{brand} do you deliver to {city}?",
    "@{brand} any discount codes this week?",
    "@{brand} when is the spring sale starting?",
    "Is the {city} store open on Sunday @{brand}?",
)
_NEGATIVE_TEXTS: Final = (
    "@{brand} checkout keeps failing, third time today",
    "@{brand} still waiting for my refund, two weeks now",
    "@{brand} my parcel says delivered but nothing here",
    "@{brand} your payment page just took my money and errored",
)
_DM_TEXTS: Final = (
    "Hi, can you look at my order? My account email is {email}",
    "Hello, payment failed but I was charged. Email on the account: {email}",
    "Could someone call me back about my return please",
    "Hi, I can't log in to my account, what should I do?",
)

_WEB_PROPS: Final = (
    ("utm_source", ("google", "newsletter", "instagram", "direct", "affiliate")),
    ("utm_campaign", ("spring_sale", "always_on", "brand", "retargeting")),
    ("ab_test", ("checkout_v2:A", "checkout_v2:B", "pdp_gallery:control")),
    ("page_load_ms", ("212", "388", "540", "910", "1620")),
    ("viewport", ("1440x900", "1920x1080", "390x844", "412x915")),
)
_APP_PROPS: Final = (
    ("network", ("wifi", "4g", "5g", "3g")),
    ("app_build", ("51300", "51210", "51200")),
    ("battery_saver", ("true", "false")),
    ("dark_mode", ("true", "false")),
)
_CC_PROPS: Final = (
    ("ivr_path", ("1>2", "1>3>1", "2", "3>1")),
    ("language", ("en", "de", "fr", "es", "pt", "hi", "ja")),
    ("site", ("glasgow", "manila", "lisbon", "austin")),
    ("callback", ("true", "false")),
)
_SOCIAL_PROPS: Final = (
    ("followers", ("12", "240", "1830", "15200")),
    ("lang", ("en", "de", "fr", "es", "pt", "ja")),
    ("verified", ("false", "true")),
)
_PAY_PROPS: Final = (
    ("psp", ("adyen", "stripe", "worldpay")),
    ("three_ds", ("frictionless", "challenge", "exempt")),
    ("card_country", ("GB", "US", "DE", "FR", "ES", "BR", "IN", "AU", "JP")),
)

_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_SET: Final = (0x4000 << 64) | (0x8000 << 48)
_MINUTE: Final = 60_000


def _fill(template: str, digits: str) -> str:
    """Put ``digits`` into the ``#`` of ``template``: ``_fill("0## ###", "12345") == "012 345"``."""
    return template.replace("#", "{}").format(*digits)


# --------------------------------------------------------------------------- people


@dataclass(slots=True)
class _Browser:
    user_agent: str
    mobile: bool
    ip: str
    geo: GeoRecord
    cookies: list[str]
    cookie: int = 0  # index of the cookie in use
    linked: bool = False  # logged in on the current cookie: the site knows who it is


@dataclass(slots=True)
class _App:
    os: str
    source: str
    device_id: str
    user_agent: str
    app_version: str
    logged_in: bool = False
    shared: bool = False  # a family tablet (Traps.households)


@dataclass(slots=True)
class _Person:
    index: int
    country: _Country
    city: _City
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
    browsers: list[_Browser]
    apps: list[_App]
    affinity: tuple[float, ...]
    mood: float = 0.0  # < 0 after a bad experience
    shared_email: bool = False  # the email is a couple's (Traps.shared_emails)


@dataclass(slots=True)
class _Session:
    events: list[tuple[TouchpointRecord, int, bytes]] = field(default_factory=list)
    duration: int = 0


class _Journeys:
    """Builds people and their sessions; one instance per ``generate`` call."""

    def __init__(
        self,
        rng: random.Random,
        customers: int,
        now_ms: int,
        span_ms: int,
        per_customer: float,
        traps: Traps | None = None,
    ) -> None:
        self.rng = rng
        self.traps = traps or Traps.none()
        self.trap = ""  # the trap the events emitted now carry
        self.email_shared = False  # the person whose sessions are built shares their email
        self.trap_of: dict[str, str] = {}  # event id -> trap
        self.centre_phones: dict[str, str] = {}  # country -> the contact centre's number
        self.rnd = rng.random
        self.bits = rng.getrandbits
        self.customers = customers
        self.now_ms = now_ms
        self.span_ms = span_ms
        self.per_customer = per_customer
        self.counts = [0, 0, 0, 0, 0]
        self.total = 0
        self.out: list[GeneratedEvent] = []
        self.phone_next: dict[tuple[str, str], int] = {}
        width = max(6, len(str(customers * 10)))
        self.customer_ids = rng.sample(range(1, 10**width), customers)
        self.customer_width = width
        self.suffix_width = max(3, len(str(customers * 10)))
        self.suffixes = rng.sample(range(10**self.suffix_width), customers)
        self.loyalty_ids = rng.sample(range(10**8, 10**10), customers)
        self.phone_start = {c.code: rng.randrange(10**6) for c in _COUNTRIES}
        # The session being built and its clock (ms from the session's start).
        self.session = _Session()
        self.t = 0
        self.consent: str | None = None

    # ---------------------------------------------------------------- small helpers

    def uuid(self) -> str:
        h = f"{(self.bits(128) & _UUID_CLEAR) | _UUID_SET:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def hex(self, chars: int) -> str:
        return f"{self.bits(chars * 4):0{chars}x}"

    def step(self, lo_s: float, hi_s: float) -> None:
        self.t += int((lo_s + (hi_s - lo_s) * self.rnd()) * 1000)

    def pick(self, seq: Sequence[_T]) -> _T:
        return seq[int(self.rnd() * len(seq))]

    def randint(self, lo: int, hi: int) -> int:
        return lo + int(self.rnd() * (hi - lo + 1))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.rnd()

    def weighted(self, seq: Sequence[_T], weights: Sequence[float]) -> _T:
        r = self.rnd() * sum(weights)
        for item, w in zip(seq, weights, strict=True):
            r -= w
            if r < 0:
                return item
        return seq[-1]

    def props(self, pool: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, str]:
        """0..4 properties (a contiguous run of the pool, from a random start)."""
        rnd = self.rnd
        r = rnd()
        n = 0 if r < 0.25 else 1 if r < 0.55 else 2 if r < 0.8 else 3 if r < 0.92 else 4
        if n == 0:
            return {}
        size = len(pool)
        start = int(rnd() * size)
        out: dict[str, str] = {}
        for j in range(start, start + min(n, size)):
            name, values = pool[j % size]
            out[name] = values[int(rnd() * len(values))]
        return out

    def email_form(self, p: _Person, odd: float) -> str:
        return self.pick(p.email_forms) if self.rnd() < odd else p.email

    # ---------------------------------------------------------------- people

    def person(self, index: int, home: tuple[_Country, _City] | None = None) -> _Person:
        """A new person; ``home``: where they live (a household's members live together)."""
        rnd = self.rnd
        country = self.weighted(_COUNTRIES, _COUNTRY_WEIGHTS)
        city = self.pick(country.cities)
        if home is not None:
            country, city = home
        first = self.pick(country.first_names)
        last = self.pick(country.last_names)
        n = f"{self.suffixes[index]:0{self.suffix_width}d}"
        style = self.randint(0, 3)
        if style == 0:
            local = f"{first}.{last}{n}"
        elif style == 1:
            local = f"{first[0]}{last}{n}"
        elif style == 2:
            local = f"{first}_{last[:3]}{n}"
        else:
            local = f"{last}.{first}{n}"
        domain = self.pick(_EMAIL_DOMAINS)
        email = f"{local.lower()}@{domain}"
        email_forms = (
            f"{local}@{domain.capitalize()}",
            f"  {local}@{domain.upper()} ",
            f"{email.upper()}",
            f"{email} ",
        )
        login_id = self.pick((f"{first}{last}{n}", f"{first.lower()}{n}", f"{last}_{first}{n}"))
        nsn = self.phone_number(country, city)
        e164 = f"+{country.calling_code}{nsn}"
        national = _fill(self.pick(country.national), nsn)
        international = _fill(self.pick(country.international), nsn)
        typed = self.pick((e164, national, international, national, international))
        handle: str | None = None
        if rnd() < 0.45:
            handle = self.pick((f"{first}{last[0]}_{n}", f"{first.lower()}.{last.lower()}{n}"))
        platform = self.weighted(_SOCIAL_PLATFORMS, _SOCIAL_PLATFORM_WEIGHTS)
        r = rnd()
        consent = (
            "granted" if r < 0.88 else "denied" if r < 0.93 else "unknown" if r < 0.98 else None
        )
        browsers = [self.browser(country, city, mobile=False)]
        if rnd() < 0.35:
            browsers.append(self.browser(country, city, mobile=True))
        apps: list[_App] = []
        if rnd() < 0.6:
            apps.append(self.app(country))
            if rnd() < 0.08:
                apps.append(self.app(country))  # a tablet as well
        affinity = (
            1.0 if rnd() < 0.9 else 0.3,
            (1.6 if rnd() < 0.7 else 0.8) if apps else 0.0,
            1.0,
            2.5 if handle else 0.0,
            1.0,
        )
        registered = rnd() < 0.85
        if registered:
            # Returning customers: apps keep you logged in, some browsers remember you.
            for a in apps:
                a.logged_in = rnd() < 0.5
            for b in browsers:
                b.linked = rnd() < 0.25
        return _Person(
            index=index,
            country=country,
            city=city,
            locale=self.pick(country.locales),
            customer_id=f"CRM-{self.customer_ids[index]:0{self.customer_width}d}",
            registered=registered,
            login_id=login_id,
            email=email,
            email_forms=email_forms,
            phone_e164=e164,
            phone_typed=typed,
            phone_national=national,
            phone_international=international,
            handle=handle,
            platform=platform,
            loyalty_id=f"LY{self.loyalty_ids[index]}" if rnd() < 0.55 else None,
            consent=consent,
            payment_method=self.pick(country.payment_methods),
            browsers=browsers,
            apps=apps,
            affinity=affinity,
        )

    def centre_phone(self, p: _Person) -> str:
        """The contact centre's own number in the caller's country (E.164)."""
        number = self.centre_phones.get(p.country.code)
        if number is None:
            nsn = self.phone_number(p.country, p.country.cities[0])
            number = self.centre_phones[p.country.code] = f"+{p.country.calling_code}{nsn}"
        return number

    def phone_number(self, country: _Country, city: _City) -> str:
        """A unique national significant number from the country's pools."""
        pool_key = (country.code, city.area)
        k = self.phone_next.get(pool_key, 0)
        self.phone_next[pool_key] = k + 1
        start = self.phone_start[country.code]
        for prefix, free in country.phone_pools:
            size = 10**free
            if k < size:
                # An affine permutation of the pool: unique, but not sequential.
                n = (start + k * 7919) % size
                return f"{prefix.replace('{a}', city.area)}{n:0{free}d}"
            k -= size
        raise ValueError(f"phone number pools of {country.code} exhausted")

    def browser(self, country: _Country, city: _City, *, mobile: bool) -> _Browser:
        ua = self.pick(_MOBILE_WEB_UAS if mobile else _DESKTOP_UAS)
        cookies = [self.uuid()]
        if self.rnd() < 0.3:
            cookies.append(self.uuid())  # cleared cookies / private window later on
        geo: GeoRecord = {
            "lat": round(city.lat + (self.rnd() - 0.5) * 0.08, 4),
            "lon": round(city.lon + (self.rnd() - 0.5) * 0.12, 4),
            "city": city.name,
        }
        return _Browser(ua, mobile, self.ip(country), geo, cookies)

    def app(self, country: _Country) -> _App:
        version = self.weighted(_APP_VERSIONS, _APP_VERSION_WEIGHTS)
        if self.rnd() < country.mobile_android_share:
            device = self.pick(_ANDROID_DEVICES)
            os_version = self.pick(_ANDROID_VERSIONS)
            ua = f"NorthwindApp/{version} (Linux; Android {os_version}; {device})"
            return _App("android", "android-sdk", self.uuid(), ua, version)
        device = self.pick(_IOS_DEVICES)
        ua = f"NorthwindApp/{version} ({device}; iOS {self.pick(_IOS_VERSIONS)})"
        return _App("ios", "ios-sdk", self.uuid().upper(), ua, version)

    # ---------------------------------------------------------------- contexts

    def web_context(self, p: _Person, b: _Browser) -> ContextRecord:
        return {
            "country": p.country.code,
            "geo": {**b.geo},  # where the IP address geolocates
            "ip": b.ip,
            "user_agent": b.user_agent,
            "locale": p.locale,
            "timezone": p.city.timezone,
        }

    def app_context(self, p: _Person, a: _App, ip: str) -> ContextRecord:
        c = p.city
        geo: GeoRecord = {
            "lat": round(c.lat + (self.rnd() - 0.5) * 0.15, 5),
            "lon": round(c.lon + (self.rnd() - 0.5) * 0.2, 5),
            "city": c.name if self.rnd() < 0.7 else None,
        }
        return {
            "country": p.country.code,
            "geo": geo,
            "ip": ip,
            "user_agent": a.user_agent,
            "locale": p.locale,
            "timezone": c.timezone,
        }

    def cc_context(self, p: _Person) -> ContextRecord:
        return {
            "country": p.country.code,
            "geo": None,
            "ip": None,
            "user_agent": None,
            "locale": p.locale,
            "timezone": p.city.timezone,
        }

    def social_context(self, p: _Person) -> ContextRecord:
        return {
            "country": p.country.code if self.rnd() < 0.7 else None,
            "geo": None,
            "ip": None,
            "user_agent": None,
            "locale": p.locale if self.rnd() < 0.8 else None,
            "timezone": None,
        }

    # ---------------------------------------------------------------- emit

    def emit(
        self,
        channel: str,
        event_type: str,
        source: str,
        ids: IdentifiersRecord,
        context: ContextRecord,
        payload: tuple[str, Payload],
        key: bytes,
        properties: dict[str, str],
        lag: int,
        cat: int,
    ) -> None:
        record: TouchpointRecord = {
            "event_id": self.uuid(),
            "channel": channel,
            "event_type": event_type,
            "occurred_at": self.t,  # made absolute when the session is placed
            "received_at": 0,
            "source": source,
            "identifiers": ids,
            "context": context,
            "payload": payload,
            "properties": properties,
            "consent": self.consent,
        }
        trap = self.trap or ("shared_email" if self.email_shared and ids.get("email") else "")
        if self.traps.junk and self.rnd() < self.traps.junk:
            kind, value = self.pick(_JUNK)
            if not ids.get(kind):
                record["identifiers"] = {**ids, kind: value}  # type: ignore[misc]
                trap = trap or "junk"
        if trap:
            self.trap_of[record["event_id"]] = trap
        self.session.events.append((record, lag, key))
        self.counts[cat] += 1
        self.total += 1

    # ---------------------------------------------------------------- web

    def web_ids(self, p: _Person, b: _Browser) -> tuple[IdentifiersRecord, bytes]:
        anon = b.cookies[b.cookie]
        if b.linked:
            ids = _ids(anonymous_id=anon, customer_id=p.customer_id)
            return ids, f"customer_id:{p.customer_id}".encode()
        return _ids(anonymous_id=anon), f"anonymous_id:{anon}".encode()

    def web(
        self,
        p: _Person,
        b: _Browser,
        sid: str,
        event_type: str,
        payload: WebRecord,
        ids: tuple[IdentifiersRecord, bytes] | None = None,
    ) -> None:
        ident, key = ids if ids is not None else self.web_ids(p, b)
        lag = 40 + int(self.rnd() * 1500)
        self.emit(
            "web",
            event_type,
            "web-sdk",
            ident,
            self.web_context(p, b),
            (WEB, payload),
            key,
            self.props(_WEB_PROPS),
            lag,
            _WEB_C,
        )

    def web_page(self, p: _Person, b: _Browser, sid: str, first: bool = False) -> None:
        r = self.rnd()
        loc = p.locale.lower()
        referrer = self.pick(_WEB_REFERRERS) if first else f"{_SHOP}/{loc}/"
        if r < 0.55:
            r2 = self.rnd()
            if r2 < 0.2:
                page_type, url, product = "home", f"{_SHOP}/{loc}/", None
            elif r2 < 0.5:
                cat = self.pick(_CATEGORIES_SHOP)
                page_type, url, product = "category", f"{_SHOP}/{loc}/c/{cat}", None
            else:
                product = f"SKU-{self.randint(10000, 10599)}"
                page_type, url = "product", f"{_SHOP}/{loc}/p/{product}"
            payload = _web(sid, url=url, referrer=referrer, page_type=page_type, product=product)
            self.web(p, b, sid, "page_view", payload)
        elif r < 0.78:
            query = self.pick(p.country.search_terms)
            url = f"{_SHOP}/{loc}/search?q={query.replace(' ', '+')}"
            payload = _web(sid, url=url, referrer=referrer, page_type="search", query=query)
            self.web(p, b, sid, "search", payload)
        elif r < 0.95:
            product = f"SKU-{self.randint(10000, 10599)}"
            url = f"{_SHOP}/{loc}/p/{product}"
            payload = _web(sid, url=url, page_type="product", product=product, success=True)
            self.web(p, b, sid, "add_to_cart", payload)
        else:
            product = f"SKU-{self.randint(10000, 10599)}"
            payload = _web(sid, url=f"{_SHOP}/{loc}/cart", page_type="cart", product=product)
            self.web(p, b, sid, "remove_from_cart", payload)

    def web_login(self, p: _Person, b: _Browser, sid: str) -> None:
        """Sign up or log in on this browser: the event that links the cookie to the person."""
        loc = p.locale.lower()
        anon = b.cookies[b.cookie]
        akey = f"anonymous_id:{anon}".encode()
        if not p.registered:
            payload = _web(sid, url=f"{_SHOP}/{loc}/signup", page_type="account", success=True)
            ids = _ids(
                anonymous_id=anon,
                customer_id=p.customer_id,
                login_id=p.login_id,
                email=self.email_form(p, 0.3),
                phone=p.phone_typed if self.rnd() < 0.5 else None,
            )
            self.web(p, b, sid, "signup", payload, (ids, akey))
            p.registered = True
            b.linked = True
            self.step(5, 40)
            return
        login_url = f"{_SHOP}/{loc}/login"
        if self.rnd() < 0.1:
            payload = _web(
                sid, url=login_url, page_type="login", success=False, error="INVALID_PASSWORD"
            )
            self.web(
                p,
                b,
                sid,
                "login_failed",
                payload,
                (_ids(anonymous_id=anon, login_id=p.login_id), akey),
            )
            self.step(5, 30)
            if self.rnd() < 0.6:
                payload = _web(
                    sid, url=f"{_SHOP}/{loc}/account/reset", page_type="account", success=True
                )
                ids = _ids(anonymous_id=anon, email=self.email_form(p, 0.3))
                self.web(p, b, sid, "password_reset", payload, (ids, akey))
                self.step(60, 300)  # reading the reset email
        payload = _web(sid, url=login_url, page_type="login", success=True)
        ids = _ids(
            anonymous_id=anon,
            customer_id=p.customer_id,
            login_id=p.login_id,
            email=self.email_form(p, 0.3) if self.rnd() < 0.3 else None,
        )
        self.web(p, b, sid, "login", payload, (ids, akey))
        b.linked = True
        self.step(3, 30)

    def pick_browser(self, p: _Person) -> _Browser:
        b = p.browsers[0] if len(p.browsers) == 1 or self.rnd() < 0.65 else p.browsers[1]
        if len(b.cookies) > 1 and b.cookie == 0 and self.rnd() < 0.2:
            b.cookie = 1  # cookies cleared: anonymous again
            b.linked = False
        return b

    def web_browse(self, p: _Person) -> None:
        b = self.pick_browser(p)
        sid = self.hex(16)
        n = self.randint(2, 6)
        login_at = self.randint(1, n) if not b.linked and self.rnd() < 0.45 else -1
        for i in range(n):
            if i == login_at:
                self.web_login(p, b, sid)
            self.web_page(p, b, sid, first=i == 0)
            self.step(4, 75)
        if b.linked and self.rnd() < 0.06:
            payload = _web(sid, url=f"{_SHOP}/{p.locale.lower()}/logout", page_type="account")
            self.web(p, b, sid, "logout", payload)

    # ---------------------------------------------------------------- mobile

    def app_event(
        self,
        p: _Person,
        a: _App,
        ctx: ContextRecord,
        event_type: str,
        payload: MobileRecord,
        ids: IdentifiersRecord | None = None,
    ) -> None:
        if ids is None:
            ids = _ids(device_id=a.device_id, customer_id=p.customer_id if a.logged_in else None)
        lag = 80 + int(self.rnd() * 3000) if self.rnd() < 0.93 else int(self.rnd() * 10 * _MINUTE)
        self.emit(
            "mobile",
            event_type,
            a.source,
            ids,
            _copy_context(ctx),
            (MOBILE, payload),
            f"device_id:{a.device_id}".encode(),
            self.props(_APP_PROPS),
            lag,
            _MOBILE_C,
        )

    def app_login(self, p: _Person, a: _App, ctx: ContextRecord, sid: str) -> None:
        """Log in on the app: links the device to the account."""
        if self.rnd() < 0.1:
            payload = _mobile(sid, a, screen="login", success=False, error="INVALID_PASSWORD")
            ids = _ids(device_id=a.device_id, login_id=p.login_id)
            self.app_event(p, a, ctx, "login_failed", payload, ids)
            self.step(5, 30)
            if self.rnd() < 0.5:
                payload = _mobile(sid, a, screen="password_reset", success=True)
                ids = _ids(device_id=a.device_id, email=self.email_form(p, 0.2))
                self.app_event(p, a, ctx, "password_reset", payload, ids)
                self.step(60, 240)
        payload = _mobile(sid, a, screen="login", success=True)
        ids = _ids(
            device_id=a.device_id,
            customer_id=p.customer_id,
            login_id=p.login_id,
            email=p.email if self.rnd() < 0.2 else None,
        )
        self.app_event(p, a, ctx, "login", payload, ids)
        a.logged_in = True
        self.step(2, 20)

    def app_ip(self, p: _Person) -> str:
        return self.ip(p.country)

    def ip(self, country: _Country) -> str:
        return f"{self.pick(country.ip_prefixes)}.{self.randint(0, 255)}.{self.randint(1, 254)}"

    def app_session(self, p: _Person) -> None:
        a = p.apps[0] if len(p.apps) == 1 or self.rnd() < 0.75 else p.apps[1]
        if a.shared:  # the family tablet: whoever used it last logged out
            a.logged_in = False
            self.trap = "family_tablet"
        try:
            self.app_session_on(p, a)
        finally:
            self.trap = ""

    def app_session_on(self, p: _Person, a: _App) -> None:
        ctx = self.app_context(p, a, self.app_ip(p))
        sid = self.hex(16)
        if self.rnd() < 0.25:
            campaign = self.pick(_PUSH_CAMPAIGNS)
            self.app_event(p, a, ctx, "push_open", _mobile(sid, a, screen="home", push=campaign))
        else:
            self.app_event(p, a, ctx, "app_open", _mobile(sid, a, screen="home"))
        self.step(2, 20)
        n = self.randint(1, 5)
        login_at = (
            self.randint(0, n - 1) if not a.logged_in and p.registered and self.rnd() < 0.5 else -1
        )
        for i in range(n):
            if i == login_at:
                self.app_login(p, a, ctx, sid)
            self.app_event(p, a, ctx, "screen_view", _mobile(sid, a, screen=self.pick(_SCREENS)))
            self.step(3, 60)
        if self.rnd() < 0.06:
            topic = self.pick(_SUPPORT_TOPICS)
            self.app_event(
                p, a, ctx, "in_app_support", _mobile(sid, a, screen="support", topic=topic)
            )
            self.step(10, 90)
        if self.rnd() < 0.6:
            self.app_event(p, a, ctx, "app_close", _mobile(sid, a, screen=self.pick(_SCREENS)))

    # ---------------------------------------------------------------- commerce

    def amount(self, p: _Person) -> float:
        lo, hi = p.country.amount_range
        value = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * self.rnd())
        return float(round(value)) if p.country.currency == "JPY" else round(value, 2)

    def payment(
        self,
        p: _Person,
        channel: str,
        order_id: str,
        amount: float,
        method: str,
        status: str,
        items: int,
    ) -> None:
        ids = _ids(
            customer_id=p.customer_id,
            loyalty_id=p.loyalty_id if self.rnd() < 0.6 else None,
            email=p.email if self.rnd() < 0.3 else None,
        )
        payload: CommerceRecord = {
            "order_id": order_id,
            "transaction_id": f"TX-{self.hex(20)}",
            "amount": amount,
            "currency": p.country.currency,
            "merchant": f"Northwind {p.country.code}",
            "merchant_category": self.pick(_MERCHANT_CATEGORIES),
            "payment_method": method,
            "status": status,
            "items": items,
        }
        context = self.cc_context(p)  # a payment service knows the country, not the device
        self.emit(
            channel,
            "payment",
            "payments",
            ids,
            context,
            (COMMERCE, payload),
            f"customer_id:{p.customer_id}".encode(),
            self.props(_PAY_PROPS),
            200 + int(self.rnd() * 2000),
            _COMMERCE_C,
        )

    def order_placed(
        self,
        p: _Person,
        channel: str,
        source: str,
        ids: IdentifiersRecord,
        context: ContextRecord,
        key: bytes,
        order_id: str,
        amount: float,
        method: str,
        items: int,
    ) -> None:
        payload: CommerceRecord = {
            "order_id": order_id,
            "transaction_id": None,
            "amount": amount,
            "currency": p.country.currency,
            "merchant": f"Northwind {p.country.code}",
            "merchant_category": None,
            "payment_method": method,
            "status": "approved",
            "items": items,
        }
        if p.loyalty_id and self.rnd() < 0.7:
            ids = {**ids, "loyalty_id": p.loyalty_id}
        self.emit(
            channel,
            "order_placed",
            source,
            ids,
            context,
            (COMMERCE, payload),
            key,
            self.props(_WEB_PROPS if channel == "web" else _APP_PROPS),
            100 + int(self.rnd() * 1500),
            _COMMERCE_C,
        )

    def purchase(self, p: _Person) -> None:
        rnd = self.rnd
        use_app = bool(p.apps) and p.registered and rnd() < 0.45
        order_id = f"ORD-{self.hex(12).upper()}"
        amount = self.amount(p)
        items = self.randint(1, 4)
        method = p.payment_method if rnd() < 0.8 else self.pick(p.country.payment_methods)
        if use_app:
            a = p.apps[0]
            ctx = self.app_context(p, a, self.app_ip(p))
            sid = self.hex(16)
            self.app_event(p, a, ctx, "app_open", _mobile(sid, a, screen="home"))
            self.step(2, 15)
            if not a.logged_in:
                self.app_login(p, a, ctx, sid)
            for screen in ("product", "cart", "checkout"):
                self.app_event(p, a, ctx, "screen_view", _mobile(sid, a, screen=screen))
                self.step(8, 90)
            channel, source = "mobile", a.source
            ids = _ids(device_id=a.device_id, customer_id=p.customer_id)
            key = f"device_id:{a.device_id}".encode()
            context = _copy_context(ctx)

            def fail(code: str) -> None:
                payload = _mobile(sid, a, screen="checkout", success=False, error=code)
                self.app_event(p, a, ctx, "checkout_failed", payload)

            errors = _MOBILE_CHECKOUT_ERRORS
        else:
            b = self.pick_browser(p)
            sid = self.hex(16)
            loc = p.locale.lower()
            self.web_page(p, b, sid, first=True)
            self.step(5, 60)
            if not b.linked:
                self.web_login(p, b, sid)
            product = f"SKU-{self.randint(10000, 10599)}"
            payload = _web(
                sid, url=f"{_SHOP}/{loc}/p/{product}", page_type="product", product=product,
                success=True,
            )  # fmt: skip
            self.web(p, b, sid, "add_to_cart", payload)
            self.step(10, 120)
            for step in ("cart", "shipping", "payment"):
                payload = _web(
                    sid, url=f"{_SHOP}/{loc}/checkout/{step}", page_type="checkout",
                    checkout_step=step, success=True,
                )  # fmt: skip
                self.web(p, b, sid, "checkout_step", payload)
                self.step(10, 100)
            channel, source = "web", "web-sdk"
            ids, key = self.web_ids(p, b)
            context = self.web_context(p, b)

            def fail(code: str) -> None:
                payload = _web(
                    sid, url=f"{_SHOP}/{loc}/checkout/payment", page_type="checkout",
                    checkout_step="payment", success=False, error=code,
                )  # fmt: skip
                self.web(p, b, sid, "checkout_failed", payload)

            errors = _WEB_CHECKOUT_ERRORS

        r = rnd()
        failed_reason: str | None = None
        if r < 0.7:
            self.payment(p, channel, order_id, amount, method, "approved", items)
            self.step(1, 4)
            self.order_placed(
                p, channel, source, ids, context, key, order_id, amount, method, items
            )
        elif r < 0.84:
            self.payment(p, channel, order_id, amount, method, "declined", items)
            self.step(1, 3)
            fail("PAYMENT_DECLINED")
            if rnd() < 0.4:
                self.step(30, 240)
                other = self.pick(p.country.payment_methods)
                self.payment(p, channel, order_id, amount, other, "approved", items)
                self.step(1, 4)
                self.order_placed(
                    p, channel, source, ids, context, key, order_id, amount, other, items
                )
            else:
                failed_reason = "payment_declined"
        else:
            fail(self.pick(errors))
            failed_reason = "checkout_failure"
        if failed_reason is not None:
            p.mood = -1.0
            if rnd() < 0.7:
                self.t += int((2 + 50 * rnd()) * _MINUTE)  # calls within the hour
                if not self.contact(p, failed_reason, complaint_rate=0.25) and rnd() < 0.35:
                    self.step(120, 900)  # not sorted out: they try again
                    self.contact(p, failed_reason, complaint_rate=0.4)
            if p.handle is not None and rnd() < 0.25:
                self.step(60, 900)
                self.social(p)

    # ---------------------------------------------------------------- contact centre

    def contact(self, p: _Person, reason: str, complaint_rate: float = 0.06) -> bool:
        """A call, chat or email (maybe a complaint, a refund, a survey); True if resolved."""
        rnd = self.rnd
        r = rnd()
        medium = "call" if r < 0.55 else "chat" if r < 0.85 else "email"
        verified = p.registered and rnd() < 0.65
        if medium == "call":
            # Caller id (E.164 or as the carrier presents it), else what the IVR or agent took.
            r = rnd()
            phone = (
                p.phone_e164
                if r < 0.55
                else p.phone_national
                if r < 0.75
                else p.phone_international
                if r < 0.9
                else p.phone_typed
            )
            ids = _ids(phone=phone, customer_id=p.customer_id if verified else None)
            if self.traps.centre_phone and self.rnd() < self.traps.centre_phone:
                # The agent typed the centre's own number into the caller's record.
                phone = self.centre_phone(p)
                ids = _ids(phone=phone, customer_id=p.customer_id)
                self.trap = "centre_phone"
            key = f"phone:{phone}".encode()
            source = "genesys"
            wait = _clamp(self.rng.lognormvariate(4.5, 0.8), 3, 3600)
            handle = _clamp(self.rng.lognormvariate(5.8, 0.6), 30, 7200)
        elif medium == "chat":
            if p.registered:
                ids = _ids(customer_id=p.customer_id, email=p.email if rnd() < 0.4 else None)
                key = f"customer_id:{p.customer_id}".encode()
            else:
                email = self.email_form(p, 0.5)
                ids = _ids(email=email, phone=p.phone_typed if rnd() < 0.3 else None)
                key = f"email:{email}".encode()
            source = "genesys"
            wait = _clamp(self.rng.lognormvariate(3.6, 0.8), 2, 1800)
            handle = _clamp(self.rng.lognormvariate(6.2, 0.5), 60, 7200)
        else:
            email = self.email_form(p, 0.5)
            ids = _ids(email=email, customer_id=p.customer_id if verified else None)
            key = f"email:{email}".encode()
            source = "zendesk"
            wait = _clamp(self.rng.lognormvariate(8.0, 0.7), 300, 86400)
            handle = _clamp(self.rng.lognormvariate(5.5, 0.5), 60, 3600)
        resolved = rnd() < (0.55 if reason in ("checkout_failure", "payment_declined") else 0.75)
        transferred = rnd() < 0.18
        complaint = rnd() < complaint_rate
        contact_id = f"CC-{self.hex(14)}"
        queue = _CC_QUEUES[reason]
        if p.locale[:2] not in ("en",) and rnd() < 0.6:
            queue = f"{queue}-{p.locale[:2]}"
        agent = f"AG-{self.randint(1000, 1399)}"
        context = self.cc_context(p)
        payload: ContactCentreRecord = {
            "contact_id": contact_id,
            "medium": medium,
            "queue": queue,
            "agent_id": agent,
            "reason": reason,
            "wait_seconds": round(wait, 1),
            "handle_seconds": round(handle, 1),
            "resolved": resolved,
            "transferred": transferred,
            "is_complaint": complaint,
            "csat": None,
            "nps": None,
        }
        # occurred_at is when the contact came in; its wait and handle time follow.
        lag = 500 + int(rnd() * 4000)
        self.emit(
            "contact_centre", medium, source, ids, context, (CONTACT, payload), key,
            self.props(_CC_PROPS), lag, _CC_C,
        )  # fmt: skip
        self.t += int((wait + handle) * 1000) if medium != "email" else int(handle * 1000)
        if complaint:
            self.step(20, 300)
            body: ContactCentreRecord = {**payload, "is_complaint": True}
            self.emit(
                "contact_centre", "complaint", "salesforce", {**ids}, self.cc_context(p),
                (CONTACT, body), key, self.props(_CC_PROPS), lag, _CC_C,
            )  # fmt: skip
            p.mood = -1.0
        if reason == "return_request" and resolved and rnd() < 0.5:
            self.step(30, 600)
            refund: CommerceRecord = {
                "order_id": f"ORD-{self.hex(12).upper()}",
                "transaction_id": f"TX-{self.hex(20)}",
                "amount": self.amount(p),
                "currency": p.country.currency,
                "merchant": f"Northwind {p.country.code}",
                "merchant_category": None,
                "payment_method": p.payment_method,
                "status": "refunded",
                "items": 1,
            }
            self.emit(
                "contact_centre", "refund", "payments",
                _ids(customer_id=p.customer_id) if p.registered else {**ids},
                self.cc_context(p), (COMMERCE, refund),
                f"customer_id:{p.customer_id}".encode() if p.registered else key,
                self.props(_PAY_PROPS), 1000, _COMMERCE_C,
            )  # fmt: skip
        if rnd() < 0.35:
            self.step(120, 1200)
            good = resolved and not complaint
            csat = self.randint(4, 5) if good else self.randint(1, 3)
            nps = self.randint(7, 10) if good else self.randint(0, 6)
            survey: ContactCentreRecord = {
                **payload,
                "csat": csat if rnd() < 0.95 else None,
                "nps": nps if rnd() < 0.8 else None,
            }
            self.emit(
                "contact_centre", "survey_response", "medallia", {**ids}, self.cc_context(p),
                (CONTACT, survey), key, {}, 2000 + int(rnd() * 30000), _CC_C,
            )  # fmt: skip
            if good:
                p.mood = 0.0
        self.trap = ""
        return resolved

    def cc_session(self, p: _Person) -> None:
        reason = self.weighted(_CC_REASONS, _CC_REASON_WEIGHTS)
        if reason == "account_access" and p.registered and self.rnd() < 0.5:
            b = self.pick_browser(p)
            sid = self.hex(16)
            loc = p.locale.lower()
            url = f"{_SHOP}/{loc}/account/reset"
            payload = _web(sid, url=url, page_type="account", success=True)
            anon = b.cookies[b.cookie]
            ids = _ids(anonymous_id=anon, email=self.email_form(p, 0.3))
            self.web(p, b, sid, "password_reset", payload, (ids, f"anonymous_id:{anon}".encode()))
            self.step(300, 1500)
        self.contact(p, reason)

    # ---------------------------------------------------------------- social

    def social(self, p: _Person) -> None:
        rnd = self.rnd
        if p.handle is None:
            return
        handle = p.handle if rnd() < 0.5 else f"@{p.handle}"
        key = f"social_handle:{handle}".encode()
        mood = p.mood + (rnd() - 0.45) * 1.2
        if mood < -0.35:
            texts, lo, hi = _NEGATIVE_TEXTS, -0.95, -0.3
        elif mood < 0.25:
            texts, lo, hi = _NEUTRAL_TEXTS, -0.2, 0.2
        else:
            texts, lo, hi = _POSITIVE_TEXTS, 0.3, 0.95
        text = self.pick(texts).format(brand=_BRAND, city=p.city.name)
        message_id = f"{p.platform}-{self.bits(60)}"
        r = rnd()
        kind = "mention" if r < 0.6 else "direct_message" if r < 0.85 else "reply"
        in_reply_to = f"{p.platform}-{self.bits(60)}" if kind == "reply" else None
        ids = _ids(social_handle=handle)
        if kind == "direct_message":  # mostly support requests: neutral to negative
            lo, hi = min(lo, -0.6), min(hi, 0.1)
            template = self.pick(_DM_TEXTS)
            if "{email}" in template:
                email = self.email_form(p, 0.3)
                text = template.format(email=email.strip())
                ids["email"] = email
            else:
                text = template
        self.social_event(p, kind, ids, key, text, self.uniform(lo, hi), message_id, in_reply_to)
        if kind == "mention" and rnd() < 0.4:
            # The brand replied; the customer answers, sometimes moving to a DM.
            self.step(120, 1500)
            text = "thanks for getting back to me" if mood > -0.35 else "that doesn't help at all"
            self.social_event(
                p, "reply", _ids(social_handle=handle), key, text, self.uniform(lo, hi),
                f"{p.platform}-{self.bits(60)}", f"{p.platform}-{self.bits(60)}",
            )  # fmt: skip
            if rnd() < 0.4:
                self.step(60, 900)
                email = self.email_form(p, 0.3)
                text = f"DMing you now, my email is {email.strip()}"
                ids = _ids(social_handle=handle, email=email)
                self.social_event(
                    p, "direct_message", ids, key, text, self.uniform(lo, hi),
                    f"{p.platform}-{self.bits(60)}", None,
                )  # fmt: skip

    def social_event(
        self,
        p: _Person,
        kind: str,
        ids: IdentifiersRecord,
        key: bytes,
        text: str,
        sentiment: float,
        message_id: str,
        in_reply_to: str | None,
    ) -> None:
        payload: SocialRecord = {
            "platform": p.platform,
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "text": text,
            "sentiment": round(sentiment, 3),
            "is_public": kind != "direct_message",
        }
        self.emit(
            "social", kind, "sprinklr", ids, self.social_context(p), (SOCIAL, payload), key,
            self.props(_SOCIAL_PROPS), 1000 + int(self.rnd() * 60000), _SOCIAL_C,
        )  # fmt: skip

    # ---------------------------------------------------------------- journeys

    def pick_category(self, p: _Person) -> int:
        """A category for the next session: the person's habits, nudged towards the mix."""
        total = self.total
        weights = [
            target * aff * ((2.5 if count < target * total else 0.35) if total else 1.0)
            for target, aff, count in zip(_TARGETS, p.affinity, self.counts, strict=True)
        ]
        return self.weighted(range(5), weights)

    def run_session(self, p: _Person) -> None:
        cat = self.pick_category(p)
        if cat == _MOBILE_C and p.apps:
            self.app_session(p)
        elif cat == _CC_C:
            self.cc_session(p)
        elif cat == _SOCIAL_C and p.handle is not None:
            self.social(p)
        elif cat == _COMMERCE_C:
            self.purchase(p)
        else:
            self.web_browse(p)

    def build(self) -> list[GeneratedEvent]:
        sigma = 0.55
        mu = math.log(max(self.per_customer * 0.8, 0.5)) - sigma * sigma / 2
        traps = self.traps
        tablet: _App | None = None
        tablet_left = 0
        home: tuple[_Country, _City] | None = None
        partner: _Person | None = None
        for index in range(self.customers):
            p = self.person(index, home if tablet_left > 0 else None)
            if traps.households:
                if tablet_left == 0 and self.rnd() < traps.households / 3:
                    tablet = self.app(p.country)
                    tablet.shared = True
                    tablet_left = self.randint(2, 4)
                    home = (p.country, p.city)
                if tablet is not None and tablet_left > 0:
                    p.apps.append(tablet)
                    p.affinity = (p.affinity[0], max(p.affinity[1], 1.2), *p.affinity[2:])
                    tablet_left -= 1
            if traps.shared_emails:
                if partner is not None:  # the second of a couple: the first one's email
                    p.email, p.email_forms = partner.email, partner.email_forms
                    p.shared_email = True
                    partner = None
                elif self.rnd() < traps.shared_emails / 2:
                    partner = p
                    p.shared_email = True
            self.email_shared = p.shared_email
            self.consent = p.consent
            budget = max(1.0, self.rng.lognormvariate(mu, sigma))
            sessions: list[_Session] = []
            produced = 0
            while produced < budget and len(sessions) < 64:
                self.session = _Session()
                self.t = 0
                self.run_session(p)
                self.session.duration = self.t
                produced += len(self.session.events)
                sessions.append(self.session)
            self.place(p.index, sessions)
        self.out.sort(key=_occurred)
        return self.out

    def place(self, person: int, sessions: list[_Session]) -> None:
        """Lay a person's sessions out in order over the span, ending no later than now."""
        rnd = self.rnd
        span = self.span_ms
        busy = sum(s.duration for s in sessions)
        scale = 1.0
        if busy > span * 0.9:
            scale = span * 0.9 / busy
            busy = int(busy * scale)
        gaps = [rnd() for _ in range(len(sessions) + 1)]
        free = (span - busy) / (sum(gaps) or 1.0)
        t = self.now_ms - span
        now = self.now_ms
        out = self.out
        for s, gap in zip(sessions, gaps, strict=False):
            t += int(gap * free)
            for rec, lag, key in s.events:
                occurred = t + int(rec["occurred_at"] * scale)
                rec["occurred_at"] = occurred
                received = occurred + lag
                rec["received_at"] = received if received < now else now
                trap = self.trap_of.get(rec["event_id"], "")
                out.append(GeneratedEvent(rec, person, key, trap))
            t += int(s.duration * scale)


def _copy_context(ctx: ContextRecord) -> ContextRecord:
    geo = ctx["geo"]
    return {**ctx, "geo": None if geo is None else {**geo}}


def _occurred(event: GeneratedEvent) -> int:
    return event.record["occurred_at"]


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def _ids(
    *,
    anonymous_id: str | None = None,
    device_id: str | None = None,
    customer_id: str | None = None,
    login_id: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    social_handle: str | None = None,
    loyalty_id: str | None = None,
) -> IdentifiersRecord:
    return {
        "anonymous_id": anonymous_id,
        "device_id": device_id,
        "customer_id": customer_id,
        "login_id": login_id,
        "email": email,
        "phone": phone,
        "social_handle": social_handle,
        "loyalty_id": loyalty_id,
    }


def _web(
    session_id: str,
    *,
    url: str | None = None,
    referrer: str | None = None,
    page_type: str | None = None,
    query: str | None = None,
    product: str | None = None,
    checkout_step: str | None = None,
    success: bool | None = None,
    error: str | None = None,
) -> WebRecord:
    return {
        "session_id": session_id,
        "url": url,
        "referrer": referrer,
        "page_type": page_type,
        "search_query": query,
        "product_id": product,
        "checkout_step": checkout_step,
        "success": success,
        "error_code": error,
    }


def _mobile(
    session_id: str,
    app: _App,
    *,
    screen: str | None = None,
    push: str | None = None,
    topic: str | None = None,
    success: bool | None = None,
    error: str | None = None,
) -> MobileRecord:
    return {
        "session_id": session_id,
        "app_version": app.app_version,
        "os": app.os,
        "screen": screen,
        "push_campaign": push,
        "support_topic": topic,
        "success": success,
        "error_code": error,
    }


# --------------------------------------------------------------------------- public API


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for a while.

    Generating and encoding allocate millions of small dicts and tuples and create no
    reference cycles, so the collector would only re-scan live objects over and over
    (a quarter to a third of the run time); it resumes as it was afterwards.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def generate(
    customers: int,
    *,
    seed: int = 7,
    now_ms: int,
    span_ms: int = 2 * 3600 * 1000,
    events_per_customer: float = 12.0,
    traps: Traps | None = None,
) -> list[GeneratedEvent]:
    """Synthetic journeys of ``customers`` people, sorted by ``occurred_at``.

    Every event lies in ``[now_ms - span_ms, now_ms]``; the same arguments always give
    the same events (ids included). ``events_per_customer`` is the mean per person.
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    if span_ms <= 0:
        raise ValueError("span_ms must be > 0")
    if not events_per_customer > 0:
        raise ValueError("events_per_customer must be > 0")
    journeys = _Journeys(
        random.Random(seed), customers, now_ms, span_ms, events_per_customer, traps
    )
    with _gc_paused():
        return journeys.build()


def encode_events(
    events: Sequence[GeneratedEvent],
    codec: Encoder,
    old_schema_fraction: float = 0.0,
    seed: int = 7,
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs in the Confluent wire format.

    About ``old_schema_fraction`` of the events (chosen with ``seed``) are written with
    schema id 1, the v1 schema without ``consent``, as a producer not yet upgraded would.
    """
    if not 0.0 <= old_schema_fraction <= 1.0:
        raise ValueError("old_schema_fraction must be within [0, 1]")
    encode = codec.encode
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    with _gc_paused():
        if old_schema_fraction <= 0.0:
            for ev in events:
                append((ev.key, encode(cast(dict[str, Any], ev.record))))
            return out
        rnd = random.Random(seed).random
        for ev in events:
            if rnd() < old_schema_fraction:
                v1 = {k: v for k, v in ev.record.items() if k != "consent"}
                append((ev.key, encode(v1, 1)))
            else:
                append((ev.key, encode(cast(dict[str, Any], ev.record))))
    return out


_WINDOW: Final = 50_000  # records in flight before waiting for deliveries


async def produce(
    settings: Settings,
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    topic: str | None = None,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``pairs`` to ``topic`` (default: the raw topic); return how many were delivered.

    Messages are batched per partition (the same partition the Java client's default
    partitioner picks for the key) and submitted as whole batches, which is what lets a
    single Python process go well past 50k messages/s. ``rate`` paces the sending at that
    many messages per second (``None``: as fast as possible). Every delivery is awaited
    before returning; failed ones are logged and not counted. ``progress`` is called
    with the number delivered so far after each chunk of deliveries.
    """
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0")
    if not pairs:
        return 0
    topic = topic or settings.topics.raw
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.app_id}-generator",
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        max_batch_size=512 * 1024,
        **consumer_security(settings),
    )
    delivered = 0
    failed = 0
    first_error: BaseException | None = None
    in_flight: deque[tuple[asyncio.Future[Any], int]] = deque()
    in_flight_records = 0

    def account(future: asyncio.Future[Any], count: int) -> None:
        nonlocal delivered, failed, first_error
        exc = future.exception()
        if exc is None:
            delivered += count
        else:
            failed += count
            first_error = first_error or exc

    async def settle(down_to: int) -> None:
        """Await the oldest batches until at most ``down_to`` records are in flight."""
        nonlocal in_flight_records
        while in_flight and in_flight_records > down_to:
            future, count = in_flight.popleft()
            in_flight_records -= count
            await asyncio.wait([future])
            account(future, count)
        if progress is not None:
            progress(delivered)

    def reap() -> None:
        """Count the batches already acknowledged, without waiting."""
        nonlocal in_flight_records
        reaped = False
        while in_flight and in_flight[0][0].done():
            future, count = in_flight.popleft()
            in_flight_records -= count
            account(future, count)
            reaped = True
        if reaped and progress is not None:
            progress(delivered)

    try:
        await producer.start()
        partitions = sorted(await producer.partitions_for(topic))
        n_partitions = len(partitions)
        partition_of: dict[bytes, int] = {}
        builders: dict[int, Any] = {}

        async def submit(partition: int) -> None:
            nonlocal in_flight_records
            builder = builders.pop(partition)
            builder.close()
            count = builder.record_count()
            future = await producer.send_batch(builder, topic, partition=partition)
            in_flight.append((future, count))
            in_flight_records += count

        # Paced: every tick (1/20 s of messages) the open batches go out, then we wait.
        tick = max(1, int(rate / 20)) if rate is not None else 0
        start = time.monotonic()
        for i, (key, value) in enumerate(pairs):
            if tick and i and i % tick == 0:
                for partition in list(builders):
                    await submit(partition)
                reap()
                delay = start + i / cast(float, rate) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            partition = partition_of.get(key, -1)
            if partition < 0:
                partition = partitions[(murmur2(key) & 0x7FFFFFFF) % n_partitions]
                partition_of[key] = partition
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                await submit(partition)
                builder = builders[partition] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"message {i} ({len(value)} bytes) exceeds max_batch_size")
                if in_flight_records >= _WINDOW:
                    await settle(_WINDOW // 2)
                else:
                    reap()
        for partition in list(builders):
            await submit(partition)
        await settle(0)
    finally:
        await producer.stop()
    if failed:
        log.error("%d of %d messages were not delivered: %r", failed, len(pairs), first_error)
    return delivered
