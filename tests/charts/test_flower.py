"""Flower in the chart: off by default, a Deployment + Service behind basic auth from a Secret when on,
its own ingress NetworkPolicy, and no render at all without credentials."""

from __future__ import annotations

from typing import Any

import pytest

from pynomaly.config import ENV_PREFIX, Settings
from tests.charts.chartlib import ENVIRONMENTS, MINIMAL_VALUES, by_kind, component, container, deep_merge, pod_spec
from tests.support.k8s import baseline_violations, validate_object
from tools.helm import HelmError

pytestmark = pytest.mark.helm

FLOWER_ON = {"flower": {"enabled": True, "basicAuth": {"existingSecret": "pynomaly-flower"}}}
OPERATORS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}]


def flower_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if component(o) == "flower"]


@pytest.mark.parametrize("env", [None, *ENVIRONMENTS])
def test_flower_is_off_by_default(render: Any, rendered_envs: dict[str, Any], env: str | None) -> None:
    objects = render(values=MINIMAL_VALUES) if env is None else rendered_envs[env]
    assert flower_objects(objects) == []
    assert not any("flower" in o["metadata"]["name"] for o in objects)


def test_flower_on_is_a_deployment_and_service_behind_basic_auth_from_the_secret(render: Any) -> None:
    objects = render(values=deep_merge(MINIMAL_VALUES, FLOWER_ON))
    flower = flower_objects(objects)
    assert sorted(o["kind"] for o in flower) == ["Deployment", "NetworkPolicy", "Service"]
    for obj in flower:
        assert validate_object(obj) == []
        assert baseline_violations(obj) == []
    (deployment,) = by_kind(flower, "Deployment").values()
    assert deployment["spec"]["replicas"] == 1
    c = container(deployment)
    assert c["command"] == ["pynomaly", "flower"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PYNOMALY_FLOWER_BASIC_AUTH"]["valueFrom"] == {
        "secretKeyRef": {"name": "pynomaly-flower", "key": "basic-auth"}
    }
    assert env["PYNOMALY_FLOWER_HOST"]["value"] == "0.0.0.0"
    assert env["PYNOMALY_FLOWER_PORT"]["value"] == "5555"
    assert "PYNOMALY_REDIS_URL" in env
    # Flower needs the broker only: no Kafka credentials, no API keys, no encryption keys.
    assert not {"PYNOMALY_KAFKA_SASL_PASSWORD", "PYNOMALY_API_KEYS_FILE", "PYNOMALY_ENCRYPTION_KEYS_FILE"} & set(env)
    assert {e for e in env if e.startswith(ENV_PREFIX)} <= {ENV_PREFIX + n.upper() for n in Settings.model_fields}
    assert c["ports"] == [{"name": "http", "containerPort": 5555, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthcheck", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    (service,) = by_kind(flower, "Service").values()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 5555, "targetPort": "http", "protocol": "TCP"}]


def test_flower_networkpolicy_opens_only_its_port_to_the_given_peers(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, deep_merge(FLOWER_ON, {"flower": {"port": 8555, "ingressFrom": OPERATORS}}))
    objects = render(values=values)
    (policy,) = by_kind(flower_objects(objects), "NetworkPolicy").values()
    (deployment,) = by_kind(flower_objects(objects), "Deployment").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8555, "protocol": "TCP"}], "from": OPERATORS}]
    # The release's default deny and egress (DNS, Redis, Kafka) cover Flower's pod like every other.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selecting = [
        p["metadata"]["name"]
        for p in by_kind(objects, "NetworkPolicy").values()
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert any(n.endswith("-default-deny") for n in selecting) and any(n.endswith("-egress") for n in selecting)
    # With network policies off, none is rendered for Flower either.
    off = render(values=deep_merge(values, {"networkPolicy": {"enabled": False}}))
    assert by_kind(flower_objects(off), "NetworkPolicy") == {}


def test_flower_without_credentials_is_refused(render: Any) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, {"flower": {"enabled": True}}))
    assert "flower.enabled needs flower.basicAuth.existingSecret" in str(info.value)
    assert "never served without authentication" in str(info.value)


def test_flower_values_are_closed(render: Any) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, deep_merge(FLOWER_ON, {"flower": {"anonymous": True}})))
    assert "additional properties 'anonymous' not allowed" in str(info.value)


def test_flower_port_defaults_to_the_setting(chart_values: dict[str, Any]) -> None:
    assert chart_values["flower"]["port"] == Settings().flower_port
    assert chart_values["flower"]["enabled"] is False
