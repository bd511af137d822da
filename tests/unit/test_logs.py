from __future__ import annotations

import logging

import orjson

from streams.logs import JsonFormatter, mask


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": msg, **extra})
    return record


def test_json_lines_carry_extra_fields() -> None:
    line = JsonFormatter().format(_record("merged", event_id="e1", customer_id="c123"))
    doc = orjson.loads(line)
    assert doc["message"] == "merged"
    assert (doc["event_id"], doc["customer_id"], doc["level"]) == ("e1", "c123", "INFO")


def test_pii_and_secrets_are_masked_by_default() -> None:
    text = "login jane.doe@example.com from +44 7700 900123 password=hunter2"
    masked = mask(text)
    assert "jane.doe@" not in masked and "j***@example.com" in masked
    assert "900123" not in masked
    assert "hunter2" not in masked
    doc = orjson.loads(JsonFormatter().format(_record(text)))
    assert doc["message"] == masked
    assert orjson.loads(JsonFormatter(pii=True).format(_record(text)))["message"].startswith(
        "login jane.doe@example.com"
    )
