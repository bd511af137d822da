"""Per-customer behavioural profiles, explainable detectors, rules as configuration.

Pure and Faust-free. The alerts agent keeps one :class:`Profile` per resolved customer
(a changelog-backed table, written once per batch per touched customer) and calls
:meth:`Detector.process` for each touchpoint in event-time order::

    profile, alerts = detector.process(profile, record, now_ms)

Each detector is a small pure function ``observe(profile, record, rule, now_ms) ->
Alert | None`` that looks at the event *before* it is folded into the profile (so the
baseline never contains the event being judged); :func:`fold` then adds the event.
:meth:`Detector.tick` runs the time-driven check (complaints left unresolved) and is
called periodically by the agent.

Alert ids are a hash of (customer, rule, triggering event ids): a replay or a restart
produces the same id, so subscribers de-duplicate; a cool-down per customer and rule
(in event time, kept in the profile) stops repeats.

Rules live in YAML (``deploy/rules.yaml``, equal to :meth:`Rules.default`)::

    version: 1
    rules:
      impossible_travel:
        enabled: true
        severity: high            # info, low, medium, high, critical
        cooldown_minutes: 720
        max_speed_kmh: 900
    subscribers: [...]            # webhook subscribers, read by streams.adapters.webhooks

Every rule and field is validated; an error names the rule and the field.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, TypedDict, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from streams.ingest.stage import from_json
from streams.wire.model import COMMERCE, CONTACT, SOCIAL, GeoRecord, TouchpointRecord

__all__ = [
    "ALERT_COLUMNS",
    "RULE_NAMES",
    "Alert",
    "AmountOutlier",
    "ComplaintUnresolved",
    "Detector",
    "HighEffort",
    "ImpossibleTravel",
    "NewDeviceNewCountryHighValue",
    "Profile",
    "RuleConfig",
    "Rules",
    "RulesError",
    "SelfServiceFailed",
    "Severity",
    "UnhappyValuable",
    "UnusualHour",
    "VelocityBurst",
    "alert_id",
    "alert_row",
    "is_unhappy",
    "fold",
    "haversine_km",
    "local_hour",
    "merge_profiles",
    "to_eur",
]

_MINUTE: Final = 60_000
_HOUR: Final = 3_600_000
_DAY: Final = 86_400_000

# --------------------------------------------------------------------------- the Alert


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {s: i for i, s in enumerate(Severity)}


class Alert(TypedDict):
    """One alert, as the Avro record ``touchpoints.Alert`` (subject ``alerts-value``)."""

    alert_id: str
    customer_id: str
    rule: str
    severity: str
    score: float
    summary: str
    event_ids: list[str]
    evidence: dict[str, str]
    occurred_at: int  # epoch ms: the triggering event (or the deadline that passed)
    detected_at: int  # epoch ms: when the pipeline raised it


def alert_id(customer_id: str, rule: str, event_ids: Iterable[str]) -> str:
    """Deterministic: the same customer, rule and triggering events give the same id."""
    text = "\x1f".join((customer_id, rule, *sorted(event_ids)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


ALERT_COLUMNS: Final[tuple[str, ...]] = (
    "alert_id",
    "customer_id",
    "rule",
    "severity",
    "score",
    "summary",
    "event_ids",
    "evidence",
    "occurred_at",
    "detected_at",
)


def alert_row(alert: Alert) -> list[Any]:
    """One ``alerts`` row (migration 0004), in ``ALERT_COLUMNS`` order."""
    return [
        alert["alert_id"],
        alert["customer_id"],
        alert["rule"],
        alert["severity"],
        alert["score"],
        alert["summary"],
        list(alert["event_ids"]),
        dict(alert["evidence"]),
        alert["occurred_at"],
        alert["detected_at"],
    ]


# --------------------------------------------------------------------------- rules


class RulesError(ValueError):
    """Bad rules configuration; ``problems`` lists every one, each naming rule and field."""

    def __init__(self, problems: list[str], source: str = "rules") -> None:
        self.problems = problems
        super().__init__(f"invalid {source}:\n  " + "\n  ".join(problems))


def _param(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    doc: str = "",
) -> Any:
    return field(default=default, metadata={"gt": gt, "ge": ge, "le": le, "doc": doc})


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Settings every rule has."""

    enabled: bool = _param(True, doc="Run this detector.")
    severity: Severity = _param(Severity.MEDIUM, doc="info, low, medium, high or critical.")
    cooldown_minutes: float = _param(
        60.0, ge=0, doc="After an alert, suppress this rule for the customer (event time)."
    )

    @property
    def cooldown_ms(self) -> int:
        return int(self.cooldown_minutes * _MINUTE)


@dataclass(frozen=True, slots=True)
class ImpossibleTravel(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(720.0, ge=0)
    max_speed_kmh: float = _param(900.0, gt=0, doc="Faster than this between two geos alerts.")
    min_distance_km: float = _param(
        300.0, ge=0, doc="Ignore jumps shorter than this (IP geolocation noise)."
    )


@dataclass(frozen=True, slots=True)
class NewDeviceNewCountryHighValue(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(1440.0, ge=0)
    min_amount_eur: float = _param(300.0, ge=0, doc="Payment value (EUR) from which it alerts.")
    min_history: int = _param(5, ge=1, le=10_000, doc="Events seen before 'never seen' counts.")
    session_minutes: float = _param(
        30.0, ge=0, doc="A payment without device/country takes them from this recent event."
    )


@dataclass(frozen=True, slots=True)
class AmountOutlier(RuleConfig):
    severity: Severity = _param(Severity.MEDIUM)
    cooldown_minutes: float = _param(1440.0, ge=0)
    min_history: int = _param(8, ge=3, le=64, doc="Payments in the currency before any alert.")
    min_robust_z: float = _param(2.5, gt=0, doc="Robust z of log(amount): (x-median)/1.4826 MAD.")
    min_ratio_to_median: float = _param(10.0, ge=1, doc="And at least this multiple of median.")


@dataclass(frozen=True, slots=True)
class VelocityBurst(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(60.0, ge=0)
    min_events: int = _param(5, ge=2, le=32, doc="Payments (or password resets) in the window.")
    window_minutes: float = _param(10.0, gt=0)


@dataclass(frozen=True, slots=True)
class UnusualHour(RuleConfig):
    severity: Severity = _param(Severity.LOW)
    cooldown_minutes: float = _param(720.0, ge=0)
    min_history: int = _param(60, ge=1, doc="Web/app events in the hour histogram first.")
    min_gap_hours: int = _param(4, ge=1, le=12, doc="Hours away from any hour ever used.")


@dataclass(frozen=True, slots=True)
class SelfServiceFailed(RuleConfig):
    severity: Severity = _param(Severity.MEDIUM)
    cooldown_minutes: float = _param(240.0, ge=0)
    within_minutes: float = _param(60.0, gt=0, doc="Contact this soon after a failure.")


@dataclass(frozen=True, slots=True)
class HighEffort(RuleConfig):
    severity: Severity = _param(Severity.MEDIUM)
    cooldown_minutes: float = _param(10080.0, ge=0)
    min_contacts: int = _param(3, ge=2, le=16, doc="Distinct contact-centre contacts ...")
    window_days: float = _param(7.0, gt=0, doc="... within this many days.")


@dataclass(frozen=True, slots=True)
class UnhappyValuable(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(1440.0, ge=0)
    min_value_eur: float = _param(1000.0, ge=0, doc="Lifetime value (EUR) that counts as high.")
    max_csat: int = _param(2, ge=1, le=5, doc="CSAT at or below this is unhappy.")
    max_nps: int = _param(4, ge=0, le=10, doc="NPS at or below this is unhappy.")
    max_sentiment: float = _param(-0.5, ge=-1, le=1, doc="Social sentiment at or below this.")


@dataclass(frozen=True, slots=True)
class ComplaintUnresolved(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(1440.0, ge=0)
    target_hours: float = _param(48.0, gt=0, doc="A resolved contact must follow within this.")


_RULE_TYPES: Final[dict[str, type[RuleConfig]]] = {
    "impossible_travel": ImpossibleTravel,
    "new_device_new_country_high_value": NewDeviceNewCountryHighValue,
    "amount_outlier": AmountOutlier,
    "velocity_burst": VelocityBurst,
    "unusual_hour": UnusualHour,
    "self_service_failed": SelfServiceFailed,
    "high_effort": HighEffort,
    "unhappy_valuable": UnhappyValuable,
    "complaint_unresolved": ComplaintUnresolved,
}
RULE_NAMES: Final[tuple[str, ...]] = tuple(_RULE_TYPES)
_TOP_LEVEL: Final = ("version", "rules", "subscribers")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(where: str, name: str, value: Any, default: Any, meta: Mapping[str, Any]) -> Any:
    """The validated value or raises ``ValueError`` with a message about ``where.name``."""
    label = f"{where}.{name}"
    if isinstance(default, Severity):
        if not isinstance(value, str) or value not in Severity.__members__.values():
            choices = ", ".join(s.value for s in Severity)
            raise ValueError(f"{label}: expected one of {choices}, got {value!r}")
        return Severity(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{label}: expected true or false, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label}: expected an integer, got {_type_name(value)} {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{label}: expected a number, got {_type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{label}: expected a finite number, got {value!r}")
    gt, ge, le = meta.get("gt"), meta.get("ge"), meta.get("le")
    if gt is not None and not value > gt:
        kind = "negative" if value < 0 else "too small"
        raise ValueError(f"{label}: {value!r} is {kind}; must be > {gt:g}")
    if ge is not None and not value >= ge:
        kind = "negative" if value < 0 else "too small"
        raise ValueError(f"{label}: {value!r} is {kind}; must be >= {ge:g}")
    if le is not None and not value <= le:
        raise ValueError(f"{label}: {value!r} is too large; must be <= {le:g}")
    return float(value) if isinstance(default, float) else value


@dataclass(frozen=True, slots=True)
class Rules:
    """Validated rule settings, one :class:`RuleConfig` subclass per rule."""

    impossible_travel: ImpossibleTravel = field(default_factory=ImpossibleTravel)
    new_device_new_country_high_value: NewDeviceNewCountryHighValue = field(
        default_factory=NewDeviceNewCountryHighValue
    )
    amount_outlier: AmountOutlier = field(default_factory=AmountOutlier)
    velocity_burst: VelocityBurst = field(default_factory=VelocityBurst)
    unusual_hour: UnusualHour = field(default_factory=UnusualHour)
    self_service_failed: SelfServiceFailed = field(default_factory=SelfServiceFailed)
    high_effort: HighEffort = field(default_factory=HighEffort)
    unhappy_valuable: UnhappyValuable = field(default_factory=UnhappyValuable)
    complaint_unresolved: ComplaintUnresolved = field(default_factory=ComplaintUnresolved)

    @classmethod
    def default(cls) -> Rules:
        """The built-in defaults (``deploy/rules.yaml`` ships exactly these)."""
        return cls()

    @classmethod
    def from_yaml(cls, path: Path | str) -> Rules:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RulesError([f"not valid YAML: {exc}"], str(path)) from exc
        return cls.from_mapping({} if data is None else data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "rules") -> Rules:
        """Validate a parsed rules document; collects every problem before raising."""
        if not isinstance(data, Mapping):
            raise RulesError([f"top level: expected a mapping, got {_type_name(data)}"], source)
        problems: list[str] = []
        for key in data:
            if key not in _TOP_LEVEL:
                problems.append(f"{key}: unknown top-level key (known: {', '.join(_TOP_LEVEL)})")
        version = data.get("version", 1)
        if version != 1 or isinstance(version, bool):
            problems.append(f"version: expected 1, got {version!r}")
        rules = data.get("rules") or {}
        if not isinstance(rules, Mapping):
            problems.append(f"rules: expected a mapping of rule name to settings, got {rules!r}")
            rules = {}
        built: dict[str, RuleConfig] = {}
        for rule_name, settings in rules.items():
            where = f"rules.{rule_name}"
            rule_type = _RULE_TYPES.get(str(rule_name))
            if rule_type is None:
                problems.append(f"{where}: unknown rule (known: {', '.join(RULE_NAMES)})")
                continue
            if settings is None:
                settings = {}
            if not isinstance(settings, Mapping):
                problems.append(f"{where}: expected a mapping of settings, got {settings!r}")
                continue
            fields = {f.name: f for f in dataclasses.fields(rule_type)}
            values: dict[str, Any] = {}
            for name, value in settings.items():
                spec = fields.get(str(name))
                if spec is None:
                    known = ", ".join(fields)
                    problems.append(f"{where}.{name}: unknown field (known: {known})")
                    continue
                try:
                    values[spec.name] = _check_value(
                        where, spec.name, value, spec.default, spec.metadata
                    )
                except ValueError as exc:
                    problems.append(str(exc))
            built[str(rule_name)] = rule_type(**values)
        if problems:
            raise RulesError(problems, source)
        return cls(**built)  # type: ignore[arg-type]  # keys are the field names

    def get(self, name: str) -> RuleConfig:
        config: RuleConfig = getattr(self, name)
        return config

    def to_mapping(self) -> dict[str, Any]:
        """The ``rules:`` section as plain data (what ``deploy/rules.yaml`` holds)."""
        out: dict[str, Any] = {}
        for name in RULE_NAMES:
            config = self.get(name)
            out[name] = {
                f.name: (v.value if isinstance(v := getattr(config, f.name), Severity) else v)
                for f in dataclasses.fields(config)
            }
        return {"version": 1, "rules": out}


# --------------------------------------------------------------------------- profile

_MAX_PLACES: Final = 12
_MAX_DEVICES: Final = 16
_MAX_MERCHANTS: Final = 16
_MAX_CHANNELS: Final = 8
_MAX_CURRENCIES: Final = 3
_MAX_AMOUNTS: Final = 64
_MAX_CONTACTS: Final = 16
_MAX_FAILURES: Final = 8
_MAX_RECENT: Final = 20
_MAX_VELOCITY: Final = 32
_MAX_COMPLAINTS: Final = 8
_MAX_FRESH: Final = 8
_MAX_GEOS: Final = 8
_MAX_COLD: Final = 6
# The rules whose verdict needs history: an event they could not judge for lack of it is
# kept (``Profile.cold``) and judged again when the history arrives.
_COLD_RULES: Final = (
    "unusual_hour",
    "unhappy_valuable",
    "new_device_new_country_high_value",
    "amount_outlier",
)
_MAX_EARLY: Final = 64  # earliest web/app event times kept: history counts as of any time

_CONTACT_TYPES: Final = frozenset({"call", "chat", "email", "complaint"})
_FAILURE_TYPES: Final = frozenset({"checkout_failed", "login_failed"})
_DIGITAL: Final = frozenset({"web", "mobile"})

# Approximate EUR value of one unit of currency, for value thresholds only (lifetime
# value, high-value payments). Unknown currencies count as no value.
_EUR_PER_UNIT: Final[dict[str, float]] = {
    "EUR": 1.0,
    "GBP": 1.17,
    "USD": 0.92,
    "CHF": 1.04,
    "AUD": 0.61,
    "CAD": 0.68,
    "BRL": 0.17,
    "INR": 0.011,
    "JPY": 0.0062,
    "SEK": 0.088,
    "NOK": 0.086,
    "DKK": 0.134,
    "PLN": 0.23,
    "MXN": 0.05,
    "CNY": 0.13,
}


def to_eur(amount: float, currency: str) -> float | None:
    rate = _EUR_PER_UNIT.get(currency.upper())
    return None if rate is None else amount * rate


@dataclass(slots=True)
class Profile:
    """What one customer usually does: compact, bounded, JSON-serialisable.

    Every collection has a cap (oldest or rarest entries go first), so a profile stays
    a few kilobytes whatever the customer does. Entries are plain lists (JSON arrays):
    ``to_dict``/``from_dict`` round-trip through any JSON serialiser.
    """

    customer_id: str
    seen: int = 0  # events folded in
    first_ms: int = 0
    last_ms: int = 0
    countries: dict[str, int] = field(default_factory=dict)  # country -> events
    cities: dict[str, int] = field(default_factory=dict)  # city -> events
    geos: list[list[Any]] = field(default_factory=list)  # [ts, id, lat, lon, cc, type]
    timezone: str | None = None  # last IANA zone seen
    devices: dict[str, int] = field(default_factory=dict)  # device key -> last seen ms
    fresh: list[list[Any]] = field(default_factory=list)  # [ts, "d"/"c", key] first seen
    channels: dict[str, int] = field(default_factory=dict)  # channel -> events
    hours: list[int] = field(default_factory=lambda: [0] * 24)  # web/app events per local hour
    # When each hour was first used (event time, 0: never) and the earliest web/app event
    # times (at most _MAX_EARLY): the histogram as it stood at any earlier time.
    hour_first: list[int] = field(default_factory=lambda: [0] * 24)
    early: list[int] = field(default_factory=list)
    amounts: dict[str, list[list[Any]]] = field(default_factory=dict)  # cur -> [[ts, amount]]
    merchants: dict[str, int] = field(default_factory=dict)  # merchant -> payments
    contacts: list[list[Any]] = field(default_factory=list)  # [ts, event_id, contact key]
    failures: list[list[Any]] = field(default_factory=list)  # [ts, event_id, channel/type]
    recent: list[list[Any]] = field(default_factory=list)  # [ts, id, channel, type, dev, cc]
    payments: list[list[Any]] = field(default_factory=list)  # [ts, event_id] (attempts)
    resets: list[list[Any]] = field(default_factory=list)  # [ts, event_id] password resets
    complaints: list[list[Any]] = field(default_factory=list)  # open: [ts, event_id, key]
    resolved_ms: int = 0  # latest resolved contact (event time): closes complaints before it
    value_eur: float = 0.0  # lifetime value: approved payments minus refunds
    csat: list[Any] | None = None  # [ts, answer] last CSAT
    nps: list[Any] | None = None  # [ts, answer] last NPS
    cooldowns: dict[str, int] = field(default_factory=dict)  # rule -> last alert (event time)
    # Events a history-needing rule could not judge for lack of history ([ts, record]):
    # a merge judges them again with the history the other side brings.
    cold: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PROFILE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """From ``to_dict`` output (after JSON); unknown keys are ignored, missing default.

        A profile stored before ``geos`` (one ``last_geo``) starts its history with it; one
        stored before ``hour_first``/``early`` dates its hour histogram at ``first_ms``.
        """
        known = {k: v for k, v in data.items() if k in _PROFILE_FIELDS}
        old = data.get("last_geo")
        if "geos" not in known and isinstance(old, list) and len(old) == 6:
            lat, lon, ts, country, event_id, event_type = old
            known["geos"] = [[ts, event_id, lat, lon, country, event_type]]
        profile = cls(**known)
        if len(profile.hours) != 24 or len(profile.hour_first) != 24:
            raise ValueError(f"profile {profile.customer_id}: hours must have 24 bins")
        if "hour_first" not in known:
            first = profile.first_ms
            profile.hour_first = [first if n else 0 for n in profile.hours]
            profile.early = [first] * min(sum(profile.hours), _MAX_EARLY)
        return profile

    @property
    def last_geo(self) -> list[Any] | None:
        """The newest location in event time: [ts, event_id, lat, lon, country, type]."""
        return self.geos[-1] if self.geos else None

    def usual_countries(self, n: int = 3) -> list[str]:
        return [c for c, _ in sorted(self.countries.items(), key=lambda kv: -kv[1])[:n]]

    def is_duplicate(self, event_id: str) -> bool:
        for entry in self.recent:
            if entry[1] == event_id:
                return True
        return False


_PROFILE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Profile))


def _bump(counts: dict[str, int], key: str, cap: int) -> None:
    if key in counts:
        counts[key] += 1
        return
    if len(counts) >= cap:
        del counts[min(counts, key=counts.__getitem__)]
    counts[key] = 1


def _insert(entries: list[list[Any]], entry: list[Any], cap: int) -> None:
    """Insert keeping ``entries`` sorted by time (entry[0]); keep the newest ``cap``."""
    if not entries or entries[-1][0] <= entry[0]:
        entries.append(entry)
    else:
        bisect.insort(entries, entry, key=lambda e: e[0])
    if len(entries) > cap:
        del entries[: len(entries) - cap]


# --------------------------------------------------------------------------- helpers


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a spherical Earth (mean radius 6,371 km)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65_536)
def _offset_ms(zone_name: str, hour_index: int) -> int:
    """UTC offset of a zone during one UTC hour (zones change offset on hour boundaries)."""
    zone = _zone(zone_name)
    if zone is None:
        return 0
    offset = datetime.fromtimestamp(hour_index * 3600 + 1800, zone).utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def local_hour(ts_ms: int, zone_name: str | None) -> int:
    """Hour of day (0..23) at ``ts_ms`` in the IANA zone, UTC if unknown."""
    offset = _offset_ms(zone_name, ts_ms // _HOUR) if zone_name else 0
    return ((ts_ms + offset) // _HOUR) % 24


def _local_minute(ts_ms: int, zone_name: str | None) -> int:
    offset = _offset_ms(zone_name, ts_ms // _HOUR) if zone_name else 0
    return ((ts_ms + offset) // _MINUTE) % 60


def _duration(ms: int) -> str:
    ms = abs(ms)
    if ms < _MINUTE:
        return f"{ms // 1000} s"
    if ms < 120 * _MINUTE:
        return f"{round(ms / _MINUTE)} min"
    if ms < 48 * _HOUR:
        return f"{ms / _HOUR:.1f} h"
    return f"{ms / _DAY:.1f} days"


def _money(amount: float, currency: str) -> str:
    return f"{amount:,.2f} {currency}" if amount < 1000 else f"{amount:,.0f} {currency}"


def _payload(record: TouchpointRecord, kind: str) -> dict[str, Any] | None:
    payload = record["payload"]
    if payload is None or payload[0] != kind:
        return None
    body: dict[str, Any] = payload[1]  # type: ignore[assignment]
    return body


def _device_key(record: TouchpointRecord) -> str | None:
    device = record["identifiers"]["device_id"]
    if device:
        return f"d:{device}"
    ua = record["context"]["user_agent"]
    return _ua_key(ua) if ua else None


@lru_cache(maxsize=4096)
def _ua_key(user_agent: str) -> str:
    """A browser without a device id is known by its user agent (hashed: compact)."""
    return "ua:" + hashlib.blake2b(user_agent.encode(), digest_size=6).hexdigest()


def _contact_key(record: TouchpointRecord, body: Mapping[str, Any]) -> str:
    contact_id = body.get("contact_id")
    return f"c:{contact_id}" if contact_id else f"e:{record['event_id']}"


def _is_contact(record: TouchpointRecord) -> bool:
    return record["channel"] == "contact_centre" and record["event_type"] in _CONTACT_TYPES


def _usual(counts: Mapping[str, int], n: int = 3) -> str:
    top = [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]
    return ", ".join(top) if top else "none yet"


def _in_window(entries: list[list[Any]], lo: int, hi: int) -> list[list[Any]]:
    return [e for e in entries if lo <= e[0] <= hi]


def _make_alert(
    profile: Profile,
    rule: str,
    config: RuleConfig,
    *,
    score: float,
    summary: str,
    event_ids: list[str],
    evidence: dict[str, str],
    occurred_at: int,
    now_ms: int,
) -> Alert:
    return {
        "alert_id": alert_id(profile.customer_id, rule, event_ids),
        "customer_id": profile.customer_id,
        "rule": rule,
        "severity": config.severity.value,
        "score": round(float(score), 4),
        "summary": summary,
        "event_ids": event_ids,
        "evidence": evidence,
        "occurred_at": occurred_at,
        "detected_at": now_ms,
    }


def _session_attrs(
    profile: Profile, record: TouchpointRecord, within_ms: int
) -> tuple[str | None, str | None]:
    """Device and country of the event, else of the customer's latest event within reach."""
    device = _device_key(record)
    country = record["context"]["country"]
    ts = record["occurred_at"]
    for entry in reversed(profile.recent):
        if device is not None and country is not None:
            break
        if ts - entry[0] > within_ms or entry[0] > ts:
            continue
        device = device or entry[4]
        country = country or entry[5]
    return device, country


# --------------------------------------------------------------------------- detectors


def observe_impossible_travel(
    profile: Profile, record: TouchpointRecord, rule: ImpossibleTravel, now_ms: int
) -> Alert | None:
    """The event against its neighbours in *event time*: the customer's latest location
    before it and, when it arrives late, the earliest one after it. The answer then does
    not depend on the order events arrive in (within the ``_MAX_GEOS`` newest locations).
    """
    geo = record["context"]["geo"]
    if geo is None or not profile.geos:
        return None
    ts = record["occurred_at"]
    geos = profile.geos
    i = bisect.bisect_right(geos, ts, key=lambda g: g[0])
    for other, after in (
        (geos[i - 1] if i else None, False),
        (geos[i] if i < len(geos) else None, True),
    ):
        if other is not None:
            alert = _travel(profile, record, geo, other, after, rule, now_ms)
            if alert is not None:
                return alert
    return None


def _travel(
    profile: Profile,
    record: TouchpointRecord,
    geo: GeoRecord,
    other: list[Any],
    after: bool,
    rule: ImpossibleTravel,
    now_ms: int,
) -> Alert | None:
    """Too fast between this event and ``other`` (a location entry), else None."""
    other_ts, other_id, lat, lon, other_country, other_type = other
    # Cheap bound first: the great-circle distance is at most the degree "Manhattan" sum.
    if (abs(geo["lat"] - lat) + abs(geo["lon"] - lon)) * 111.2 < rule.min_distance_km:
        return None
    distance = haversine_km(lat, lon, geo["lat"], geo["lon"])
    if distance < rule.min_distance_km:
        return None
    ts = record["occurred_at"]
    elapsed = abs(ts - other_ts)
    speed = math.inf if elapsed == 0 else distance / (elapsed / _HOUR)
    if speed <= rule.max_speed_kmh:
        return None
    country = record["context"]["country"] or "?"
    score = 100.0 if math.isinf(speed) else min(100.0, speed / rule.max_speed_kmh)
    speed_text = "simultaneous" if math.isinf(speed) else f"{speed:,.0f} km/h"
    summary = (
        f"usual countries {_usual(profile.countries)}; this {record['event_type']} from "
        f"{country} {_duration(elapsed)} {'before' if after else 'after'} a "
        f"{other_country or '?'} {other_type}: "
        f"{distance:,.0f} km in {_duration(elapsed)} ({speed_text}; limit "
        f"{rule.max_speed_kmh:,.0f} km/h)"
    )
    pair = [record["event_id"], other_id] if after else [other_id, record["event_id"]]
    return _make_alert(
        profile,
        "impossible_travel",
        rule,
        score=score,
        summary=summary,
        event_ids=pair,  # in event time
        evidence={
            "baseline_countries": _usual(profile.countries),
            "previous_event_id" if not after else "next_event_id": other_id,
            "previous_country" if not after else "next_country": other_country or "",
            "previous_location" if not after else "next_location": f"{lat:.4f},{lon:.4f}",
            "observed_country": country,
            "observed_location": f"{geo['lat']:.4f},{geo['lon']:.4f}",
            "distance_km": f"{distance:.0f}",
            "elapsed_s": f"{elapsed / 1000:.0f}",
            "speed_kmh": "inf" if math.isinf(speed) else f"{speed:.0f}",
            "threshold_kmh": f"{rule.max_speed_kmh:g}",
        },
        occurred_at=max(ts, other_ts),
        now_ms=now_ms,
    )


def _payment(record: TouchpointRecord) -> dict[str, Any] | None:
    if record["event_type"] != "payment":
        return None
    body = _payload(record, COMMERCE)
    if body is None or body.get("status") == "refunded" or not body["amount"] > 0:
        return None
    return body


def observe_new_device_new_country(
    profile: Profile, record: TouchpointRecord, rule: NewDeviceNewCountryHighValue, now_ms: int
) -> Alert | None:
    body = _payment(record)
    if body is None or profile.seen < rule.min_history or not profile.countries:
        return None
    value = to_eur(body["amount"], body["currency"])
    if value is None or value < rule.min_amount_eur:
        return None
    device, country = _session_attrs(profile, record, int(rule.session_minutes * _MINUTE))
    if device is None or country is None:
        return None
    # "Never seen" before this session: a login from the new device a minute earlier
    # (already folded in) does not make the device known.
    since = record["occurred_at"] - int(rule.session_minutes * _MINUTE)
    fresh = {(e[1], e[2]) for e in profile.fresh if e[0] >= since}
    if device in profile.devices and ("d", device) not in fresh:
        return None
    if country in profile.countries and ("c", country) not in fresh:
        return None
    money = _money(body["amount"], body["currency"])
    summary = (
        f"usual countries {_usual(profile.countries)}, {len(profile.devices)} known devices; "
        f"this payment of {money} (~{value:,.0f} EUR) from {country} on a device never seen "
        f"before (high value from {rule.min_amount_eur:,.0f} EUR)"
    )
    return _make_alert(
        profile,
        "new_device_new_country_high_value",
        rule,
        score=value / rule.min_amount_eur if rule.min_amount_eur else value,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence={
            "baseline_countries": _usual(profile.countries),
            "known_devices": str(len(profile.devices)),
            "observed_country": country,
            "observed_device": device,
            "amount": f"{body['amount']:.2f}",
            "currency": body["currency"],
            "amount_eur": f"{value:.2f}",
            "threshold_eur": f"{rule.min_amount_eur:g}",
        },
        occurred_at=record["occurred_at"],
        now_ms=now_ms,
    )


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


def amounts_before(profile: Profile, currency: str, ts: int) -> list[list[Any]]:
    """The approved payments ``[ts, amount]`` in ``currency`` before event time ``ts``."""
    history = profile.amounts.get(currency, [])
    if ts > profile.last_ms:  # in order: all of them
        return history
    return [e for e in history if e[0] < ts]


def observe_amount_outlier(
    profile: Profile, record: TouchpointRecord, rule: AmountOutlier, now_ms: int
) -> Alert | None:
    body = _payment(record)
    if body is None:
        return None
    history = amounts_before(profile, body["currency"], record["occurred_at"])
    if len(history) < rule.min_history:
        return None  # cold start: no statistical alert
    amount = body["amount"]
    logs = [math.log(e[1]) for e in history if e[1] > 0]
    if len(logs) < rule.min_history:
        return None
    med = _median(logs)
    mad = max(_median([abs(v - med) for v in logs]), 0.1)  # floor: amounts all alike
    z = (math.log(amount) - med) / (1.4826 * mad)
    typical = math.exp(med)
    ratio = amount / typical
    if z < rule.min_robust_z or ratio < rule.min_ratio_to_median:
        return None
    largest = max(e[1] for e in history)
    cur = body["currency"]
    summary = (
        f"usual payments median {_money(typical, cur)} (largest {_money(largest, cur)}, "
        f"{len(logs)} payments); this payment {_money(amount, cur)} is {ratio:,.0f}x the "
        f"median (robust z {z:.1f})"
    )
    return _make_alert(
        profile,
        "amount_outlier",
        rule,
        score=z,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence={
            "baseline_median": f"{typical:.2f}",
            "baseline_mad_log": f"{mad:.4f}",
            "baseline_largest": f"{largest:.2f}",
            "baseline_payments": str(len(logs)),
            "observed_amount": f"{amount:.2f}",
            "currency": cur,
            "ratio_to_median": f"{ratio:.2f}",
            "robust_z": f"{z:.2f}",
        },
        occurred_at=record["occurred_at"],
        now_ms=now_ms,
    )


def observe_velocity_burst(
    profile: Profile, record: TouchpointRecord, rule: VelocityBurst, now_ms: int
) -> Alert | None:
    event_type = record["event_type"]
    if event_type == "payment" and _payload(record, COMMERCE) is not None:
        entries, what = profile.payments, "payments"
    elif event_type == "password_reset":
        entries, what = profile.resets, "password resets"
    else:
        return None
    ts = record["occurred_at"]
    window = int(rule.window_minutes * _MINUTE)
    recent = _in_window(entries, ts - window, ts)
    count = len(recent) + 1
    if count < rule.min_events:
        return None
    ids = [e[1] for e in recent] + [record["event_id"]]
    span = max(ts, *(e[0] for e in recent)) - min(ts, *(e[0] for e in recent))
    summary = (
        f"usually no burst; {count} {what} in {_duration(span)} "
        f"(alert from {rule.min_events} within {rule.window_minutes:g} min)"
    )
    return _make_alert(
        profile,
        "velocity_burst",
        rule,
        score=count / rule.min_events,
        summary=summary,
        event_ids=ids,
        evidence={
            "kind": what,
            "observed_count": str(count),
            "observed_span_s": f"{span / 1000:.0f}",
            "threshold_count": str(rule.min_events),
            "window_minutes": f"{rule.window_minutes:g}",
        },
        occurred_at=ts,
        now_ms=now_ms,
    )


def _zone_of(profile: Profile, record: TouchpointRecord) -> str | None:
    return record["context"]["timezone"] or profile.timezone


def _hour_gap(hours: list[int], hour: int) -> int:
    """Circular distance in hours from ``hour`` to the nearest hour with activity."""
    best = 24
    for h, count in enumerate(hours):
        if count:
            d = abs(h - hour)
            d = min(d, 24 - d)
            if d < best:
                best = d
    return best


def _hour_ranges(hours: list[int]) -> str:
    used = [h for h in range(24) if hours[h]]
    if not used:
        return "none"
    ranges: list[tuple[int, int]] = []
    for h in used:
        if ranges and ranges[-1][1] == h - 1:
            ranges[-1] = (ranges[-1][0], h)
        else:
            ranges.append((h, h))
    if len(ranges) > 1 and ranges[0][0] == 0 and ranges[-1][1] == 23:  # wraps midnight
        first = ranges.pop(0)
        ranges[-1] = (ranges[-1][0], first[1])
    return ", ".join(f"{a:02d}-{(b + 1) % 24:02d}" for a, b in ranges)


def hours_before(profile: Profile, ts: int) -> tuple[list[int], int]:
    """The hours used before event time ``ts`` (the histogram, with the hours first used
    later at 0) and how many web/app events came before it. Events arrive out of event
    time (catch-up, merges), and what happened after an event is no baseline for it.

    Exact up to ``_MAX_EARLY`` events (beyond that the count is the masked histogram's).
    """
    if ts > profile.last_ms:  # in order: all of it
        return profile.hours, sum(profile.hours)
    hours = [
        n if 0 < first < ts else 0
        for n, first in zip(profile.hours, profile.hour_first, strict=True)
    ]
    early = profile.early
    count = bisect.bisect_left(early, ts)
    if count >= _MAX_EARLY:
        count = max(count, sum(hours))
    return hours, count


def observe_unusual_hour(
    profile: Profile, record: TouchpointRecord, rule: UnusualHour, now_ms: int
) -> Alert | None:
    if record["channel"] not in _DIGITAL:
        return None
    ts = record["occurred_at"]
    hours, history = hours_before(profile, ts)
    if history < rule.min_history:
        return None  # cold start: no statistical alert
    zone = _zone_of(profile, record)
    hour = local_hour(ts, zone)
    gap = _hour_gap(hours, hour)
    if gap < rule.min_gap_hours:
        return None
    minute = _local_minute(ts, zone)
    usual = _hour_ranges(hours)
    summary = (
        f"usual active hours {usual} ({zone or 'UTC'}, {history} events); "
        f"this {record['event_type']} at {hour:02d}:{minute:02d} local, {gap} h from any "
        f"hour used before"
    )
    return _make_alert(
        profile,
        "unusual_hour",
        rule,
        score=gap / rule.min_gap_hours,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence={
            "baseline_hours": usual,
            "baseline_events": str(history),
            "timezone": zone or "UTC",
            "observed_hour": str(hour),
            "gap_hours": str(gap),
            "threshold_gap_hours": str(rule.min_gap_hours),
        },
        occurred_at=ts,
        now_ms=now_ms,
    )


def observe_self_service_failed(
    profile: Profile, record: TouchpointRecord, rule: SelfServiceFailed, now_ms: int
) -> Alert | None:
    if not _is_contact(record) or not profile.failures:
        return None
    ts = record["occurred_at"]
    failures = _in_window(profile.failures, ts - int(rule.within_minutes * _MINUTE), ts)
    if not failures:
        return None
    first = failures[0]
    summary = (
        f"{len(failures)} failed self-service step(s) ({', '.join(f[2] for f in failures)}) "
        f"then a contact-centre {record['event_type']} {_duration(ts - failures[-1][0])} "
        f"later (within {rule.within_minutes:g} min)"
    )
    return _make_alert(
        profile,
        "self_service_failed",
        rule,
        score=float(len(failures)),
        summary=summary,
        event_ids=[f[1] for f in failures] + [record["event_id"]],
        evidence={
            "failures": ", ".join(f[2] for f in failures),
            "first_failure_event_id": first[1],
            "contact_type": record["event_type"],
            "minutes_after_failure": f"{(ts - failures[-1][0]) / _MINUTE:.1f}",
            "threshold_minutes": f"{rule.within_minutes:g}",
        },
        occurred_at=ts,
        now_ms=now_ms,
    )


def observe_high_effort(
    profile: Profile, record: TouchpointRecord, rule: HighEffort, now_ms: int
) -> Alert | None:
    if not _is_contact(record):
        return None
    body = _payload(record, CONTACT) or {}
    key = _contact_key(record, body)
    if any(c[2] == key for c in profile.contacts):
        return None  # a follow-up of a case already counted
    ts = record["occurred_at"]
    window = int(rule.window_days * _DAY)
    earlier = _in_window(profile.contacts, ts - window, ts)
    keys = {entry[2]: entry[1] for entry in earlier}
    count = len(keys) + 1
    if count < rule.min_contacts:
        return None
    ids = [*keys.values(), record["event_id"]]
    span = ts - earlier[0][0]
    summary = (
        f"{count} contact-centre contacts in {_duration(span)} "
        f"(alert from {rule.min_contacts} within {rule.window_days:g} days)"
    )
    return _make_alert(
        profile,
        "high_effort",
        rule,
        score=count / rule.min_contacts,
        summary=summary,
        event_ids=ids,
        evidence={
            "observed_contacts": str(count),
            "observed_span_hours": f"{span / _HOUR:.1f}",
            "threshold_contacts": str(rule.min_contacts),
            "window_days": f"{rule.window_days:g}",
        },
        occurred_at=ts,
        now_ms=now_ms,
    )


def is_unhappy(record: TouchpointRecord, rule: UnhappyValuable) -> bool:
    """Does the event say the customer is unhappy (low CSAT/NPS, negative sentiment)?"""
    body = _payload(record, CONTACT)
    if body is not None:
        csat, nps = body.get("csat"), body.get("nps")
        return (csat is not None and csat <= rule.max_csat) or (
            nps is not None and nps <= rule.max_nps
        )
    social = _payload(record, SOCIAL)
    sentiment = None if social is None else social.get("sentiment")
    return sentiment is not None and sentiment <= rule.max_sentiment


def observe_unhappy_valuable(
    profile: Profile, record: TouchpointRecord, rule: UnhappyValuable, now_ms: int
) -> Alert | None:
    if profile.value_eur < rule.min_value_eur:
        return None
    signal: str | None = None
    evidence: dict[str, str] = {}
    body = _payload(record, CONTACT)
    if body is not None:
        csat, nps = body.get("csat"), body.get("nps")
        if csat is not None and csat <= rule.max_csat:
            signal = f"CSAT {csat}/5"
            evidence["observed_csat"] = str(csat)
        if nps is not None and nps <= rule.max_nps:
            signal = f"{signal}, NPS {nps}/10" if signal else f"NPS {nps}/10"
            evidence["observed_nps"] = str(nps)
    else:
        social = _payload(record, SOCIAL)
        sentiment = None if social is None else social.get("sentiment")
        if sentiment is not None and sentiment <= rule.max_sentiment:
            signal = f"{record['event_type']} with sentiment {sentiment:+.2f}"
            evidence["observed_sentiment"] = f"{sentiment:.3f}"
    if signal is None:
        return None
    summary = (
        f"high-value customer (lifetime value ~{profile.value_eur:,.0f} EUR, high from "
        f"{rule.min_value_eur:,.0f}); unhappy: {signal}"
    )
    evidence.update(
        baseline_value_eur=f"{profile.value_eur:.2f}",
        threshold_value_eur=f"{rule.min_value_eur:g}",
        channel=record["channel"],
    )
    if profile.csat is not None:
        evidence["previous_csat"] = str(profile.csat[1])
    return _make_alert(
        profile,
        "unhappy_valuable",
        rule,
        score=profile.value_eur / rule.min_value_eur if rule.min_value_eur else 1.0,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence=evidence,
        occurred_at=record["occurred_at"],
        now_ms=now_ms,
    )


def overdue_complaints(
    profile: Profile, at_ms: int, rule: ComplaintUnresolved, now_ms: int
) -> Alert | None:
    """Open complaints older than the target at ``at_ms`` (event time or tick time)."""
    target = int(rule.target_hours * _HOUR)
    overdue = [c for c in profile.complaints if c[0] + target <= at_ms]
    if not overdue:
        return None
    oldest = overdue[0]
    summary = (
        f"{len(overdue)} complaint(s) without a resolved contact within "
        f"{rule.target_hours:g} h (oldest opened {_duration(at_ms - oldest[0])} ago)"
    )
    return _make_alert(
        profile,
        "complaint_unresolved",
        rule,
        score=(at_ms - oldest[0]) / target,
        summary=summary,
        event_ids=[c[1] for c in overdue],
        evidence={
            "open_complaints": str(len(profile.complaints)),
            "overdue_complaints": str(len(overdue)),
            "oldest_complaint_at": str(oldest[0]),
            "target_hours": f"{rule.target_hours:g}",
        },
        occurred_at=oldest[0] + target,
        now_ms=now_ms,
    )


def observe_complaint_unresolved(
    profile: Profile, record: TouchpointRecord, rule: ComplaintUnresolved, now_ms: int
) -> Alert | None:
    return overdue_complaints(profile, record["occurred_at"], rule, now_ms)


Observer = Callable[[Profile, TouchpointRecord, Any, int], Alert | None]

# Which events each detector can fire on (a cheap gate in ``Detector.process``).
_GEO, _PAYMENT, _VELOCITY, _DIGITAL_EVENT, _CONTACT_EVENT, _OPINION, _ANY = range(7)
_GATES: Final[dict[str, int]] = {
    "impossible_travel": _GEO,
    "new_device_new_country_high_value": _PAYMENT,
    "amount_outlier": _PAYMENT,
    "velocity_burst": _VELOCITY,
    "unusual_hour": _DIGITAL_EVENT,
    "self_service_failed": _CONTACT_EVENT,
    "high_effort": _CONTACT_EVENT,
    "unhappy_valuable": _OPINION,
    "complaint_unresolved": _ANY,
}


def _gates(channel: str, event_type: str) -> frozenset[int]:
    gates = {_ANY, _GEO}
    if event_type == "payment":
        gates |= {_PAYMENT, _VELOCITY}
    if event_type == "password_reset":
        gates.add(_VELOCITY)
    if channel in _DIGITAL:
        gates.add(_DIGITAL_EVENT)
    if channel == "contact_centre" and event_type in _CONTACT_TYPES:
        gates.add(_CONTACT_EVENT)
    if channel in ("contact_centre", "social"):
        gates.add(_OPINION)
    return frozenset(gates)


OBSERVERS: Final[dict[str, Observer]] = {
    "impossible_travel": observe_impossible_travel,
    "new_device_new_country_high_value": observe_new_device_new_country,
    "amount_outlier": observe_amount_outlier,
    "velocity_burst": observe_velocity_burst,
    "unusual_hour": observe_unusual_hour,
    "self_service_failed": observe_self_service_failed,
    "high_effort": observe_high_effort,
    "unhappy_valuable": observe_unhappy_valuable,
    "complaint_unresolved": observe_complaint_unresolved,
}


# --------------------------------------------------------------------------- fold


def fold(profile: Profile, record: TouchpointRecord) -> Profile:
    """Add one event to the profile (in place; returned for convenience)."""
    ts = record["occurred_at"]
    event_id = record["event_id"]
    channel = record["channel"]
    event_type = record["event_type"]
    context = record["context"]
    country = context["country"]
    geo = context["geo"]
    profile.seen += 1
    if profile.first_ms == 0 or ts < profile.first_ms:
        profile.first_ms = ts
    if ts > profile.last_ms:
        profile.last_ms = ts
    if country:
        if country not in profile.countries:
            _insert(profile.fresh, [ts, "c", country], _MAX_FRESH)
        _bump(profile.countries, country, _MAX_PLACES)
    if geo is not None:
        if geo["city"]:
            _bump(profile.cities, geo["city"], _MAX_PLACES)
        _insert(
            profile.geos, [ts, event_id, geo["lat"], geo["lon"], country, event_type], _MAX_GEOS
        )
    zone = context["timezone"]
    if zone and zone != profile.timezone and _zone(zone) is not None:
        profile.timezone = zone
    device = _device_key(record)
    if device is not None:
        if device not in profile.devices:
            _insert(profile.fresh, [ts, "d", device], _MAX_FRESH)
            if len(profile.devices) >= _MAX_DEVICES:
                del profile.devices[min(profile.devices, key=profile.devices.__getitem__)]
        profile.devices[device] = max(ts, profile.devices.get(device, 0))
    _bump(profile.channels, channel, _MAX_CHANNELS)
    if channel in _DIGITAL:
        hour = local_hour(ts, _zone_of(profile, record))
        profile.hours[hour] += 1
        first = profile.hour_first[hour]
        if first == 0 or ts < first:
            profile.hour_first[hour] = ts
        early = profile.early
        if len(early) < _MAX_EARLY or ts < early[-1]:
            bisect.insort(early, ts)
            del early[_MAX_EARLY:]
    _insert(profile.recent, [ts, event_id, channel, event_type, device, country], _MAX_RECENT)

    if event_type in _FAILURE_TYPES and channel in _DIGITAL:
        _insert(profile.failures, [ts, event_id, f"{channel} {event_type}"], _MAX_FAILURES)
    elif event_type == "password_reset":
        _insert(profile.resets, [ts, event_id], _MAX_VELOCITY)

    payload = record["payload"]
    if payload is not None:
        kind = payload[0]
        if kind == COMMERCE:
            _fold_commerce(profile, record, payload[1])  # type: ignore[arg-type]
        elif kind == CONTACT:
            _fold_contact(profile, record, payload[1])  # type: ignore[arg-type]
    return profile


def _fold_commerce(profile: Profile, record: TouchpointRecord, body: dict[str, Any]) -> None:
    ts = record["occurred_at"]
    amount = body["amount"]
    currency = body["currency"]
    status = body.get("status")
    event_type = record["event_type"]
    if event_type == "payment":
        _insert(profile.payments, [ts, record["event_id"]], _MAX_VELOCITY)
        if status in (None, "approved") and amount > 0:
            amounts = profile.amounts.get(currency)
            if amounts is None:
                if len(profile.amounts) >= _MAX_CURRENCIES:
                    del profile.amounts[min(profile.amounts, key=lambda c: len(profile.amounts[c]))]
                amounts = profile.amounts[currency] = []
            _insert(amounts, [ts, amount], _MAX_AMOUNTS)
            value = to_eur(amount, currency)
            if value is not None:
                profile.value_eur += value
            if body.get("merchant"):
                _bump(profile.merchants, body["merchant"], _MAX_MERCHANTS)
    elif event_type == "refund" or status == "refunded":
        value = to_eur(abs(amount), currency)
        if value is not None:
            profile.value_eur = max(0.0, profile.value_eur - value)


def _fold_contact(profile: Profile, record: TouchpointRecord, body: dict[str, Any]) -> None:
    ts = record["occurred_at"]
    key = _contact_key(record, body)
    if _is_contact(record) and not any(c[2] == key for c in profile.contacts):
        # One entry per case, at its first contact: follow-ups are not new effort.
        _insert(profile.contacts, [ts, record["event_id"], key], _MAX_CONTACTS)
    if body.get("csat") is not None:
        profile.csat = [ts, body["csat"]]
    if body.get("nps") is not None:
        profile.nps = [ts, body["nps"]]
    complaint = record["event_type"] == "complaint" or body.get("is_complaint") is True
    if body.get("resolved") is True:
        # A resolved contact closes the complaints opened before it (this one included).
        profile.complaints = [c for c in profile.complaints if c[0] > ts]
        profile.resolved_ms = max(profile.resolved_ms, ts)
    elif (
        complaint
        and ts > profile.resolved_ms  # a resolution that arrived first already closed it
        and not any(c[2] == key for c in profile.complaints)
    ):
        _insert(profile.complaints, [ts, record["event_id"], key], _MAX_COMPLAINTS)


# --------------------------------------------------------------------------- merge


def _merge_counts(a: dict[str, int], b: Mapping[str, int], cap: int) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    if len(out) > cap:
        out = dict(sorted(out.items(), key=lambda kv: -kv[1])[:cap])
    return out


def _merge_entries(
    a: list[list[Any]],
    b: list[list[Any]],
    cap: int,
    key: Callable[[list[Any]], Any] = lambda e: (e[0], e[1]),
) -> list[list[Any]]:
    """Both time-ordered lists interleaved, each entry once (by ``key``), newest ``cap``."""
    seen: set[Any] = set()
    out: list[list[Any]] = []
    for entry in sorted([*a, *b], key=lambda e: e[0]):
        marker = key(entry)
        if marker not in seen:
            seen.add(marker)
            out.append(entry)
    return out[-cap:]


def _later(a: list[Any] | None, b: list[Any] | None, at: int = 0) -> list[Any] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a[at] >= b[at] else b


def merge_profiles(survivor: Profile, absorbed: Profile) -> Profile:
    """One profile for a customer whose two ids turned out to be one person.

    Histories join: counts add, time-ordered lists interleave (newest kept within the
    caps), the newest location/answers win, the lifetime values add. The result carries
    the survivor's id. Neither input is modified.
    """
    devices = dict(survivor.devices)
    for key, seen in absorbed.devices.items():
        devices[key] = max(seen, devices.get(key, 0))
    if len(devices) > _MAX_DEVICES:
        devices = dict(sorted(devices.items(), key=lambda kv: -kv[1])[:_MAX_DEVICES])
    amounts: dict[str, list[list[Any]]] = {}
    for currency in {*survivor.amounts, *absorbed.amounts}:
        amounts[currency] = sorted(
            [*survivor.amounts.get(currency, []), *absorbed.amounts.get(currency, [])],
            key=lambda e: e[0],
        )[-_MAX_AMOUNTS:]
    if len(amounts) > _MAX_CURRENCIES:
        keep = sorted(amounts, key=lambda c: -len(amounts[c]))[:_MAX_CURRENCIES]
        amounts = {c: amounts[c] for c in keep}
    cooldowns = dict(survivor.cooldowns)
    for rule, ts in absorbed.cooldowns.items():
        cooldowns[rule] = max(ts, cooldowns.get(rule, ts))
    firsts = [p.first_ms for p in (survivor, absorbed) if p.first_ms]
    newer = survivor if survivor.last_ms >= absorbed.last_ms else absorbed
    return Profile(
        customer_id=survivor.customer_id,
        seen=survivor.seen + absorbed.seen,
        first_ms=min(firsts) if firsts else 0,
        last_ms=max(survivor.last_ms, absorbed.last_ms),
        countries=_merge_counts(survivor.countries, absorbed.countries, _MAX_PLACES),
        cities=_merge_counts(survivor.cities, absorbed.cities, _MAX_PLACES),
        geos=_merge_entries(survivor.geos, absorbed.geos, _MAX_GEOS),
        timezone=newer.timezone or survivor.timezone or absorbed.timezone,
        devices=devices,
        fresh=_merge_entries(survivor.fresh, absorbed.fresh, _MAX_FRESH),
        channels=_merge_counts(survivor.channels, absorbed.channels, _MAX_CHANNELS),
        hours=[a + b for a, b in zip(survivor.hours, absorbed.hours, strict=True)],
        hour_first=[
            min(a, b) if a and b else a or b
            for a, b in zip(survivor.hour_first, absorbed.hour_first, strict=True)
        ],
        early=sorted([*survivor.early, *absorbed.early])[:_MAX_EARLY],
        amounts=amounts,
        merchants=_merge_counts(survivor.merchants, absorbed.merchants, _MAX_MERCHANTS),
        contacts=_merge_entries(survivor.contacts, absorbed.contacts, _MAX_CONTACTS),
        failures=_merge_entries(survivor.failures, absorbed.failures, _MAX_FAILURES),
        recent=_merge_entries(survivor.recent, absorbed.recent, _MAX_RECENT),
        payments=_merge_entries(survivor.payments, absorbed.payments, _MAX_VELOCITY),
        resets=_merge_entries(survivor.resets, absorbed.resets, _MAX_VELOCITY),
        complaints=[
            c
            for c in _merge_entries(survivor.complaints, absorbed.complaints, _MAX_COMPLAINTS)
            if c[0] > max(survivor.resolved_ms, absorbed.resolved_ms)
        ],
        resolved_ms=max(survivor.resolved_ms, absorbed.resolved_ms),
        value_eur=survivor.value_eur + absorbed.value_eur,
        csat=_later(survivor.csat, absorbed.csat),
        nps=_later(survivor.nps, absorbed.nps),
        cooldowns=cooldowns,
        cold=_merge_entries(
            survivor.cold, absorbed.cold, _MAX_COLD, key=lambda e: e[1]["event_id"]
        ),
    )


def _rejudge_baselines(merged: Profile, other: Profile) -> dict[str, Profile]:
    """What each history-needing rule judges a side's cold events against on a merge.

    * ``unusual_hour``: the joined histogram as it stood at the event (``hours_before``);
    * ``unhappy_valuable``: the joined lifetime value;
    * ``amount_outlier``: the joined payments before the event (``amounts_before``);
    * ``new_device_new_country_high_value``: the other side's devices and countries (the
      joined ones contain the event's own device and country).

    The other side goes under the survivor's id and the joined cool-downs (a shallow copy:
    observers only read).
    """
    theirs = dataclasses.replace(other, customer_id=merged.customer_id, cooldowns=merged.cooldowns)
    return {
        "unusual_hour": merged,
        "unhappy_valuable": merged,
        "new_device_new_country_high_value": theirs,
        "amount_outlier": merged,
    }


def _read_cold(entries: list[list[Any]]) -> list[tuple[TouchpointRecord, list[str]]]:
    """A profile's cold entries ``[ts, record as JSON has it, rules]`` as (record, rules);
    the kept records are left as they are (copies are converted)."""
    return [(from_json(cast(TouchpointRecord, dict(entry[1]))), entry[2]) for entry in entries]


# --------------------------------------------------------------------------- detector


class Detector:
    """Runs the enabled detectors over one customer's events; applies cool-downs."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules.default()
        self._active: list[tuple[str, Observer, RuleConfig]] = [
            (name, OBSERVERS[name], config)
            for name in RULE_NAMES
            if (config := self.rules.get(name)).enabled
        ]
        complaint = self.rules.complaint_unresolved
        self._complaints: ComplaintUnresolved | None = complaint if complaint.enabled else None
        self._by_kind: dict[tuple[str, str], list[tuple[str, Observer, RuleConfig]]] = {}

    def _observers(self, channel: str, event_type: str) -> list[tuple[str, Observer, RuleConfig]]:
        key = (channel, event_type)
        found = self._by_kind.get(key)
        if found is None:
            gates = _gates(channel, event_type)
            found = [a for a in self._active if _GATES[a[0]] in gates]
            if len(self._by_kind) < 1024:  # channel/type are validated upstream; stay bounded
                self._by_kind[key] = found
        return found

    def process(
        self, profile: Profile, record: TouchpointRecord, now_ms: int
    ) -> tuple[Profile, list[Alert]]:
        """Judge ``record`` against the profile, then fold it in. Mutates ``profile``.

        An event already in the profile's recent history (a replay) is ignored.
        """
        ts = record["occurred_at"]
        # Anything already folded in is no newer than last_ms: only then look for it.
        if ts <= profile.last_ms and profile.is_duplicate(record["event_id"]):
            return profile, []
        alerts: list[Alert] = []
        cooldowns = profile.cooldowns
        has_geo = record["context"]["geo"] is not None
        for name, observe, config in self._observers(record["channel"], record["event_type"]):
            if name == "impossible_travel" and not has_geo:
                continue
            if name == "complaint_unresolved" and not profile.complaints:
                continue
            last = cooldowns.get(name)
            if last is not None and abs(ts - last) < config.cooldown_ms:
                continue
            alert = observe(profile, record, config, now_ms)
            if alert is not None:
                cooldowns[name] = alert["occurred_at"]
                alerts.append(alert)
        if self._complaints is not None and profile.complaints:
            self._drop_overdue(profile, ts)
        cold_rules = self._cold_rules(profile, record)
        if cold_rules:
            payload = record["payload"]  # kept as JSON has it (the union as a list)
            kept = record if payload is None else {**record, "payload": list(payload)}
            _insert(profile.cold, [ts, kept, cold_rules], _MAX_COLD)
        fold(profile, record)
        if profile.cold and ts < profile.cold[-1][0]:
            # History a cold event lacked has arrived after it (earlier in event time: a
            # catch-up): judge the cold events again against the profile as it is now.
            # Events later in event time are not history for them, and cost nothing here.
            cold = _read_cold(profile.cold)
            baselines = dict.fromkeys(_COLD_RULES, profile)
            pending = self._judge_cold(cold, baselines, profile.cooldowns, alerts, now_ms)
            profile.cold = [e for e in profile.cold if e[1]["event_id"] in pending]
        return profile, alerts

    def _short_of_history(self, name: str, baseline: Profile, record: TouchpointRecord) -> bool:
        rules = self.rules
        if name == "unusual_hour":
            return hours_before(baseline, record["occurred_at"])[1] < rules.unusual_hour.min_history
        if name == "new_device_new_country_high_value":
            nddnc = rules.new_device_new_country_high_value
            return baseline.seen < nddnc.min_history or not baseline.countries
        if name == "amount_outlier":
            body = _payment(record)
            if body is None:
                return True
            history = amounts_before(baseline, body["currency"], record["occurred_at"])
            return len(history) < rules.amount_outlier.min_history
        if name == "unhappy_valuable":
            return baseline.value_eur < rules.unhappy_valuable.min_value_eur
        return False

    def _judge_cold(
        self,
        cold: list[tuple[TouchpointRecord, list[str]]],
        baselines: Mapping[str, Profile],
        cooldowns: dict[str, int],
        alerts: list[Alert],
        now_ms: int,
    ) -> set[str]:
        """Judge cold events (record, rules) by their rules against ``baselines``; alerts
        are appended. Returns the ids of the events one of their rules still lacks
        history for."""
        pending: set[str] = set()
        for record, cold_rules in cold:
            ts = record["occurred_at"]
            for name in cold_rules:
                config = self.rules.get(name)
                baseline = baselines.get(name)
                if baseline is None or not config.enabled:
                    continue
                if self._short_of_history(name, baseline, record):
                    pending.add(record["event_id"])
                    continue
                last = cooldowns.get(name)
                if last is not None and abs(ts - last) < config.cooldown_ms:
                    continue
                alert = OBSERVERS[name](baseline, record, config, now_ms)
                if alert is not None:
                    cooldowns[name] = alert["occurred_at"]
                    alerts.append(alert)
        return pending

    def _cold_rules(self, profile: Profile, record: TouchpointRecord) -> list[str]:
        """The history-needing rules that would look twice at this event, had they history.

        Only such events are kept for a second judgement (``cold``, with these rules), so
        a profile keeps at most ``_MAX_COLD`` suspicious events, not its whole youth."""
        rules = self.rules
        out: list[str] = []
        if record["channel"] in _DIGITAL and rules.unusual_hour.enabled:
            hours, before = hours_before(profile, record["occurred_at"])
            if before < rules.unusual_hour.min_history:
                if not hours[local_hour(record["occurred_at"], _zone_of(profile, record))]:
                    out.append("unusual_hour")
        body = _payment(record)
        if body is not None:
            value = to_eur(body["amount"], body["currency"])
            nddnc = rules.new_device_new_country_high_value
            if nddnc.enabled and profile.seen < nddnc.min_history:
                if value is not None and value >= nddnc.min_amount_eur:
                    out.append("new_device_new_country_high_value")
            outlier = rules.amount_outlier
            history = amounts_before(profile, body["currency"], record["occurred_at"])
            if outlier.enabled and len(history) < outlier.min_history:
                if body["amount"] > max((e[1] for e in history), default=0.0):
                    out.append("amount_outlier")
        unhappy = rules.unhappy_valuable
        if unhappy.enabled and profile.value_eur < unhappy.min_value_eur:
            if is_unhappy(record, unhappy):
                out.append("unhappy_valuable")
        return out

    def merge(
        self, survivor: Profile, absorbed: Profile, now_ms: int
    ) -> tuple[Profile, list[Alert]]:
        """Join two profiles of one person (``merge_profiles``), judging the events each
        side saw as a fragment again against the other side's history: an anonymous
        session at 03:00 that a login later joins to a customer active 08-22h, a payment
        from a new device whose device history was on the other identifier. Only rules
        whose verdict needs history run again (``_rejudge_baselines``), with the merged
        cool-downs; alerts carry the survivor's id. Events some rule still lacks history
        for stay cold, for the next merge or the history still to arrive (``process``).
        Neither input is modified."""
        alerts: list[Alert] = []
        merged = merge_profiles(survivor, absorbed)
        pending: set[str] = set()
        for side, other in ((absorbed, survivor), (survivor, absorbed)):
            if not side.cold:
                continue
            baselines = _rejudge_baselines(merged, other)
            pending |= self._judge_cold(
                _read_cold(side.cold), baselines, merged.cooldowns, alerts, now_ms
            )
        merged.cold = [e for e in merged.cold if e[1]["event_id"] in pending]
        return merged, alerts

    def tick(
        self, profile: Profile, now_ms: int, at_ms: int | None = None
    ) -> tuple[Profile, list[Alert]]:
        """Time-driven checks (complaints past their target) at ``at_ms``, the deadline
        clock (default ``now_ms``, the processing time alerts are stamped with). Mutates."""
        rule = self._complaints
        if rule is None or not profile.complaints:
            return profile, []
        at = now_ms if at_ms is None else at_ms
        alerts: list[Alert] = []
        last = profile.cooldowns.get("complaint_unresolved")
        alert = overdue_complaints(profile, at, rule, now_ms)
        if alert is not None and (
            last is None or abs(alert["occurred_at"] - last) >= rule.cooldown_ms
        ):
            profile.cooldowns["complaint_unresolved"] = alert["occurred_at"]
            alerts.append(alert)
        self._drop_overdue(profile, at)
        return profile, alerts

    def next_tick_ms(self, profile: Profile) -> int | None:
        """When ``tick`` could next raise something for this customer (None: never)."""
        rule = self._complaints
        if rule is None or not profile.complaints:
            return None
        return int(min(c[0] for c in profile.complaints) + rule.target_hours * _HOUR)

    def _drop_overdue(self, profile: Profile, at_ms: int) -> None:
        """Complaints past their target were alerted (or suppressed): stop tracking them."""
        assert self._complaints is not None
        target = int(self._complaints.target_hours * _HOUR)
        profile.complaints = [c for c in profile.complaints if c[0] + target > at_ms]
