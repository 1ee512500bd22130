"""The versioned event envelope every Kafka message carries, validated on both ends.

Shape (CloudEvents-like): id, type, source, time, subject, data, schema_version.  ``subject`` is
the job id (or the component name for system events) and is also the Kafka key, so all events of
one job land in one partition and reach consumers in order.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from numbers import Real
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pynomaly.domain.jobs import utcnow
from pynomaly.topology import TOPOLOGY

if TYPE_CHECKING:
    from pynomaly.config import Settings

SCHEMA_VERSION = 1


class InvalidEvent(ValueError):
    """A message that is not a valid envelope (a poison message for consumers)."""


class EventEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    type: str
    source: str = Field(min_length=1, max_length=128)
    time: str = Field(default_factory=utcnow)
    subject: str = Field(min_length=1, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in TOPOLOGY.event_topics:
            raise ValueError(f"unknown event type {value!r}")
        return value

    @field_validator("time")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported (this build reads {SCHEMA_VERSION})")
        return value

    @property
    def topic(self) -> str:
        return TOPOLOGY.topic_for_event(self.type)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> EventEnvelope:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "message"
            raise InvalidEvent(f"{where}: {first['msg']}") from None

    def flat(self) -> dict[str, str]:
        """Redis Stream fields: the envelope with ``data`` as JSON."""
        fields = self.model_dump()
        fields["data"] = json.dumps(fields["data"], separators=(",", ":"))
        return {k: str(v) for k, v in fields.items()}


def make_event(
    event_type: str, subject: str, source: str, caps: PayloadCaps | None = None, **data: Any
) -> EventEnvelope:
    payload = cap_payload(data, caps) if caps else data
    return EventEnvelope(type=event_type, subject=subject, source=source, data=payload)


@dataclass(frozen=True)
class PayloadCaps:
    """Bounds on event data: every event is copied to Kafka and to capped Redis streams, whose memory
    is MAXLEN times the size of an entry, so one 200-column contribution map must not cost megabytes."""

    max_list_items: int = 2000  # the score sample anomalies_detected carries for the dashboard
    max_mapping_items: int = 50
    max_string_chars: int = 2000

    def __post_init__(self) -> None:
        if self.max_list_items < 1 or self.max_mapping_items < 1 or self.max_string_chars < 1:
            raise ValueError("event payload caps must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> PayloadCaps:
        return cls(settings.event_max_list_items, settings.event_max_mapping_items, settings.event_max_string_chars)


def cap_payload(data: dict[str, Any], caps: PayloadCaps) -> dict[str, Any]:
    """``data`` with long lists cut to their first items and large mappings to their largest numbers
    (or first entries), each cut announced by a sibling ``<name>_total`` with the full count; long
    strings end in ``… (N chars)``.  The event's own top-level fields are never dropped."""
    return _cap_fields(data, caps)


def _cap_fields(fields: dict[str, Any], caps: PayloadCaps) -> dict[str, Any]:
    out: dict[str, Any] = {}
    totals: dict[str, int] = {}
    for key, value in fields.items():
        size = len(value) if isinstance(value, dict | list | tuple) else 0
        limit = caps.max_mapping_items if isinstance(value, dict) else caps.max_list_items
        if size > limit:
            totals[f"{key}_total"] = size
        out[key] = _cap_value(value, caps)
    for key, total in totals.items():
        out.setdefault(key, total)  # never overwrite a field the event really has
    return out


def _cap_value(value: Any, caps: PayloadCaps) -> Any:
    if isinstance(value, str):
        if len(value) > caps.max_string_chars:
            return value[: caps.max_string_chars] + f"… ({len(value)} chars)"
        return value
    if isinstance(value, list | tuple):
        return [_cap_value(item, caps) for item in value[: caps.max_list_items]]
    if isinstance(value, dict):
        items = list(value.items())
        if len(items) > caps.max_mapping_items:
            if all(isinstance(v, Real) and not isinstance(v, bool) for _, v in items):
                # e.g. per-column contributions: the strongest ones say the most
                items = sorted(items, key=lambda kv: abs(kv[1]), reverse=True)
            items = items[: caps.max_mapping_items]
        return _cap_fields(dict(items), caps)
    return value
