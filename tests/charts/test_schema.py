"""values.schema.json is strict: closed objects at every level, unknown keys rejected by helm."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests.charts.chartlib import ENVIRONMENTS, MINIMAL_VALUES, deep_merge, env_values
from tools.helm import CHART, HelmError

pytestmark = pytest.mark.helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def object_schemas(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from object_schemas(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from object_schemas(value, f"{path}[{i}]")


# Helm's global values, accepted for parent charts.  Kubernetes structures (affinity, tolerations, ...)
# are checked too: their definitions are embedded and closed (tools/chart_docs.py).
PASS_THROUGH = {"global"}


def test_every_object_level_is_closed() -> None:
    open_levels = []
    for path, schema in object_schemas(SCHEMA):
        if PASS_THROUGH & set(re.split(r"[.\[]", path)):
            continue
        if "properties" in schema:
            closed = schema.get("additionalProperties") is False
        else:  # a map (labels, pools by name): its values must be constrained
            closed = isinstance(schema.get("additionalProperties"), dict)
        if not closed:
            open_levels.append(path)
    assert open_levels == []


def test_schema_is_valid_draft7() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("env", [None, *ENVIRONMENTS])
def test_values_files_satisfy_the_schema(chart_values: dict[str, Any], env: str | None) -> None:
    values = chart_values if env is None else deep_merge(chart_values, env_values(env))
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)]
    assert errors == []


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"bogus": 1}, "at '': additional properties 'bogus' not allowed"),
        ({"api": {"service": {"bogus": 1}}}, "at '/api/service'"),
        ({"workers": {"pools": {"detection": {"queue": ["anomaly_detection"]}}}}, "at '/workers/pools/detection'"),
        (
            {"consumers": {"pools": {"audit": {"topics": [{"name": "audit_events", "partitions": 5, "x": 1}]}}}},
            "at '/consumers/pools/audit/topics/0'",
        ),
        ({"autoscaling": {"keda": {"enable": True}}}, "at '/autoscaling/keda'"),
        ({"redis": {"allowTo": {"cidr": ["10.0.0.0/8"]}}}, "at '/redis/allowTo'"),
    ],
)
def test_helm_rejects_unknown_keys(render: Any, override: dict[str, Any], where: str) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, override))
    message = str(info.value)
    assert "values don't meet the specifications of the schema" in message
    assert where in message
    assert "additional properties" in message


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"kafka": {"securityProtocol": "SASL"}}, "/kafka/securityProtocol"),
        ({"workers": {"pools": {"Bad_Name": {}}}}, "/workers/pools"),
        ({"workers": {"priority": {"steps": [3, 6]}}}, "/workers/priority/steps"),
        # null deletes a default key in helm: resources without a memory request are refused
        ({"api": {"resources": {"requests": {"memory": None}}}}, "/api/resources/requests"),
    ],
)
def test_helm_rejects_bad_values(render: Any, override: dict[str, Any], where: str) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, override))
    assert where in str(info.value)
