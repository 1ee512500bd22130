"""Notification targets and rules: who hears about a job, through which channel, and when.

A job (or a schedule, which passes its targets into every run) carries a list of targets::

    {"channel": "webhook" | "email", "target": "<http(s) URL or e-mail address>",
     "on": "completed" | "failed" | "anomaly_rate", "threshold": <rate, only with anomaly_rate>}

``completed`` fires when the job completes, ``failed`` when it fails for good (bad data, or retries
exhausted), ``anomaly_rate`` when it completes with an anomaly rate at or above ``threshold``.
The legacy ``webhook_url`` of a job means one webhook target on ``completed``.

Everything here is validated at submit time (the API answers 422 and nothing is stored); the
worker side only ever sees targets that passed :func:`parse_targets`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

from pynomaly.domain.errors import InvalidInput

MAX_TARGETS = 10
MAX_TARGET_LENGTH = 2048
# Deliberately plain: one @, no spaces or control characters, a dotted domain.  SMTP servers do
# the real checking; this rejects typos and header-injection attempts before anything is stored.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_LABEL}(?:\.{_LABEL})+$")


class Channel(enum.Enum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Trigger(enum.Enum):
    """When a target is notified (the ``on`` field)."""

    COMPLETED = "completed"
    FAILED = "failed"
    ANOMALY_RATE = "anomaly_rate"


class Outcome(enum.Enum):
    """What happened to the job, as the rules see it."""

    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class NotificationTarget:
    channel: str
    target: str
    on: str = Trigger.COMPLETED.value
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["threshold"] is None:
            del data["threshold"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NotificationTarget:
        return cls(data["channel"], data["target"], data.get("on", Trigger.COMPLETED.value), data.get("threshold"))

    def matches(self, outcome: Outcome, anomaly_rate: float | None) -> bool:
        trigger = Trigger(self.on)
        if outcome is Outcome.FAILED:
            return trigger is Trigger.FAILED
        if trigger is Trigger.COMPLETED:
            return True
        if trigger is Trigger.ANOMALY_RATE:
            return anomaly_rate is not None and self.threshold is not None and anomaly_rate >= self.threshold
        return False


def validate_webhook_url(url: Any, field: str = "webhook_url") -> str:
    if not isinstance(url, str) or len(url) > MAX_TARGET_LENGTH:
        raise InvalidInput(f"{field} must be an absolute http(s) URL")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or any(c in url for c in "\r\n\t "):
        raise InvalidInput(f"{field} must be an absolute http(s) URL")
    return url


def validate_email(address: Any, field: str = "target") -> str:
    if not isinstance(address, str) or len(address) > 254 or not _EMAIL.fullmatch(address):
        raise InvalidInput(f"{field} must be an e-mail address like ops@example.com")
    return address


def _choice(value: Any, kind: type[enum.Enum], field: str) -> str:
    allowed = [m.value for m in kind]
    if value not in allowed:
        raise InvalidInput(f"{field} must be one of {allowed}, not {value!r}")
    return str(value)


def parse_target(raw: Any, index: int = 0) -> NotificationTarget:
    where = f"notify[{index}]"
    if isinstance(raw, NotificationTarget):
        raw = raw.as_dict()
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object with channel, target and on")
    unknown = sorted(set(raw) - {"channel", "target", "on", "threshold"})
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {unknown}")
    channel = Channel(_choice(raw.get("channel"), Channel, f"{where}.channel"))
    on = Trigger(_choice(raw.get("on", Trigger.COMPLETED.value), Trigger, f"{where}.on"))
    target = raw.get("target")
    if channel is Channel.WEBHOOK:
        target = validate_webhook_url(target, f"{where}.target")
    else:
        target = validate_email(target, f"{where}.target")
    threshold = raw.get("threshold")
    if on is Trigger.ANOMALY_RATE:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise InvalidInput(f"{where}.threshold must be an anomaly rate in (0, 1] with on=anomaly_rate")
        threshold = float(threshold)
    elif threshold is not None:
        raise InvalidInput(f"{where}.threshold is only allowed with on=anomaly_rate")
    return NotificationTarget(channel.value, target, on.value, threshold)


def parse_targets(raw: Any, webhook_url: str | None = None) -> list[NotificationTarget]:
    """Validated targets of a job or schedule; ``webhook_url`` adds one webhook on completion."""
    if raw is None:
        raw = []
    if not isinstance(raw, list | tuple):
        raise InvalidInput("notify must be a list of {channel, target, on, threshold?} objects")
    targets = [parse_target(item, i) for i, item in enumerate(raw)]
    if webhook_url is not None:
        targets.insert(0, NotificationTarget(Channel.WEBHOOK.value, validate_webhook_url(webhook_url)))
    if len(targets) > MAX_TARGETS:
        raise InvalidInput(f"at most {MAX_TARGETS} notification targets per job")
    return targets


def parse_spec(spec: str) -> dict[str, Any]:
    """A target from the CLI's short form ``CHANNEL:TARGET[:ON[:THRESHOLD]]``, validated.

    ``email:ops@example.com:anomaly_rate:0.05``, ``webhook:https://hooks.example/x`` (``on`` defaults
    to completed).  A webhook URL keeps its own colons (scheme, port): only a trailing ``:ON`` or
    ``:anomaly_rate:THRESHOLD`` after the URL's host is read as the rule.
    """
    usage = "use CHANNEL:TARGET[:ON[:THRESHOLD]], e.g. email:ops@example.com:anomaly_rate:0.05"
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInput(f"empty notification target; {usage}")
    channel, sep, rest = spec.strip().partition(":")
    if not sep or not rest:
        raise InvalidInput(f"{spec!r} has no target; {usage}")
    triggers = {t.value for t in Trigger}
    if channel == Channel.EMAIL.value:
        parts = rest.split(":")
        if len(parts) > 3:
            raise InvalidInput(f"{spec!r} has too many ':' parts; {usage}")
    elif channel == Channel.WEBHOOK.value:
        parts = [rest]
        head, _, tail = rest.rpartition(":")
        host_end = rest.find("/", rest.find("//") + 2) if "//" in rest else -1
        if tail in triggers and head and (host_end == -1 or len(head) >= host_end):
            parts = [head, tail]
        elif head:
            url, _, on = head.rpartition(":")
            if on in triggers and url:
                parts = [url, on, tail]
            elif re.fullmatch(r"[A-Za-z_]+", tail) and host_end != -1 and len(head) >= host_end:
                raise InvalidInput(f"{spec!r}: unknown rule {tail!r} (one of {sorted(triggers)}); {usage}")
    else:
        raise InvalidInput(f"{spec!r}: channel must be one of {[c.value for c in Channel]}; {usage}")
    raw: dict[str, Any] = {"channel": channel, "target": parts[0]}
    if len(parts) > 1:
        raw["on"] = parts[1]
    if len(parts) > 2:
        try:
            raw["threshold"] = float(parts[2])
        except ValueError:
            raise InvalidInput(f"{spec!r}: threshold {parts[2]!r} is not a number; {usage}") from None
    try:
        return parse_target(raw).as_dict()
    except InvalidInput as exc:
        raise InvalidInput(f"{spec!r}: {str(exc).removeprefix('notify[0]').lstrip('.: ')}") from None


def matching(targets: list[dict[str, Any]], outcome: Outcome, anomaly_rate: float | None) -> list[int]:
    """Indexes of the stored targets (``Job.notify``) that fire for this outcome."""
    return [i for i, raw in enumerate(targets) if NotificationTarget.from_dict(raw).matches(outcome, anomaly_rate)]
