"""The versioned event envelope every Kafka message carries, validated on both ends.

Shape (CloudEvents-like): id, type, source, time, subject, data, schema_version.  ``subject`` is
the job id (or the component name for system events) and is also the Kafka key, so all events of
one job land in one partition and reach consumers in order.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pynomaly.domain.jobs import utcnow
from pynomaly.topology import TOPOLOGY

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


def make_event(event_type: str, subject: str, source: str, **data: Any) -> EventEnvelope:
    return EventEnvelope(type=event_type, subject=subject, source=source, data=data)
