"""Encryption at rest in the chart: off by default, on in the cloud environment; the keys file is
mounted read-only from a Secret into the API, the workers and the scorer consumers (model artifacts are sealed
blobs too) only; enabled without a Secret is refused."""

from __future__ import annotations

from typing import Any

import pytest

from pynomaly.topology import GROUP_SCORER, TOPOLOGY
from tests.charts.chartlib import (
    ENVIRONMENTS,
    MINIMAL_VALUES,
    by_kind,
    component,
    container,
    deep_merge,
    pod_spec,
    pool,
)
from tools.helm import HelmError

pytestmark = pytest.mark.helm

MOUNT = "/etc/pynomaly/encryption"
# Consumer pools that load models (sealed artifacts): live scoring.
MODEL_CONSUMERS = {g.pool for g in TOPOLOGY.consumer_groups if g.name == GROUP_SCORER}


def reads_blobs(deployment: dict[str, Any]) -> bool:
    return component(deployment) in ("api", "worker") or (
        component(deployment) == "consumer" and pool(deployment) in MODEL_CONSUMERS
    )


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = [c for c in by_kind(objects, "ConfigMap").values() if "PYNOMALY_ENVIRONMENT" in c.get("data", {})]
    return config["data"]


def keys_file_of(deployment: dict[str, Any]) -> str | None:
    env = {e["name"]: e for e in container(deployment).get("env", [])}
    entry = env.get("PYNOMALY_ENCRYPTION_KEYS_FILE")
    return None if entry is None else entry["value"]


def encryption_volume(deployment: dict[str, Any]) -> dict[str, Any] | None:
    volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
    return volumes.get("encryption-keys")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_on_in_the_cloud_environment_only(rendered_envs: dict[str, Any], env: str) -> None:
    objects = rendered_envs[env]
    enabled = config_data(objects)["PYNOMALY_ENCRYPTION_ENABLED"]
    assert enabled == ("true" if env == "cloud" else "false")
    mounted = {name for name, d in by_kind(objects, "Deployment").items() if keys_file_of(d)}
    if env == "cloud":
        assert mounted == {n for n, d in by_kind(objects, "Deployment").items() if reads_blobs(d)}
        assert any(component(d) == "consumer" for n, d in by_kind(objects, "Deployment").items() if n in mounted)
    else:
        assert mounted == set()


def test_the_keys_file_is_mounted_read_only_into_api_workers_and_scorers_only(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"encryption": {"enabled": True, "existingSecret": "pynomaly-keys"}})
    objects = render(values=values)
    assert config_data(objects)["PYNOMALY_ENCRYPTION_ENABLED"] == "true"
    deployments = by_kind(objects, "Deployment")
    assert {component(d) for d in deployments.values()} == {"api", "worker", "consumer", "beat"}
    for name, deployment in deployments.items():
        if not reads_blobs(deployment):  # beat and the forwarding consumers never read or write payload blobs
            assert keys_file_of(deployment) is None and encryption_volume(deployment) is None, name
            continue
        assert keys_file_of(deployment) == f"{MOUNT}/encryption-keys", name
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "encryption-keys"]
        assert mount == {"name": "encryption-keys", "mountPath": MOUNT, "readOnly": True}, name
        assert encryption_volume(deployment) == {
            "name": "encryption-keys",
            "secret": {
                "secretName": "pynomaly-keys",
                "defaultMode": 0o440,
                "items": [{"key": "encryption-keys", "path": "encryption-keys"}],
            },
        }, name
    # The chart never creates a key of its own: its Secret has no encryption entry.
    assert all("encryption-keys" not in (s.get("data") or {}) for s in by_kind(objects, "Secret").values())


def test_a_secret_without_enabled_mounts_the_keys_for_reading(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"encryption": {"existingSecret": "pynomaly-keys", "secretKey": "k.txt"}})
    objects = render(values=values)
    assert config_data(objects)["PYNOMALY_ENCRYPTION_ENABLED"] == "false"
    api = next(d for d in by_kind(objects, "Deployment").values() if component(d) == "api")
    assert keys_file_of(api) == f"{MOUNT}/k.txt"


def test_enabled_without_a_secret_is_refused(render: Any) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, {"encryption": {"enabled": True}}))
    message = str(info.value)
    assert "encryption.enabled needs encryption.existingSecret" in message
    assert "openssl rand -base64 32" in message


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"encryption": {"enabled": "yes"}}, "/encryption/enabled"),
        ({"encryption": {"existingSecret": "Not_A_Name"}}, "/encryption/existingSecret"),
        ({"encryption": {"secretKey": "../keys"}}, "/encryption/secretKey"),
        ({"encryption": {"key": "abc"}}, "/encryption"),
    ],
)
def test_the_schema_rejects_bad_encryption_values(render: Any, override: dict[str, Any], where: str) -> None:
    with pytest.raises(HelmError) as info:
        render(values=deep_merge(MINIMAL_VALUES, override))
    assert "values don't meet the specifications of the schema" in str(info.value) and where in str(info.value)
