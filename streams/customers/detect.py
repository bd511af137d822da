"""The detector: per-customer behavioural profiles, explainable detectors, rules as configuration.

This module is the detector's public surface and its driver (:class:`Detector`: gates, cold
events, re-judging on merge and late history); the parts live beside it: ``alerts`` (the
record), ``rules`` (configuration), ``profile`` (history, fold, merge), ``detectors/`` (one
module per rule family) and ``detectors/build`` (how an alert is explained).

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

from collections.abc import Mapping

from streams.customers.alerts import _HOUR, ALERT_COLUMNS, Alert, Severity, alert_id, alert_row
from streams.customers.detectors import _GATES, OBSERVERS, Observer, gates_of
from streams.customers.detectors.effort import is_unhappy, overdue_complaints
from streams.customers.detectors.hours import hours_before
from streams.customers.detectors.money import amounts_before
from streams.customers.detectors.travel import _payment
from streams.customers.profile import (
    _COLD_RULES,
    _DIGITAL,
    _MAX_COLD,
    Profile,
    _insert,
    _read_cold,
    _rejudge_baselines,
    _zone_of,
    fold,
    haversine_km,
    local_hour,
    merge_profiles,
    to_eur,
)
from streams.customers.rules import (
    RULE_NAMES,
    AmountOutlier,
    ComplaintUnresolved,
    HighEffort,
    ImpossibleTravel,
    NewDeviceNewCountryHighValue,
    RuleConfig,
    Rules,
    RulesError,
    SelfServiceFailed,
    UnhappyValuable,
    UnusualHour,
    VelocityBurst,
)
from streams.wire.model import TouchpointRecord

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
            gates = gates_of(channel, event_type)
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
