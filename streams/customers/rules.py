"""Detector rules as configuration: one dataclass per rule, validated from YAML
(``deploy/rules.yaml`` equals :meth:`Rules.default`); an error names the rule and the field."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from streams.customers.alerts import _MINUTE, Severity

# --------------------------------------------------------------------------- rules


class RulesError(ValueError):
    """Bad rules configuration; ``problems`` lists every one, each naming rule and field."""

    def __init__(self, problems: list[str], source: str = "rules") -> None:
        self.problems = problems
        super().__init__(f"invalid {source}:\n  " + "\n  ".join(problems))


def _param(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    doc: str = "",
) -> Any:
    return field(default=default, metadata={"gt": gt, "ge": ge, "le": le, "doc": doc})


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Settings every rule has."""

    enabled: bool = _param(True, doc="Run this detector.")
    severity: Severity = _param(Severity.MEDIUM, doc="info, low, medium, high or critical.")
    cooldown_minutes: float = _param(
        60.0, ge=0, doc="After an alert, suppress this rule for the customer (event time)."
    )

    @property
    def cooldown_ms(self) -> int:
        return int(self.cooldown_minutes * _MINUTE)


@dataclass(frozen=True, slots=True)
class ImpossibleTravel(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(720.0, ge=0)
    max_speed_kmh: float = _param(900.0, gt=0, doc="Faster than this between two geos alerts.")
    min_distance_km: float = _param(
        300.0, ge=0, doc="Ignore jumps shorter than this (IP geolocation noise)."
    )


@dataclass(frozen=True, slots=True)
class NewDeviceNewCountryHighValue(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(1440.0, ge=0)
    min_amount_eur: float = _param(300.0, ge=0, doc="Payment value (EUR) from which it alerts.")
    min_history: int = _param(5, ge=1, le=10_000, doc="Events seen before 'never seen' counts.")
    session_minutes: float = _param(
        30.0, ge=0, doc="A payment without device/country takes them from this recent event."
    )


@dataclass(frozen=True, slots=True)
class AmountOutlier(RuleConfig):
    severity: Severity = _param(Severity.MEDIUM)
    cooldown_minutes: float = _param(1440.0, ge=0)
    min_history: int = _param(8, ge=3, le=64, doc="Payments in the currency before any alert.")
    min_robust_z: float = _param(2.5, gt=0, doc="Robust z of log(amount): (x-median)/1.4826 MAD.")
    min_ratio_to_median: float = _param(10.0, ge=1, doc="And at least this multiple of median.")


@dataclass(frozen=True, slots=True)
class VelocityBurst(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(60.0, ge=0)
    min_events: int = _param(5, ge=2, le=32, doc="Payments (or password resets) in the window.")
    window_minutes: float = _param(10.0, gt=0)


@dataclass(frozen=True, slots=True)
class UnusualHour(RuleConfig):
    severity: Severity = _param(Severity.LOW)
    cooldown_minutes: float = _param(720.0, ge=0)
    min_history: int = _param(60, ge=1, doc="Web/app events in the hour histogram first.")
    min_gap_hours: int = _param(4, ge=1, le=12, doc="Hours away from any hour ever used.")


@dataclass(frozen=True, slots=True)
class SelfServiceFailed(RuleConfig):
    severity: Severity = _param(Severity.MEDIUM)
    cooldown_minutes: float = _param(240.0, ge=0)
    within_minutes: float = _param(60.0, gt=0, doc="Contact this soon after a failure.")


@dataclass(frozen=True, slots=True)
class HighEffort(RuleConfig):
    severity: Severity = _param(Severity.MEDIUM)
    cooldown_minutes: float = _param(10080.0, ge=0)
    min_contacts: int = _param(3, ge=2, le=16, doc="Distinct contact-centre contacts ...")
    window_days: float = _param(7.0, gt=0, doc="... within this many days.")


@dataclass(frozen=True, slots=True)
class UnhappyValuable(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(1440.0, ge=0)
    min_value_eur: float = _param(1000.0, ge=0, doc="Lifetime value (EUR) that counts as high.")
    max_csat: int = _param(2, ge=1, le=5, doc="CSAT at or below this is unhappy.")
    max_nps: int = _param(4, ge=0, le=10, doc="NPS at or below this is unhappy.")
    max_sentiment: float = _param(-0.5, ge=-1, le=1, doc="Social sentiment at or below this.")


@dataclass(frozen=True, slots=True)
class ComplaintUnresolved(RuleConfig):
    severity: Severity = _param(Severity.HIGH)
    cooldown_minutes: float = _param(1440.0, ge=0)
    target_hours: float = _param(48.0, gt=0, doc="A resolved contact must follow within this.")


_RULE_TYPES: Final[dict[str, type[RuleConfig]]] = {
    "impossible_travel": ImpossibleTravel,
    "new_device_new_country_high_value": NewDeviceNewCountryHighValue,
    "amount_outlier": AmountOutlier,
    "velocity_burst": VelocityBurst,
    "unusual_hour": UnusualHour,
    "self_service_failed": SelfServiceFailed,
    "high_effort": HighEffort,
    "unhappy_valuable": UnhappyValuable,
    "complaint_unresolved": ComplaintUnresolved,
}
RULE_NAMES: Final[tuple[str, ...]] = tuple(_RULE_TYPES)
_TOP_LEVEL: Final = ("version", "rules", "subscribers")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(where: str, name: str, value: Any, default: Any, meta: Mapping[str, Any]) -> Any:
    """The validated value or raises ``ValueError`` with a message about ``where.name``."""
    label = f"{where}.{name}"
    if isinstance(default, Severity):
        if not isinstance(value, str) or value not in Severity.__members__.values():
            choices = ", ".join(s.value for s in Severity)
            raise ValueError(f"{label}: expected one of {choices}, got {value!r}")
        return Severity(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{label}: expected true or false, got {_type_name(value)} {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label}: expected an integer, got {_type_name(value)} {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{label}: expected a number, got {_type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{label}: expected a finite number, got {value!r}")
    gt, ge, le = meta.get("gt"), meta.get("ge"), meta.get("le")
    if gt is not None and not value > gt:
        kind = "negative" if value < 0 else "too small"
        raise ValueError(f"{label}: {value!r} is {kind}; must be > {gt:g}")
    if ge is not None and not value >= ge:
        kind = "negative" if value < 0 else "too small"
        raise ValueError(f"{label}: {value!r} is {kind}; must be >= {ge:g}")
    if le is not None and not value <= le:
        raise ValueError(f"{label}: {value!r} is too large; must be <= {le:g}")
    return float(value) if isinstance(default, float) else value


@dataclass(frozen=True, slots=True)
class Rules:
    """Validated rule settings, one :class:`RuleConfig` subclass per rule."""

    impossible_travel: ImpossibleTravel = field(default_factory=ImpossibleTravel)
    new_device_new_country_high_value: NewDeviceNewCountryHighValue = field(
        default_factory=NewDeviceNewCountryHighValue
    )
    amount_outlier: AmountOutlier = field(default_factory=AmountOutlier)
    velocity_burst: VelocityBurst = field(default_factory=VelocityBurst)
    unusual_hour: UnusualHour = field(default_factory=UnusualHour)
    self_service_failed: SelfServiceFailed = field(default_factory=SelfServiceFailed)
    high_effort: HighEffort = field(default_factory=HighEffort)
    unhappy_valuable: UnhappyValuable = field(default_factory=UnhappyValuable)
    complaint_unresolved: ComplaintUnresolved = field(default_factory=ComplaintUnresolved)

    @classmethod
    def default(cls) -> Rules:
        """The built-in defaults (``deploy/rules.yaml`` ships exactly these)."""
        return cls()

    @classmethod
    def from_yaml(cls, path: Path | str) -> Rules:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RulesError([f"not valid YAML: {exc}"], str(path)) from exc
        return cls.from_mapping({} if data is None else data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str = "rules") -> Rules:
        """Validate a parsed rules document; collects every problem before raising."""
        if not isinstance(data, Mapping):
            raise RulesError([f"top level: expected a mapping, got {_type_name(data)}"], source)
        problems: list[str] = []
        for key in data:
            if key not in _TOP_LEVEL:
                problems.append(f"{key}: unknown top-level key (known: {', '.join(_TOP_LEVEL)})")
        version = data.get("version", 1)
        if version != 1 or isinstance(version, bool):
            problems.append(f"version: expected 1, got {version!r}")
        rules = data.get("rules") or {}
        if not isinstance(rules, Mapping):
            problems.append(f"rules: expected a mapping of rule name to settings, got {rules!r}")
            rules = {}
        built: dict[str, RuleConfig] = {}
        for rule_name, settings in rules.items():
            where = f"rules.{rule_name}"
            rule_type = _RULE_TYPES.get(str(rule_name))
            if rule_type is None:
                problems.append(f"{where}: unknown rule (known: {', '.join(RULE_NAMES)})")
                continue
            if settings is None:
                settings = {}
            if not isinstance(settings, Mapping):
                problems.append(f"{where}: expected a mapping of settings, got {settings!r}")
                continue
            fields = {f.name: f for f in dataclasses.fields(rule_type)}
            values: dict[str, Any] = {}
            for name, value in settings.items():
                spec = fields.get(str(name))
                if spec is None:
                    known = ", ".join(fields)
                    problems.append(f"{where}.{name}: unknown field (known: {known})")
                    continue
                try:
                    values[spec.name] = _check_value(
                        where, spec.name, value, spec.default, spec.metadata
                    )
                except ValueError as exc:
                    problems.append(str(exc))
            built[str(rule_name)] = rule_type(**values)
        if problems:
            raise RulesError(problems, source)
        return cls(**built)  # type: ignore[arg-type]  # keys are the field names

    def get(self, name: str) -> RuleConfig:
        config: RuleConfig = getattr(self, name)
        return config

    def to_mapping(self) -> dict[str, Any]:
        """The ``rules:`` section as plain data (what ``deploy/rules.yaml`` holds)."""
        out: dict[str, Any] = {}
        for name in RULE_NAMES:
            config = self.get(name)
            out[name] = {
                f.name: (v.value if isinstance(v := getattr(config, f.name), Severity) else v)
                for f in dataclasses.fields(config)
            }
        return {"version": 1, "rules": out}
