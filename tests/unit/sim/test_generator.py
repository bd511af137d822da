"""The synthetic journey generator: determinism, validity, realism, encoding, producing.

No broker: ``produce`` runs against an in-memory stand-in for aiokafka's producer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import phonenumbers
import pytest
from aiokafka.partitioner import murmur2

import streams.sim.generator as generator
from streams.identity.graph import IdentityRules
from streams.ingest.normalise import normalise_identifiers
from streams.ingest.stage import Accepted, IngestPolicy, ingest_message
from streams.settings import SecurityProtocol, Settings
from streams.sim.generator import (
    CATEGORY_TARGETS,
    TRAP_NAMES,
    GeneratedEvent,
    Traps,
    category,
    encode_events,
    generate,
    produce,
)
from streams.wire.codec import AvroCodec, SchemaRegistry
from streams.wire.model import CATALOGUE, IDENTIFIER_KINDS

REPO = Path(__file__).resolve().parents[3]
NOW = 1_760_000_000_000
SPAN = 2 * 3600 * 1000
HOUR = 3600 * 1000
CUSTOMERS = 500
LINKING_KINDS = ("customer_id", "login_id", "email")


@pytest.fixture(scope="module")
def events() -> list[GeneratedEvent]:
    return generate(CUSTOMERS, seed=7, now_ms=NOW)


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_dir(REPO / "schemas"), "touchpoints-value")


def _normalised(event: GeneratedEvent) -> dict[str, Any]:
    record = event.record
    ids = normalise_identifiers(record["identifiers"], record["context"]["country"] or "GB")
    return {k: v for k, v in ids.items() if v}


def _body(event: GeneratedEvent) -> dict[str, Any]:
    """The payload record (any kind) as a plain dict."""
    payload = event.record["payload"]
    assert payload is not None
    return cast(dict[str, Any], payload[1])


def _ids(event: GeneratedEvent) -> dict[str, str | None]:
    return cast(dict[str, "str | None"], event.record["identifiers"])


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = generate(60, seed=11, now_ms=NOW)
    b = generate(60, seed=11, now_ms=NOW)
    c = generate(60, seed=12, now_ms=NOW)
    assert len(a) > 300
    assert a == b  # records, people and keys, event ids included
    assert [e.record["event_id"] for e in a] != [e.record["event_id"] for e in c]
    assert {e.record["event_id"] for e in a}.isdisjoint(e.record["event_id"] for e in c)


def test_event_ids_are_unique_uuid4(events: list[GeneratedEvent]) -> None:
    ids = [e.record["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    for event_id in ids[:200]:
        parts = event_id.split("-")
        assert [len(p) for p in parts] == [8, 4, 4, 4, 12]
        assert parts[2][0] == "4" and parts[3][0] in "89ab"


def test_empty_population_and_bad_arguments() -> None:
    assert generate(0, now_ms=NOW) == []
    with pytest.raises(ValueError):
        generate(10, now_ms=NOW, span_ms=0)
    with pytest.raises(ValueError):
        generate(10, now_ms=NOW, events_per_customer=0)


# --------------------------------------------------------------------------- validity


def test_sorted_within_span_and_every_person_present(events: list[GeneratedEvent]) -> None:
    occurred = [e.record["occurred_at"] for e in events]
    assert occurred == sorted(occurred)
    assert NOW - SPAN <= occurred[0] and occurred[-1] <= NOW
    assert all(e.record["occurred_at"] <= e.record["received_at"] <= NOW for e in events)
    assert {e.person for e in events} == set(range(CUSTOMERS))
    per_person = len(events) / CUSTOMERS
    assert 10.0 <= per_person <= 14.0, per_person


def test_a_short_span_is_respected() -> None:
    now = NOW + 12_345
    evs = generate(50, seed=5, now_ms=now, span_ms=60_000, events_per_customer=6.0)
    assert evs and all(now - 60_000 <= e.record["occurred_at"] <= now for e in evs)


def test_every_event_encodes_and_is_accepted_by_ingest(
    events: list[GeneratedEvent], codec: AvroCodec
) -> None:
    policy = IngestPolicy()
    pairs = encode_events(events, codec)
    assert len(pairs) == len(events)
    rejected: Counter[str] = Counter()
    for event, (key, value) in zip(events, pairs, strict=True):
        assert key == event.key
        outcome = ingest_message(value, codec, policy, NOW)
        if not isinstance(outcome, Accepted):
            rejected[f"{outcome.reason}: {outcome.detail}"] += 1
            continue
        record = outcome.record
        assert record["event_id"] == event.record["event_id"]
        payload = record["payload"]
        assert payload is not None
        assert CATALOGUE[record["channel"]][record["event_type"]] == payload[0]
        assert any(record["identifiers"].values())
    assert not rejected, rejected.most_common(5)


def test_channel_mix_is_near_the_targets(events: list[GeneratedEvent]) -> None:
    counts = Counter(category(e.record) for e in events)
    shares = {c: counts[c] / len(events) for c in CATEGORY_TARGETS}
    assert set(counts) == set(CATEGORY_TARGETS)
    bounds = {
        "web": (0.38, 0.52),
        "mobile": (0.24, 0.36),
        "contact_centre": (0.08, 0.16),
        "social": (0.05, 0.11),
        "commerce": (0.03, 0.08),
    }
    for name, (lo, hi) in bounds.items():
        assert lo <= shares[name] <= hi, (name, shares)
    assert Counter(e.record["channel"] for e in events).keys() == set(CATALOGUE)


def test_the_catalogue_is_exercised(events: list[GeneratedEvent]) -> None:
    seen = {(e.record["channel"], e.record["event_type"]) for e in events}
    wanted = {
        ("web", "page_view"),
        ("web", "search"),
        ("web", "add_to_cart"),
        ("web", "checkout_step"),
        ("web", "checkout_failed"),
        ("web", "login"),
        ("web", "signup"),
        ("web", "password_reset"),
        ("mobile", "app_open"),
        ("mobile", "screen_view"),
        ("mobile", "push_open"),
        ("mobile", "login"),
        ("social", "mention"),
        ("social", "direct_message"),
        ("social", "reply"),
        ("contact_centre", "call"),
        ("contact_centre", "chat"),
        ("contact_centre", "survey_response"),
    }
    assert wanted <= seen, wanted - seen
    statuses = Counter(_body(e)["status"] for e in events if e.record["event_type"] == "payment")
    assert statuses["approved"] > statuses["declined"] > 0
    assert any(e.record["event_type"] == "order_placed" for e in events)


# --------------------------------------------------------------------------- identities


def test_identifiers_belong_to_exactly_one_person(events: list[GeneratedEvent]) -> None:
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for e in events:
        for kind, value in _normalised(e).items():
            owners[(kind, value)].add(e.person)
    shared = {k: v for k, v in owners.items() if len(v) > 1}
    assert not shared, list(shared.items())[:3]
    kinds = {kind for kind, _ in owners}
    assert kinds == set(IDENTIFIER_KINDS)


@pytest.fixture(scope="module")
def trapped() -> list[GeneratedEvent]:
    return generate(CUSTOMERS, seed=7, now_ms=NOW, span_ms=20 * 24 * HOUR, traps=Traps())


def test_without_traps_the_stream_is_unchanged(events: list[GeneratedEvent]) -> None:
    assert generate(CUSTOMERS, seed=7, now_ms=NOW, traps=Traps.none()) == events
    assert not any(e.trap for e in events)


def test_traps_share_exactly_the_values_they_name(
    trapped: list[GeneratedEvent], codec: AvroCodec
) -> None:
    """Each trap shares identifier values between people as described, and only those."""
    owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    trap_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    policy = IngestPolicy()
    for e in trapped:
        outcome = ingest_message(codec.encode(e.record), codec, policy, NOW)  # type: ignore[arg-type]
        assert isinstance(outcome, Accepted), outcome
        for kind, value in outcome.record["identifiers"].items():
            if value:
                owners[(kind, value)].add(e.person)
                trap_of[(kind, value)].add(e.trap)
    assert {e.trap for e in trapped} == {"", *TRAP_NAMES}
    shared = {k: v for k, v in owners.items() if len(v) > 1}
    kinds = Counter(kind for kind, _ in shared)
    # Family tablets (device ids), couples' emails, the centre's numbers, junk that
    # survives normalisation (test@test.com, +10000000000, all-zero device ids).
    assert kinds["device_id"] >= 3 and kinds["email"] >= 3 and kinds["phone"] >= 2, kinds
    rules = IdentityRules()
    for key, people in shared.items():
        traps = trap_of[key] - {""}
        assert traps, (key, people)  # nothing is shared by accident
        if traps == {"junk"}:  # what ingest keeps of junk, identity blocks
            assert rules.is_blocked(f"{key[0]}:{key[1]}"), key
        if key[0] == "device_id" and "junk" not in traps:
            assert traps == {"family_tablet"} and 2 <= len(people) <= 4, (key, people)
        if key[0] == "email" and "junk" not in traps:
            assert "shared_email" in traps and len(people) == 2, (key, people)
    centre = [k for k, t in trap_of.items() if "centre_phone" in t and k[0] == "phone"]
    assert max(len(owners[k]) for k in centre) >= 3, [owners[k] for k in centre]
    # Every centre-number call carries the caller's own CRM id.
    for e in trapped:
        if e.trap == "centre_phone":
            assert e.record["identifiers"]["customer_id"], e.record


def test_phones_vary_in_format_but_mean_one_number_per_person(
    events: list[GeneratedEvent],
) -> None:
    per_person: dict[int, set[str]] = defaultdict(set)
    raw_forms: set[str] = set()
    for e in events:
        phone = e.record["identifiers"]["phone"]
        if phone is None:
            continue
        raw_forms.add(phone)
        country = e.record["context"]["country"]
        assert country is not None  # national formats need the country to be read
        text = "+" + phone[2:] if phone.startswith("00") else phone
        number = phonenumbers.parse(text, country)
        assert phonenumbers.is_possible_number(number), phone
        assert number.country_code is not None
        assert phonenumbers.region_code_for_country_code(number.country_code) == country, phone
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if not e164.startswith("+447700900"):  # Ofcom's drama range is deliberately invalid
            assert phonenumbers.is_valid_number(number), phone
        per_person[e.person].add(e164)
    assert len(per_person) > 100
    assert all(len(numbers) == 1 for numbers in per_person.values())
    assert any(f.startswith("+") and " " in f for f in raw_forms)  # international, spaced
    assert any(f.startswith("0") and not f.startswith("00") for f in raw_forms)  # national
    assert any(f.startswith("+") and f[1:].isdigit() for f in raw_forms)  # E.164


def test_odd_spellings_of_emails_and_handles_occur(events: list[GeneratedEvent]) -> None:
    emails = {e.record["identifiers"]["email"] for e in events} - {None}
    handles = {e.record["identifiers"]["social_handle"] for e in events} - {None}
    assert any(m != m.strip() for m in emails if m)
    assert any(m.strip() != m.strip().lower() for m in emails if m)
    assert any(h.startswith("@") for h in handles if h)
    assert any(not h.startswith("@") for h in handles if h)
    customer_ids = {e.record["identifiers"]["customer_id"] for e in events} - {None}
    assert customer_ids and all(c and c.startswith("CRM-") for c in customer_ids)


def test_anonymous_cookies_are_linked_later_by_a_login(events: list[GeneratedEvent]) -> None:
    """Some cookie is first seen alone and only later together with an account id."""
    first_alone: dict[str, int] = {}
    linked_later: set[str] = set()
    persons: set[int] = set()
    for e in events:
        ids = e.record["identifiers"]
        anon = ids["anonymous_id"]
        if anon is None:
            continue
        has_link = any(_ids(e)[k] for k in LINKING_KINDS)
        if not has_link:
            first_alone.setdefault(anon, e.record["occurred_at"])
        elif anon in first_alone and first_alone[anon] < e.record["occurred_at"]:
            linked_later.add(anon)
            persons.add(e.person)
    assert len(persons) >= 30, len(persons)
    logins = [
        e
        for e in events
        if e.record["event_type"] in ("login", "signup")
        and e.record["identifiers"]["anonymous_id"] in linked_later
    ]
    assert logins and all(e.record["identifiers"]["customer_id"] for e in logins)


def test_devices_link_later_and_people_use_app_and_laptop(events: list[GeneratedEvent]) -> None:
    device_alone: set[str] = set()
    device_linked_later: set[str] = set()
    by_customer: dict[str, set[str]] = defaultdict(set)
    for e in events:
        ids = e.record["identifiers"]
        device = ids["device_id"]
        if device is not None:
            if ids["customer_id"] is None:
                device_alone.add(device)
            elif device in device_alone:
                device_linked_later.add(device)
        if ids["customer_id"]:
            kind = "device" if device else "cookie" if ids["anonymous_id"] else None
            if kind:
                by_customer[ids["customer_id"]].add(kind)
    assert len(device_linked_later) >= 20
    both = [c for c, kinds in by_customer.items() if kinds == {"device", "cookie"}]
    assert len(both) >= 20


def test_direct_messages_reveal_emails(events: list[GeneratedEvent]) -> None:
    revealing = [
        e
        for e in events
        if e.record["event_type"] == "direct_message" and e.record["identifiers"]["email"]
    ]
    assert len(revealing) >= 5
    for e in revealing:
        text = _body(e)["text"]
        email = e.record["identifiers"]["email"]
        assert email is not None and email.strip() in text
        assert e.record["identifiers"]["social_handle"]


def test_failed_checkouts_are_followed_by_contacts_within_the_hour(
    events: list[GeneratedEvent],
) -> None:
    contacts: dict[int, list[GeneratedEvent]] = defaultdict(list)
    for e in events:
        if e.record["channel"] == "contact_centre" and e.record["event_type"] in (
            "call",
            "chat",
            "email",
        ):
            contacts[e.person].append(e)
    failures = [e for e in events if e.record["event_type"] == "checkout_failed"]
    assert failures
    followed = []
    for f in failures:
        t = f.record["occurred_at"]
        after = [
            c
            for c in contacts[f.person]
            if t < c.record["occurred_at"] <= t + HOUR
            and _body(c)["reason"] in ("checkout_failure", "payment_declined")
        ]
        if after:
            followed.append(after[0])
    # Most failures (those not retried successfully) get a call, chat or email about them.
    assert len(followed) >= max(3, len(failures) // 5), (len(followed), len(failures))
    for contact in followed:
        ids = contact.record["identifiers"]
        assert ids["phone"] or ids["customer_id"] or ids["email"]
        body = _body(contact)
        assert body["wait_seconds"] is not None and body["handle_seconds"] is not None
        assert body["resolved"] is not None
    # ... and no such contact comes out of the blue, before any failure of that person.
    first_failure: dict[int, int] = {}
    for f in failures:
        first_failure.setdefault(f.person, f.record["occurred_at"])
    for person, cs in contacts.items():
        for c in cs:
            if _body(c)["reason"] in ("checkout_failure", "payment_declined"):
                assert first_failure[person] < c.record["occurred_at"]


def test_contact_centre_details_are_plausible(events: list[GeneratedEvent]) -> None:
    cc = [e for e in events if e.record["channel"] == "contact_centre"]
    bodies = [_body(e) for e in cc if e.record["event_type"] != "refund"]
    assert bodies and all("csat" in b for b in bodies)
    assert any(b["transferred"] for b in bodies)
    assert any(b["is_complaint"] for b in bodies)
    surveys = [b for b in bodies if b["csat"] is not None]
    assert surveys and {b["csat"] for b in surveys} <= set(range(1, 6))
    assert {b["csat"] for b in surveys} == set(range(1, 6))  # the whole scale is used
    calls = [e for e in cc if e.record["event_type"] == "call"]
    assert calls and all(e.record["identifiers"]["phone"] for e in calls)


def test_contexts_and_money_match_the_home_country(events: list[GeneratedEvent]) -> None:
    currency = {
        "GB": "GBP",
        "US": "USD",
        "DE": "EUR",
        "FR": "EUR",
        "ES": "EUR",
        "BR": "BRL",
        "IN": "INR",
        "AU": "AUD",
        "JP": "JPY",
    }
    home: dict[int, str] = {}
    for e in events:
        ctx = e.record["context"]
        if ctx["country"] is None:
            continue
        assert home.setdefault(e.person, ctx["country"]) == ctx["country"]
        if e.record["channel"] in ("web", "mobile") and ctx["geo"] is not None:
            assert ctx["ip"] and ctx["user_agent"] and ctx["timezone"]
        payload = e.record["payload"]
        if payload is not None and payload[0].endswith("CommerceEvent"):
            assert _body(e)["currency"] == currency[ctx["country"]]
            assert _body(e)["amount"] > 0
    assert set(home.values()) == set(currency)
    consents = Counter(e.record["consent"] for e in events)
    assert consents.most_common(1)[0][0] == "granted"


def test_keys_name_an_identifier_of_the_event(events: list[GeneratedEvent]) -> None:
    expected_kind = {"mobile": b"device_id", "social": b"social_handle"}
    for e in events:
        kind, _, value = e.key.partition(b":")
        assert kind.decode() in IDENTIFIER_KINDS
        assert _ids(e)[kind.decode()] == value.decode()
        if e.record["channel"] in expected_kind and e.record["event_type"] != "payment":
            assert kind == expected_kind[e.record["channel"]]
        if e.record["event_type"] == "call":
            assert kind == b"phone"
    web_before_login = [
        e
        for e in events
        if e.record["channel"] == "web" and not e.record["identifiers"]["customer_id"]
    ]
    assert web_before_login
    assert all(e.key.startswith(b"anonymous_id:") for e in web_before_login)


# --------------------------------------------------------------------------- encoding


def test_old_schema_fraction(events: list[GeneratedEvent], codec: AvroCodec) -> None:
    pairs = encode_events(events, codec, old_schema_fraction=0.3, seed=1)
    ids = Counter(struct.unpack_from(">bI", value)[1] for _, value in pairs)
    assert set(ids) == {1, 2}
    share = ids[1] / len(pairs)
    assert 0.25 <= share <= 0.35, share
    for event, (key, value) in zip(events, pairs, strict=True):
        decoded = codec.decode(value)
        assert key == event.key
        assert decoded["event_id"] == event.record["event_id"]
        assert decoded["identifiers"] == event.record["identifiers"]
        schema_id = struct.unpack_from(">bI", value)[1]
        assert decoded["consent"] == (None if schema_id == 1 else event.record["consent"])
    assert "consent" in events[0].record  # the generated records are left alone
    again = encode_events(events, codec, old_schema_fraction=0.3, seed=1)
    assert again == pairs
    latest = encode_events(events[:50], codec)
    assert {struct.unpack_from(">bI", v)[1] for _, v in latest} == {codec.schema_id}


# --------------------------------------------------------------------------- producing


class _FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: float | None) -> object | None:
        if self.closed or len(self.records) >= self.capacity:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True

    def record_count(self) -> int:
        return len(self.records)


class _FakeProducer:
    """Just enough of AIOKafkaProducer's batch API; acknowledges a little later."""

    instances: list[_FakeProducer] = []
    fail_batch: int | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self.send_times: list[float] = []
        self.started = self.stopped = False
        _FakeProducer.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(4))

    def create_batch(self) -> _FakeBatch:
        return _FakeBatch(capacity=37)

    async def send_batch(self, batch: _FakeBatch, topic: str, *, partition: int) -> Any:
        assert batch.closed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        index = len(self.sent)
        self.sent.append((topic, partition, batch.records))
        self.send_times.append(time.monotonic())
        if index == _FakeProducer.fail_batch:
            loop.call_later(0.001, future.set_exception, RuntimeError("broker said no"))
        else:
            loop.call_later(0.001, future.set_result, None)
        return future


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[_FakeProducer]:
    _FakeProducer.instances = []
    _FakeProducer.fail_batch = None
    monkeypatch.setattr(generator, "AIOKafkaProducer", _FakeProducer)
    return _FakeProducer


def _pairs(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"customer_id:CRM-{i % 23:06d}".encode(), f"v{i}".encode()) for i in range(n)]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_produce_delivers_everything_keyed_to_stable_partitions(
    fake_producer: type[_FakeProducer],
) -> None:
    settings = Settings(
        kafka_bootstrap_servers="broker-1:9092",
        kafka_security_protocol=SecurityProtocol.PLAINTEXT,
        topic_prefix="t1.",
    )
    pairs = _pairs(1000)
    seen: list[int] = []
    delivered = _run(produce(settings, pairs, progress=seen.append))
    assert delivered == 1000
    (producer,) = fake_producer.instances
    assert producer.started and producer.stopped
    kw = producer.kwargs
    assert kw["bootstrap_servers"] == "broker-1:9092"
    assert kw["acks"] == "all" and kw["enable_idempotence"] is True
    assert kw["linger_ms"] == 10 and kw["max_batch_size"] == 512 * 1024
    assert kw["security_protocol"] == "PLAINTEXT"
    assert {topic for topic, _, _ in producer.sent} == {settings.topics.raw}
    by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for _, partition, records in producer.sent:
        by_partition[partition].extend(records)
    assert sorted(r for rs in by_partition.values() for r in rs) == sorted(pairs)
    for partition, records in by_partition.items():
        for key, _ in records:
            assert (murmur2(key) & 0x7FFFFFFF) % 4 == partition  # the Java client's choice
        # order per key is kept
        for key in {k for k, _ in records}:
            values = [int(v[1:]) for k, v in records if k == key]
            assert values == sorted(values)
    assert seen and seen[-1] == 1000 and seen == sorted(seen)


def test_produce_to_another_topic_counts_failed_batches_out(
    fake_producer: type[_FakeProducer], caplog: pytest.LogCaptureFixture
) -> None:
    fake_producer.fail_batch = 2
    settings = Settings()
    with caplog.at_level(logging.ERROR, logger="streams.sim.generator"):
        delivered = _run(produce(settings, _pairs(500), topic="elsewhere"))
    (producer,) = fake_producer.instances
    lost = len(producer.sent[2][2])
    assert lost > 0 and delivered == 500 - lost
    assert {topic for topic, _, _ in producer.sent} == {"elsewhere"}
    assert "not delivered" in caplog.text and "broker said no" in caplog.text


def test_produce_paces_to_the_rate(fake_producer: type[_FakeProducer]) -> None:
    calls: list[int] = []
    progress: Callable[[int], None] = calls.append
    t0 = time.monotonic()
    delivered = _run(produce(Settings(), _pairs(300), rate=1000.0, progress=progress))
    elapsed = time.monotonic() - t0
    assert delivered == 300
    assert 0.2 <= elapsed < 5.0, elapsed  # 300 messages at 1000/s: ~0.3 s, not instant
    (producer,) = fake_producer.instances
    # Sent as it goes, in ticks, not in one burst at the end.
    assert producer.send_times[0] - t0 < 0.15
    assert producer.send_times[-1] - producer.send_times[0] >= 0.2
    assert calls[-1] == 300
    with pytest.raises(ValueError):
        _run(produce(Settings(), _pairs(3), rate=0))
    assert _run(produce(Settings(), [])) == 0
    assert len(fake_producer.instances) == 1  # nothing to send: no connection either
