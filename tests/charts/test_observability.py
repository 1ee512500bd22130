"""The chart's logs and traces: JSON lines by default, OTLP export only with tracing.otlpEndpoint (and
then egress to the collector's port only)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.chartlib import ENVIRONMENTS, MINIMAL_VALUES, by_kind, component, deep_merge
from tests.support.k8s import validate_object
from tools.helm import HelmError

pytestmark = pytest.mark.helm

ENDPOINT = "http://otel-collector.observability:4317"


def settings_config(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = [
        c for c in by_kind(objects, "ConfigMap").values() if component(c) is None and "PYNOMALY_LOG_LEVEL" in c["data"]
    ]
    return dict(config["data"])


def egress_ports(objects: list[dict[str, Any]]) -> set[int]:
    return {
        port["port"]
        for policy in by_kind(objects, "NetworkPolicy").values()
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_logs_json_lines_and_exports_no_traces(rendered_envs: Any, env: str) -> None:
    data = settings_config(rendered_envs[env])
    assert data["PYNOMALY_LOG_FORMAT"] == "json"
    assert not [k for k in data if k.startswith("OTEL_")]
    assert 4317 not in egress_ports(rendered_envs[env])


def test_an_otlp_endpoint_is_set_for_every_component_with_egress_to_its_port(render: Any) -> None:
    values = deep_merge(
        MINIMAL_VALUES,
        {"tracing": {"otlpEndpoint": ENDPOINT, "allowTo": {"namespaceSelector": {"name": "observability"}}}},
    )
    objects = render(values=values)
    assert [f for o in objects for f in validate_object(o)] == []
    assert settings_config(objects)["OTEL_EXPORTER_OTLP_ENDPOINT"] == ENDPOINT
    (egress,) = [
        p for n, p in by_kind(objects, "NetworkPolicy").items() if n.endswith("-egress") and "-worker-" not in n
    ]
    assert {
        "ports": [{"port": 4317, "protocol": "TCP"}],
        "to": [{"namespaceSelector": {"matchLabels": {"name": "observability"}}}],
    } in egress["spec"]["egress"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"settings": {"logFormat": "xml"}}, "logFormat"),
        ({"tracing": {"otlpEndpoint": "http://collector"}}, "otlpEndpoint"),  # the port is required
        ({"tracing": {"otlpEndpoint": "collector:4317"}}, "otlpEndpoint"),  # and the scheme
    ],
)
def test_bad_observability_values_are_refused(render: Any, values: dict[str, Any], field: str) -> None:
    with pytest.raises(HelmError, match=field):
        render(values=deep_merge(MINIMAL_VALUES, values))
