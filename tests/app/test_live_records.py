"""Record parsing of live scoring (domain/live.py): what a scorer accepts, and the reason it gives
(the dead letter's ``error`` header) for what it refuses."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.live import (
    InvalidRecord,
    anomaly_event_id,
    parse_record,
    parse_stream_targets,
    record_row,
    validate_notify_interval,
)
from pynomaly.domain.models import ModelRef
from pynomaly.messaging.events import EventEnvelope

COLUMNS = ["temperature", "pressure"]


def _raw(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_an_object_record_gives_the_models_columns_in_order_and_ignores_others() -> None:
    record = parse_record(_raw(entity="p-1", values={"pressure": 2, "extra": "x", "temperature": 1.5}), b"p-1")
    assert record.entity == "p-1" and record.model is None and record.timestamp is None
    assert record_row(record, COLUMNS).tolist() == [1.5, 2.0]


def test_a_list_record_null_cells_model_and_timestamp() -> None:
    record = parse_record(_raw(values=[None, 3], model="sensors:2", timestamp=0), b"k")
    assert record.entity == "k", "without entity the key is the entity"
    assert record.model == ModelRef("sensors", 2) and record.timestamp == "1970-01-01T00:00:00Z"
    row = record_row(record, COLUMNS)
    assert np.isnan(row[0]) and row[1] == 3.0
    assert parse_record(_raw(entity=7, values=[1, 2], timestamp="2026-11-30T12:00:00Z")).entity == "7"


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        (None, None, "no value"),
        (b"{nope", None, "not JSON"),
        (b"[1, 2]", None, "must be a JSON object, not list"),
        (b'{"entity": "e", "values": [NaN, 1]}', None, "NaN is not a number a record may carry"),
        (b'{"entity": "e", "values": [Infinity, 1]}', None, "non-finite"),
        (_raw(entity="e", values=[1, 2], colour="red"), None, "unknown field(s) ['colour']"),
        (_raw(values=[1, 2]), None, "entity must be 1-128 characters"),
        (_raw(entity="", values=[1, 2]), None, "entity must be"),
        (_raw(entity="a\u202eb", values=[1, 2]), None, "without control characters"),
        (_raw(entity="x" * 129, values=[1, 2]), None, "entity must be"),
        (_raw(entity="a", values=[1, 2]), b"b", "entity 'a' differs from the record's key 'b'"),
        (_raw(entity="a", values=[1, 2]), b"\xff", "key is not UTF-8"),
        (_raw(entity="a", values=[]), None, "values must be a non-empty object"),
        (_raw(entity="a", values=5), None, "values must be"),
        (_raw(entity="a", values=[1, 2], model="bad name"), None, "model name must be"),
        (_raw(entity="a", values=[1, 2], model="m:0"), None, "model version must be"),
        (_raw(entity="a", values=[1, 2], timestamp="yesterday"), None, "timestamp must be ISO 8601"),
        (_raw(entity="a", values=[1, 2], timestamp=-1), None, "timestamp in epoch seconds"),
        (b"{" + b'"a":1,' * 20000 + b"}", None, "over the 65536-byte limit"),
    ],
)
def test_unparseable_records_are_refused_with_their_reason(raw: bytes | None, key: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidRecord) as refused:
        parse_record(raw, key)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"temperature": 1}, "values has no ['pressure']"),
        ([1], "values has 1 numbers; the model needs 2, in order ['temperature', 'pressure']"),
        ({"temperature": 1, "pressure": "2"}, "'pressure': expected a number or null, got str"),
        ({"temperature": True, "pressure": 2}, "'temperature': expected a number or null, got bool"),
        ([1e308 * 10, 1], "is not finite"),  # JSON's 1e999 parses to inf
    ],
)
def test_records_that_do_not_fit_the_model_are_refused(values: Any, reason: str) -> None:
    raw = json.dumps({"entity": "e", "values": values}).replace("Infinity", "1e999").encode()
    with pytest.raises(InvalidRecord) as refused:
        record_row(parse_record(raw), COLUMNS)
    assert reason in str(refused.value)


def test_anomaly_event_ids_are_deterministic_per_record_and_valid_envelope_ids() -> None:
    first = anomaly_event_id("measurements", 3, 1200, 1_764_000_000_000)
    assert first == anomaly_event_id("measurements", 3, 1200, 1_764_000_000_000)
    others = {
        anomaly_event_id("measurements", 4, 1200, 1_764_000_000_000),
        anomaly_event_id("measurements", 3, 1201, 1_764_000_000_000),
        anomaly_event_id("measurements", 3, 1200, 1_764_000_000_001),  # a re-created topic's offset 1200
        anomaly_event_id("other", 3, 1200, 1_764_000_000_000),
    }
    assert first not in others and len(others) == 4
    EventEnvelope(id=first, type="anomaly_detected", source="scorer", subject="p-1")


def test_stream_targets_and_interval_are_validated_like_a_jobs() -> None:
    targets = parse_stream_targets([{"channel": "email", "target": "ops@example.com", "on": "anomaly"}])
    assert [(t.channel, t.target) for t in targets] == [("email", "ops@example.com")]
    for bad, reason in [
        ("x", "notify must be a list"),
        ([{"channel": "email", "target": "nope"}], "e-mail address"),
        ([{"channel": "webhook", "target": "ftp://x"}], "http(s) URL"),
        ([{"channel": "email", "target": "a@b.co", "on": "failed"}], "leave 'on' out"),
        ([{"channel": "email", "target": "a@b.co"}] * 11, "at most 10"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            parse_stream_targets(bad)
        assert reason in str(refused.value)
    assert validate_notify_interval(60) == 60
    for bad_interval in (0, -1, True, 1.5, 7 * 24 * 3600 + 1):
        with pytest.raises(InvalidInput):
            validate_notify_interval(bad_interval)
