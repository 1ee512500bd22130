"""Recurring detection schedules: what runs, how often, on which data.  Pure domain code.

A schedule has exactly one timing (a five-field cron expression in UTC, or an interval in seconds)
and exactly one dataset source (a stored dataset id, or an http(s) URL fetched at run time).  Each
run is an ordinary job; the schedule only keeps the job's parameters and the list of its runs.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.jobs import utcnow

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# field name, lowest, highest, names accepted in place of numbers
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day_of_month", 1, 31, {}),
    (
        "month_of_year",
        1,
        12,
        {m: i for i, m in enumerate(_MONTHS, start=1)},
    ),
    ("day_of_week", 0, 6, {d: i for i, d in enumerate(_DAYS)}),
)

MAX_CRON_LENGTH = 256  # every minute listed one by one fits: 0,1,...,59 is 169 characters
NOTIFY_CHANNELS = ("webhook", "email")
NOTIFY_ON = ("completed", "failed", "anomaly_rate")
MAX_NOTIFY_RULES = 20


def parse_cron(expression: str) -> dict[str, str]:
    """Validate a five-field cron expression (minute hour day-of-month month day-of-week, UTC).

    Returns the fields by name, ready for Celery's ``crontab(**fields)``.  Each field may be ``*``,
    a number or name, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma-separated list of those.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInput("cron must be a five-field expression such as '*/5 * * * *'")
    if len(expression) > MAX_CRON_LENGTH:
        raise InvalidInput(f"cron is {len(expression)} characters long; the limit is {MAX_CRON_LENGTH}")
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidInput(
            f"cron {expression!r} has {len(parts)} field(s); give five: minute hour day-of-month month day-of-week"
        )
    fields: dict[str, str] = {}
    for raw, (name, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in raw.lower().split(","):
            _check_cron_item(item, name, low, high, names, expression)
        fields[name] = raw.lower()
    return fields


def _check_cron_item(item: str, name: str, low: int, high: int, names: dict[str, int], expr: str) -> None:
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"cron {expr!r}: {name} {item!r} {why} (allowed {low}-{high})")

    def number(text: str) -> int:
        if text in names:
            return names[text]
        if not (text.isascii() and text.isdigit()):  # str.isdigit() also takes '٣' or '³'
            raise bad("is not a number")
        value = int(text)
        if not low <= value <= high:
            raise bad("is out of range")
        return value

    base, slash, step = item.partition("/")
    if slash and not (step.isascii() and step.isdigit() and 1 <= int(step) <= high):
        raise bad("has an invalid step")
    if base == "*":
        return
    start, dash, end = base.partition("-")
    first = number(start)
    if dash and number(end) < first:
        raise bad("is a backwards range")
    if slash and not dash:
        raise bad("uses a step without a range or '*'")


def validate_interval(seconds: Any, minimum: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != int(seconds):
        raise InvalidInput("interval_seconds must be a whole number of seconds")
    if seconds < minimum:
        raise InvalidInput(f"interval_seconds {int(seconds)} is under the minimum of {minimum} seconds")
    if seconds > 366 * 24 * 3600:
        raise InvalidInput("interval_seconds must be at most a year")
    return int(seconds)


def validate_timing(cron: str | None, interval_seconds: Any, minimum: int) -> tuple[str | None, int | None]:
    if (cron is None) == (interval_seconds is None):
        raise InvalidInput("give exactly one of cron or interval_seconds")
    if cron is not None:
        return " ".join(parse_cron(cron).values()), None
    return None, validate_interval(interval_seconds, minimum)


def validate_notify(rules: Any) -> list[dict[str, Any]]:
    """Notification rules kept as given (after checking their shape); the notifications step reads them.

    Each rule: ``{"channel": "webhook"|"email", "target": "...", "on": "completed"|"failed"|"anomaly_rate",
    "threshold": 0.05}`` (``threshold`` only for ``anomaly_rate``, a share between 0 and 1).
    """
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise InvalidInput("notify must be a list of rules")
    if len(rules) > MAX_NOTIFY_RULES:
        raise InvalidInput(f"notify has {len(rules)} rules; the limit is {MAX_NOTIFY_RULES}")
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise InvalidInput(f"notify[{i}] must be an object")
        unknown = set(rule) - {"channel", "target", "on", "threshold"}
        if unknown:
            raise InvalidInput(f"notify[{i}] has unknown field(s) {sorted(unknown)}")
        if rule.get("channel") not in NOTIFY_CHANNELS:
            raise InvalidInput(f"notify[{i}].channel must be one of {list(NOTIFY_CHANNELS)}")
        target = rule.get("target")
        if not isinstance(target, str) or not target.strip() or len(target) > 2048:
            raise InvalidInput(f"notify[{i}].target must be a non-empty string (a URL or an e-mail address)")
        if rule["channel"] == "webhook" and not target.startswith(("http://", "https://")):
            raise InvalidInput(f"notify[{i}].target must be an http(s) URL for a webhook")
        if rule["channel"] == "email" and "@" not in target:
            raise InvalidInput(f"notify[{i}].target must be an e-mail address")
        on = rule.get("on", "completed")
        if on not in NOTIFY_ON:
            raise InvalidInput(f"notify[{i}].on must be one of {list(NOTIFY_ON)}")
        clean: dict[str, Any] = {"channel": rule["channel"], "target": target, "on": on}
        if on == "anomaly_rate":
            threshold = rule.get("threshold")
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise InvalidInput(f"notify[{i}].threshold must be a share between 0 and 1 for on=anomaly_rate")
            clean["threshold"] = float(threshold)
        elif "threshold" in rule and rule["threshold"] is not None:
            raise InvalidInput(f"notify[{i}].threshold only applies to on=anomaly_rate")
        out.append(clean)
    return out


def new_schedule_id() -> str:
    return "sch_" + uuid.uuid4().hex[:20]


@dataclass
class Schedule:
    id: str
    name: str
    detector: str
    params: dict[str, Any]
    cron: str | None = None
    interval_seconds: int | None = None
    dataset_id: str | None = None
    dataset_url: str | None = None
    contamination: float | None = None
    threshold: float | None = None
    priority: str | None = None
    steps: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    notify: list[dict[str, Any]] = field(default_factory=list)
    webhook_url: str | None = None
    paused: bool = False
    created_by: str | None = None
    created_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)
    last_run_at: str | None = None
    last_job_id: str | None = None
    last_error: str | None = None
    run_count: int = 0

    @property
    def timing(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.interval_seconds}s"

    @property
    def source(self) -> str:
        return f"dataset {self.dataset_id}" if self.dataset_id else f"url {self.dataset_url}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
