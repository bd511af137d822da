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


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_one_error_is_cut_to_a_few_lines_and_a_summary() -> None:
    """Issue 12, item 7: ~24,000 aiokafka ERROR lines in 15 s during a broker outage."""
    import io

    from streams import metrics
    from streams.logs import RateLimitedHandler

    out = io.StringIO()
    clock = _Clock()
    handler = RateLimitedHandler(out, limit=5, window_s=10.0, clock=clock)
    handler.setFormatter(JsonFormatter())
    before = metrics.LOG_LINES_SUPPRESSED.labels("aiokafka")._value.get()
    for i in range(24_000):
        clock.now = i * 15.0 / 24_000
        handler.handle(
            logging.makeLogRecord(
                {
                    "name": "aiokafka.conn",
                    "levelno": logging.ERROR,
                    "levelname": "ERROR",
                    "msg": "Unable connect to node with id %s: %s",
                    "args": (1, f"[Errno 111] attempt {i}"),
                }
            )
        )
        if i % 1000 == 0:  # other lines interleave and are never held back
            handler.handle(_record(f"ingest batch {i}"))
    clock.now = 30.0
    handler.handle(_record("broker back"))
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    errors = [d for d in lines if d["logger"] == "aiokafka.conn"]
    summaries = [d for d in errors if d["message"].startswith("suppressed")]
    # two 10 s windows in 15 s: 5 lines each, and one summary each
    assert len(errors) - len(summaries) == 10
    assert len(summaries) == 2
    assert sum(d["suppressed"] for d in summaries) == 24_000 - 10
    assert "Unable connect to node with id 1" in summaries[0]["message"]
    assert len([d for d in lines if d["message"].startswith("ingest batch")]) == 24
    assert lines[-1]["message"] == "broker back"
    held = metrics.LOG_LINES_SUPPRESSED.labels("aiokafka")._value.get() - before
    assert held == 24_000 - 10


def test_what_is_held_back_is_summarised_on_close() -> None:
    import io

    from streams.logs import RateLimitedHandler

    out = io.StringIO()
    handler = RateLimitedHandler(out, limit=1, window_s=60.0, clock=_Clock())
    for _ in range(3):
        handler.handle(_record("same"))
    handler.close()
    assert out.getvalue().splitlines()[-1].startswith("suppressed 2 more like this")
