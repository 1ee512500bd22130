"""The CLI's short notification form CHANNEL:TARGET[:ON[:THRESHOLD]] (pynomaly.domain.notifications.parse_spec)."""

from __future__ import annotations

import pytest

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.notifications import parse_spec, parse_targets


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("email:ops@example.com", {"channel": "email", "target": "ops@example.com", "on": "completed"}),
        ("email:ops@example.com:failed", {"channel": "email", "target": "ops@example.com", "on": "failed"}),
        (
            "email:ops@example.com:anomaly_rate:0.05",
            {"channel": "email", "target": "ops@example.com", "on": "anomaly_rate", "threshold": 0.05},
        ),
        (
            "webhook:https://hooks.example/x",
            {"channel": "webhook", "target": "https://hooks.example/x", "on": "completed"},
        ),
        ("webhook:http://127.0.0.1:8080", {"channel": "webhook", "target": "http://127.0.0.1:8080", "on": "completed"}),
        (
            "webhook:http://127.0.0.1:8080/hook:failed",
            {"channel": "webhook", "target": "http://127.0.0.1:8080/hook", "on": "failed"},
        ),
        (
            "webhook:https://h.example:8443/a/b:anomaly_rate:1",
            {"channel": "webhook", "target": "https://h.example:8443/a/b", "on": "anomaly_rate", "threshold": 1.0},
        ),
        ("webhook:http://h.example:failed", {"channel": "webhook", "target": "http://h.example", "on": "failed"}),
    ],
)
def test_short_form_maps_to_the_api_shape(spec: str, expected: dict[str, object]) -> None:
    assert parse_spec(spec) == expected
    # What the API's own validation accepts, unchanged.
    assert [t.as_dict() for t in parse_targets([expected])] == [expected]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("email", "has no target"),
        ("email:", "has no target"),
        ("sms:+123", "channel must be one of"),
        ("email:bad", "e-mail address"),
        ("email:a@example.com:0.05", "on must be one of"),
        ("email:a@example.com:anomaly_rate", "threshold must be an anomaly rate"),
        ("email:a@example.com:anomaly_rate:2", "threshold must be an anomaly rate"),
        ("email:a@example.com:anomaly_rate:x", "is not a number"),
        ("email:a@example.com:failed:0.5", "only allowed with on=anomaly_rate"),
        ("email:a@example.com:anomaly_rate:0.1:extra", "too many"),
        ("webhook:ftp://x.example/y", "absolute http(s) URL"),
        ("webhook:https://x.example/y:sometimes", "unknown rule"),
    ],
)
def test_malformed_short_forms_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_spec(spec)
    assert message in str(info.value)
    assert "notify[0]" not in str(info.value)
