"""Identity end to end on the real broker: late links merge, timelines over HTTP, erasure, split."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams.ops.operator import erase_op, request, split_op
from streams.runtime.runner import prepare, query, running, wait_for
from streams.settings import Settings
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event(
    now: int, event_id: str, minutes_ago: int, channel: str, event_type: str, **ids: str
) -> dict[str, Any]:
    record = valid_template(now, event_id)
    record["occurred_at"] = now - minutes_ago * 60_000
    record["identifiers"] = ids
    record["channel"] = channel
    record["event_type"] = event_type
    if channel == "contact_centre":
        record["payload"] = (
            "touchpoints.ContactCentreEvent",
            {"medium": "call", "queue": "billing"},
        )
    elif channel == "social":
        record["payload"] = (
            "touchpoints.SocialEvent",
            {"platform": "x", "text": "hello", "sentiment": 0.1},
        )
    return record


async def _produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(
                settings.topics.raw, codec.encode(r), key=r["event_id"].encode()
            )
    finally:
        await producer.stop()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


async def _customer_of(pipeline: Any, db: str, identifier: str) -> str | None:
    rows = await query(
        pipeline, f"SELECT customer_id FROM {db}.identity_map_v WHERE identifier = '{identifier}'"
    )
    return rows[0][0] if rows else None


async def _until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.5)
    return value


def test_late_link_merges_history_timeline_http_erasure_and_split(settings: Settings) -> None:
    port = _free_port()
    settings = settings.model_copy(update={"web_port": port, "web_host": "127.0.0.1"})
    db = settings.clickhouse_database
    now = int(time.time() * 1000)
    browsing = [
        _event(now, f"b{i}", 60 - i, "web", "page_view", anonymous_id="cookie-jane")
        for i in range(3)
    ]
    calls = [_event(now, "call1", 40, "contact_centre", "call", phone="+447700900555")]
    social = [
        _event(
            now,
            "dm1",
            35,
            "social",
            "direct_message",
            social_handle="@JaneD",
            email="jane@example.com",
        )
    ]
    # the linking events come last: login joins the cookie to the email; an agent captures phone+email
    links = [
        _event(
            now, "login1", 20, "web", "login", anonymous_id="cookie-jane", email="Jane@Example.com"
        ),
        _event(
            now,
            "call2",
            10,
            "contact_centre",
            "call",
            phone="+447700900555",
            email="jane@example.com",
        ),
    ]
    other = [
        _event(now, "o1", 5, "web", "page_view", anonymous_id="cookie-bob", email="bob@example.com")
    ]

    async def scenario() -> None:
        prepare(settings)
        async with running(settings) as pipeline:
            await _produce(settings, browsing + calls + social)
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", 5) == 5
            before = {
                k: await _customer_of(pipeline, db, k)
                for k in (
                    "anonymous_id:cookie-jane",
                    "phone:+447700900555",
                    "email:jane@example.com",
                )
            }
            assert len(set(before.values())) == 3, before  # three strangers so far
            await _produce(settings, links + other)

            async def stitched() -> str | None:
                ids = {
                    await _customer_of(pipeline, db, k)
                    for k in (
                        "anonymous_id:cookie-jane",
                        "phone:+447700900555",
                        "email:jane@example.com",
                        "social_handle:janed",
                    )
                }
                return ids.pop() if len(ids) == 1 and None not in ids else None

            jane = await _until(stitched)
            assert jane, "the late links did not merge the three customers"
            assert jane == min(before.values()), "the oldest customer id survives"
            merges = await query(
                pipeline, f"SELECT survivor, absorbed, event_id FROM {db}.customer_merges FINAL"
            )
            into = {absorbed: survivor for survivor, absorbed, _ in merges}
            assert set(before.values()) - {jane} <= set(into), merges

            def root(customer: str) -> str:
                while customer in into:
                    customer = into[customer]
                return customer

            assert all(root(c) == jane for c in into), "every merge chain ends at the survivor"
            assert {m[2] for m in merges} <= {"login1", "call2"}  # the linking events

            async def full_timeline() -> Any:
                status, body = await asyncio.to_thread(
                    _get, f"http://127.0.0.1:{port}/timeline?email=JANE@example.com"
                )
                return body if status == 200 and len(body["touchpoints"]) == 7 else None

            body = await _until(full_timeline)
            assert body, "timeline incomplete"
            events = [t["event_id"] for t in body["touchpoints"]]
            assert events == [
                "b0",
                "b1",
                "b2",
                "call1",
                "dm1",
                "login1",
                "call2",
            ]  # event-time order
            assert {t["channel"] for t in body["touchpoints"]} == {
                "web",
                "contact_centre",
                "social",
            }
            status, _ = await asyncio.to_thread(
                _get, f"http://127.0.0.1:{port}/timeline?email=nobody@example.com"
            )
            assert status == 404

            # split the social handle off Jane (best effort undo of a wrong merge)
            await request(settings, split_op("social_handle:janed"))

            async def split_done() -> str | None:
                c = await _customer_of(pipeline, db, "social_handle:janed")
                return c if c and c != jane else None

            assert await _until(split_done), "split did not move the handle to a new customer"

            # erase Jane: nothing of her remains; a later event does not resurrect her
            await request(settings, erase_op(identifier="email:jane@example.com"))

            async def erased() -> bool:
                rows = await query(
                    pipeline,
                    f"SELECT (SELECT count() FROM {db}.identity_map WHERE customer_id = '{jane}'),"
                    f" (SELECT count() FROM {db}.touchpoints WHERE customer_id_at_ingest = '{jane}'"
                    f"   OR identity_key IN ('email:jane@example.com', 'anonymous_id:cookie-jane', 'phone:+447700900555')),"
                    f" (SELECT count() FROM {db}.customer_merges WHERE survivor = '{jane}'),"
                    f" (SELECT count() FROM {db}.customer_360 WHERE customer_id = '{jane}')",
                )
                return rows == [(0, 0, 0, 0)]

            assert await _until(erased), "erased customer still in ClickHouse"
            await _produce(
                settings, [_event(now, "late1", 1, "web", "page_view", email="jane@example.com")]
            )
            await asyncio.sleep(3)
            assert (
                await wait_for(
                    pipeline, f"SELECT count() FROM {db}.touchpoints WHERE event_id = 'o1'", 1
                )
                == 1
            )
            assert await _customer_of(pipeline, db, "email:jane@example.com") != jane
            leftovers = await query(
                pipeline, f"SELECT count() FROM {db}.identity_map WHERE customer_id = '{jane}'"
            )
            assert leftovers == [(0,)]
            bob = await _customer_of(pipeline, db, "email:bob@example.com")
            assert bob and bob != jane  # others untouched

    asyncio.run(scenario())
