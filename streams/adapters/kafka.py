"""Kafka plumbing: security options for each client library, and topic creation."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

from streams.settings import SecurityProtocol, Settings
from streams.topology import TABLES, TOPICS, Retention

__all__ = [
    "TopicSpec",
    "check_message_limits",
    "consumer_security",
    "create_topics",
    "kafka_python_security",
    "max_message_bytes_allowed",
    "message_size_problem",
    "topic_message_limits",
    "topic_specs",
]

log = logging.getLogger(__name__)


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        return None
    ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return ctx


def consumer_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (the sink, the generator, the bench)."""
    opts: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol.value}
    context = _ssl_context(settings)
    if context is not None:
        opts["ssl_context"] = context
    if settings.kafka_security_protocol.value.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


def kafka_python_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (the admin client)."""
    return consumer_security(settings)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the declared topology (``streams.topology``) and the tables' changelogs."""
    t = settings.topics
    n, rf = settings.topic_partitions, settings.topic_replication_factor
    min_isr = str(min(2, rf))
    configs = {
        Retention.RAW: {
            "retention.ms": str(settings.raw_retention_ms),
            "min.insync.replicas": min_isr,
        },
        Retention.DEAD_LETTER: {
            "retention.ms": str(settings.dead_letter_retention_ms),
            "min.insync.replicas": min_isr,
        },
        Retention.COMPACTED: {"cleanup.policy": "compact", "min.insync.replicas": min_isr},
    }
    # The tables' changelogs, created with the rest: Faust declares them itself at start,
    # but concurrently with its first group join, and an assignment made before a new
    # changelog's metadata arrives leaves that table's partitions out ("Ignoring missing
    # topic"). Measured: about one eval run in five then stalled for good.
    changelogs = [
        TopicSpec(settings.changelog_topic(table.name), n, rf, configs[Retention.COMPACTED])
        for table in TABLES
    ]
    # Every topic has the same partition count: Faust co-partitions them, so partition p
    # of every internal topic and table changelog lands on the same worker.
    return changelogs + [
        TopicSpec(t.of(topic.attr), n, rf, configs[topic.retention]) for topic in TOPICS
    ]


def create_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics; leave existing ones alone (idempotent). Returns those created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = specs if specs is not None else topic_specs(settings)
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.app_id}-admin",
        **kafka_python_security(settings),
    )
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=spec.replication_factor,
                            topic_configs=spec.config,
                        )
                    ]
                )
                created.append(spec.name)
                log.info("created topic %s (%d partitions)", spec.name, spec.partitions)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


FRAME_GROWTH = 7
"""An accepted message travels on ``touchpoints.checked`` as its raw bytes plus its JSON form,
which orjson may make up to 6x longer (a control character in a property value is written
``\\u00XX``): a frame is at most ``FRAME_GROWTH`` times the raw message, plus headroom."""
FRAME_HEADROOM = 16 * 1024


def max_message_bytes_allowed(broker_limit: int) -> int:
    """The largest ``MAX_MESSAGE_BYTES`` whose accepted messages still fit, as frames and
    envelopes, in a message of ``broker_limit`` bytes."""
    return max(0, (broker_limit - FRAME_HEADROOM) // FRAME_GROWTH)


def message_size_problem(max_message_bytes: int, limits: dict[str, int]) -> str | None:
    """Why ``MAX_MESSAGE_BYTES`` cannot work with the topics' ``max.message.bytes``
    (``limits``, by topic), or None. Too large, an accepted message near the limit would
    make a frame the broker refuses, and its batch — every partition of the worker — would
    retry for good; so the worker refuses to start instead."""
    if not limits:
        return None
    topic, limit = min(limits.items(), key=lambda item: item[1])
    allowed = max_message_bytes_allowed(limit)
    if max_message_bytes <= allowed:
        return None
    return (
        f"MAX_MESSAGE_BYTES={max_message_bytes} is too large for {topic} (max.message.bytes"
        f" {limit}): an accepted message travels as up to {FRAME_GROWTH}x its size plus"
        f" {FRAME_HEADROOM} bytes; set MAX_MESSAGE_BYTES <= {allowed} or raise the topic's limit"
    )


def topic_message_limits(settings: Settings, attrs: tuple[str, ...]) -> dict[str, int]:
    """``max.message.bytes`` of the topics ``attrs`` (Topic.attr) as the broker applies it
    (a topic override, else the broker's ``message.max.bytes``)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    names = [settings.topics.of(attr) for attr in attrs]
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.app_id}-admin",
        **kafka_python_security(settings),
    )
    try:
        answer = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
            config_filter="all",
        )
    finally:
        admin.close()
    return _limits_from(answer, names)


def _limits_from(answer: Any, names: list[str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for resources in (answer or {}).values():
        for name, configs in resources.items():
            entry = configs.get("max.message.bytes") if name in names else None
            value = entry.get("value") if isinstance(entry, dict) else entry
            if value is not None:
                limits[name] = int(value)
    return limits


def check_message_limits(settings: Settings) -> None:
    """At start-up: refuse a ``MAX_MESSAGE_BYTES`` the internal topics cannot carry."""
    limits = topic_message_limits(settings, ("checked", "valid", "resolved"))
    problem = message_size_problem(settings.max_message_bytes, limits)
    if problem:
        raise ValueError(problem)
