"""Webhook subscribers from the rules file (secrets by environment variable name) and the
HMAC signature every delivery carries (``sign``; receivers use ``verify_signature``)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from streams.customers.detect import RULE_NAMES, Alert, RulesError, Severity

# --------------------------------------------------------------------------- signing


def _mac(secret: str, timestamp_s: int, body: bytes) -> str:
    message = str(timestamp_s).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp_s: int) -> str:
    """The ``X-Touchpoints-Signature`` value: ``t=<ts>,v1=<hex HMAC-SHA256>``."""
    return f"t={timestamp_s},v1={_mac(secret, timestamp_s, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    tolerance_s: float = 300.0,
    now_s: float | None = None,
) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its time is within tolerance.

    ``body`` must be the raw request bytes (not re-serialised JSON). Several ``v1=``
    entries are accepted (any one matching), which allows rotating secrets.
    """
    if not header or not secret:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


# --------------------------------------------------------------------------- subscribers


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One webhook endpoint. ``secret`` is resolved from the environment (never logged)."""

    name: str
    url: str
    secret: str = field(repr=False)
    secret_env: str = ""
    rules: frozenset[str] | None = None  # None: every rule
    min_severity: Severity | None = None  # None: every severity

    def wants(self, alert: Alert) -> bool:
        if self.rules is not None and alert["rule"] not in self.rules:
            return False
        if self.min_severity is not None:
            try:
                severity = Severity(alert["severity"])
            except ValueError:
                return True  # an unknown severity is delivered rather than dropped
            return severity.rank >= self.min_severity.rank
        return True


_SUBSCRIBER_FIELDS: Final = ("name", "url", "secret_env", "rules", "min_severity")


def parse_subscribers(data: Any, environ: Mapping[str, str]) -> list[Subscriber]:
    """Validate the ``subscribers:`` list of a rules document; raises ``RulesError``."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise RulesError([f"subscribers: expected a list, got {type(data).__name__}"])
    problems: list[str] = []
    out: list[Subscriber] = []
    names: set[str] = set()
    for i, entry in enumerate(data):
        where = f"subscribers[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected a mapping, got {type(entry).__name__}")
            continue
        name = entry.get("name")
        if isinstance(name, str) and name:
            where = f"subscribers[{i}] ({name})"
        before = len(problems)
        for key in entry:
            if key == "secret":
                problems.append(
                    f"{where}.secret: secrets must not be written in the file; "
                    "put it in an environment variable and name it in secret_env"
                )
            elif key not in _SUBSCRIBER_FIELDS:
                problems.append(
                    f"{where}.{key}: unknown field (known: {', '.join(_SUBSCRIBER_FIELDS)})"
                )
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: expected a non-empty string, got {name!r}")
        elif name in names:
            problems.append(f"{where}.name: duplicate subscriber name {name!r}")
        url = entry.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{where}.url: expected an http(s):// URL with a host, got {url!r}")
        secret_env = entry.get("secret_env")
        secret = ""
        if not isinstance(secret_env, str) or not secret_env:
            problems.append(
                f"{where}.secret_env: expected the NAME of an environment variable, "
                f"got {secret_env!r}"
            )
        else:
            secret = environ.get(secret_env, "")
            if not secret:
                problems.append(
                    f"{where}.secret_env: environment variable {secret_env} is not set or empty"
                )
        rules: frozenset[str] | None = None
        raw_rules = entry.get("rules")
        if raw_rules is not None:
            if not isinstance(raw_rules, list) or not all(isinstance(r, str) for r in raw_rules):
                problems.append(f"{where}.rules: expected a list of rule names, got {raw_rules!r}")
            else:
                unknown = sorted(set(raw_rules) - set(RULE_NAMES))
                if unknown:
                    problems.append(
                        f"{where}.rules: unknown rule(s) {', '.join(unknown)} "
                        f"(known: {', '.join(RULE_NAMES)})"
                    )
                rules = frozenset(raw_rules)
        min_severity: Severity | None = None
        raw_severity = entry.get("min_severity")
        if raw_severity is not None:
            if raw_severity not in Severity.__members__.values():
                choices = ", ".join(s.value for s in Severity)
                problems.append(
                    f"{where}.min_severity: expected one of {choices}, got {raw_severity!r}"
                )
            else:
                min_severity = Severity(raw_severity)
        if len(problems) == before:
            assert isinstance(name, str) and isinstance(url, str) and isinstance(secret_env, str)
            names.add(name)
            out.append(Subscriber(name, url, secret, secret_env, rules, min_severity))
    if problems:
        raise RulesError(problems, "subscribers")
    return out


def load_subscribers(path: Path | str, environ: Mapping[str, str]) -> list[Subscriber]:
    """The subscribers of a rules file, secrets taken from ``environ``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RulesError([f"not valid YAML: {exc}"], str(path)) from exc
    if not isinstance(data, Mapping):
        raise RulesError(["top level: expected a mapping"], str(path))
    return parse_subscribers(data.get("subscribers"), environ)
