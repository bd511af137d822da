"""Operator actions: look up a customer's timeline, erase a customer, split an identifier.

Erasure and split are requests to the identity stage (ops on ``identity.ops``, routed
like every other op), so they are ordered with the traffic and survive restarts.
Timelines are read from ClickHouse (``customer_touchpoints_v``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.adapters.clickhouse import ClickHouse
from streams.adapters.kafka import consumer_security
from streams.identity.graph import EraseIdentifierOp, EraseOp, SplitOp, op_to_json
from streams.settings import Settings
from streams.wire.envelope import pack, partition_for
from streams.wire.model import IDENTIFIER_KINDS

__all__ = ["find_customer", "identifier_key", "request", "timeline"]


def identifier_key(kind: str, value: str) -> str:
    """``kind:value`` with the value normalised the way ingest normalises it."""
    from streams.ingest.normalise import normalise_identifiers

    if kind not in IDENTIFIER_KINDS:
        raise ValueError(f"unknown identifier kind {kind!r}; one of {', '.join(IDENTIFIER_KINDS)}")
    ids: Any = {k: None for k in IDENTIFIER_KINDS}
    ids[kind] = value
    normal = normalise_identifiers(ids, "GB")[kind]  # type: ignore[literal-required]
    if not normal:
        raise ValueError(f"{value!r} is not a usable {kind}")
    return f"{kind}:{normal}"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_customer(client: ClickHouse, database: str, identifier: str) -> str | None:
    rows = client.query(
        f"SELECT customer_id FROM {database}.identity_map_v WHERE identifier = {_quote(identifier)}"
    ).result_rows
    return str(rows[0][0]) if rows else None


def timeline(
    client: ClickHouse, database: str, customer_id: str, limit: int = 1000
) -> list[dict[str, Any]]:
    """Every touchpoint of the customer, across channels, in event-time order."""
    result = client.query(
        f"SELECT occurred_at, channel, event_type, event_id, identity_key, country, "
        f"payload_type, amount, currency, csat, nps, sentiment, error_code "
        f"FROM {database}.customer_touchpoints_v WHERE customer_id = {_quote(customer_id)} "
        f"ORDER BY occurred_at, event_id LIMIT {int(limit)}"
    )
    names = result.column_names
    out = []
    for row in result.result_rows:
        item = dict(zip(names, row, strict=True))
        item["occurred_at"] = item["occurred_at"].isoformat()
        item["amount"] = None if item["amount"] is None else float(item["amount"])
        out.append(item)
    return out


async def request(settings: Settings, op: Any) -> str:
    """Send one operator op to the identity stage; returns the request id."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        **consumer_security(settings),
    )
    await producer.start()
    try:
        partition = partition_for(op.routing_key, settings.topic_partitions)
        await producer.send_and_wait(
            settings.topics.identity_ops, pack([op_to_json(op)]), partition=partition
        )
    finally:
        await producer.stop()
    return str(op.event_id)


def erase_op(customer: str | None = None, identifier: str | None = None) -> Any:
    now, request_id = int(time.time() * 1000), f"erase-{uuid.uuid4()}"
    if customer:
        return EraseOp(customer, request_id, now)
    if identifier:
        return EraseIdentifierOp(identifier, request_id, now)
    raise ValueError("give a customer id or an identifier")


def split_op(identifier: str, quarantine: bool = False) -> Any:
    return SplitOp(identifier, f"split-{uuid.uuid4()}", int(time.time() * 1000), quarantine)
