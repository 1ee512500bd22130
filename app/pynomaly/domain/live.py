"""Live scoring's domain: the records a scorer reads, stream bindings, and anomaly event ids.

A record on a scorer input topic (``measurements``) is one JSON object::

    {"entity": "pump-7", "values": {"temperature": 71.2, "pressure": 3.1, ...},
     "model": "sensors:3", "timestamp": "2026-11-30T12:00:00Z"}

- ``entity`` (1-128 characters, no control characters): the sensor, host... the reading is about;
  also the Kafka key (a key that disagrees is refused). Without ``entity`` the key is the entity.
- ``values``: an object by column name (other columns are ignored, as in batch scoring) or a list in
  the model's column order. ``null`` is a missing cell, filled as the model's preprocessing learned;
  NaN, Infinity and numbers that overflow are refused.
- ``model`` (optional): ``name`` or ``name:version``; without it the topic's binding says.
- ``timestamp`` (optional): when it was measured, ISO 8601 or epoch seconds; carried into the event.

Nothing here imports Kafka or Redis.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.jobs import utcnow
from pynomaly.domain.models import ModelRef
from pynomaly.domain.notifications import NotificationTarget, Trigger, parse_target

MAX_RECORD_BYTES = 64 * 1024
MAX_ENTITY_CHARS = 128
MAX_VALUES = 1000
RECORD_FIELDS = frozenset({"entity", "values", "model", "timestamp"})
DEFAULT_NOTIFY_INTERVAL = 60
MAX_NOTIFY_INTERVAL = 7 * 24 * 3600
MAX_STREAM_TARGETS = 10
# Control characters and bidi overrides (they would make the dashboard and e-mails lie).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class InvalidRecord(ValueError):
    """A record that cannot be scored; the message is the reason the dead letter carries."""


@dataclass(frozen=True)
class LiveRecord:
    entity: str
    values: dict[str, Any] | list[Any]
    model: ModelRef | None = None
    timestamp: str | None = None


def _reject_constant(token: str) -> float:
    raise InvalidRecord(f"{token} is not a number a record may carry (non-finite)")


def parse_record(raw: bytes | None, key: bytes | None = None) -> LiveRecord:
    """The record in ``raw`` (a Kafka value), or :class:`InvalidRecord` saying what is wrong."""
    if raw is None:
        raise InvalidRecord("the record has no value (a tombstone)")
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"the record is {len(raw)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except InvalidRecord:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRecord(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord(f"the record must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - RECORD_FIELDS)
    if unknown:
        raise InvalidRecord(f"unknown field(s) {unknown}; a record has {sorted(RECORD_FIELDS)}")
    key_text = _key_text(key)
    entity = data.get("entity", key_text)
    if isinstance(entity, int) and not isinstance(entity, bool):
        entity = str(entity)
    if not isinstance(entity, str) or not 1 <= len(entity) <= MAX_ENTITY_CHARS or _UNSAFE.search(entity):
        raise InvalidRecord(
            f"entity must be 1-{MAX_ENTITY_CHARS} characters without control characters (or the record's key)"
        )
    if key_text is not None and key_text != entity:
        raise InvalidRecord(f"entity {entity!r} differs from the record's key {key_text!r}")
    values = data.get("values")
    if not isinstance(values, dict | list) or not values:
        raise InvalidRecord("values must be a non-empty object (column -> number) or list (the model's column order)")
    if len(values) > MAX_VALUES:
        raise InvalidRecord(f"values has {len(values)} entries, over {MAX_VALUES}")
    model = None
    if data.get("model") is not None:
        try:
            model = ModelRef.parse(data["model"])
        except InvalidInput as exc:
            raise InvalidRecord(str(exc)) from None
    return LiveRecord(entity, values, model, _timestamp(data.get("timestamp")))


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise InvalidRecord("the record's key is not UTF-8") from None


def _timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value < 1e11:
            raise InvalidRecord("timestamp in epoch seconds must be between 0 and 1e11")
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and len(value) <= 64:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            pass
    raise InvalidRecord("timestamp must be ISO 8601 (e.g. 2026-11-30T12:00:00Z) or epoch seconds")


def record_row(record: LiveRecord, columns: Sequence[str]) -> np.ndarray:
    """The record's values in ``columns`` order (NaN for null), or :class:`InvalidRecord`."""
    if isinstance(record.values, list):
        if len(record.values) != len(columns):
            raise InvalidRecord(
                f"values has {len(record.values)} numbers; the model needs {len(columns)}, in order {list(columns)}"
            )
        pairs = list(zip(columns, record.values, strict=True))
    else:
        missing = [c for c in columns if c not in record.values]
        if missing:
            raise InvalidRecord(f"values has no {missing}; the model needs {list(columns)}")
        pairs = [(c, record.values[c]) for c in columns]
    row = np.empty(len(columns), dtype=np.float64)
    for j, (name, value) in enumerate(pairs):
        if value is None:
            row[j] = np.nan
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRecord(f"{name!r}: expected a number or null, got {type(value).__name__}")
        else:
            number = float(value)
            if not math.isfinite(number):
                raise InvalidRecord(f"{name!r}: {value!r} is not finite")
            row[j] = number
    return row


def anomaly_event_id(topic: str, partition: int, offset: int, timestamp_ms: int) -> str:
    """The same id whenever this record is scored again (a crash re-scores), so every consumer's
    dedup by event id keeps the anomaly once.  The record's Kafka timestamp is part of it: offsets
    start again at 0 when a topic is re-created, and those records must not collide with old ids."""
    digest = hashlib.sha256(f"{topic}\0{partition}\0{offset}\0{timestamp_ms}".encode()).hexdigest()
    return f"live-{digest[:32]}"


# -- stream bindings --------------------------------------------------------------------------------


def parse_stream_targets(raw: Any) -> list[NotificationTarget]:
    """A binding's notification targets: ``{channel, target}`` each (a live anomaly is the only
    event, so there is no ``on``); the same validation as a job's targets."""
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise InvalidInput("notify must be a list of {channel, target} objects")
    if len(raw) > MAX_STREAM_TARGETS:
        raise InvalidInput(f"at most {MAX_STREAM_TARGETS} notification targets per binding")
    targets = []
    for i, item in enumerate(raw):
        if isinstance(item, dict) and item.get("on") not in (None, "anomaly"):
            raise InvalidInput(f"notify[{i}].on: a stream binding notifies on each anomaly; leave 'on' out")
        fields = {k: v for k, v in item.items() if k != "on"} if isinstance(item, dict) else item
        target = parse_target(fields, i)
        targets.append(NotificationTarget(target.channel, target.target, Trigger.COMPLETED.value))
    return targets


def validate_notify_interval(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NOTIFY_INTERVAL:
        raise InvalidInput(f"notify_interval_seconds must be an integer from 1 to {MAX_NOTIFY_INTERVAL}")
    return value


@dataclass
class StreamBinding:
    """Topic -> model (``name`` follows promotions; ``name:version`` pins one), and who hears of anomalies."""

    topic: str
    model: str
    notify: list[dict[str, Any]] = field(default_factory=list)  # {channel, target}
    notify_interval_seconds: int = DEFAULT_NOTIFY_INTERVAL
    created_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)
    updated_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamBinding:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def ref(self) -> ModelRef:
        return ModelRef.parse(self.model)


def stream_target_dicts(targets: list[NotificationTarget]) -> list[dict[str, Any]]:
    return [{"channel": t.channel, "target": t.target} for t in targets]
