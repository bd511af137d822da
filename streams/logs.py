"""Structured logs: one JSON object per line, no secrets, no raw PII by default.

``configure(level, json_format)`` is called once by the CLI. Identifiers in log
records are masked unless ``LOG_PII=true``: an email becomes ``j***@example.com``.

Repeats are rate-limited (``RateLimitedHandler``): a broker outage made aiokafka log
~24,000 ERROR lines in 15 s. Each (logger, level, message template) may log
``LOG_REPEAT_LIMIT`` lines per ``LOG_REPEAT_WINDOW_SECONDS``; what is held back is
counted (``touchpoints_log_lines_suppressed_total``) and summarised in one line when the
window closes: ``suppressed 4,312 more like this in the last 10 s: <the message>``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "RateLimitedHandler", "configure", "logging_dict", "mask"]

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+?\d[\d ().-]{7,}\d")
_SECRET = re.compile(r"(?i)(password|secret|token|sasl_plain_password)=([^\s,;]+)")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def mask(text: str) -> str:
    text = _SECRET.sub(r"\1=***", text)
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(lambda m: m.group(0)[:3] + "***" + m.group(0)[-2:], text)


class JsonFormatter(logging.Formatter):
    def __init__(self, pii: bool = False) -> None:
        super().__init__()
        self.pii = pii

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message if self.pii else mask(message),
        }
        for key, value in vars(record).items():  # extra={"event_id": ..., "customer_id": ...}
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class RateLimitedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that lets each kind of line through ``limit`` times per
    ``window_s`` and then summarises the rest.

    A kind is (logger, level, message template): ``"Unable connect to %s"`` with any
    arguments is one kind. Summaries are written when the window of their kind has closed
    and any line is logged (so a flood that stops is summarised by the next line), and at
    ``summarise``/``close``.
    """

    def __init__(
        self,
        stream: Any = None,
        limit: int = 5,
        window_s: float = 10.0,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        # kind -> [window start, lines let through, lines held back, last held record]
        self._kinds: dict[tuple[str, int, str], list[Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if self.limit <= 0:
            super().emit(record)
            return
        now = self.clock()
        self._summarise(now, closed_only=True)
        kind = (record.name, record.levelno, str(record.msg))
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window_s:
            state = self._kinds[kind] = [now, 0, 0, None]
        if state[1] < self.limit:
            state[1] += 1
            super().emit(record)
            return
        state[2] += 1
        state[3] = record
        from streams import metrics  # late: metrics must not import logging config

        metrics.LOG_LINES_SUPPRESSED.labels(record.name.split(".", 1)[0]).inc()

    def _summarise(self, now: float, *, closed_only: bool) -> None:
        for kind, state in list(self._kinds.items()):
            if closed_only and now - state[0] < self.window_s:
                continue
            del self._kinds[kind]
            held, last = state[2], state[3]
            if not held:
                continue
            summary = logging.makeLogRecord(vars(last))
            summary.msg = (
                f"suppressed {held:,} more like this in the last {self.window_s:g} s: "
                f"{last.getMessage()}"
            )
            summary.args = None
            summary.exc_info = summary.exc_text = None
            summary.suppressed = held
            super().emit(summary)

    def summarise(self) -> None:
        """Write the summaries of every open window now (``StreamHandler.emit`` calls
        ``flush`` after every line, so this is not ``flush``)."""
        self.acquire()
        try:
            self._summarise(self.clock(), closed_only=False)
        finally:
            self.release()

    def close(self) -> None:
        self.summarise()
        super().close()


def configure(
    level: str,
    *,
    json_format: bool = True,
    pii: bool = False,
    repeat_limit: int = 5,
    repeat_window_s: float = 10.0,
) -> None:
    handler = RateLimitedHandler(sys.stderr, repeat_limit, repeat_window_s)
    if json_format:
        handler.setFormatter(JsonFormatter(pii=pii))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def logging_dict(
    level: str,
    *,
    json_format: bool = True,
    pii: bool = False,
    repeat_limit: int = 5,
    repeat_window_s: float = 10.0,
) -> dict[str, Any]:
    """The same configuration as ``configure``, as a dictConfig (for Faust/mode workers)."""
    formatter: dict[str, Any] = (
        {"()": "streams.logs.JsonFormatter", "pii": pii}
        if json_format
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "()": "streams.logs.RateLimitedHandler",
                "limit": repeat_limit,
                "window_s": repeat_window_s,
                "formatter": "default",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
