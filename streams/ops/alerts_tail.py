"""``touchpoints alerts tail``: follow the alerts topic in a terminal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer

from streams.adapters.kafka import consumer_security
from streams.adapters.schema_registry import reader_codec
from streams.customers.detect import Severity
from streams.settings import Settings
from streams.wire.codec import ALERT_SUBJECT

__all__ = ["format_alert", "tail"]

_RANK = {s.value: s.rank for s in Severity}


def format_alert(alert: dict[str, object]) -> str:
    when = datetime.fromtimestamp(int(alert["occurred_at"]) / 1000, UTC)  # type: ignore[call-overload]
    return (
        f"{when:%Y-%m-%d %H:%M:%S} {str(alert['severity']).upper():<8} {alert['rule']:<34} "
        f"{alert['customer_id']}  {alert['summary']}"
    )


async def tail(
    settings: Settings,
    from_beginning: bool,
    rules: set[str],
    min_severity: str,
    echo: Callable[[str], None],
    max_alerts: int | None = None,
) -> int:
    codec = reader_codec(settings, ALERT_SUBJECT)  # registry ids with SCHEMA_REGISTRY_URL
    consumer = AIOKafkaConsumer(
        settings.topics.alerts,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **consumer_security(settings),
    )
    await consumer.start()
    shown = 0
    floor = _RANK.get(min_severity, 0)
    try:
        async for message in consumer:
            alert = codec.decode(message.value or b"")
            if rules and alert["rule"] not in rules:
                continue
            if _RANK.get(str(alert["severity"]), 0) < floor:
                continue
            echo(format_alert(alert))
            shown += 1
            if max_alerts is not None and shown >= max_alerts:
                break
    finally:
        await consumer.stop()
    return shown
