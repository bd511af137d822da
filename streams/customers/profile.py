"""The per-customer behavioural profile: bounded history (places, devices, amounts, hours,
contacts, complaints ...), how an event is folded in (:func:`fold`), how two profiles join
on a merge (:func:`merge_profiles`), and the small pure helpers the detectors share."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.customers.alerts import _DAY, _HOUR, _MINUTE
from streams.ingest.stage import from_json
from streams.wire.model import COMMERCE, CONTACT, TouchpointRecord

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
        if data.keys() == _FIELD_SET:  # as ``to_dict`` wrote it: nothing to sort out
            profile = cls(**data)
            if len(profile.hours) != 24 or len(profile.hour_first) != 24:
                raise ValueError(f"profile {profile.customer_id}: hours must have 24 bins")
            return profile
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
_FIELD_SET: Final = frozenset(_PROFILE_FIELDS)


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


def _is_failure(record: TouchpointRecord) -> bool:
    """A failed self-service step (what ``fold`` keeps in ``Profile.failures``)."""
    return record["channel"] in _DIGITAL and record["event_type"] in _FAILURE_TYPES


def _in_window(entries: list[list[Any]], lo: int, hi: int) -> list[list[Any]]:
    return [e for e in entries if lo <= e[0] <= hi]


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


def _zone_of(profile: Profile, record: TouchpointRecord) -> str | None:
    return record["context"]["timezone"] or profile.timezone
