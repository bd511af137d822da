"""Customer-effort rules: failed self-service then a contact, repeated contacts, an unhappy
valuable customer, a complaint left unresolved past its target."""

from __future__ import annotations

from streams.customers.alerts import _DAY, _HOUR, _MINUTE, Alert
from streams.customers.detectors.build import _make_alert
from streams.customers.profile import (
    Profile,
    _contact_key,
    _duration,
    _in_window,
    _is_contact,
    _is_failure,
)
from streams.customers.rules import (
    ComplaintUnresolved,
    HighEffort,
    SelfServiceFailed,
    UnhappyValuable,
)
from streams.wire.model import CONTACT, SOCIAL, TouchpointRecord, payload_body


def observe_self_service_failed(
    profile: Profile, record: TouchpointRecord, rule: SelfServiceFailed, now_ms: int
) -> Alert | None:
    """A contact within ``within_minutes`` after failed self-service steps, in either arrival
    order: judged at the contact, or -- when the failure reaches the customer only after the
    contact (another identifier resolved later, another batch) -- at the failure, against the
    contact already folded in. Both orders build the same alert (same event ids, same id);
    the rule's cool-down keeps the second order from firing again."""
    within = int(rule.within_minutes * _MINUTE)
    ts = record["occurred_at"]
    if _is_contact(record):
        if not profile.failures:
            return None
        failures = _in_window(profile.failures, ts - within, ts)
        contact_ts, contact_id, contact_type = ts, record["event_id"], record["event_type"]
    elif _is_failure(record):
        later = _in_window(profile.contacts, ts, ts + within)
        if not later:
            return None
        contact_ts, contact_id = later[0][0], later[0][1]
        contact_type = _event_type_of(profile, contact_id)
        this = [ts, record["event_id"], f"{record['channel']} {record['event_type']}"]
        failures = sorted(
            [*_in_window(profile.failures, contact_ts - within, contact_ts), this],
            key=lambda f: (f[0], f[1]),
        )
    else:
        return None
    if not failures:
        return None
    first = failures[0]
    summary = (
        f"{len(failures)} failed self-service step(s) ({', '.join(f[2] for f in failures)}) "
        f"then a contact-centre {contact_type} {_duration(contact_ts - failures[-1][0])} "
        f"later (within {rule.within_minutes:g} min)"
    )
    return _make_alert(
        profile,
        "self_service_failed",
        rule,
        score=float(len(failures)),
        summary=summary,
        event_ids=[f[1] for f in failures] + [contact_id],
        evidence={
            "failures": ", ".join(f[2] for f in failures),
            "first_failure_event_id": first[1],
            "contact_type": contact_type,
            "minutes_after_failure": f"{(contact_ts - failures[-1][0]) / _MINUTE:.1f}",
            "threshold_minutes": f"{rule.within_minutes:g}",
        },
        occurred_at=contact_ts,
        now_ms=now_ms,
    )


def _event_type_of(profile: Profile, event_id: str) -> str:
    """The type of an event the profile still holds in its recent history, else "contact"."""
    for entry in reversed(profile.recent):
        if entry[1] == event_id:
            return str(entry[3])
    return "contact"


def observe_high_effort(
    profile: Profile, record: TouchpointRecord, rule: HighEffort, now_ms: int
) -> Alert | None:
    if not _is_contact(record):
        return None
    body = payload_body(record, CONTACT) or {}
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
    body = payload_body(record, CONTACT)
    if body is not None:
        csat, nps = body.get("csat"), body.get("nps")
        return (csat is not None and csat <= rule.max_csat) or (
            nps is not None and nps <= rule.max_nps
        )
    social = payload_body(record, SOCIAL)
    sentiment = None if social is None else social.get("sentiment")
    return sentiment is not None and sentiment <= rule.max_sentiment


def observe_unhappy_valuable(
    profile: Profile, record: TouchpointRecord, rule: UnhappyValuable, now_ms: int
) -> Alert | None:
    if profile.value_eur < rule.min_value_eur:
        return None
    signal: str | None = None
    evidence: dict[str, str] = {}
    body = payload_body(record, CONTACT)
    if body is not None:
        csat, nps = body.get("csat"), body.get("nps")
        if csat is not None and csat <= rule.max_csat:
            signal = f"CSAT {csat}/5"
            evidence["observed_csat"] = str(csat)
        if nps is not None and nps <= rule.max_nps:
            signal = f"{signal}, NPS {nps}/10" if signal else f"NPS {nps}/10"
            evidence["observed_nps"] = str(nps)
    else:
        social = payload_body(record, SOCIAL)
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
