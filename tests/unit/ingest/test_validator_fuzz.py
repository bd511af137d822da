"""Hypothesis against the validator (issue 12): hostile records, well-formed Avro.

Any record the schema can carry — strings with control, zero-width and surrogate-free
Unicode, numbers at their extremes, any timestamp — is either rejected with a reason
(never ``internal_error``) or accepted with every invariant the rest of the pipeline relies
on: a short printable event id, sanitised identifiers of which one is usable (not
blocked), bounded timestamps, sane numbers, and a ClickHouse row that can be built.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streams.adapters.clickhouse import TOUCHPOINT_COLUMNS, touchpoint_row
from streams.identity.graph import IdentityRules
from streams.ingest.stage import (
    Accepted,
    Reason,
    Rejected,
    anchor_key,
    ingest_message,
)
from streams.sim.samples import valid_template
from streams.wire.model import CATALOGUE, IDENTIFIER_KINDS
from tests.unit.ingest.common import CODEC, NOW, POLICY

RULES = IdentityRules()

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(
        alphabet=st.sampled_from("\x00\x1b\x07\u200b\u200d\u2028\ufeff\u202e\x9b a@.0-"),
        max_size=12,
    ),
    st.sampled_from(
        ["", " ", "null", "anonymous", "0", "0000-0000", "test@test.com", "+10000000000"]
    ),
    st.builds(lambda n: "x" * n, st.integers(200, 3000)),
)
int64 = st.integers(-(2**63), 2**63 - 1)
timestamp = st.one_of(int64, st.integers(NOW - 100 * 86_400_000, NOW + 3_600_000))
any_double = st.floats(allow_nan=True, allow_infinity=True)


sane_id = st.from_regex(r"[A-Za-z0-9_.:@-]{1,24}", fullmatch=True)
near_now = st.integers(NOW - 80 * 86_400_000, NOW + 60_000)


def _mostly(sane: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """Seven in eight draws sane: every validation step is reached, not only the first."""
    return st.integers(0, 7).flatmap(lambda i: hostile if i == 7 else sane)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record = valid_template(NOW, draw(_mostly(sane_id, hostile_text)))
    channel = draw(_mostly(st.sampled_from(list(CATALOGUE)), hostile_text))
    types = CATALOGUE.get(channel, {"page_view": None})
    event_type = draw(_mostly(st.sampled_from(list(types)), hostile_text))
    record["channel"], record["event_type"] = channel, event_type
    record["occurred_at"] = draw(_mostly(near_now, int64))
    record["received_at"] = draw(_mostly(near_now, int64))
    record["identifiers"] = {
        kind: draw(st.one_of(st.none(), sane_id, hostile_text))
        for kind in draw(st.lists(st.sampled_from(IDENTIFIER_KINDS), max_size=4, unique=True))
    }
    record["context"] = {
        "country": draw(st.one_of(st.none(), st.sampled_from(["GB", "us"]), hostile_text)),
        "geo": draw(
            _mostly(
                st.none(),
                st.fixed_dictionaries({"lat": any_double, "lon": any_double, "city": st.none()}),
            )
        ),
    }
    small_int = st.one_of(st.none(), st.integers(-3, 12), st.integers(-(2**31), 2**31 - 1))
    payloads = {
        "touchpoints.WebEvent": {"url": draw(hostile_text), "session_id": "s"},
        "touchpoints.MobileEvent": {"app_version": draw(hostile_text)},
        "touchpoints.CommerceEvent": {
            "amount": draw(_mostly(st.floats(-1e6, 1e6), any_double)),
            "currency": draw(_mostly(st.sampled_from(["GBP", "usd"]), hostile_text)),
            "items": draw(small_int),
        },
        "touchpoints.ContactCentreEvent": {
            "medium": "call",
            "csat": draw(small_int),
            "nps": draw(small_int),
            "wait_seconds": draw(st.one_of(st.none(), any_double)),
        },
        "touchpoints.SocialEvent": {
            "platform": "x",
            "sentiment": draw(st.one_of(st.none(), any_double)),
        },
    }
    expected = types.get(event_type)
    kind = draw(_mostly(st.just(expected), st.sampled_from([None, *payloads])))
    record["payload"] = None if kind is None else (kind, payloads[kind])
    record["properties"] = draw(
        _mostly(st.just({"campaign": "x"}), st.dictionaries(hostile_text, hostile_text, max_size=4))
    )
    return record


def _printable_id(value: str) -> bool:
    return all(unicodedata.category(ch) not in {"Cc", "Cs", "Zl", "Zp"} for ch in value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_hostile_records_are_rejected_with_a_reason_or_accepted_sane(
    record: dict[str, Any],
) -> None:
    try:
        data = CODEC.encode(record)
    except (ValueError, TypeError, OverflowError):
        return  # not representable in the schema (e.g. a float32 overflow): not a message
    outcome = ingest_message(data, CODEC, POLICY, NOW, RULES.is_blocked)
    event(outcome.reason if isinstance(outcome, Rejected) else "accepted")
    if isinstance(outcome, Rejected):
        assert outcome.reason in set(Reason) - {Reason.INTERNAL_ERROR}, outcome
        assert outcome.detail and "\x1b" not in outcome.detail
        return
    assert isinstance(outcome, Accepted)
    r = outcome.record
    assert r["event_id"] and len(r["event_id"]) <= POLICY.max_identifier_chars
    assert _printable_id(r["event_id"]) and r["event_id"] == r["event_id"].strip()
    assert r["channel"] in CATALOGUE and r["event_type"] in CATALOGUE[r["channel"]]
    for name in ("occurred_at", "received_at"):
        assert NOW - POLICY.max_event_age_ms <= r[name] <= NOW + POLICY.max_future_skew_ms  # type: ignore[literal-required]
    ids = r["identifiers"]
    usable = [f"{k}:{v}" for k in IDENTIFIER_KINDS if (v := ids[k])]  # type: ignore[literal-required]
    assert any(not RULES.is_blocked(key) for key in usable)
    for key in usable:
        value = key.split(":", 1)[1]
        assert len(value) <= POLICY.max_identifier_chars and _printable_id(value)
        assert not any(unicodedata.category(ch) == "Cf" for ch in value)
    assert not RULES.is_blocked(anchor_key(r, RULES.is_blocked))
    payload = r["payload"]
    if payload is not None and payload[0] == "touchpoints.CommerceEvent":
        assert math.isfinite(payload[1]["amount"])  # type: ignore[typeddict-item]
    row = touchpoint_row(r, anchor_key(r, RULES.is_blocked), 0, 0, NOW, "c1")
    assert len(row) == len(TOUCHPOINT_COLUMNS)
