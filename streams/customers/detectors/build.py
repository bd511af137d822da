"""How every detector builds its alert: explanation, evidence, severity, deterministic id."""

from __future__ import annotations

from streams.customers.alerts import Alert, alert_id
from streams.customers.profile import Profile
from streams.customers.rules import RuleConfig


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
