"""Structured logs: one JSON object per line, no secrets, no raw PII by default.

``configure(level, json_format)`` is called once by the CLI. Identifiers in log
records are masked unless ``LOG_PII=true``: an email becomes ``j***@example.com``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure", "logging_dict", "mask"]

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


def configure(level: str, *, json_format: bool = True, pii: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter(pii=pii))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def logging_dict(level: str, *, json_format: bool = True, pii: bool = False) -> dict[str, Any]:
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
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
