"""Helpers shared by the chart tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tools.helm import HELM_ENV_DIR

ENVIRONMENTS = sorted(p.name.removesuffix(".values.yaml") for p in HELM_ENV_DIR.glob("*.values.yaml"))

# What a bare `helm install` needs besides the chart defaults (an environment file provides these).
MINIMAL_VALUES: dict[str, Any] = {
    "redis": {"host": "redis.example"},
    "kafka": {"bootstrapServers": "kafka-0.example:9092,kafka-1.example:9093"},
    "secrets": {"existingSecret": "pynomaly-secrets"},
}


def env_values_path(env: str) -> Path:
    return HELM_ENV_DIR / f"{env}.values.yaml"


def env_values(env: str) -> dict[str, Any]:
    return yaml.safe_load(env_values_path(env).read_text())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(deployment)["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']} has {len(containers)} containers"
    return containers[0]


def component(obj: dict[str, Any]) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def pool(obj: dict[str, Any]) -> str | None:
    return obj["metadata"].get("labels", {}).get("pynomaly.io/pool")


def env_list(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return container(deployment).get("env", [])
